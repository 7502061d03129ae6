"""The seams of DESIGN.md, enforced: one adapter per foreign library, a pure core, iptables independent of nmi,
nmi's layers; and the lint rules of pyproject.toml."""

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH first: the packages under `root` are the ones analysed, not the installed ones.
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", str(root / ".importlinter")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def test_import_contracts_are_kept():
    done = lint_imports(REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "10 kept, 0 broken" in done.stdout


def test_a_new_module_is_covered_by_the_contracts_without_naming_it(tmp_path):
    """Whole-package contracts: a module nobody listed that imports kubernetes, or the server from a lower
    layer, breaks them."""
    for tree in ("nmi", "iptables"):
        shutil.copytree(REPO / tree, tmp_path / tree, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".importlinter", tmp_path / ".importlinter")
    (tmp_path / "nmi" / "brand_new_module.py").write_text("import kubernetes\n")
    with (tmp_path / "nmi" / "model.py").open("a") as model:
        model.write("\nfrom nmi import server  # noqa\n")

    done = lint_imports(tmp_path)

    assert done.returncode != 0
    assert "nmi.brand_new_module -> kubernetes" in done.stdout
    assert "nmi.model is not allowed to import nmi.server" in done.stdout


def test_ruff_rules_of_pyproject_hold():
    """The rule sets (pyflakes, ASYNC, bugbear) and the trees (nmi, iptables, tests, bench, fakes, demo) are those
    of pyproject.toml's [tool.ruff]: a new module is linted without a change here."""
    ruff = Path(sys.executable).with_name("ruff")
    done = subprocess.run([str(ruff), "check", "--no-cache", "--output-format", "concise"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]
    lint = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]
    assert {"F", "ASYNC", "B"} <= set(lint["select"])
