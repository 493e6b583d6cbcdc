"""The package's layering (docs/architecture.md), checked from the source: imports go downward only, the
applications use the public API, and the read path does not import torch."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")

# Lowest first. A module may import its own layer and the ones below, never one above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("ckpt.errors", "ckpt.validation", "ckpt.metrics", "ckpt.records", "ckpt.format.dtypes",
              "ckpt.pools", "ckpt.display")),
    ("format", ("ckpt.format",)),
    ("storage", ("ckpt.storage",)),
    ("catalog", ("ckpt.catalog", "ckpt.locks")),
    ("protocol", ("ckpt.context", "ckpt.refs", "ckpt.sync", "ckpt.recovery", "ckpt.packs", "ckpt.snapshot",
                  "ckpt.staging", "ckpt.map_location", "ckpt.writer", "ckpt.reader", "ckpt.lazy", "ckpt.diff",
                  "ckpt.deletion", "ckpt.gc", "ckpt.verify", "ckpt.opening", "ckpt.commit", "ckpt.run_exit",
                  "ckpt.retention", "ckpt.upgrade", "ckpt.quiet_gc")),
    ("facade", ("ckpt.store",)),
    ("apps", ("ckpt.cli", "ckpt.training", "ckpt.integrations", "ckpt.interop", "ckpt.ui")),
]
# What the applications (CLI, training loop, integrations, web view) may use: the public API.
PUBLIC = ("ckpt", "ckpt.store", "ckpt.errors", "ckpt.records", "ckpt.display", "ckpt.validation", "ckpt.metrics", "ckpt.catalog",
          "ckpt.diff", "ckpt.retention", "ckpt.map_location", "ckpt.format.unpickle", "ckpt.interop")
# The torch.distributed StorageWriter is itself a writer: it uses the commit protocol's multi-process API.
WRITER_EXCEPTIONS = {"ckpt.integrations.dcp": ("ckpt.commit", "ckpt.snapshot", "ckpt.packs", "ckpt.format"),
                     # `ckpt ui` starts the web view: the one command that runs another application.
                     "ckpt.cli.ui": ("ckpt.ui",)}
TORCH_FREE = ("ckpt.errors", "ckpt.pools", "ckpt.display", "ckpt.validation", "ckpt.metrics", "ckpt.records", "ckpt.format.dtypes",
              "ckpt.format.manifest", "ckpt.format.manifest_v1", "ckpt.format.unpickle", "ckpt.storage",
              "ckpt.catalog", "ckpt.locks", "ckpt.context", "ckpt.refs", "ckpt.sync", "ckpt.recovery",
              "ckpt.deletion", "ckpt.gc", "ckpt.opening", "ckpt.store", "ckpt.retention", "ckpt.cli", "ckpt.ui")


def _modules() -> dict[str, str]:
    out = {}
    root = os.path.join(SRC, "ckpt")
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(d, f), SRC)[:-3].replace(os.sep, ".")
                out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(d, f)
    return out


def _imports(path: str, module: str, *, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(open(path).read())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # also what `if TYPE_CHECKING:` blocks and try/except at the top hold, but not functions
        nodes = [n for top in tree.body if not isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                 for n in ast.walk(top) if not (isinstance(top, ast.If) and "TYPE_CHECKING" in ast.dump(top.test))]
    out = set()
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    for n in nodes:
        if isinstance(n, ast.Import):
            out |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom):
            if n.level:
                base = package.rsplit(".", n.level - 1)[0] if n.level > 1 else package
                name = f"{base}.{n.module}" if n.module else base
            else:
                name = n.module or ""
            out.add(name)
            out |= {f"{name}.{a.name}" for a in n.names}  # `from ckpt import commit` imports ckpt.commit
    return out


def _layer(module: str) -> int | None:
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if module == p or module.startswith(p + "."):
                if best is None or len(p) > best[1]:
                    best = (i, len(p))
    return best[0] if best else None


MODULES = _modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_downward_only(module):
    if module == "ckpt":
        return  # the package's __init__ re-exports the public API (lazily, for CheckpointStore)
    mine = _layer(module)
    assert mine is not None, f"{module} belongs to no layer: add it to LAYERS in this test and docs/architecture.md"
    up = sorted(imp for imp in _imports(MODULES[module], module)
                if imp.startswith("ckpt.") and imp in MODULES and (_layer(imp) or 0) > mine)
    assert up == [], f"{module} ({LAYERS[mine][0]}) imports from a higher layer: {up}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) == len(LAYERS) - 1))
def test_applications_use_the_public_api(module):
    app = module.split(".")[1]
    allowed = PUBLIC + WRITER_EXCEPTIONS.get(module, ())
    bad = sorted(imp for imp in _imports(MODULES[module], module)
                 if imp in MODULES and imp != "ckpt" and not imp.startswith(f"ckpt.{app}")
                 and not any(imp == p or (p != "ckpt" and imp.startswith(p + ".")) for p in allowed))
    assert bad == [], f"{module} reaches into internals {bad}; add what it needs to the public API"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if any(m == p or m.startswith(p + ".") for p in TORCH_FREE)))
def test_read_path_modules_do_not_import_torch_at_import_time(module):
    heavy = sorted(i for i in _imports(MODULES[module], module, top_level_only=True)
                   if i.split(".")[0] in ("torch", "numpy", "alembic", "matplotlib"))
    allowed = {"ckpt.format.manifest": (), "ckpt.catalog.writes": ()}
    assert heavy == [] or module in allowed and set(heavy) <= set(allowed[module]), \
        f"{module} imports {heavy} at import time; import them where they are used"


def test_query_layer_and_cli_import_without_torch():
    code = ("import sys, ckpt.catalog, ckpt.store, ckpt.cli, ckpt.ui, ckpt.ui.app, ckpt.ui.server; "
            "bad = [m for m in ('torch', 'numpy', 'alembic') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    import torch
    from ckpt import CheckpointStore
    loc = str(tmp_path_factory.mktemp("layers") / "s")
    with CheckpointStore(loc) as s:
        for e in range(3):
            s.save("r", e, {"model": {"w": torch.full((8,), float(e))}}, {"val_acc": e / 4}, tags=("kept",) if e == 1 else ())
    return loc


@pytest.mark.parametrize("args", [["--help"], ["ls"], ["ls", "--sort", "val_acc"], ["show", "latest"],
                                  ["show", "best"], ["runs"], ["log", "r"], ["tag", "r@2", "new"],
                                  ["untag", "kept"]], ids=lambda a: " ".join(a))
def test_everyday_read_commands_run_without_importing_torch(small_store, args):
    code = ("import sys; from click.testing import CliRunner; from ckpt.cli import cli; "
            f"r = CliRunner().invoke(cli, ['--store', {small_store!r}] + {args!r}); "
            "print(r.exit_code, 'torch' in sys.modules); print(r.output[-2000:], file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "False"], (out.stdout, out.stderr[-2000:])
