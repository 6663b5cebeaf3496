"""A frozen copy of the code a run measures, so edits to the working tree during a run cannot leak into it.

A run takes tens of minutes and each job starts a fresh Python process; without a copy, a ``snowhub/``
file saved halfway through would make later jobs measure another product than earlier ones. The copy holds
``benchmarks/`` from the working tree and ``snowhub/`` from the working tree or from a git revision;
workers run with the copy as their current directory, which Python searches before the editable install.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, check=False)


def tree_sha256(folder: Path) -> str:
    """sha256 over the relative paths and contents of every ``.py`` file under `folder`."""
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def make_snapshot(dest: Path, product: str = "worktree") -> dict:
    """Copy the code into `dest` (``dest/benchmarks``, ``dest/snowhub``) and describe what was copied.

    Args:
        product: ``"worktree"`` for ``snowhub/`` as it is on disk now, or a git revision (``HEAD``, a hash).

    Returns:
        ``{"product", "commit", "snowhub_sha256", "uncommitted_product_files"}``: the files of ``snowhub/``
        that differ from HEAD in the copy (empty when the product measured is a commit).

    Raises:
        SystemExit: `product` is not a revision git knows.
    """
    skip = shutil.ignore_patterns("__pycache__", "results", "tests")
    shutil.copytree(REPO / "benchmarks", dest / "benchmarks", ignore=skip)
    head = _git("rev-parse", "HEAD").stdout.decode().strip() or None
    if product == "worktree":
        shutil.copytree(REPO / "snowhub", dest / "snowhub", ignore=skip)
        changed = _git("status", "--porcelain", "--", "snowhub").stdout.decode().splitlines()
        commit, uncommitted = head, sorted(line[3:] for line in changed)
    else:
        archive = _git("archive", "--format=tar", product, "snowhub")
        if archive.returncode != 0:
            raise SystemExit(f"--product {product!r}: {archive.stderr.decode().strip()}")
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(dest, filter="data")
        commit = _git("rev-parse", product).stdout.decode().strip()
        uncommitted = []
    return {"product": product, "commit": commit, "snowhub_sha256": tree_sha256(dest / "snowhub"),
            "uncommitted_product_files": uncommitted}


def run_in_snapshot(argv: list[str], product: str, dest: Path) -> int | None:
    """Run ``python -m benchmarks *argv`` inside a fresh snapshot at `dest`; None if already inside one.

    The caller returns the exit status, or carries on when None. `argv` must hold absolute paths (the snapshot is the child's current directory). The
    snapshot's description is passed on in ``$SNOWHUB_BENCH_CODE`` (JSON).
    """
    if "SNOWHUB_BENCH_CODE" in os.environ:
        return None
    shutil.rmtree(dest, ignore_errors=True)
    info = make_snapshot(dest, product)
    env = dict(os.environ, SNOWHUB_BENCH_CODE=json.dumps(info), PYTHONPATH=str(dest))
    return subprocess.run([sys.executable, "-m", "benchmarks", *argv], cwd=dest, env=env).returncode


def rerun_in_snapshot(suite: str, argv: list[str], product: str, paths: dict[str, Path]) -> int | None:
    """Run ``python -m benchmarks SUITE *argv`` again inside a fresh snapshot; None if already inside one.

    For the suites that measure ``snowhub/`` in their own process (feature-cache, export, experiment,
    profile): `paths` maps each
    path option to its value (``{"--out": ..., "--data": ...}``); they are passed on absolute, since the
    snapshot is the child's current directory. The snapshot is removed when the child ends.
    """
    if "SNOWHUB_BENCH_CODE" in os.environ:
        return None
    kept, words = [], iter(argv)
    for word in words:
        name = word.partition("=")[0]
        if name in paths:
            if "=" not in word:
                next(words, None)
            continue
        kept.append(word)
    absolute = [x for option, path in paths.items() for x in (option, str(Path(path).resolve()))]
    dest = REPO / "benchmarks" / "results" / "tmp" / f"code-{suite}-{os.getpid()}"
    try:
        return run_in_snapshot([suite, *kept, *absolute], product, dest)
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def snapshot_info() -> dict | None:
    """The description of the snapshot this process runs in (see :func:`run_in_snapshot`), or None."""
    raw = os.environ.get("SNOWHUB_BENCH_CODE")
    return json.loads(raw) if raw else None
