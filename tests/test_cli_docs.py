"""Every command is documented, shows an example in --help, and fails with one line on stderr."""

import os
import re

import pytest
import torch
from click.testing import CliRunner

from ckpt import CheckpointStore
from ckpt.cli import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = open(os.path.join(ROOT, "docs", "cli.md"), encoding="utf-8").read()
README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
COMMANDS = sorted(cli.commands)


def run(*args, env=None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def section(name):
    m = re.search(rf"^### `ckpt {name}`\n(.*?)(?=^##)", DOCS + "\n##", re.S | re.M)
    assert m, f"docs/cli.md has no '### `ckpt {name}`' section"
    return m.group(1)


def test_the_issue_commands_all_exist():
    assert set(COMMANDS) == {"ls", "show", "restore", "diff", "log", "runs", "tag", "untag", "rm", "prune", "gc",
                             "verify", "reindex", "upgrade", "import", "export", "plot", "objective", "ui"}


@pytest.mark.parametrize("name", COMMANDS)
def test_command_is_documented_with_every_option(name):
    text = section(name)
    assert f"ckpt {name}" in text and "```" in text  # a synopsis and an example
    for param in cli.commands[name].params:
        for opt in param.opts if isinstance(param, __import__("click").Option) else ():
            if opt.startswith("--") and opt != "--help":
                assert opt in text, f"docs/cli.md: `ckpt {name}` does not mention {opt}"


@pytest.mark.parametrize("name", COMMANDS)
def test_help_shows_an_example(name):
    res = run(name, "--help")
    assert res.exit_code == 0
    assert "Examples:" in res.output and f"  ckpt {name}" in res.output


def test_global_options_and_readme():
    for opt in ("--store", "--index", "--json", "--version", "CKPT_STORE"):
        assert opt in DOCS.split("## Looking")[0]
    res = run("--help")
    assert "Examples:" in res.output and all(name in res.output for name in COMMANDS)
    for snippet in ("ckpt ls --sort val_acc", "ckpt diff", "ckpt restore best", "docs/cli.md"):
        assert snippet in README


@pytest.fixture(scope="module")
def loc(tmp_path_factory):
    loc = str(tmp_path_factory.mktemp("docs") / "s")
    with CheckpointStore(loc) as store:
        store.save("r", 0, {"model": {"w": torch.zeros(2)}}, {"val_acc": 0.5})
    return loc


WITH_SELECTOR = [["show", "SEL"], ["restore", "SEL"], ["export", "SEL"], ["diff", "SEL", "latest"], ["tag", "SEL", "t"],
                 ["rm", "SEL"], ["log", "SEL"]]
EVERYTHING = WITH_SELECTOR + [["ls"], ["runs"], ["untag", "t"], ["prune", "--keep-last", "1"], ["gc"], ["verify"],
                              ["reindex"], ["plot", "val_acc"], ["import", "x.pt", "--run", "r", "--epoch", "0"]]


def one_line_error(res, code=2):
    assert res.exit_code == code, res.output
    assert res.stdout == ""
    assert res.stderr.startswith("error: ") and len(res.stderr.splitlines()) == 1, res.stderr
    assert "Traceback" not in res.output


@pytest.mark.parametrize("args", WITH_SELECTOR, ids=lambda a: a[0])
def test_unknown_selector_is_one_line(loc, args):
    res = run("--store", loc, *[a.replace("SEL", "nosuchthing") for a in args])
    one_line_error(res)
    assert "nosuchthing" in res.stderr


@pytest.mark.parametrize("args", EVERYTHING, ids=lambda a: a[0])
def test_missing_store_is_one_line(tmp_path, args):
    (tmp_path / "x.pt").write_bytes(b"")
    res = run("--store", str(tmp_path / "nostore"), *[a.replace("SEL", "latest") for a in args],
              env={"CKPT_DEBUG": ""})
    one_line_error(res)
    assert not (tmp_path / "nostore").exists()
    if args[0] == "import":  # import may create a store, but only once the file is read: here it is empty
        assert "x.pt" in res.stderr
    else:
        assert "no ckpt store" in res.stderr
    res = run(*[a.replace("SEL", "latest") for a in args], env={"CKPT_STORE": ""})
    one_line_error(res)
    assert "CKPT_STORE" in res.stderr


def test_usage_errors_are_one_line_too(loc):
    for args in (["ls", "--bogus"], ["nosuchcommand"], ["show", "a", "b"], ["ls", "--limit", "x"], ["restore"]):
        res = run("--store", loc, *args)
        one_line_error(res)
        assert "--help" in res.stderr


def test_json_after_the_command_name_and_no_colour_when_piped(loc):
    a, b = run("--store", loc, "--json", "ls"), run("--store", loc, "ls", "--json")
    assert a.exit_code == b.exit_code == 0 and a.stdout == b.stdout and a.stdout.startswith("[")
    for args in (["ls"], ["runs"], ["log", "--graph"], ["show", "latest", "--tensors"], ["diff", "r@0", "latest"]):
        res = run("--store", loc, *args)
        assert res.exit_code == 0 and "\x1b[" not in res.output, args


def test_progress_bars_only_on_a_terminal(loc, tmp_path, monkeypatch):
    from ckpt.cli import console
    assert not console.progress_enabled()  # CliRunner: stderr is not a terminal
    monkeypatch.setattr(console, "progress_enabled", lambda: True)  # as on a terminal: still works
    res = run("--store", loc, "restore", "latest", "-o", str(tmp_path / "x.pt"))
    assert res.exit_code == 0 and (tmp_path / "x.pt").exists()
    assert run("--store", loc, "verify", "--full").exit_code == 0


def test_unexpected_errors_are_one_line_with_debug_hint(loc, monkeypatch):
    from ckpt.store import CheckpointStore as Store

    def boom(self, *a, **k):
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(Store, "list", boom)
    res = run("--store", loc, "ls")
    one_line_error(res, code=3)
    assert "disk on fire" in res.stderr and "CKPT_DEBUG=1" in res.stderr
    with pytest.raises(RuntimeError):
        run("--store", loc, "ls", env={"CKPT_DEBUG": "1"})
