"""Tampering and bit rot: any changed byte of the source weights, a delta, a probe set or the registry's
records is caught by ``snowhub doctor`` (no model run), by ``verify-forgetting``, and by loading -- a
damaged task is never served, and the other tasks keep working.

Edits of the registry's records run on both databases (`registry_hub`); a malformed JSON value and a corrupted
database page can only happen to SQLite's file (PostgreSQL's json columns refuse malformed values).
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3

import pytest
import torch
from typer.testing import CliRunner

from fixtures.hubkit import flip_byte, reseal_task, rewrite_source_file, rewrite_task_file, snapshot, sql
from snowhub import Hub
from snowhub.checks import check_hub
from snowhub.errors import IntegrityError
from snowhub_cli.main import app


def _bag_image(fashion_dir):
    return sorted((fashion_dir / "val" / "Bag").glob("*.png"))[0]


@pytest.fixture(scope="module")
def fashion2_answer(trained_hub, fashion_dir):
    """What the intact hub answers for task 2 ('fashion2'): a damaged task 1 must not change it by a bit."""
    with Hub.open(trained_hub) as hub:
        return hub.predict([_bag_image(fashion_dir)], tasks=["fashion2"], device="cpu")


def test_an_untouched_hub_is_healthy(trained_hub):
    before = snapshot(trained_hub)
    report = check_hub(trained_hub)
    assert report.ok and report.problems == [] and report.warnings == []
    assert report.tasks == 2 and report.files == 5
    result = CliRunner().invoke(app, ["doctor", "--hub", str(trained_hub)])
    assert result.exit_code == 0 and result.stdout.startswith(f"ok: {trained_hub}: 2 task(s), 5 file(s) checked")
    assert snapshot(trained_hub) == before  # the doctor only reads


# Offsets: in the JSON header, at the start of the tensor data, and in the middle/end of it.
_OFFSETS = [9, 200, -5000, -1]
_FILES = {"delta": "tasks/0001-fashion.delta.safetensors", "probe": "tasks/0001-fashion.probe.safetensors"}


@pytest.mark.parametrize("offset", _OFFSETS)
@pytest.mark.parametrize("kind", ["delta", "probe"])
def test_one_flipped_bit_in_a_task_file(hub_copy, fashion_dir, fashion2_answer, kind, offset):
    flip_byte(hub_copy / _FILES[kind], offset)
    report = check_hub(hub_copy)
    assert [p.split(": ", 1)[0] for p in report.problems] == ["task 1 'fashion'"], report.problems
    assert f"{kind} file" in report.problems[0] and "does not match its recorded sha256" in report.problems[0]
    with Hub.open(hub_copy) as hub:
        row = hub.registry.get_task("fashion")
        with pytest.raises(IntegrityError, match="does not match its recorded sha256"):
            artifacts = hub.artifacts(torch.device("cpu"))
            (artifacts.delta if kind == "delta" else artifacts.probe)(row)
        if kind == "delta":
            damaged = r"0001-fashion\.delta\.safetensors does not match its recorded sha256"
            with pytest.raises(IntegrityError, match=damaged):
                hub.predict([_bag_image(fashion_dir)], tasks=["fashion"], device="cpu")
            assert hub.predict([_bag_image(fashion_dir)], tasks=["fashion2"], device="cpu") == fashion2_answer


@pytest.mark.parametrize("offset", [20, 5_000_000, -1])
def test_one_flipped_bit_in_the_source_weights(hub_copy, fashion_dir, offset):
    flip_byte(hub_copy / "source" / "efficientnet_lite0.safetensors", offset)
    report = check_hub(hub_copy)
    assert len(report.problems) == 1 and report.problems[0].startswith("source: weights file")
    with Hub.open(hub_copy) as hub:
        assert [t.name for t in hub.tasks()] == ["imagenet", "fashion", "fashion2"]  # listing still works
        with pytest.raises(IntegrityError):
            hub.predict([_bag_image(fashion_dir)], device="cpu")


def test_verify_forgetting_names_every_damaged_part(hub_copy):
    flip_byte(hub_copy / _FILES["probe"], -1)
    sql(hub_copy, "UPDATE task SET val_top1 = 99.9 WHERE name = 'fashion2'")
    with Hub.open(hub_copy) as hub:
        report = hub.verify_forgetting(device="cpu")
    assert not report.ok and report.source_ok
    assert [(t.name, t.status) for t in report.tasks] == [("fashion", "damaged"), ("fashion2", "damaged")]
    assert "probe.safetensors does not match" in report.tasks[0].problems[0]
    assert "registry record of task 'fashion2' cannot be trusted" in report.tasks[1].problems[0]
    result = CliRunner().invoke(app, ["verify-forgetting", "--hub", str(hub_copy), "--device", "cpu"])
    assert result.exit_code == 2 and "Traceback" not in result.stderr


# -- the registry's own records ---------------------------------------------------------------------------

_RECORD_EDITS = {
    "val_top1": "UPDATE task SET val_top1 = val_top1 + 0.01 WHERE seq = 1",
    "probe_top1": "UPDATE task SET probe_top1 = probe_top1 - 1 WHERE seq = 1",
    "metrics": "UPDATE task SET metrics = replace(metrics, '\"epoch\": 1', '\"epoch\": 2') WHERE seq = 1",
    "class_names": "UPDATE task SET class_names = '[\"Sandal\", \"Bag\", \"Trouser\"]' WHERE seq = 1",
    "cp_indices": "UPDATE task SET cp_indices = replace(cp_indices, '[', '[0, ') WHERE seq = 1",
    "hyperparams": "UPDATE task SET hyperparams = replace(hyperparams, '\"lr\": 0.1', '\"lr\": 0.2') WHERE seq = 1",
    "weights_file_sha256": "UPDATE task SET weights_file_sha256 = 'ab' || substr(weights_file_sha256, 3) WHERE seq = 1",
    "created_at": "UPDATE task SET created_at = '2001-01-01 00:00:00.000000' WHERE seq = 1",
    "seal removed": "UPDATE task SET record_sha256 = NULL WHERE seq = 1",
    "seal forged": "UPDATE task SET record_sha256 = (SELECT record_sha256 FROM task WHERE seq = 2) WHERE seq = 1",
}


@pytest.mark.parametrize("field", list(_RECORD_EDITS))
def test_an_edited_task_record(registry_hub, fashion_dir, fashion2_answer, field):
    registry_hub.execute(_RECORD_EDITS[field])
    report = check_hub(registry_hub.path, registry_hub.url)
    assert report.problems and all(p.startswith("task 1 'fashion'") for p in report.problems), report.problems
    assert any("record" in p for p in report.problems)
    with registry_hub.open() as hub:
        with pytest.raises(IntegrityError, match="registry record of task 'fashion' cannot be trusted"):
            hub.predict([_bag_image(fashion_dir)], tasks=["fashion"], device="cpu")
        assert hub.predict([_bag_image(fashion_dir)], tasks=["fashion2"], device="cpu") == fashion2_answer
        listed = {t.name: t.record_problem for t in hub.tasks()}
    assert "cannot be trusted" in listed["fashion"] and listed["fashion2"] is None
    shown = CliRunner().invoke(app, ["list", *registry_hub.cli_args])
    assert shown.exit_code == 0 and "fashion (!)" in shown.stdout
    assert "warning: the registry record of task 'fashion' cannot be trusted" in shown.stderr


@pytest.mark.parametrize("edit", [
    "UPDATE source SET head_classes = '[\"cat\", \"dog\"]'",
    "UPDATE source SET weights_file_sha256 = 'ab' || substr(weights_file_sha256, 3)",
    "UPDATE source SET taps = '[]'",
])
def test_an_edited_source_record(registry_hub, fashion_dir, edit):
    registry_hub.execute(edit)
    report = check_hub(registry_hub.path, registry_hub.url)
    assert report.problems and report.problems[0] == \
        "source: the record was changed after it was written (its record_sha256 does not match)"
    untrusted = ("the registry record of the source model cannot be trusted: the record was changed after it was "
                 f"written (its record_sha256 does not match); it is not used until you restore {registry_hub.where} "
                 "from a backup (see `snowhub doctor`)")
    with registry_hub.open() as hub:
        with pytest.raises(IntegrityError, match=f"^{re.escape(untrusted)}$"):
            hub.predict([_bag_image(fashion_dir)], tasks=["fashion"], device="cpu")
        report = hub.verify_forgetting(device="cpu")
    assert not report.ok and not report.source_ok and report.source_problems == [untrusted]


def test_a_registry_path_leading_out_of_the_hub_is_never_followed(registry_hub, tmp_path):
    secret = tmp_path / "secret.safetensors"
    shutil.copy(registry_hub.path / _FILES["delta"], secret)
    registry_hub.execute("UPDATE task SET weights_file = '../secret.safetensors' WHERE seq = 1")
    problems = check_hub(registry_hub.path, registry_hub.url).problems
    assert "task 1 'fashion': the registry records a delta file outside the hub ('../secret.safetensors')" in problems
    with registry_hub.open() as hub, pytest.raises(IntegrityError):
        hub.artifacts(torch.device("cpu")).delta(hub.registry.get_task("fashion"))
    assert (registry_hub.path / _FILES["delta"]).exists() and secret.exists()  # nothing deleted either side


def test_a_deleted_record_in_the_middle_is_a_gap(registry_hub):
    registry_hub.execute("DELETE FROM task WHERE seq = 1")
    problems = check_hub(registry_hub.path, registry_hub.url).problems
    assert "task 2 'fashion2': numbered 2 but task 1 is missing (a registry record was deleted)" in problems
    assert any(p.startswith("tasks/0001-fashion.delta.safetensors: a file no registry record") for p in problems)
    with registry_hub.open():
        pass
    assert (registry_hub.path / _FILES["delta"]).exists()  # kept: it may be the only copy of the task


def test_a_malformed_record_is_one_line_everywhere(hub_copy):
    sql(hub_copy, "UPDATE task SET class_names = '[\"Bag\", ' WHERE seq = 2")
    problems = check_hub(hub_copy).problems
    assert problems and all(p.startswith("task 2 'fashion2'") for p in problems)
    for command in (["list"], ["verify-forgetting", "--device", "cpu"], ["show", "fashion2"]):
        result = CliRunner().invoke(app, [*command, "--hub", str(hub_copy)])
        assert result.exit_code == 1 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.strip().startswith("error: ") and "malformed record" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_corrupted_database_page(hub_copy):
    db = hub_copy / "hub.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as raw:
        root = raw.execute("SELECT rootpage FROM sqlite_master WHERE name = 'task'").fetchone()[0]
        size = raw.execute("PRAGMA page_size").fetchone()[0]
    raw.close()
    data = bytearray(db.read_bytes())
    data[(root - 1) * size:root * size] = b"\x5a" * size  # rot the task table's root page entirely
    db.write_bytes(bytes(data))
    unreadable = f"{db} is not a readable snowhub registry (database disk image is malformed); restore it from a backup"
    assert check_hub(hub_copy).problems == [f"registry: {unreadable}"]
    listed = CliRunner().invoke(app, ["list", "--hub", str(hub_copy)])
    assert (listed.exit_code, listed.stdout, listed.stderr) == (1, "", f"error: {unreadable}\n")
    doctor = CliRunner().invoke(app, ["doctor", "--hub", str(hub_copy)])
    assert (doctor.exit_code, doctor.stderr) == (2, f"error: registry: {unreadable}\n")
    assert doctor.stdout == f"FAILED: 1 problem(s): {hub_copy}: 0 task(s), 0 file(s) checked\n"


# -- tampering that passes every hash and seal: the doctor's checks behind them ------------------------------
#
# Each edit below rewrites a file or a record and then recomputes the file's sha256 and the row's seal, the way
# someone with write access and this code could; only the doctor's deeper checks can catch it.


def _raw_task(hub, seq: int) -> dict:
    db = sqlite3.connect(f"file:{hub / 'hub.db'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return dict(db.execute("SELECT * FROM task WHERE seq = ?", (seq,)).fetchone())
    finally:
        db.close()


def _doctor_finds_only(hub, problem: str) -> None:
    """`problem` is the one thing ``check_hub`` and ``snowhub doctor`` report (every hash and seal matched)."""
    report = check_hub(hub)
    assert report.problems == [problem] and report.files == 5
    result = CliRunner().invoke(app, ["doctor", "--hub", str(hub)])
    assert (result.exit_code, result.stderr) == (2, f"error: {problem}\n")
    assert result.stdout == f"FAILED: 1 problem(s): {hub}: 2 task(s), 5 file(s) checked\n"


def _next_index(indices, channels: int) -> int:
    return next(c for c in range(channels) if c not in indices.tolist())


@pytest.mark.parametrize("where", ["delta file", "registry"])
def test_resealed_channel_pooling_indices_that_disagree(hub_copy, where):
    """The delta subscribes to other source channels than the registry says (either side edited)."""
    if where == "delta file":
        def edit(tensors):
            indices = tensors["pools.0.indices"]
            indices[0] = _next_index(indices, 16)  # _blocks.0 has 16 channels
            return tensors
        rewrite_task_file(hub_copy, 1, "delta", edit)
    else:
        cp = json.loads(_raw_task(hub_copy, 1)["cp_indices"])
        cp["_blocks.0"][0] = next(c for c in range(16) if c not in cp["_blocks.0"])
        reseal_task(hub_copy, 1, cp_indices=cp)
    _doctor_finds_only(hub_copy, "task 1 'fashion': the delta's channel pooling indices differ from the registry")


def test_a_resealed_delta_that_does_not_fit_its_record(hub_copy):
    def edit(tensors):
        del tensors["classifier.bias"]
        return tensors

    rewrite_task_file(hub_copy, 1, "delta", edit)
    problems = check_hub(hub_copy).problems
    assert len(problems) == 1, problems
    assert problems[0].startswith("task 1 'fashion': the delta file does not fit its record: ")
    assert 'Missing key(s) in state_dict: "classifier.bias"' in problems[0]


def test_resealed_probe_logits_that_differ_from_the_registry(hub_copy):
    def edit(tensors):
        tensors["logits"][0, 0] += 0.25
        return tensors

    rewrite_task_file(hub_copy, 1, "probe", edit)
    _doctor_finds_only(hub_copy, "task 1 'fashion': the probe set's recorded logits differ from the registry")


def test_a_resealed_probe_set_with_an_image_removed(hub_copy):
    """The attacker also records the digest of the shortened logits: only the size check is left."""
    from snowhub.probe import logits_digest

    recorded = _raw_task(hub_copy, 1)["probe_size"]

    def edit(tensors):
        return {name: tensor[1:].contiguous() for name, tensor in tensors.items()}

    kept = rewrite_task_file(hub_copy, 1, "probe", edit)
    reseal_task(hub_copy, 1, probe_logits_sha256=logits_digest(kept["logits"]))
    _doctor_finds_only(hub_copy, f"task 1 'fashion': the probe set holds {recorded - 1} images, "
                                 f"the registry says {recorded}")


def test_a_resealed_probe_label_that_changes_the_accuracy(hub_copy):
    """One correctly answered probe image relabelled: logits and size still match, the accuracy does not."""
    recorded = _raw_task(hub_copy, 1)["probe_top1"]

    def edit(tensors):
        logits, labels = tensors["logits"], tensors["labels"]
        right = int((logits.argmax(1) == labels).nonzero()[0])
        labels[right] = (labels[right] + 1) % logits.shape[1]
        return tensors

    kept = rewrite_task_file(hub_copy, 1, "probe", edit)
    top1 = 100.0 * int((kept["logits"].argmax(1) == kept["labels"]).sum()) / len(kept["labels"])
    assert top1 < recorded
    _doctor_finds_only(hub_copy, f"task 1 'fashion': the probe set's accuracy is {top1:.2f} %, "
                                 f"the registry says {recorded}")


def test_resealed_source_weights_with_other_tensors(hub_copy):
    def edit(tensors):
        name = next(n for n in sorted(tensors) if n.endswith("running_mean"))
        tensors[name][0] += 0.5
        return tensors

    rewrite_source_file(hub_copy, edit)
    _doctor_finds_only(hub_copy, "source: the weights' tensors differ from those recorded at init")


def test_doctor_json_lists_each_problem(hub_copy):
    flip_byte(hub_copy / _FILES["delta"], -1)
    flip_byte(hub_copy / "tasks" / "0002-fashion2.probe.safetensors", -1)
    sql(hub_copy, "UPDATE task SET val_top5 = 0 WHERE seq = 2")
    result = CliRunner().invoke(app, ["doctor", "--hub", str(hub_copy), "--json"])
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert data["ok"] is False and len(data["problems"]) == 3 and data["tasks"] == 2


def test_seals_cover_every_column():
    """A new column is sealed automatically; the seal format is frozen (migration 0005 has a copy)."""
    from snowhub.store.integrity import RECORD_COLUMN, record_digest

    row = {"seq": 1, "name": "a", "val_top1": 1.0, "blob": b"\x00", "none": None, RECORD_COLUMN: "x"}
    digest = record_digest("task", row)
    assert digest == record_digest("task", {**row, RECORD_COLUMN: "other"})
    for key, value in [("val_top1", 1.0000000000000002), ("val_top1", 1), ("name", "b"), ("none", 0),
                       ("blob", b"\x01"), ("new_column", None)]:
        assert record_digest("task", {**row, key: value}) != digest, key
    assert record_digest("source", row) != digest
    assert digest == "dd25d83a060bdb9e7fab2c7bad268a1971c5a9a1d1ebd7b4812d1e154b2d3649"  # snowhub.record.v2


def test_seals_hash_typed_values_the_same_on_every_database():
    """SQLite returns JSON as text and timestamps as naive-UTC text; PostgreSQL returns objects: one seal."""
    from datetime import datetime, timedelta, timezone

    from snowhub.store.integrity import record_digest

    when = datetime(2026, 12, 1, 20, 56, 12, 345678, tzinfo=timezone.utc)
    as_sqlite = {"seq": 1, "hyperparams": '{"lr": 0.1, "epochs": 3}', "lineage": "null",
                 "created_at": "2026-12-01 20:56:12.345678"}
    as_postgres = {"seq": 1, "hyperparams": {"epochs": 3, "lr": 0.1}, "lineage": None,
                   "created_at": when.astimezone(timezone(timedelta(hours=2)))}  # a server in another zone
    assert record_digest("task", as_sqlite) == record_digest("task", as_postgres)
    for key, value in [("hyperparams", {"epochs": 3, "lr": 0.2}), ("hyperparams", {"epochs": 3.0, "lr": 0.1}),
                       ("lineage", {"seq": 1}), ("created_at", when + timedelta(microseconds=1))]:
        assert record_digest("task", {**as_postgres, key: value}) != record_digest("task", as_sqlite), key
    with pytest.raises(ValueError):
        record_digest("task", {**as_sqlite, "hyperparams": '{"lr": '})


def test_sqlite_sees_what_the_seal_covers(trained_hub):
    with sqlite3.connect(f"file:{trained_hub / 'hub.db'}?mode=ro", uri=True) as db:
        seals = [s for (s,) in db.execute("SELECT record_sha256 FROM task UNION ALL SELECT record_sha256 FROM source")]
    assert len(seals) == 3 and all(len(s) == 64 for s in seals)


def test_a_source_changed_in_memory_is_caught_before_any_task_is_re_evaluated(hub_copy):
    """The weights file can be intact while the loaded source drifted (e.g. a BatchNorm left in train mode
    by a buggy caller updates its running statistics): verify-forgetting compares the two tensor by tensor."""
    with Hub.open(hub_copy) as hub:
        assert hub.verify_forgetting(device="cpu").ok
        served = hub.artifacts(torch.device("cpu")).source()  # the source this process serves from
        name, stats = next((k, v) for k, v in served.backbone_state_dict().items() if "running_mean" in k)
        stats.add_(0.5)  # the live tensor, as an update by BatchNorm would change it
        report = hub.verify_forgetting(device="cpu")
    assert not report.ok and report.source_problems == ["the source model in memory differs from its weights file"]
