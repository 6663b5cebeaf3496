"""The snowhub command line end to end on small real images, as a user would run it."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import FAST_ARGS
from snowhub_cli.main import app

runner = CliRunner()


def run(*args, hub: Path | None = None):
    argv = [str(a) for a in args] + (["--hub", str(hub)] if hub else [])
    return runner.invoke(app, argv, catch_exceptions=False)


def test_init_add_list_show_predict_verify(trained_hub_made, fashion_dir):
    """`snowhub init` and two `snowhub add-task` made the session hub (tests/conftest.py); the rest runs here."""
    hub = trained_hub_made["path"]
    assert "efficientnet_lite0" in trained_hub_made["init"].output
    added = json.loads(trained_hub_made["fashion"].stdout)
    assert added["seq"] == 1 and added["num_classes"] == 3 and added["val_top1"] >= 80.0
    assert trained_hub_made["fashion2"].exit_code == 0

    listed = json.loads(run("list", "--json", hub=hub).stdout)
    assert [(t["seq"], t["name"]) for t in listed["tasks"]] == [(0, "imagenet"), (1, "fashion"), (2, "fashion2")]
    table = run("list", hub=hub).stdout
    assert re.search(r"\bfashion\b", table) and re.search(r"\bfashion2\b", table) and "val top-1" in table

    shown = json.loads(run("show", "fashion", "--json", hub=hub).stdout)
    assert set(shown["cp_indices"]) == {"_blocks.0", "_blocks.2", "_blocks.4", "_blocks.10", "_blocks.15"}
    assert shown["hyperparams"]["epochs"] == 6 and shown["dataset"]["layout"] == "train/val"

    image = sorted((fashion_dir / "val" / "Sandal").glob("*.png"))[0]
    answers = json.loads(run("predict", image, "--all", "--top", "3", "--json", hub=hub).stdout)
    assert list(answers[0]["tasks"]) == ["imagenet", "fashion", "fashion2"]
    assert answers[0]["tasks"]["fashion"][0]["label"] == "Sandal"
    assert len(answers[0]["tasks"]["imagenet"]) == 3

    verified = run("verify-forgetting", "--json", "--device", "cpu", hub=hub)
    assert verified.exit_code == 0, verified.output
    report = json.loads(verified.stdout)
    assert report["ok"] and report["bwt"] == 0.0 and len(report["tasks"]) == 2


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_forgetting_fails_naming_an_altered_delta(hub_copy):
    _flip_last_byte(next((hub_copy / "tasks").glob("0002-*.delta.safetensors")))
    result = run("verify-forgetting", "--device", "cpu", hub=hub_copy)
    assert result.exit_code == 2
    assert "fashion2" in result.stderr and "sha256" in result.stderr
    assert "fashion " not in result.stderr.replace("fashion2", "")


def test_verify_forgetting_fails_when_the_source_is_altered(hub_copy):
    _flip_last_byte(next((hub_copy / "source").glob("*.safetensors")))
    result = run("verify-forgetting", "--json", "--device", "cpu", hub=hub_copy)
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert not report["source_ok"] and report["source_problems"]


def test_an_altered_delta_is_never_served(hub_copy, fashion_dir):
    _flip_last_byte(next((hub_copy / "tasks").glob("0001-*.delta.safetensors")))
    image = sorted((fashion_dir / "val" / "Bag").glob("*.png"))[0]
    result = run("predict", image, "--task", "fashion", hub=hub_copy)
    assert result.exit_code == 1
    assert result.stderr.startswith("error:") and "sha256" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args,message", [
    (["list"], "snowhub init"),
    (["show", "nope"], "no task named"),
    (["predict", "missing.png"], "missing.png"),
    (["add-task", "x", "--data", "/nonexistent/data"], "/nonexistent/data"),
    (["add-task", "x/y", "--data", "."], "invalid task name"),
    (["add-task", "x", "--data", ".", "--epochs", "0"], "--epochs"),
    (["add-task", "x", "--data", ".", "--k-ratio", "2"], "--k-ratio"),
    (["add-task", "x", "--data", ".", "--width-divisor", "0"], "--width-divisor"),
])
def test_bad_input_is_one_line_and_non_zero(hub_copy, tmp_path, args, message):
    hub = tmp_path / "absent" if args == ["list"] else hub_copy
    result = run(*args, hub=hub)
    assert result.exit_code == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_console_script_runs_outside_the_test_process(trained_hub):
    env = os.environ | {"SNOWHUB_HOME": str(trained_hub)}
    snowhub = Path(sys.executable).with_name("snowhub")
    done = subprocess.run([snowhub, "list", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [t["name"] for t in json.loads(done.stdout)["tasks"]] == ["imagenet", "fashion", "fashion2"]


def test_add_task_reads_the_cub_release_layout(hub_copy, tmp_path):
    from conftest_data import make_cub

    hub = hub_copy
    make_cub(tmp_path / "download" / "CUB_200_2011", ["Black_footed_Albatross", "Laysan_Albatross", "Rusty_Blackbird"],
             per_class=8)
    one_epoch = [*FAST_ARGS[2:], "--epochs", "1"]  # only the layout is checked here, not the learning
    result = run("add-task", "birds", "--data", tmp_path / "download", *one_epoch, "--json", hub=hub)
    assert result.exit_code == 0, result.output
    shown = json.loads(run("show", "birds", "--json", hub=hub).stdout)
    assert shown["classes"] == ["Black_footed_Albatross", "Laysan_Albatross", "Rusty_Blackbird"]
    assert shown["dataset"]["layout"] == "cub" and shown["dataset"]["val_source"] == "given"
    assert shown["dataset"]["train_images"] == 12 and shown["dataset"]["val_images"] == 12


def test_predict_on_a_hub_without_tasks_says_what_to_do(tmp_path):
    assert run("init", "--source", "mobilenet_v2", hub=tmp_path / "hub").exit_code == 0
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (40, 40), "white").save(image)
    result = run("predict", image, hub=tmp_path / "hub")
    assert result.exit_code == 1 and "add-task" in result.stderr
