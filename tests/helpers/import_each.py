"""Run ``ckpt --store STORE import FILE --run R --epoch 0`` for each file, in this one process.

    python import_each.py STORE FILE...

A separate process, so a file that crashed the unpickler (memory corruption, as in CVE-2026-24747)
would kill this helper and not the test session. Prints one ``result {json}`` line per file with the
exit code and stderr of the command, then ``done``.
"""

from __future__ import annotations

import json
import sys

from click.testing import CliRunner

from ckpt.cli import cli


def main() -> None:
    store, *files = sys.argv[1:]
    for i, path in enumerate(files):
        res = CliRunner().invoke(cli, ["--store", store, "import", path, "--run", f"hostile-{i}", "--epoch", "0"])
        exc = res.exception if res.exception is not None and not isinstance(res.exception, SystemExit) else None
        print("result " + json.dumps({"file": path, "exit_code": res.exit_code, "stderr": res.stderr,
                                      "stdout": res.stdout, "exception": repr(exc) if exc else None}),
              flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    main()
