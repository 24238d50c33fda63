"""The README tells the truth: its two set-up commands are the scripts CI runs, and the
commands and options it documents are the ones the CLI has."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from conftest import ROOT

README = (ROOT / "README.md").read_text()
SCRIPTS = {"./scripts/demo": ROOT / "scripts" / "demo", "./scripts/test": ROOT / "scripts" / "test"}


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.S | re.M)


def commands(block: str) -> list[str]:
    """Non-empty lines of a shell block, without comments."""
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]


def test_the_first_commands_are_the_two_scripts():
    first = code_blocks(README)[0]
    assert commands(first) == ["./scripts/demo", "./scripts/test"]
    # and nothing but a heading and a few sentences come before them
    assert README.index("./scripts/demo") < 800


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_scripts_exist_are_executable_and_set_up_first(name):
    path = SCRIPTS[name]
    assert path.is_file() and os.access(path, os.X_OK), f"{name} must be an executable file"
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash")
    assert re.search(r'^source "\$\(dirname "\$0"\)/setup\.sh"$', text, flags=re.M), "must run setup.sh"
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "setup.sh")]).returncode == 0


def test_scripts_run_what_they_say():
    assert re.search(r"^exec .*-m pytest tests\b", (ROOT / "scripts" / "test").read_text(), flags=re.M)
    assert re.search(r"^exec .*netmount\"? demo\b", (ROOT / "scripts" / "demo").read_text(), flags=re.M)


def test_ci_runs_the_readme_test_command():
    run = ROOT / ".ci" / "run"
    live = commands(run.read_text().split("\n", 1)[1])  # skip the shebang
    assert any(re.match(r"(exec\s+)?(bash\s+)?\./scripts/test\b", line) for line in live), live


def cli_parser():
    from netmount.commands.cli import build_parser

    return build_parser()


def subparsers(parser):
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices


def test_documented_commands_exist():
    names = set(subparsers(cli_parser()))
    code = "\n".join(code_blocks(README) + re.findall(r"`([^`\n]+)`", README))
    documented = set(re.findall(r"\bnetmount (?:--debug )?([a-z][a-z-]+)", code))
    assert documented, "the README documents no command?"
    assert documented <= names, f"documented but not in the CLI: {sorted(documented - names)}"
    for required in ("mount", "unmount", "demo"):
        assert f"netmount {required}" in README


def test_documented_options_exist_with_their_defaults():
    parser = cli_parser()
    subs = subparsers(parser)
    known = {opt: a for p in (parser, *subs.values()) for a in p._actions for opt in a.option_strings}
    rows = re.findall(r"^\| `(--[a-z-]+)[^|]*\| ([^|]*)\|", README, flags=re.M)
    assert len(rows) >= 10
    for opt, default in rows:
        assert opt in known, f"{opt} is documented but no command has it"
        action = known[opt]
        shown = re.match(r"\s*`([^`]+)`", default)
        if shown and action.default not in (None, False) and not opt == "--endpoint":
            assert str(shown.group(1)) in (str(action.default), _human(action.default)), (opt, default)
    mount_opts = {o for a in subs["mount"]._actions for o in a.option_strings} - {"-h", "--help"}
    assert mount_opts <= {opt for opt, _ in rows}, "every mount option is in the README's table"


def _human(value) -> str:
    from netmount.core.units import format_size

    return format_size(value).replace(" MiB", "M").replace(" GiB", "G") if isinstance(value, int) else str(value)


def test_documented_environment_variables_are_read():
    settings = (ROOT / "netmount" / "core" / "settings.py").read_text()
    for var in ("HF_ENDPOINT", "NETMOUNT_CACHE_DIR"):
        assert var in README and f'"{var}"' in settings
