"""Packaging: dependencies are tested ranges (lower bounds, no upper pins), the exact versions of
``make test`` / ``make reproduce`` live in constraints.txt and agree with those ranges, the
README states the range, the licence is an SPDX string, and a wheel built from the checkout
carries every subpackage, the licence file and the ranges. Fast: no network, one wheel build."""

from __future__ import annotations

import importlib.metadata as md
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import lrpjax

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
CORE = ("jax", "jaxlib", "flax", "optax")


def requirements(extra: str | None = None) -> dict[str, Requirement]:
    reqs = PROJECT["dependencies"] if extra is None else PROJECT["optional-dependencies"][extra]
    return {Requirement(r).name.lower(): Requirement(r) for r in reqs}


def lower_bound(req: Requirement) -> Version:
    (spec,) = [s for s in req.specifier if s.operator == ">="]
    return Version(spec.version)


def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: not an exact pin: {line!r}"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_dependencies_are_ranges_with_tested_lower_bounds():
    deps = requirements()
    for name in (*CORE, "numpy", "matplotlib"):
        spec = deps[name].specifier
        assert [s.operator for s in spec] == [">="], f"{name}: a lower bound only, got {spec}"
    for extra, reqs in PROJECT["optional-dependencies"].items():
        for r in reqs:
            assert not any(s.operator in ("==", "<", "<=", "~=", "===")
                           for s in Requirement(r).specifier), f"[{extra}] pins {r}"


def test_constraints_pin_everything_the_test_venv_needs_inside_the_ranges():
    pins = constraints()
    everything = {**requirements(), **requirements("experiments"), **requirements("dev"),
                  **requirements("docs")}
    for name, req in everything.items():
        if name == "lrpjax":  # the dev extra's "lrpjax[docs]"
            continue
        assert name in pins, f"constraints.txt lacks {name}: regenerate it (make constraints)"
        assert req.specifier.contains(pins[name], prereleases=True), (name, pins[name], req)
    assert "lrpjax" not in pins  # the checkout itself is never pinned


def test_installed_versions_are_inside_the_claimed_ranges():
    """Holds in every venv that runs the suite: .venv (constraints.txt) and make test-compat's."""
    for name, req in requirements().items():
        assert req.specifier.contains(md.version(name), prereleases=True), (name, req)


def test_makefile_installs_with_the_constraints_and_tests_both_ends():
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install .*-c \$\(CONSTRAINTS\)", make)
    assert re.search(r"^CONSTRAINTS\s*:?=\s*constraints\.txt", make, re.MULTILINE)
    assert "test-compat:" in make and "docs:" in make


def test_readme_states_the_tested_range():
    readme = (ROOT / "README.md").read_text()
    start = readme.find("\nSupported versions:")
    assert start >= 0, "README: no 'Supported versions:' paragraph"
    line = " ".join(readme[start:readme.index("\n\n", start + 1)].split())
    deps = requirements()
    assert lower_bound(deps["jax"]) == lower_bound(deps["jaxlib"])
    for phrase in (f"jax / jaxlib {lower_bound(deps['jax'])}", f"flax {lower_bound(deps['flax'])}",
                   f"optax {lower_bound(deps['optax'])}"):
        assert phrase in line, phrase
    python = PROJECT["requires-python"].removeprefix(">=")
    assert f"Python {python}" in line
    pins = constraints()
    for name in ("jax", "flax", "optax"):  # the versions behind the figures
        assert f"{name} {pins[name]}" in readme, name


def test_license_metadata_and_files():
    assert PROJECT["license"] == "MIT"  # an SPDX expression, not a table
    assert PROJECT["license-files"] == ["LICENSE"]
    assert any(r.startswith("setuptools>=") and Version(r.split(">=")[1]) >= Version("77")
               for r in PYPROJECT["build-system"]["requires"])
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "the lrpjax authors" in text
    yaml = pytest.importorskip("yaml")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT"
    assert str(cff["version"]) == PROJECT["version"] == lrpjax.__version__
    (paper,) = cff["references"]
    assert paper["doi"] == "10.1016/j.dsp.2017.10.011" and paper["volume"] == 73
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog and f"## [{PROJECT['version']}]" in changelog


def test_wheel_has_every_subpackage_the_license_and_the_ranges(tmp_path):
    setuptools = pytest.importorskip("setuptools")
    if Version(setuptools.__version__) < Version("77"):
        pytest.skip(f"setuptools {setuptools.__version__} < 77 (SPDX licence strings)")
    src = tmp_path / "src"
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "lrpjax", src / "lrpjax",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    build = ("import sys; from setuptools import build_meta as b; "
             "print(b.build_wheel(sys.argv[1]))")
    proc = subprocess.run([sys.executable, "-c", build, str(tmp_path / "dist")], cwd=src,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "deprecated" not in proc.stderr.lower(), proc.stderr[-3000:]
    wheel = tmp_path / "dist" / proc.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    packages = {p.parent.relative_to(ROOT).as_posix()
                for p in (ROOT / "lrpjax").rglob("__init__.py")}
    for pkg in packages:
        assert f"{pkg}/__init__.py" in names, f"the wheel lacks {pkg}"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: MIT" in meta
    for name in CORE:
        assert re.search(rf"^Requires-Dist: {name}>=", meta, re.MULTILINE), name
