"""A tiny fork server for the stress tests: run many snowhub CLI processes without paying for
``import torch`` (seconds) each time.

Run as ``python forkrunner.py``; it imports the CLI once, runs no model code itself (so forking is safe),
then reads one JSON request per line on stdin:

* ``{"op": "start", "id": ID, "argv": [...], "env": {...}, "cwd": DIR, "rlimit_fsize": BYTES}`` forks a
  child that runs ``snowhub ARGV`` with those environment variables (e.g. ``SNOWHUB_FAULT``) and, if
  given, a file-size limit (a full disk: writes past it fail with EFBIG). Answers ``{"id", "pid"}``.
* ``{"op": "wait", "id": ID}`` waits for that child and answers ``{"id", "rc", "stdout", "stderr"}``;
  ``rc`` is negative for a signal (``-9`` = SIGKILL), as in :mod:`subprocess`.
* ``{"op": "kill", "id": ID, "signal": N}`` sends a signal to a running child.

Each child is a real, separate process: SIGKILL in it is exactly a crash of ``snowhub add-task``.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import tempfile


def _child(request: dict, out: str, err: str) -> None:
    os.setpgid(0, 0)
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    os.environ.update(request.get("env") or {})
    if request.get("cwd"):
        os.chdir(request["cwd"])
    if request.get("rlimit_fsize") is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(request["rlimit_fsize"]), hard))
    code = 0
    try:
        sys.argv = ["snowhub", *request["argv"]]
        from snowhub_cli.main import main

        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # a traceback is a failure the tests look for
        import traceback

        traceback.print_exc()
        code = 3
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def serve() -> None:
    import snowhub_cli.main  # noqa: F401 -- the expensive imports, once

    children: dict[str, tuple[int, str, str]] = {}
    scratch = tempfile.mkdtemp(prefix="snowhub-forkrunner-")
    for line in sys.stdin:
        request = json.loads(line)
        ident = str(request["id"])
        if request["op"] == "start":
            out, err = os.path.join(scratch, f"{ident}.out"), os.path.join(scratch, f"{ident}.err")
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                _child(request, out, err)
            children[ident] = (pid, out, err)
            answer = {"id": ident, "pid": pid}
        elif request["op"] == "kill":
            os.kill(children[ident][0], int(request.get("signal", signal.SIGKILL)))
            answer = {"id": ident}
        else:
            pid, out, err = children.pop(ident)
            _, status = os.waitpid(pid, 0)
            with open(out, encoding="utf-8", errors="replace") as fo, open(err, encoding="utf-8",
                                                                             errors="replace") as fe:
                answer = {"id": ident, "rc": os.waitstatus_to_exitcode(status), "stdout": fo.read(),
                          "stderr": fe.read()}
            os.unlink(out)
            os.unlink(err)
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
