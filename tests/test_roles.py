"""Role names of a study's models ("P", "P-T:s0", "RI-T:s1:best"): one parser and
formatter (transferscope.roles.Role), used by the plan, the jobs and the report."""

from __future__ import annotations

import pytest
from test_study import tiny_spec

from transferscope.report.figures.names import pair_type, role
from transferscope.roles import KINDS, Role
from transferscope.study import StudySpec, build_plan


@pytest.mark.parametrize("name, parsed", [
    ("P", Role("P")),
    ("P-T:s0", Role("P-T", 0)),
    ("RI-T:s12", Role("RI-T", 12)),
    ("P-T:s0:best", Role("P-T", 0, "best")),
])
def test_parse_and_format_round_trip(name, parsed):
    assert Role.parse(name) == parsed
    assert str(parsed) == name


@pytest.mark.parametrize("name", ["", "X", "X:s0", "p-t:s0", "P-T:s-1", "P-T:s0:best:again", "P-T::best"])
def test_a_name_that_is_no_role_says_the_form(name):
    with pytest.raises(ValueError, match=r"<role>\[:s<seed>\]\[:<checkpoint>\]"):
        Role.parse(name)


def test_a_role_checks_its_kind_and_moves_to_a_checkpoint():
    with pytest.raises(ValueError, match="roles are P, P-T, RI-T"):
        Role("T", 0)
    assert Role("P-T", 1).at("best") == Role.parse("P-T:s1:best")
    assert Role.parse("P-T:s1:best").at(None) == Role("P-T", 1)


def test_every_model_name_in_a_plan_is_a_role():
    jobs = build_plan(StudySpec.model_validate(tiny_spec()))
    names = {name for job in jobs if "models" in job.config for name in job.config["models"]}
    names |= {name for job in jobs for pair in job.config.get("pairs", []) for name in pair}
    assert {"P", "P-T:s0", "RI-T:s1", "P-T:s0:best", "RI-T:s0:best"} <= names
    assert all(str(Role.parse(name)) == name for name in names)
    assert {Role.parse(name).kind for name in names} == set(KINDS)
    interpolation = next(job for job in jobs if job.kind == "interpolation")
    assert ["P-T:s0:best", "P-T:s0"] in interpolation.config["pairs"]
    basin = next(job for job in jobs if job.kind == "basin")
    assert basin.config["pairs"] == [["P-T:s0", "P-T:s1"], ["RI-T:s0", "RI-T:s1"]]  # same kind only


def test_report_names_group_by_kind_and_leave_other_names_alone():
    assert role("RI-T:s3:best") == "RI-T"
    assert role("resnet_a") == "resnet_a"
    assert pair_type("P-T:s0", "P", [("P-T", "P")]) == "P-T&P"
    assert pair_type("a", "b", [("P-T", "P")]) is None
