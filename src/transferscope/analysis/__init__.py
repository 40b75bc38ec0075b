"""Analyses of Neyshabur, Sedghi & Zhang (2020), one file each; plain functions returning tidy DataFrames."""
