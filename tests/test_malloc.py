"""The C allocator under a low-memory training (issue 27): ``snowhub add-task`` starts itself with malloc's huge
pages on, and a low-memory training then has glibc return freed blocks of 1 MiB and more to the OS."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import snowhub.malloc
from snowhub.malloc import malloc_huge_pages
from snowhub_cli.entry import _glibc_version, _kernel_thp, relaunch_environment

GLIBC = (2, 36)
HUGE = "glibc.malloc.hugetlb=1"


@pytest.mark.parametrize("argv, environ, glibc, thp, tunables", [
    (["snowhub", "add-task", "t"], {}, GLIBC, True, HUGE),
    (["snowhub", "add-task", "t"], {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, GLIBC, True,
     f"glibc.malloc.arena_max=2:{HUGE}"),
    (["snowhub", "add-task", "t"], {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, GLIBC, True, None),  # the user's
    (["snowhub", "add-task", "t"], {"SNOWHUB_MALLOC": "default"}, GLIBC, True, None),
    (["snowhub", "add-task", "t"], {}, (2, 31), True, None),  # no hugetlb tunable before glibc 2.35
    (["snowhub", "add-task", "t"], {}, None, True, None),  # not glibc
    (["snowhub", "add-task", "t"], {}, GLIBC, False, None),  # transparent huge pages off
    (["snowhub", "predict", "x.jpg"], {}, GLIBC, True, None),  # other commands start as they are
    (["snowhub"], {}, GLIBC, True, None),
])
def test_only_add_task_is_relaunched_and_only_where_huge_pages_can_be_had(argv, environ, glibc, thp, tunables):
    env = relaunch_environment(argv, environ | {"PATH": "/bin"}, glibc, thp)
    assert (None if env is None else env["GLIBC_TUNABLES"]) == tunables
    assert env is None or env["PATH"] == "/bin"  # the rest of the environment is kept
    assert env is None or malloc_huge_pages(env)


def _run(code: str, env: dict | None = None) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


needs_huge_pages = pytest.mark.skipif(not (_glibc_version() or (0, 0)) >= (2, 35) or not _kernel_thp(),
                                      reason="glibc 2.35+ and transparent huge pages are needed")


@needs_huge_pages
def test_the_console_script_restarts_add_task_once_with_huge_pages():
    code = ("import os, sys; print('GLIBC_TUNABLES=' + os.environ.get('GLIBC_TUNABLES', ''), flush=True); "
            "sys.argv = ['snowhub', 'add-task', '--help']; from snowhub_cli.entry import main; main()")
    out = _run(code, env={"PATH": "/usr/bin:/bin"})
    assert out.count("GLIBC_TUNABLES=") == 2 and f"GLIBC_TUNABLES={HUGE}\n" in out  # started, then once again
    assert "--low-memory" in out  # and then the command ran


# A process that allocates and frees 2 MiB tensors between small ones that stay (as a training step leaves its
# heap), then prints its resident set in MiB. By default glibc raises its threshold when the first mapped
# 2 MiB block is freed and serves the rest from its heap, which keeps them; with the threshold set, the freed
# blocks leave the process.
_FRAGMENT = """
import importlib.util, torch
spec = importlib.util.spec_from_file_location("malloc", MODULE)  # the module alone: the package imports a lot
malloc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(malloc)
print(malloc.return_freed_blocks() if MODE == "low" else "default")
first = torch.ones(1 << 19)  # one 2 MiB block mapped
del first  # and freed
kept, big = [], []
for _ in range(200):
    big.append(torch.ones(1 << 19))  # 2 MiB
    kept.append(torch.ones(1024))
big.clear()
print(int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20)
"""


def _fragment(mode: str, env: dict) -> list[str]:
    """Run the fragment with the threshold set (`mode` "low") or not ("default"): its two lines of output."""
    return _run(_FRAGMENT.replace("MODE", repr(mode)).replace("MODULE", repr(str(Path(snowhub.malloc.__file__)))),
                env).split("\n")


@needs_huge_pages
def test_a_low_memory_training_returns_freed_blocks_to_the_os():
    env = {"PATH": "/usr/bin:/bin", "GLIBC_TUNABLES": HUGE}
    default, low = _fragment("default", env), _fragment("low", env)
    assert low[0] == "blocks of 1 MiB and more mapped on their own, with huge pages"
    # 200 × 2 MiB were freed: kept by malloc by default, given back with the threshold
    assert int(default[1]) - int(low[1]) > 300, (default, low)
    without = _fragment("low", {"PATH": "/usr/bin:/bin"})
    assert without[0].startswith("glibc's default (no malloc huge pages")  # not set where it would cost speed
