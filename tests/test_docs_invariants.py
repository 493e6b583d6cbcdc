"""docs/format.md's invariants name the tests that check them: every name must exist.

A reference is a test module (``test_locks``) or a module and a test in it
(``test_storage_truth::test_stress``, which matches ``test_stress`` and ``test_stress_*``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _invariants() -> list[tuple[int, str]]:
    text = (ROOT / "docs" / "format.md").read_text()
    body = text.split("## Invariants", 1)[1]
    items = re.split(r"\n(?=\d+\. )", "\n" + body)
    out = []
    for item in items:
        m = re.match(r"(\d+)\. ", item)
        if m:
            out.append((int(m.group(1)), item))
    return out


def _tests_in(module: Path) -> set[str]:
    tree = ast.parse(module.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.name.startswith("test")}


def test_invariants_are_numbered_in_order_and_each_names_a_test():
    items = _invariants()
    assert [n for n, _ in items] == list(range(1, len(items) + 1))
    for n, item in items:
        assert re.search(r"\btest_\w+", item), f"invariant {n} names no test"


def test_every_test_an_invariant_names_exists():
    missing = []
    for n, item in _invariants():
        for ref in re.findall(r"\b(test_\w+(?:::test_\w+)?)", item):
            module, _, func = ref.partition("::")
            path = ROOT / "tests" / f"{module}.py"
            if not path.exists():
                if func or not any((ROOT / "tests").glob(f"{module}_*.py")):
                    missing.append(f"{n}: {ref} (no tests/{module}.py)")
                continue
            if func and not any(t == func or t.startswith(func + "_") for t in _tests_in(path)):
                missing.append(f"{n}: {ref}")
    assert not missing, "docs/format.md names tests that do not exist: " + "; ".join(missing)
