"""Training one delta on several processes (DistributedDataParallel, gloo on the CPU, 2 processes) and the
``snowhub add-task --nproc-per-node`` launcher (``docs/distributed.md``).

Real launches of PyTorch's elastic agent on real Fashion-MNIST images at 32 px: the ranks hold the same delta
after every step and select the same channels; 2 processes match 1 process over the same global batch within
the tolerances below; the CLI registers exactly one task that verifies; a worker killed mid-training fails
the run and leaves the hub as it was.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distributed_helpers import BATCH, EPOCHS, train_rank
from fixtures.hubkit import REPO, assert_one_line_error, snapshot, task_names
from snowhub import Hub
from snowhub.errors import ConfigError
from snowhub.store.lock import lock_holder
from snowhub.training import check_processes, worker_device_type
from snowhub_cli.main import app

# 2 processes against 1 over the same global batches (same images, same crops, same channel pooling noise):
# what still differs is BatchNorm (per rank on the CPU: two batches of 8 instead of one of 16) and the order of
# float sums. Measured here (efficientnet_lite0, 32 px, 2 epochs of 7 steps): the first step, taken from the
# same delta, 0.033 nats apart; each epoch's mean training loss within 0.010 nats; val top-1 equal (94.4 %).
# Later single steps drift apart (up to 0.45 nats at the loss spikes of lr 0.1 on 16 images), as any two runs
# whose batches are normalised differently do; docs/distributed.md.
FIRST_STEP_TOLERANCE = 0.1  # nats
TOP1_TOLERANCE = 8.4  # points: three validation images of 36
ARGS = ["--epochs", "1", "--image-size", "32", "--batch-size", "16", "--device", "cpu", "--workers", "0"]


@pytest.fixture(scope="module")
def empty_hub(tmp_path_factory) -> Path:
    """A hub with no task yet (init only copies the source), shared by this module; tests write to copies."""
    path = tmp_path_factory.mktemp("dist") / "hub"
    Hub.init(path, "efficientnet_lite0").close()
    return path


def _copy(hub: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(hub, tmp_path / "hub"))


def _launch(processes: int, *args: str) -> dict[int, dict]:
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes, rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", max_restarts=0, run_id=f"test-{os.getpid()}-{processes}")
    from snowhub.training._launch import _signal_handlers_kept

    with _signal_handlers_kept():  # pytest keeps its Ctrl-C and timeouts
        return elastic_launch(config, train_rank)(*args)


def _snowhub(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snowhub_cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=REPO, timeout=240)


def _one_rank_here(monkeypatch, *args: str) -> dict:
    """`train_rank` as the only rank of a world of one, in this process, with the environment a launcher gives
    its worker (cheaper than starting one)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"TORCHELASTIC_RUN_ID": "test", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                       "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    return train_rank(*args)


