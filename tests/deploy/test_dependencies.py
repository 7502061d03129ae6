"""The image installs exactly what the lock files pin, by hash, and they cover everything nmi needs: every
third-party package nmi/ and iptables/ import is declared in pyproject.toml, every declared package is locked
(and the build tools in requirements-build.lock), and every locked package's own requirements are locked too."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .conftest import REPO
from .test_dockerfile import DOCKERFILE, _stages

LOCK = REPO / "requirements.lock"
BUILD_LOCK = REPO / "requirements-build.lock"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# The demo drives real pod-side clients (azure-identity, msrestazure) against the fakes: top-level packages outside
# the wheel, whose imports come from the test extras, never imported by the daemon.
DEV_ONLY_PACKAGES = (REPO / "demo", REPO / "fakes")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def _locked(lock: Path = LOCK) -> dict[str, tuple[str, int]]:
    """canonical name -> (version, number of hashes), from the pip-compile output."""
    entries: dict[str, tuple[str, int]] = {}
    current = None
    for line in lock.read_text().splitlines():
        if match := _PIN.match(line):
            current = canonicalize_name(match.group(1))
            entries[current] = (match.group(2), 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, hashes = entries[current]
            entries[current] = (version, hashes + 1)
    return entries


def _declared(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(text).name) for text in requirements}


def _imported_top_level_modules(roots: list[Path]) -> set[str]:
    modules = set()
    for root in roots:
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    modules |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"nmi", "iptables", "demo", "fakes", "__future__"}


def test_every_imported_third_party_package_is_declared():
    distributions = importlib.metadata.packages_distributions()
    imported = _imported_top_level_modules([REPO / "nmi", REPO / "iptables"])
    assert {"requests", "yarl", "urllib3", "aiohttp", "iptc"} <= imported  # the scan sees real imports
    undeclared = {module: distributions.get(module) for module in imported
                  if not {canonicalize_name(d) for d in distributions.get(module, [])}
                  & _declared(PYPROJECT["project"]["dependencies"])}
    assert undeclared == {}


def test_the_demos_imports_are_in_the_test_extras():
    distributions = importlib.metadata.packages_distributions()
    declared = _declared(PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["test"])
    imported = _imported_top_level_modules(list(DEV_ONLY_PACKAGES))
    assert {"aiohttp", "cryptography"} <= imported  # the scan sees real imports (the fakes')
    assert not [m for m in imported if not {canonicalize_name(d) for d in distributions.get(m, [])} & declared]


def test_every_declared_and_build_dependency_is_pinned_with_hashes():
    locked, build_locked = _locked(), _locked(BUILD_LOCK)
    assert _declared(PYPROJECT["project"]["dependencies"]) - set(locked) == set()
    # nmi's build tools; python-iptables ships only an sdist and builds with the same setuptools
    assert _declared(PYPROJECT["build-system"]["requires"]) | {"setuptools", "wheel"} <= set(build_locked)
    for entries in (locked, build_locked):
        assert {name: hashes for name, (_, hashes) in entries.items() if hashes == 0} == {}
    for text in PYPROJECT["project"]["dependencies"]:  # the pins satisfy pyproject's ranges
        requirement = Requirement(text)
        assert requirement.specifier.contains(locked[canonicalize_name(requirement.name)][0]), text


def test_the_lock_is_closed_under_requirements():
    # What pip check does in the image, here: each locked package's own requirements (for Linux, Python 3.11,
    # no extras) are locked as well. Requirements are read from the installed metadata of the same packages.
    locked = _locked() | _locked(BUILD_LOCK)
    environment = default_environment() | {"sys_platform": "linux", "platform_system": "Linux",
                                           "python_version": "3.11", "extra": ""}
    missing = {}
    for name in locked:
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed in this venv (build-only tools): the image's pip check covers them
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate(environment):
                continue
            if canonicalize_name(requirement.name) not in locked:
                missing.setdefault(name, []).append(str(requirement))
    assert missing == {}


def test_dockerfile_installs_the_lock_by_hash_then_nmi_without_dependencies():
    build, runtime = _stages(DOCKERFILE.read_text())
    runs = [arguments for keyword, arguments in build if keyword == "RUN"]
    copies = [arguments for keyword, arguments in build if keyword == "COPY"]
    lock_install = next(run for run in runs if "-r requirements.lock" in run)
    build_tools, packages = (part.strip() for part in lock_install.split("&&"))
    assert build_tools.endswith("-r requirements-build.lock") and "--require-hashes" in build_tools.split()
    assert {"--require-hashes", "--no-deps", "--no-build-isolation"} <= set(packages.split())
    nmi_install = next(run for run in runs if re.search(r"pip install [^&]* \.(\s|$)", run))
    assert {"--no-deps", "--no-build-isolation"} <= set(nmi_install.split()) and "pip check" in nmi_install
    # the locks are installed before nmi's sources are copied (a source change keeps the dependency layer cached)
    assert copies.index("requirements-build.lock requirements.lock ./") < copies.index("pyproject.toml README.md ./")
    assert runs.index(lock_install) < runs.index(nmi_install)
    # no other pip install in either stage could bring in something unhashed
    every_run = runs + [arguments for keyword, arguments in runtime if keyword == "RUN"]
    assert sum(run.count("pip install") for run in every_run) == 3
