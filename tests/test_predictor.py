"""The resident predictor: models read and hashed once, re-verified when a file changes, safe across threads."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch

import snowhub.artifacts as artifacts_module
from fixtures.hubkit import flip_byte
from snowhub import Hub
from snowhub.data import eval_transform, load_rgb
from snowhub.errors import ConfigError, IntegrityError


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """Every weight file the artifacts layer reads and hashes, by name."""
    seen: list[str] = []
    real = artifacts_module.load_safetensors_verified

    def counting(path, sha256):
        seen.append(Path(path).name)
        return real(path, sha256)

    monkeypatch.setattr(artifacts_module, "load_safetensors_verified", counting)
    return seen


def _images(fashion_dir: Path, n: int = 3) -> list[Path]:
    return sorted((fashion_dir / "val" / "Bag").glob("*.png"))[:n]


def test_a_hundred_predict_calls_read_and_hash_each_file_once(trained_hub, fashion_dir, reads):
    images = _images(fashion_dir, 2)
    tasks = ["fashion", "fashion2"]  # both at 32 px: one source pass per call (the 224 px head is slower)
    with Hub.open(trained_hub) as hub:
        first = hub.predict(images, tasks, device="cpu")
        for _ in range(99):
            assert [r.to_dict() for r in hub.predict(images, tasks, device="cpu")] == [r.to_dict() for r in first]
    # The source and the two deltas, once each, for 100 calls (the probe sets are never read to serve).
    assert sorted(reads) == ["0001-fashion.delta.safetensors", "0002-fashion2.delta.safetensors",
                             "efficientnet_lite0.safetensors"]
    assert list(first[0].tasks) == tasks and first[0].tasks["fashion"][0][0] == "Bag"


def test_records_are_verified_once_and_an_edited_row_is_never_used_unchecked(hub_copy, fashion_dir):
    from fixtures.hubkit import sql

    images = _images(fashion_dir, 1)
    with Hub.open(hub_copy) as hub:
        first = hub.predict(images, ["fashion", "fashion2"], device="cpu")
        artifacts = hub.artifacts(torch.device("cpu"))
        checked = artifacts.record_checks
        assert checked == 3  # the source and both tasks
        for _ in range(20):
            hub.predict(images, ["fashion", "fashion2"], device="cpu")
        assert artifacts.record_checks == checked  # no seal re-checked, no registry row re-read
        sql(hub_copy, "UPDATE task SET class_names = '[\"Trouser\", \"Sandal\", \"Bag\"]' WHERE seq = 1")
        again = hub.predict(images, ["fashion"], device="cpu")  # the record verified before: labels unchanged
        assert again[0].tasks["fashion"] == first[0].tasks["fashion"]
        with pytest.raises(IntegrityError, match="registry record of task 'fashion' cannot be trusted"):
            hub.predict(images, device="cpu")  # every task: the edited row read afresh, checked, refused


def test_a_file_rewritten_on_disk_is_verified_again_before_it_is_served(hub_copy, fashion_dir, reads):
    images = _images(fashion_dir, 1)
    with Hub.open(hub_copy) as hub:
        hub.predict(images, tasks=["fashion"], device="cpu")
        delta = hub_copy / hub.registry.get_task("fashion").weights_file
        stat = delta.stat()
        os.utime(delta, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # same bytes, new time
        hub.predict(images, tasks=["fashion"], device="cpu")
        assert reads.count("0001-fashion.delta.safetensors") == 2  # re-read and re-hashed, then served
        flip_byte(delta, -1)  # now the bytes differ from the recorded sha256
        with pytest.raises(IntegrityError, match="0001-fashion.delta.safetensors"):
            hub.predict(images, tasks=["fashion"], device="cpu")
        assert hub.predict(images, tasks=["fashion2"], device="cpu")[0].tasks["fashion2"]  # the others still serve


def test_threads_share_one_predictor_and_get_the_answers_one_thread_gets(trained_hub, fashion_dir):
    images = sorted((fashion_dir / "val").rglob("*.png"))[:12]
    pictures = [load_rgb(p) for p in images]
    with Hub.open(trained_hub) as hub:
        predictor = hub.predictor("cpu")
        expected = [r.to_dict() for r in predictor.predict(pictures, images)]
        answers: dict[int, list] = {}

        def ask(i: int) -> None:
            mine = pictures[i:] + pictures[:i]  # each thread its own order, so mixed-up maps would show
            for _ in range(3):
                answers[i] = [r.to_dict() for r in predictor.predict(mine, images[i:] + images[:i])]

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    for i in range(4):
        assert answers[i] == expected[i:] + expected[:i]


def test_uint8_tensors_give_the_logits_behind_the_probabilities(trained_hub, fashion_dir):
    images = _images(fashion_dir, 2)
    with Hub.open(trained_hub) as hub:
        predictor = hub.predictor("cpu")
        size, classes = hub.task("fashion").image_size, hub.task("fashion").classes
        batch = torch.stack([eval_transform(size)(load_rgb(p)) for p in images])
        logits = predictor.logits(batch, ["fashion", "fashion2"])
        answers = predictor.predict([load_rgb(p) for p in images], images, ["fashion"], top=1)
        with pytest.raises(ConfigError, match="expected uint8 images"):
            predictor.logits(batch.float(), ["fashion"])
        with pytest.raises(ConfigError, match="served at another image size"):
            predictor.logits(torch.zeros(1, 3, size + 8, size + 8, dtype=torch.uint8), ["fashion"])
    assert logits["fashion"].shape == (2, 3) and logits["fashion2"].shape == (2, 3)
    probs = logits["fashion"].softmax(1)
    for row, answer in zip(probs, answers):
        label, p = answer.tasks["fashion"][0]
        assert classes[int(row.argmax())] == label
        assert abs(100.0 * float(row.max()) - p) < 1e-4
