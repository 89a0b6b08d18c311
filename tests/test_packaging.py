"""The declared dependency ranges are the tested ones: each Hugging Face dependency has an upper bound, and its lower
bound is the release .ci/run tests in its lowest-version run (.ci/lowest.txt)."""

from __future__ import annotations

import sys

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from conftest import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:
    tomllib = pytest.importorskip("tomli")

TESTED_AT_BOTH_ENDS = ("transformers", "peft", "lm-eval")


def declared() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    texts = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    return {Requirement(text).name: Requirement(text) for text in texts}


def lowest_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / ".ci" / "lowest.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip()] = version.strip()
    return pins


@pytest.mark.parametrize("name", TESTED_AT_BOTH_ENDS)
def test_lower_bound_is_the_lowest_tested_release_and_there_is_an_upper_bound(name):
    requirement = declared()[name]
    lower = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    upper = [s for s in requirement.specifier if s.operator in ("<", "<=")]
    pin = lowest_pins()[name]
    assert lower == [Version(pin)], f"{name}: pyproject says {requirement.specifier}, .ci/lowest.txt pins {pin}"
    assert upper, f"{name} has no upper bound: a release CI never saw could be installed"
    assert requirement.specifier.contains(pin)


def test_ci_runs_the_readme_test_command_and_the_lowest_versions():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "python -m pytest -q -n 2" in readme and "python -m pytest -q -n 2)" in ci
    assert "-c .ci/lowest.txt" in ci and "-m hf" in ci
