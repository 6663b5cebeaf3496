"""`.snowtask` bundles: `snowhub export task` from the session hub, `snowhub import` into a second hub built on
the same source (then `verify-forgetting` passes there), and every bad bundle refused in one line with the
hub unchanged: another source, truncated, edited (one byte, or re-hashed with other weights), unsafe member
paths, zip bombs, a name already taken."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load, save
from typer.testing import CliRunner

from fixtures.hubkit import snapshot
from snowhub import Hub
from snowhub.export import BundleError, bundle
from snowhub.export.bundle_import import import_task
from snowhub_cli.main import app


def _cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def exported(trained_hub, tmp_path_factory) -> Path:
    """The session hub's 'fashion' task as a bundle, written by the CLI."""
    path = tmp_path_factory.mktemp("bundles") / "fashion.snowtask"
    result = _cli("export", "task", "fashion", "--output", path, "--hub", trained_hub)
    assert result.exit_code == 0 and "fashion.snowtask" in result.output, result.output
    return path


@pytest.fixture(scope="module")
def empty_hub(tmp_path_factory) -> Path:
    """A second hub on the same source, as a user makes it: `snowhub init --source efficientnet_lite0`."""
    path = tmp_path_factory.mktemp("second") / "hub"
    assert _cli("init", "--source", "efficientnet_lite0", "--hub", path).exit_code == 0
    return path


@pytest.fixture
def second_hub(empty_hub, tmp_path) -> Path:
    target = tmp_path / "second"
    shutil.copytree(empty_hub, target)
    return target


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def _write(path: Path, members: dict[str, bytes], rehash: bool = False) -> Path:
    """A zip with `members`; `rehash` rewrites the manifest so it matches them (an edit that knows the format)."""
    if rehash:
        manifest = json.loads(members[bundle.MANIFEST])
        manifest["members"] = {n: {"size": len(b), "sha256": hashlib.sha256(b).hexdigest()}
                               for n, b in members.items() if n != bundle.MANIFEST}
        members = members | {bundle.MANIFEST: json.dumps(manifest).encode()}
    with zipfile.ZipFile(path, "w") as zf:
        for name, blob in members.items():
            zf.writestr(name, blob)
    return path


def test_bundle_holds_the_task_its_source_identity_and_a_manifest_of_every_member(exported, trained_hub):
    members = _members(exported)
    assert sorted(members) == sorted([bundle.MANIFEST, *bundle.MEMBERS])
    manifest = json.loads(members[bundle.MANIFEST])
    for name, entry in manifest["members"].items():
        assert entry == {"size": len(members[name]), "sha256": hashlib.sha256(members[name]).hexdigest()}
    task, source = json.loads(members["task.json"]), json.loads(members["source.json"])
    with Hub.open(trained_hub) as hub:
        record, src = hub.registry.get_task("fashion"), hub.source_record()
        assert hashlib.sha256(members["delta.safetensors"]).hexdigest() == record.weights_file_sha256
        assert hashlib.sha256(members["probe.safetensors"]).hexdigest() == record.probe_file_sha256
    assert task["class_names"] == record.class_names and task["cp_indices"] == record.cp_indices
    assert task["hyperparams"]["delta_shape"] == record.hyperparams["delta_shape"]
    assert task["metrics"] == record.metrics and task["seq"] == record.seq and task["val_top1"] == record.val_top1
    assert source == {"name": "efficientnet_lite0", "taps": src.taps, "weights_sha256": src.weights_file_sha256,
                      "tensors_sha256": src.tensors_sha256, "preprocessing": src.preprocessing}
    assert members["README.md"].decode().startswith("---\nlibrary_name: \"snowhub\"")


def test_import_into_a_second_hub_on_the_same_source_then_verify_forgetting(exported, second_hub, trained_hub):
    result = _cli("import", exported, "--hub", second_hub, "--allow-unsigned")  # signed bundles: test_signing.py
    assert result.exit_code == 0 and "imported task 1 'fashion'" in result.output, result.output
    taken = _cli("import", exported, "--hub", second_hub, "--allow-unsigned")
    assert taken.exit_code == 1 and "already exists" in taken.output and "(--as)" in taken.output
    renamed = _cli("import", exported, "--as", "fashion_b", "--hub", second_hub, "--json", "--allow-unsigned")
    assert renamed.exit_code == 0 and json.loads(renamed.stdout)["seq"] == 2
    check = _cli("verify-forgetting", "--hub", second_hub, "--strict", "--json")
    assert check.exit_code == 0, check.output
    report = json.loads(check.stdout)
    assert [(t["name"], t["verdict"]) for t in report["tasks"]] == [("fashion", "bit-identical"),
                                                                     ("fashion_b", "bit-identical")]
    with Hub.open(trained_hub) as origin, Hub.open(second_hub) as hub:
        original, imported = origin.registry.get_task("fashion"), hub.registry.get_task("fashion_b")
        lineage = imported.lineage
        assert (lineage["name"], lineage["seq"], lineage["hub"]) == ("fashion", original.seq, str(trained_hub))
        assert lineage["created_at"] == original.created_at.isoformat() and lineage["imported_from"] == exported.name
        assert lineage["signer"] == {"unsigned": True}
        assert (imported.class_names, imported.cp_indices, imported.val_top1) == \
            (original.class_names, original.cp_indices, original.val_top1)
        images = hub.artifacts(torch.device("cpu")).probe(imported).images
        assert torch.equal(hub.predictor("cpu").logits(images, ["fashion_b"])["fashion_b"],
                           origin.predictor("cpu").logits(images, ["fashion"])["fashion"])
    assert _cli("doctor", "--hub", second_hub).exit_code == 0


