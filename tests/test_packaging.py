"""The dependency set: bounded in pyproject.toml, pinned in constraints.txt, the two in agreement."""

from __future__ import annotations

import re
import sys

import pytest

from mpi_util import REPO

tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")
packaging_req = pytest.importorskip("packaging.requirements")


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def _declared() -> list:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(meta["dependencies"])
    for extra in meta.get("optional-dependencies", {}).values():
        reqs += extra
    return [packaging_req.Requirement(r) for r in reqs]


def _pins() -> dict:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[_name(name)] = version
    return pins


def test_every_dependency_has_an_upper_bound():
    for req in _declared():
        assert any(s.operator in ("<", "<=", "~=", "==") for s in req.specifier), \
            f"pyproject.toml: {req} has no upper bound"


def test_constraints_pin_every_dependency_within_its_bounds():
    pins = _pins()
    for req in _declared():
        version = pins.get(_name(req.name))
        assert version is not None, f"constraints.txt does not pin {req.name}"
        assert req.specifier.contains(version, prereleases=True), \
            f"constraints.txt pins {req.name}=={version}, outside pyproject's {req.specifier}"


def test_quick_start_and_ci_install_the_pinned_set():
    readme = (REPO / "README.md").read_text()
    assert "pip install -c constraints.txt -e ." in readme
    assert "-c constraints.txt" in (REPO / ".ci" / "run").read_text()
