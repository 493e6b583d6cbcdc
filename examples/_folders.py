"""Where an example writes: always a new folder it made itself, so that running an example never
destroys anything of yours.

    store_dir = new_folder(args.store, "demo")      # DIR/store (DIR/store-2 on the next run, ...)

- no DIR: a new folder under the system temp directory (``tempfile.mkdtemp``), printed;
- a DIR that does not exist yet, or an empty one: created/used, and marked with a ``.ckpt-example``
  file, so that later runs recognise it;
- a DIR an example made before (the marker is there): each run adds a new sub-folder next to the
  earlier ones, which stay as they are;
- anything else (a folder that holds files an example did not put there, a file): refused, with a
  message and exit status 2, and left untouched.

Examples never delete or overwrite anything: not your folders, not even their own earlier output.
"""

from __future__ import annotations

import datetime
import os
import sys
import tempfile

MARKER = ".ckpt-example"


def line_buffered_stdout() -> None:
    """Print line by line even into a pipe, so that an example's headings stay in order with the output
    of the processes it starts (training children, the ckpt command line)."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(line_buffering=True)


def ckpt_command() -> str:
    """How to call the ckpt command line of this interpreter's venv (``.venv/bin/ckpt`` after the set-up)."""
    exe = os.path.join(os.path.dirname(sys.executable), "ckpt")
    if not os.path.isfile(exe):
        return "ckpt"
    rel = os.path.relpath(exe)
    return rel if not rel.startswith("..") else exe


def refuse(message: str) -> None:
    """Stop the example: a message on stderr, exit status 2, nothing changed."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def new_folder(path: str | None, example: str, name: str = "store") -> str:
    """A new, empty folder ``name`` (or ``name-2``, ``name-3``...) inside ``path``, a folder of the
    examples' own (see the module docstring); returns its absolute path."""
    if path is None:
        base = tempfile.mkdtemp(prefix=f"ckpt-{example}-")
        _mark(base, example)
    else:
        base = os.path.abspath(os.path.expanduser(path))
        if os.path.lexists(base) and not os.path.isdir(base):
            refuse(f"{path} exists and is not a folder; it was left untouched. Pass the path of a new or empty "
                   f"folder, or none for a new folder under {tempfile.gettempdir()}")
        if not os.path.isdir(base):
            os.makedirs(base)
            _mark(base, example)
        elif not os.path.isfile(os.path.join(base, MARKER)):
            entries = sorted(os.listdir(base))
            if entries:
                shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
                refuse(f"{path} is not empty ({shown}) and was not made by a ckpt example, so examples/{example}.py "
                       f"will not write there; it was left untouched. Pass the path of a new or empty folder, or "
                       f"none for a new folder under {tempfile.gettempdir()}")
            _mark(base, example)
    for n in range(1, 10_000):
        target = os.path.join(base, name if n == 1 else f"{name}-{n}")
        try:
            os.mkdir(target)
        except FileExistsError:
            continue
        return target
    refuse(f"{base} already holds 10,000 runs of the examples; pass a new folder")
    raise AssertionError("unreachable")


def _mark(folder: str, example: str) -> None:
    with open(os.path.join(folder, MARKER), "w") as f:
        f.write(f"Made by ckpt's examples/{example}.py on {datetime.datetime.now().isoformat(timespec='seconds')}.\n"
                f"Examples add new sub-folders here and never delete anything.\n")


def new_file(path: str, *, overwrite: bool = False) -> str:
    """``path`` for an output file, refused when something is there already (unless ``overwrite``)."""
    if os.path.lexists(path) and not overwrite:
        refuse(f"{path} already exists and was left untouched; pass another output path (or --overwrite)")
    return os.path.abspath(path)
