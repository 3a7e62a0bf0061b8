"""requirements.lock pins every dependency pyproject.toml names (issue 7, item 7: dependencies pinned), at a version
that satisfies pyproject's specifier, so that the lock cannot silently drift from the declared dependencies."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_declared_dependency_is_pinned_in_the_lock() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line!r}"
            pins[canonical(name)] = version
    declared = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared += extra
    checked = 0
    for text in declared:
        requirement = Requirement(text)
        if canonical(requirement.name) == "fer-service":
            continue  # the project itself (an extra pulling in another extra)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue  # e.g. tensorflow on non-x86 machines
        assert canonical(requirement.name) in pins, f"{requirement.name} is not in requirements.lock"
        assert requirement.specifier.contains(pins[canonical(requirement.name)], prereleases=True), (
            f"{requirement.name}=={pins[canonical(requirement.name)]} does not satisfy {requirement.specifier}"
        )
        checked += 1
    assert checked >= 15
