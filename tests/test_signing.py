"""Signed task bundles: `snowhub export task --sign`, `snowhub trust add`, and `snowhub import` accepting only
bundles signed by a key the hub trusts. The issue's attack (every class name relabelled, the manifest re-hashed)
and its variants are each refused in one line with the hub unchanged; hand-edited values are refused by the
bundle's schema before they are used."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fixtures.hubkit import snapshot, sql
from snowhub import Hub
from snowhub.export import bundle
from snowhub_cli.main import app


def _cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    """Two key pairs: the publisher's (made by `snowhub keys generate`) and a stranger's (made by OpenSSL)."""
    root = tmp_path_factory.mktemp("keys")
    made = _cli("keys", "generate", root / "publisher.pem")
    assert made.exit_code == 0 and "publisher.pem.pub" in made.output, made.output
    stranger = root / "stranger.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", stranger], check=True)
    return {"private": root / "publisher.pem", "public": root / "publisher.pem.pub", "stranger": stranger}


@pytest.fixture(scope="module")
def signed(trained_hub, keys, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("signed") / "fashion.snowtask"
    result = _cli("export", "task", "fashion", "--output", path, "--sign", keys["private"], "--hub", trained_hub)
    assert result.exit_code == 0 and "signed by ed25519:" in result.output, result.output
    return path


@pytest.fixture(scope="module")
def trusting_hub(keys, tmp_path_factory) -> Path:
    """A second hub on the same source that trusts the publisher's key."""
    path = tmp_path_factory.mktemp("trusting") / "hub"
    assert _cli("init", "--source", "efficientnet_lite0", "--hub", path).exit_code == 0
    added = _cli("trust", "add", keys["public"], "--comment", "the publisher", "--hub", path)
    assert added.exit_code == 0 and "trusted key 1: ed25519:" in added.output, added.output
    return path


@pytest.fixture
def hub(trusting_hub, tmp_path) -> Path:
    shutil.copytree(trusting_hub, tmp_path / "hub")
    return tmp_path / "hub"


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def _write(path: Path, members: dict[str, bytes], rehash: bool = True) -> Path:
    if rehash:  # an attacker who knows the format: the manifest matches the edited members
        manifest = json.loads(members[bundle.MANIFEST])
        manifest["members"] = {n: {"size": len(b), "sha256": hashlib.sha256(b).hexdigest()}
                               for n, b in members.items() if n in bundle.MEMBERS}
        members = members | {bundle.MANIFEST: json.dumps(manifest).encode()}
    with zipfile.ZipFile(path, "w") as zf:
        for name, blob in members.items():
            zf.writestr(name, blob)
    return path


def _task(members: dict[str, bytes], **changes) -> dict[str, bytes]:
    task = json.loads(members["task.json"])
    for key, value in changes.items():
        if key == "image_size":
            task["hyperparams"]["image_size"] = value
        else:
            task[key] = value
    return members | {"task.json": json.dumps(task).encode()}


def test_a_trusted_signed_bundle_imports_records_its_signer_and_verifies(signed, hub, keys):
    listed = _cli("trust", "list", "--hub", hub, "--json")
    public = json.loads(listed.stdout)[0]["public_key"]
    result = _cli("import", signed, "--hub", hub)
    assert result.exit_code == 0 and "signed by ed25519:" in result.output, result.output
    with Hub.open(hub) as h:
        signer = h.registry.get_task("fashion").lineage["signer"]
        assert signer == {"public_key": public, "fingerprint": signer["fingerprint"], "trusted": True}
        assert [k.comment for k in h.trusted_keys()] == ["the publisher"]
    check = _cli("verify-forgetting", "--hub", hub, "--strict", "--json")
    assert check.exit_code == 0 and json.loads(check.stdout)["tasks"][0]["verdict"] == "bit-identical"


