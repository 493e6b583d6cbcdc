"""Small mutable documents on storage (tags, run objectives and status), so ``reindex`` can restore them.

File names are digests of the user's string: a tag named ``../../etc`` stays a file inside refs/.
"""

from __future__ import annotations

import json
from typing import Any

import blake3

from ckpt.errors import CkptError

MAX_REF_BYTES = 1 << 20


def _name(kind: str, name: str) -> str:
    return f"refs/{kind}/{blake3.blake3(name.encode('utf-8', 'surrogatepass')).hexdigest()[:40]}.json"


def write(storage: Any, kind: str, name: str, doc: dict[str, Any]) -> None:
    storage.put(_name(kind, name), json.dumps({"name": name, **doc}, sort_keys=True).encode())


def delete(storage: Any, kind: str, name: str) -> None:
    storage.delete(_name(kind, name))


def read_all(storage: Any, kind: str) -> list[dict[str, Any]]:
    """Every well-formed ref of a kind; damaged ones are skipped (they only carry convenience state)."""
    out = []
    for entry in storage.list(f"refs/{kind}"):
        if not entry.name.endswith(".json") or entry.name.startswith("."):
            continue
        try:
            doc = json.loads(storage.read(f"refs/{kind}/{entry.name}", MAX_REF_BYTES))
        except (CkptError, ValueError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("name"), str) and \
                f"refs/{kind}/{entry.name}" == _name(kind, doc["name"]):
            out.append(doc)
    return out
