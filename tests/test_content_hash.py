"""io.content_hash, the one SHA-256-of-canonical-JSON helper, and the digests built on it:
stored job ids and cache names must not change when their code moves onto it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from transferscope.config import TrainConfig
from transferscope.data.synthetic.domains import _cache_path
from transferscope.io import content_hash
from transferscope.study.job import JOB_SCHEMA, Job


def test_content_hash_is_sha256_of_sorted_json():
    obj = {"b": [1, 2.5, None], "a": {"y": "é", "x": True}}
    text = '{"a": {"x": true, "y": "\\u00e9"}, "b": [1, 2.5, null]}'  # json.dumps defaults, keys sorted
    assert content_hash(obj) == hashlib.sha256(text.encode()).hexdigest()[:12]
    assert content_hash(obj, length=64) == hashlib.sha256(text.encode()).hexdigest()
    assert content_hash({"a": obj["a"], "b": obj["b"]}) == content_hash(dict(reversed(list(obj.items()))))
    assert content_hash({"a": 1}) != content_hash({"a": 2})
    with pytest.raises(TypeError, match="not JSON serializable"):
        content_hash({"path": Path("x")})


def test_job_id_is_the_content_hash_of_schema_kind_identity_and_deps():
    identity = {"train": {"lr": 0.2, "model": {"width": 8}}}
    job = Job(kind="finetune", label="P-T:s0", deps=("pretrain-b", "pretrain-a"), identity=identity,
              config={"train": {"lr": 0.2, "model": {"arch": "small_resnet", "width": 8}, "seed": 0}})
    expected = content_hash({"schema": JOB_SCHEMA, "kind": "finetune", "identity": identity,
                             "deps": ["pretrain-a", "pretrain-b"]})
    assert job.id == f"finetune-{expected}"


def test_synthetic_cache_name_is_unchanged():
    path = _cache_path(Path("cache"), {"name": "shapes", "n_train": 10, "seed": 0})
    assert path == Path("cache/synthetic-shapes-af4205c7072ea2fb.safetensors")


def test_settings_digest_is_the_content_hash_of_the_settings():
    config = TrainConfig()
    assert config.digest() == content_hash(config.model_dump(mode="json"))
