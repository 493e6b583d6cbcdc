"""Set-up: a torch range in pyproject, the bootstrap's torch-first install and its per-mode stamps.

The bootstrap runs for real against a stand-in venv whose `pip` only records what it was asked to
install (a real install takes minutes and the network) and whose `python` is the real interpreter
seeing only a stand-in torch of a chosen version.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(path: str) -> str:
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def torch_requirement() -> str:
    return re.search(r'^\s*"(torch[^"]*)"', read("pyproject.toml"), re.M).group(1)


def test_pyproject_requires_a_torch_range_that_the_bootstrap_agrees_with():
    req = torch_requirement()
    assert "==" not in req and req.startswith("torch>=")
    low = req.split(">=")[1].split(",")[0]
    assert re.search(rf"^TORCH_MIN={re.escape(low)}\b", read("scripts/bootstrap.sh"), re.M)
    assert "TORCH_PIN=2.13.0" in read("scripts/bootstrap.sh")
    assert f"torch>={low}" in read("README.md")  # the README says which and why


def test_demo_installs_only_the_package_and_tests_add_the_extra():
    assert "bash scripts/bootstrap.sh demo\n" in read("scripts/demo.sh")
    assert "bash scripts/bootstrap.sh test\n" in read("scripts/test.sh")
    assert "bash scripts/test.sh" in read(".ci/run")


def test_no_mention_of_a_missing_script():
    for path in ("README.md", "pyproject.toml", "docs/training.md", "scripts/bootstrap.sh", "scripts/demo.sh",
                 "scripts/test.sh"):
        for script in re.findall(r"scripts/[\w.-]+\.sh", read(path)):
            assert os.path.isfile(os.path.join(ROOT, script)), f"{path} mentions {script}"


def test_readme_says_how_to_run_ckpt_and_choose_a_cpu_torch():
    text = read("README.md")
    assert ".venv/bin/ckpt" in text and "source .venv/bin/activate" in text
    assert "--index-url https://download.pytorch.org/whl/cpu" in text


def _script(path, text: str) -> None:  # type: ignore[no-untyped-def]
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def venv(tmp_path):  # type: ignore[no-untyped-def]
    """A stand-in venv: bin/python is this interpreter without site-packages, seeing ``site/``;
    bin/pip logs its arguments and "installs" torch==X as a module with that version."""
    site, log = tmp_path / "site", tmp_path / "pip.log"
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    site.mkdir()
    _script(tmp_path / "venv" / "bin" / "python", f'#!/bin/sh\nPYTHONPATH="{site}" exec "{sys.executable}" -S "$@"\n')
    _script(tmp_path / "venv" / "bin" / "pip", f"""#!/bin/sh
echo "$@" >> "{log}"
for a in "$@"; do
  case "$a" in torch==*) mkdir -p "{site}/torch"; echo "__version__ = '${{a#torch==}}+cpu'" > "{site}/torch/__init__.py";; esac
done
""")

    def bootstrap(*args: str) -> tuple[int, list[str]]:
        before = log.read_text().splitlines() if log.exists() else []
        p = subprocess.run(["bash", os.path.join(ROOT, "scripts", "bootstrap.sh"), *args], capture_output=True,
                           text=True, env=dict(os.environ, CKPT_VENV=str(tmp_path / "venv"), CKPT_INSTALL_CHROMIUM="0"),
                           timeout=60)
        after = log.read_text().splitlines() if log.exists() else []
        return p.returncode, after[len(before):]

    bootstrap.site = site  # type: ignore[attr-defined]
    bootstrap.venv = tmp_path / "venv"  # type: ignore[attr-defined]
    return bootstrap


def test_bootstrap_installs_pinned_torch_first_then_demo_then_test_extra(venv):
    assert venv("demo") == (0, ["install --quiet torch==2.13.0", "install --quiet -e ."])
    assert (venv.venv / ".ckpt-installed-demo").exists() and not (venv.venv / ".ckpt-installed-test").exists()
    assert venv("demo") == (0, [])  # quick when everything is there
    assert venv("test") == (0, ["install --quiet -e .[test]"])  # the same venv gets the test extra
    assert venv("test") == (0, []) and venv("demo") == (0, []) and venv() == (0, [])


@pytest.mark.parametrize("have,installs_torch", [("2.9.0", False), ("2.13.0", False), ("2.8.0", True)])
def test_bootstrap_keeps_a_torch_within_the_range(venv, have, installs_torch):
    (venv.site / "torch").mkdir()
    (venv.site / "torch" / "__init__.py").write_text(f"__version__ = '{have}+cu121'\n")
    rc, calls = venv("demo")
    assert rc == 0
    assert calls == (["install --quiet torch==2.13.0"] if installs_torch else []) + ["install --quiet -e ."]


def test_bootstrap_refuses_an_unknown_mode(venv):
    rc, calls = venv("everything")
    assert rc == 2 and calls == []