def _attacks(signed: Path, root: Path) -> dict[str, tuple[Path, str]]:
    members = _members(signed)
    relabelled = _task(members, class_names=["PWNED"] * len(json.loads(members["task.json"])["class_names"]))
    unsigned = {n: b for n, b in relabelled.items() if n != bundle.SIGNATURE}
    return {
        # the attack: every class name changed, the manifest re-hashed, the signature kept
        "relabelled and re-hashed": (_write(root / "relabelled.snowtask", relabelled), "does not match its content"),
        # the same with the signature dropped
        "unsigned": (_write(root / "unsigned.snowtask", unsigned), "is not signed"),
        # signed then edited: a better accuracy written in, the manifest re-hashed, the signature kept
        "signed then edited": (_write(root / "edited.snowtask", _task(members, val_top1=99.9)),
                               "does not match its content"),
        "untrusted key": (root / "stranger.snowtask", "a key this hub does not trust"),  # written by `attacks`
    }


@pytest.fixture(scope="module")
def attacks(signed, keys, trained_hub, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    root = tmp_path_factory.mktemp("attacks")
    found = _attacks(signed, root)
    made = _cli("export", "task", "fashion", "--output", found["untrusted key"][0], "--sign", keys["stranger"],
                "--hub", trained_hub)
    assert made.exit_code == 0, made.output
    return found


@pytest.mark.parametrize("kind", ["relabelled and re-hashed", "unsigned", "signed then edited", "untrusted key"])
def test_each_attack_is_refused_in_one_line_and_the_hub_is_unchanged(attacks, hub, kind):
    path, words = attacks[kind]
    before = snapshot(hub)
    result = _cli("import", path, "--hub", hub)
    assert result.exit_code == 1 and words in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert snapshot(hub) == before


def test_allow_unsigned_admits_an_unsigned_bundle_never_a_broken_signature(attacks, hub):
    broken = _cli("import", attacks["relabelled and re-hashed"][0], "--hub", hub, "--allow-unsigned")
    assert broken.exit_code == 1 and "does not match its content" in broken.output
    stranger = _cli("import", attacks["untrusted key"][0], "--hub", hub, "--allow-unsigned")
    assert stranger.exit_code == 0 and "(not trusted)" in stranger.output, stranger.output


@pytest.mark.parametrize("field, value, words", [
    ("image_size", "abc", "task.json field hyperparams.image_size must be an integer"),
    ("val_top1", "lots", "task.json field val_top1 must be a number 0..100, not 'lots'"),
    ("class_names", [], "task.json field class_names must be a list of at least 1"),
    ("seq", -3, "task.json field seq must be an integer 1.."),
])
def test_hand_edited_values_are_refused_by_the_schema_in_one_line(signed, hub, tmp_path, field, value, words):
    path = _write(tmp_path / "edited.snowtask", _task(_members(signed), **{field: value}))
    before = snapshot(hub)
    result = _cli("import", path, "--hub", hub, "--allow-unsigned")
    assert result.exit_code == 1 and words in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and snapshot(hub) == before


def test_trust_is_a_sealed_append_only_row(hub, keys):
    again = _cli("trust", "add", keys["public"], "--hub", hub)
    assert again.exit_code == 1 and "trusted already" in again.output
    bad = _cli("trust", "add", "not-a-key", "--hub", hub)
    assert bad.exit_code == 1 and len(bad.output.strip().splitlines()) == 1
    sql(hub, "UPDATE trusted_key SET comment = 'someone else'")
    listed = _cli("trust", "list", "--hub", hub)
    assert listed.exit_code == 1 and "cannot be trusted" in listed.output, listed.output


def test_registry_copy_keeps_the_trusted_keys_so_signed_bundles_still_import(signed, hub, fresh_database):
    """`snowhub registry copy` moves the trusted keys with the tasks: on the copy, a signed bundle imports."""
    mine = json.loads(_cli("trust", "list", "--hub", hub, "--json").stdout)
    copied = _cli("registry", "copy", "--to", fresh_database, "--hub", hub, "--json")
    assert copied.exit_code == 0, copied.output
    assert json.loads(copied.stdout)["keys"] == 1
    on_copy = _cli("trust", "list", "--registry", fresh_database, "--json")
    assert json.loads(on_copy.stdout) == mine  # seq, key, fingerprint, comment and time: as they were
    result = _cli("import", signed, "--registry", fresh_database)
    assert result.exit_code == 0 and "signed by ed25519:" in result.output, result.output
