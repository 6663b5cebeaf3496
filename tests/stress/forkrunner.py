"""A tiny fork server for the stress tests: run many snowhub CLI processes without paying for
``import torch`` (seconds) each time.

Run as ``python forkrunner.py``; it imports the CLI once, runs no model code itself (so forking is safe),
says ``{"ready": true}``, then reads one JSON request per line on stdin and answers each with one JSON line
(``{"error": ...}`` if the request could not be served; the server itself keeps running):

* ``{"op": "start", "id": ID, "argv": [...], "env": {...}, "cwd": DIR, "rlimit_fsize": BYTES}`` forks a
  child that runs ``snowhub ARGV`` with those environment variables (e.g. ``SNOWHUB_FAULT``) and, if
  given, a file-size limit (a full disk: writes past it fail with EFBIG). Answers ``{"id", "pid"}``.
* ``{"op": "wait", "id": ID, "timeout": S}`` waits at most ``S`` seconds for that child and answers
  ``{"id", "rc", "stdout", "stderr", "timed_out"}``; ``rc`` is negative for a signal (``-9`` = SIGKILL), as
  in :mod:`subprocess`. A child still running after ``S`` seconds is killed (its whole process group,
  SIGKILL) and reported with ``"timed_out": true``, so a hung snowhub fails the test instead of hanging it.
* ``{"op": "kill", "id": ID, "signal": N}`` sends a signal to a running child.
* ``{"op": "peek", "id": ID}`` answers ``{"id", "state", "stdout", "stderr"}`` without waiting: ``state`` is
  the child's state letter from ``/proc/PID/stat`` (``R``/``S``/``D`` running, ``T`` stopped, e.g. by a
  ``SNOWHUB_FAULT=...=SIGSTOP`` crash point, ``Z`` exited) and the output so far.
* ``{"op": "cleanup"}`` kills (SIGKILL) and reaps every child nobody waited for; answers ``{"killed": [ID...]}``.

Each child is a real, separate process: SIGKILL in it is exactly a crash of ``snowhub add-task``. When
stdin closes, the server kills its remaining children and exits.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import tempfile
import time


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


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return fh.read()


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rpartition(")")[2].split()[0]  # the name in (...) may hold spaces
    except (OSError, IndexError):
        return "?"


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)  # the child made itself a group leader: its helpers die too
    except ProcessLookupError:
        pass


class Server:
    def __init__(self):
        self.children: dict[str, tuple[int, str, str]] = {}
        self.scratch = tempfile.mkdtemp(prefix="snowhub-forkrunner-")

    def start(self, request: dict, ident: str) -> dict:
        out, err = os.path.join(self.scratch, f"{ident}.out"), os.path.join(self.scratch, f"{ident}.err")
        for path in (out, err):  # here, not in the child: a peek right after the start finds them
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            _child(request, out, err)
        self.children[ident] = (pid, out, err)
        return {"id": ident, "pid": pid}

    def wait(self, request: dict, ident: str) -> dict:
        pid, out, err = self.children.pop(ident)
        deadline = time.monotonic() + float(request.get("timeout", 300))
        timed_out = False
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                timed_out = True
                _kill_group(pid)
                _, status = os.waitpid(pid, 0)
                break
            time.sleep(0.01)
        answer = {"id": ident, "rc": os.waitstatus_to_exitcode(status), "stdout": _read(out),
                  "stderr": _read(err), "timed_out": timed_out}
        os.unlink(out)
        os.unlink(err)
        return answer

    def peek(self, ident: str) -> dict:
        pid, out, err = self.children[ident]
        return {"id": ident, "state": _state(pid), "stdout": _read(out), "stderr": _read(err)}

    def cleanup(self) -> dict:
        killed = sorted(self.children)
        for ident in killed:
            _kill_group(self.children[ident][0])
            self.wait({"timeout": 30}, ident)
        return {"killed": killed}

    def serve(self) -> None:
        sys.stdout.write(json.dumps({"ready": True}) + "\n")
        sys.stdout.flush()
        for line in sys.stdin:
            request = json.loads(line)
            ident = str(request.get("id"))
            try:
                if request["op"] == "start":
                    answer = self.start(request, ident)
                elif request["op"] == "kill":
                    os.kill(self.children[ident][0], int(request.get("signal", signal.SIGKILL)))
                    answer = {"id": ident}
                elif request["op"] == "peek":
                    answer = self.peek(ident)
                elif request["op"] == "cleanup":
                    answer = self.cleanup()
                else:
                    answer = self.wait(request, ident)
            except Exception as exc:  # noqa: BLE001 -- answered, so the client fails with the reason
                answer = {"id": ident, "error": f"{type(exc).__name__}: {exc}"}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
        self.cleanup()


if __name__ == "__main__":
    import snowhub_cli.main  # noqa: F401 -- the expensive imports, once

    Server().serve()