@pytest.fixture(scope="module")
def bad_bundles(exported, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """Each bad bundle and the words its refusal must contain."""
    root = tmp_path_factory.mktemp("bad")
    data, members = exported.read_bytes(), _members(exported)
    (root / "truncated.snowtask").write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    offset = data.index(members["delta.safetensors"][-4096:])  # stored, so its bytes are in the file as they are
    flipped[offset] ^= 0xFF
    (root / "flipped.snowtask").write_bytes(bytes(flipped))
    state = load(members["delta.safetensors"])
    state["classifier.bias"] = state["classifier.bias"] + 1e-3  # other weights, a manifest that matches them
    _write(root / "reweighted.snowtask", members | {"delta.safetensors": save(state)}, rehash=True)
    _write(root / "edited.snowtask", members | {"delta.safetensors": save(state)})  # the manifest left as it was
    _write(root / "dotdot.snowtask", members | {"../evil.txt": b"x"})
    _write(root / "absolute.snowtask", members | {"/tmp/evil.txt": b"x"})
    _write(root / "extra.snowtask", members | {"notes.txt": b"x"})
    # A zip bomb by its declared size: the central directory says 3 GiB for task.json.
    bomb = bytearray(_write(root / "bomb.snowtask", members).read_bytes())
    patched = 0
    for header in _central_headers(bytes(bomb)):
        if bomb[header + 46:header + 46 + 9] == b"task.json":
            struct.pack_into("<I", bomb, header + 24, 3 << 30)  # the uncompressed size field
            patched += 1
    assert patched == 1
    (root / "bomb.snowtask").write_bytes(bytes(bomb))
    (root / "notzip.snowtask").write_bytes(b"hello, not a zip\n" * 10)
    return {"truncated": (root / "truncated.snowtask", "truncated or damaged"),
            "flipped": (root / "flipped.snowtask", "damaged"),
            "edited": (root / "edited.snowtask", "delta.safetensors does not match the bundle's manifest"),
            "reweighted": (root / "reweighted.snowtask", "probe logits differ"),
            "dotdot": (root / "dotdot.snowtask", "unsafe path ('../evil.txt')"),
            "absolute": (root / "absolute.snowtask", "unsafe path ('/tmp/evil.txt')"),
            "extra": (root / "extra.snowtask", "unexpected member 'notes.txt'"),
            "bomb": (root / "bomb.snowtask", "over the limit"),
            "notzip": (root / "notzip.snowtask", "truncated or damaged"),
            "badname": (exported, "invalid task name")}


def _central_headers(data: bytes) -> list[int]:
    out, at = [], data.find(b"PK\x01\x02")
    while at != -1:
        out.append(at)
        at = data.find(b"PK\x01\x02", at + 4)
    return out


@pytest.mark.parametrize("kind", ["truncated", "flipped", "edited", "reweighted", "dotdot", "absolute", "extra", "bomb",
                                  "notzip", "badname"])
def test_a_bad_bundle_is_refused_in_one_line_and_the_hub_is_unchanged(bad_bundles, second_hub, kind):
    path, words = bad_bundles[kind]
    before = snapshot(second_hub)
    extra = ["--as", "no spaces allowed"] if kind == "badname" else []
    result = _cli("import", path, *extra, "--hub", second_hub, "--allow-unsigned")
    assert result.exit_code == 1 and words in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert snapshot(second_hub) == before


def test_a_bundle_from_another_source_is_refused_naming_both_hashes(exported, tmp_path):
    hub_path = tmp_path / "mobile"
    assert _cli("init", "--source", "mobilenet_v2", "--hub", hub_path).exit_code == 0
    before = snapshot(hub_path)
    result = _cli("import", exported, "--hub", hub_path, "--allow-unsigned")
    theirs = json.loads(_members(exported)["source.json"])["weights_sha256"]
    with Hub.open(hub_path) as hub:
        ours = hub.source_record().weights_file_sha256
    assert result.exit_code == 1 and theirs in result.output and ours in result.output, result.output
    assert snapshot(hub_path) == before


def test_a_real_zip_bomb_is_refused_before_it_is_unpacked(exported, second_hub, tmp_path):
    """64 MiB of zeros deflate to ~64 kB: refused by its declared size against a 16 MiB limit."""
    bomb = tmp_path / "zeros.snowtask"
    members = _members(exported)
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, blob in members.items():
            zf.writestr(name, blob + (b"\0" * (64 << 20) if name == "probe.safetensors" else b""))
    assert bomb.stat().st_size < 2 << 20
    before = snapshot(second_hub)
    with Hub.open(second_hub) as hub, pytest.raises(BundleError, match="over the limit of 16,777,216"):
        import_task(hub.artifacts(torch.device("cpu")), bomb, limit=16 << 20, allow_unsigned=True)
    assert snapshot(second_hub) == before


def test_export_task_refuses_an_existing_file_and_the_source_head(exported, trained_hub):
    again = _cli("export", "task", "fashion", "--output", exported, "--hub", trained_hub)
    assert again.exit_code == 1 and "already exists" in again.output
    head = _cli("export", "task", "imagenet", "--output", exported.with_name("x.snowtask"), "--hub", trained_hub)
    assert head.exit_code == 1 and "source's own head" in head.output
    assert not exported.with_name("x.snowtask").exists()
