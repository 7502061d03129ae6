"""What ships is the daemon only: nmi's wheel holds the nmi and iptables packages, never the test fakes, the
demo, the benchmarks or the tests, which live beside them as top-level packages; the image copies neither."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from .conftest import REPO
from .test_dockerfile import DOCKERFILE, _instructions

SHIPPED = {"nmi", "iptables"}
NOT_SHIPPED = {"fakes", "demo", "bench", "tests"}


def _build_wheel(source: Path, out: Path) -> Path:
    # Offline and quick: the venv's setuptools (test extras), no isolated build environment to download.
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "--quiet", "--wheel-dir", str(out), str(source)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = out.glob("nmi-*.whl")
    return wheel


def test_the_wheel_holds_nmi_and_iptables_and_none_of_fakes_demo_bench_tests(tmp_path: Path):
    # A copy of the tree's top-level packages (a build writes build/ and *.egg-info next to its sources)
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    packages = {path.parent.name for path in REPO.glob("*/__init__.py")} | {"tests"}
    assert SHIPPED | NOT_SHIPPED <= packages  # the copy holds what must be left out, so leaving it out is real
    for name in packages:
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheel = _build_wheel(source, tmp_path / "dist")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == SHIPPED
    assert "nmi/__main__.py" in names and "iptables/rules.py" in names
    assert not [name for name in names if name.split("/")[0] in NOT_SHIPPED or "/fakes/" in name or "/demo/" in name]


def test_the_image_copies_neither_fakes_nor_demo_nor_bench_nor_tests():
    copied = [arguments.split()[:-1] for keyword, arguments in _instructions(DOCKERFILE.read_text())
              if keyword == "COPY" and not arguments.startswith("--from")]
    sources = {Path(source).parts[0] for sources in copied for source in sources}
    assert "nmi" in sources and "." not in sources and not sources & NOT_SHIPPED
    # and the build context cannot hold them: .dockerignore drops everything, then lets only the sources in
    ignore = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    allowed = {line[1:].rstrip("/").split("/")[0] for line in ignore if line.startswith("!")}
    assert ignore[0] == "*" and not allowed & NOT_SHIPPED