def test_two_ranks_hold_one_delta_after_every_step_and_match_one_process(empty_hub, fashion_dir, tmp_path,
                                                                         monkeypatch):
    blind = tmp_path / "not-the-hub"
    blind.mkdir()
    two = _launch(2, str(empty_hub), str(fashion_dir), str(blind))
    one = _one_rank_here(monkeypatch, str(empty_hub), str(fashion_dir), str(blind))
    steps = EPOCHS * (120 // BATCH)  # 120 training images, the last partial batch dropped
    for rank in (0, 1):
        run = two[rank]
        assert run["world"] == 2 and run["processes"] == 2
        # Parameters, buffers and channel pooling slots bit-identical on both ranks after every step.
        assert len(run["max_diff"]) == steps and run["max_diff"] == [0.0] * steps
        assert run["selected_equal"] == [True] * steps
        # The storage check failed on every rank, naming rank 1, and left no token behind.
        assert "rank(s) 1 of 2 cannot see the hub directory" in run["blind_error"]
        assert run["staging_left"] == []
    assert two[0]["losses"] == two[1]["losses"] and two[0]["cp_indices"] == two[1]["cp_indices"]
    assert two[0]["val_top1"] == two[1]["val_top1"]  # the sharded evaluation is summed over the ranks
    assert one["world"] == 1 and one["blind_error"] is None and len(one["losses"]) == steps
    assert abs(two[0]["losses"][0] - one["losses"][0]) <= FIRST_STEP_TOLERANCE, (two[0]["losses"], one["losses"])
    # Epoch losses are not compared for equality: the two runs see their batches in different compositions, and
    # on 120 images the trajectories drift apart chaotically (measured here: the one-process epoch-1 loss is 0.48
    # with 2 intra-op threads and 0.58 with 1; in epoch 2 one hard batch alone gave 1.61 against 3.11 nats). Both
    # must learn: every epoch's mean training loss below chance (ln 3 nats), and the same top-1 within 3 images.
    assert len(two[0]["history"]) == len(one["history"]) == EPOCHS
    histories = two[0]["history"] + one["history"]
    assert all(h["train_loss"] < math.log(3) for h in histories), histories
    assert abs(two[0]["val_top1"] - one["val_top1"]) <= TOP1_TOLERANCE, (two[0]["val_top1"], one["val_top1"])
    # Both learned: well above chance (33 %) on real images.
    assert two[0]["val_top1"] > 60 and one["val_top1"] > 60


def test_add_task_on_two_processes_registers_one_task_that_verifies(empty_hub, fashion_dir, tmp_path):
    hub = _copy(empty_hub, tmp_path)
    done = _snowhub("add-task", "shoes", "--data", str(fashion_dir), *ARGS, "--nproc-per-node", "2", "--json",
                    "--hub", str(hub))
    assert done.returncode == 0, done.stderr
    assert '"name": "shoes"' in done.stdout and "Traceback" not in done.stderr
    assert task_names(hub) == ["shoes"]
    assert sorted(p.name for p in (hub / "tasks").iterdir()) == ["0001-shoes.delta.safetensors",
                                                                  "0001-shoes.probe.safetensors"]
    with Hub.open(hub) as h:
        recorded = h.task("shoes").to_dict()["hyperparams"]
    # The workers ran the options given to the launcher (rebuilt from the parsed command line).
    assert (recorded["processes"], recorded["epochs"], recorded["image_size"], recorded["batch_size"],
            recorded["num_workers"]) == (2, 1, 32, 16, 0)
    verified = CliRunner().invoke(app, ["verify-forgetting", "--device", "cpu", "--json", "--hub", str(hub)])
    assert verified.exit_code == 0, verified.output
    report = json.loads(verified.stdout)
    # Rank 0 built the probe set with the thread count the process started with: verified in the same
    # numerics environment, so bit for bit.
    assert report["ok"] and [(t["name"], t["verdict"]) for t in report["tasks"]] == [("shoes", "bit-identical")]
    assert lock_holder(Hub.open(hub).layout) is None


def test_a_worker_killed_mid_training_leaves_the_hub_as_it_was(empty_hub, fashion_dir, tmp_path):
    hub = _copy(empty_hub, tmp_path)
    before = snapshot(hub)
    failed = _snowhub("add-task", "shoes", "--data", str(fashion_dir), *ARGS, "--nproc-per-node", "2",
                      "--hub", str(hub), env={"SNOWHUB_FAULT": "train-step:3", "SNOWHUB_FAULT_RANK": "1"})
    assert_one_line_error(failed, "worker rank 1 of 2")
    assert "killed by SIGKILL" in failed.stderr and "nothing was registered" in failed.stderr
    assert snapshot(hub) == before  # no row, no file
    assert task_names(hub) == []
    assert not (hub / "staging").exists() or list((hub / "staging").iterdir()) == []
    with Hub.open(hub) as h:
        assert lock_holder(h.layout) is None


def test_launch_errors_are_one_line_before_any_worker_starts(empty_hub, fashion_dir):
    runner = CliRunner()
    cases = [(["--batch-size", "15", "--nproc-per-node", "2"], "does not divide into 2 processes"),
             (["--nproc-per-node", "0"], "--nproc-per-node must be at least 1"),
             (["--device", "cuda:1", "--nproc-per-node", "2"], "would put every process on one GPU")]
    for extra, message in cases:
        result = runner.invoke(app, ["add-task", "x", "--data", str(fashion_dir), "--hub", str(empty_hub), *extra])
        assert_one_line_error(result, message)
    assert task_names(empty_hub) == []


def test_more_processes_than_gpus_is_refused():
    with pytest.raises(ConfigError, match="`processes` is 4 but this machine has 2 CUDA GPU"):
        check_processes(4, "cuda", 2)
    check_processes(2, "cuda", 2)
    check_processes(8, "cpu", 0)  # on the CPU the processes share the cores
    assert worker_device_type("cpu") == "cpu"


def test_the_launcher_reports_the_most_telling_failure(tmp_path):
    """Real torchelastic ProcessFailure records, read from error files as the workers write them."""
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    from snowhub.training import _launch

    def failure(rank: int, exitcode: int, message: str | None = None, kind: str | None = None) -> ProcessFailure:
        path = tmp_path / f"error-{rank}.json"
        if message is not None:
            os.environ["TORCHELASTIC_ERROR_FILE"] = str(path)
            try:
                _launch.write_worker_error(message, kind)
            finally:
                del os.environ["TORCHELASTIC_ERROR_FILE"]
        return ProcessFailure(rank, 1000 + rank, exitcode, str(path))

    lost = failure(0, 1, "Connection reset by peer", _launch.PEER)
    killed = failure(1, -9)
    assert _launch._describe({0: lost, 1: killed}, 2) == (
        "worker rank 1 of 2 (pid 1001) was killed by SIGKILL; the run failed as a whole and nothing was registered")
    unreadable = failure(2, 1, "cannot read /data/x.png: not an image", _launch.USER)
    stopped = failure(3, -15)  # the agent stops the others with SIGTERM
    assert _launch._describe({3: stopped, 0: lost, 2: unreadable}, 4) == "cannot read /data/x.png: not an image"
    bug = failure(1, 1, "ValueError: a bug", _launch.CRASH)
    assert _launch._describe({0: stopped, 1: bug}, 2).startswith("worker rank 1 of 2 failed: ValueError: a bug;")
