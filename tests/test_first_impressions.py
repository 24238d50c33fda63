"""What a new user sees first (issue 22): `netmount --help` says in its first line what
netmount does, and setting up (``scripts/setup.sh``, run by the first ``./scripts/demo``)
does not print setuptools' "Editable installation" block."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, run_cli


def test_help_starts_with_what_netmount_does():
    from netmount.commands.cli import ABOUT

    done = run_cli("--help")
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first == ABOUT and "Hugging Face" in first and "lazy" in first
    assert "usage: netmount" in done.stdout
    assert "Command line: parse arguments" not in done.stdout  # no module docstring
    sub = run_cli("mount", "--help")
    assert sub.stdout.startswith("usage: netmount mount"), sub.stdout[:200]  # a subcommand's help is its own


def _editable_install(project: Path, prefix: Path, warnings: str | None) -> subprocess.CompletedProcess:
    """``pip install -e`` of ``project`` as setup.sh runs it, into ``prefix`` (not the venv),
    with the venv's setuptools and no index: nothing leaves the machine."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    if warnings is not None:
        env["PYTHONWARNINGS"] = warnings
    return subprocess.run(
        # --ignore-installed: else pip first uninstalls the venv's own netmount, --prefix or not,
        # and every later test's daemon (``python -P``, cwd /) no longer finds the package
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed",
         "--no-build-isolation", "--no-index", "--prefix", str(prefix), "-e", str(project)],
        capture_output=True, text=True, timeout=300, env=env)


def test_setup_silences_setuptools_editable_notice_and_nothing_else(tmp_path):
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    quiet = re.search(r'^EDITABLE_QUIET="([^"]+)"$', setup, flags=re.M).group(1)
    install = re.search(r'^\s*PYTHONWARNINGS="\$EDITABLE_QUIET" pip_q install .*-e "\$here\[test\]"$',
                        setup, flags=re.M)
    assert install, "setup.sh installs netmount with the filter"
    assert "|| true" not in install.group(0)
    assert re.search(r"^pip_q\(\) \{.*\| \{ grep -v '\^WARNING: Location' \|\| true; \}; \}$", setup, flags=re.M), \
        "pip_q keeps pip's exit status (set -o pipefail) and drops only the index warning"
    project = tmp_path / "project"  # a copy: an editable install writes egg-info into the project
    for name in ("netmount", "cache"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)

    loud = _editable_install(project, tmp_path / "loud", None)
    assert loud.returncode == 0, loud.stderr
    assert "Editable installation" in loud.stdout + loud.stderr, \
        "setuptools no longer warns: setup.sh's EDITABLE_QUIET filter can go"
    quiet_run = _editable_install(project, tmp_path / "quiet", quiet)
    assert quiet_run.returncode == 0, quiet_run.stderr
    assert quiet_run.stdout + quiet_run.stderr == ""
    assert list((tmp_path / "quiet").rglob("__editable__*netmount*.pth"))
    # the filter is that one notice: a broken project still fails, with pip's error shown
    (project / "pyproject.toml").write_text("[build-system\n")
    broken = _editable_install(project, tmp_path / "broken", quiet)
    assert broken.returncode != 0 and "ERROR" in broken.stderr and "TOMLDecodeError" in broken.stderr
    # and the venv's own installation is untouched: a daemon started the usual way imports it
    found = subprocess.run([sys.executable, "-P", "-c", "import netmount.mounting.daemon"], cwd="/",
                           capture_output=True, text=True, timeout=60)
    assert found.returncode == 0, found.stderr
