"""CI cannot pass by testing nothing: ``.ci/run`` passes on every failure (pytest's 5, "no tests
ran", included), and where ``CI`` is set a skipped test fails the run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.parametrize("rc", [0, 1, 2, 5])
def test_ci_run_exits_as_the_test_command_did(tmp_path, rc):
    (tmp_path / ".ci").mkdir()
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / ".ci" / "run", tmp_path / ".ci" / "run")
    stub = tmp_path / "scripts" / "test"
    stub.write_text(f"#!/usr/bin/env bash\nexit {rc}\n")
    stub.chmod(0o755)
    done = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], capture_output=True, text=True)
    assert done.returncode == rc
    assert ("no tests" in done.stderr) == (rc == 5)


@pytest.mark.parametrize("ci, rc", [("", 0), ("true", 1)])
def test_a_skip_fails_the_run_in_ci(tmp_path, ci, rc):
    (tmp_path / "test_x.py").write_text(
        "import pytest\n\ndef test_skipped():\n    pytest.skip('git is missing')\n\n"
        "def test_passes():\n    pass\n")
    env = {**os.environ, "CI": ci,
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(tmp_path / "test_x.py")],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert "1 passed, 1 skipped" in done.stdout, done.stdout
    assert done.returncode == rc, done.stdout
