"""The Hub API: append-only registration, unique names, atomic failure, serving and forgetting checks.

Tests that write take `registry_hub`: they run on the hub's own SQLite registry and on a PostgreSQL copy of it.
"""

import pytest
import torch

from conftest import FAST
from fixtures.hubkit import cached_training
from snowhub import Hub, TrainConfig
from snowhub.errors import DataError, HubExistsError, HubNotFoundError, InvalidNameError, TaskExistsError
import snowhub.hub as hub_module
import snowhub.registration as registration
from snowhub.data import eval_transform, load_rgb
from snowhub.models.network import task_logits


def _hub_files(path):
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file() and p.name != "hub.lock"
                  and not p.name.startswith("hub.db"))


def test_tasks_are_listed_in_append_order_after_the_source_task(trained_hub):
    with Hub.open(trained_hub) as hub:
        tasks = hub.tasks()
    assert [(t.seq, t.name) for t in tasks] == [(0, "imagenet"), (1, "fashion"), (2, "fashion2")]
    assert tasks[0].details["kind"] == "source" and len(tasks[0].classes) == 1000
    assert tasks[1].classes == ["Bag", "Sandal", "Trouser"]
    assert tasks[1].k_total == sum(round(n / 8) for n in (16, 24, 40, 112)) + 320  # the classifier reads all 320


def test_a_taken_name_is_refused_before_any_training(registry_hub, fashion_dir, monkeypatch):
    monkeypatch.setattr(hub_module, "train_delta", lambda *a, **k: pytest.fail("trained anyway"))
    with registry_hub.open() as hub:
        with pytest.raises(TaskExistsError, match="already exists"):
            hub.add_task("fashion", fashion_dir, TrainConfig(**FAST))
        with pytest.raises(TaskExistsError):
            hub.add_task("imagenet", fashion_dir, TrainConfig(**FAST))


@pytest.mark.parametrize("name", ["", "a/b", "..", "x" * 65, "-lead", "sp ace"])
def test_bad_task_names_are_refused(hub_copy, fashion_dir, name):
    with Hub.open(hub_copy) as hub, pytest.raises(InvalidNameError):
        hub.add_task(name, fashion_dir, TrainConfig(**FAST))


@pytest.mark.parametrize("failure", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failed_or_interrupted_add_task_leaves_the_hub_exactly_as_it_was(registry_hub, fashion_dir, monkeypatch,
                                                                         failure):
    before = registry_hub.snapshot()
    real_save = registration.atomic_save_safetensors
    calls = []

    def save_then_fail(tensors, path, metadata=None):
        calls.append(path)
        digest = real_save(tensors, path, metadata)
        if len(calls) == 2:  # both files written, registry row not yet committed
            raise failure
        return digest

    monkeypatch.setattr(registration, "atomic_save_safetensors", save_then_fail)
    monkeypatch.setattr(hub_module, "train_delta", cached_training)  # the writes are tested, not the training
    with registry_hub.open() as hub:
        with pytest.raises(type(failure)):
            hub.add_task("third", fashion_dir, TrainConfig(**FAST))
        assert [t.name for t in hub.tasks()] == ["imagenet", "fashion", "fashion2"]
    assert len(calls) == 2
    assert registry_hub.snapshot() == before


def test_unreadable_image_is_a_data_error_naming_the_file_and_changes_nothing(registry_hub, fashion_dir, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(fashion_dir, data)
    bad = data / "train" / "Bag" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    before = registry_hub.snapshot()
    with registry_hub.open() as hub:
        with pytest.raises(DataError, match="broken.png"):
            hub.add_task("broken", data, TrainConfig(**FAST))
        assert len(hub.tasks()) == 3
    assert registry_hub.snapshot() == before


def test_init_twice_and_open_missing_are_clear_errors(hub_copy, tmp_path):
    before = _hub_files(hub_copy)
    with pytest.raises(HubExistsError):
        Hub.init(hub_copy, "efficientnet_lite0")
    assert _hub_files(hub_copy) == before
    with pytest.raises(HubNotFoundError, match="snowhub init"):
        Hub.open(tmp_path / "nothing")


def test_predict_answers_every_task_from_one_call(trained_hub, fashion_dir):
    image = sorted((fashion_dir / "val" / "Trouser").glob("*.png"))[0]
    with Hub.open(trained_hub) as hub:
        [result] = hub.predict([image], top=2, device="cpu")
        assert list(result.tasks) == ["imagenet", "fashion", "fashion2"]
        assert len(result.tasks["imagenet"]) == 2 and len(result.tasks["fashion"]) == 2
        assert result.tasks["fashion"][0][0] == "Trouser"
        probs = [p for _, p in result.tasks["fashion"]]
        assert probs == sorted(probs, reverse=True) and probs[0] > 100 / 3  # the best of 3 classes
        [three] = hub.predict([image], tasks=["fashion"], top=3, device="cpu")  # all 3 classes: they sum to 100 %
        assert sum(p for _, p in three.tasks["fashion"]) == pytest.approx(100.0, abs=1e-3)
        assert three.tasks["fashion"][:2] == result.tasks["fashion"]
        [only] = hub.predict([image], tasks=["fashion2"], top=1, device="cpu")
        assert list(only.tasks) == ["fashion2"]


def test_predicting_tasks_together_gives_each_task_its_own_model_s_answers(trained_hub, fashion_dir):
    """Every task, served together, answers as it does alone and as its own source + delta do on the image
    (the path the probe set was recorded with): an answer given to the wrong task or image fails here."""
    images = [sorted((fashion_dir / "val" / c).glob("*.png"))[1] for c in ("Bag", "Trouser", "Sandal")]
    with Hub.open(trained_hub) as hub:
        together = hub.predict(images, top=1000, device="cpu")
        artifacts = hub.artifacts(torch.device("cpu"))
        source = artifacts.source()
        for name in ("fashion", "fashion2"):
            alone = hub.predict(images, tasks=[name], top=1000, device="cpu")
            assert [r.tasks[name] for r in together] == [r.tasks[name] for r in alone], name
            record = hub.registry.get_task(name)
            batch = torch.stack([eval_transform(record.image_size, source.spec.eval_resize_ratio)(load_rgb(i))
                                 for i in images])
            with torch.no_grad():
                expected = task_logits(source, artifacts.delta(record), batch).softmax(dim=1) * 100
            for row, answer in zip(expected, together):
                served = {label: p for label, p in answer.tasks[name]}
                assert list(served) == [record.class_names[c] for c in row.argsort(descending=True)], name
                assert [served[c] for c in record.class_names] == pytest.approx(row.tolist(), abs=1e-3), name
        alone = hub.predict(images, tasks=["imagenet"], top=5, device="cpu")
        assert [r.tasks["imagenet"] for r in alone] == [r.tasks["imagenet"][:5] for r in together]
    assert [r.tasks["fashion"][0][0] for r in together] == ["Bag", "Trouser", "Sandal"]


def test_verify_forgetting_passes_with_zero_bwt(trained_hub):
    with Hub.open(trained_hub) as hub:
        report = hub.verify_forgetting(device="cpu")
    assert report.ok and report.bwt == 0.0
    assert all(t.bit_identical and t.max_logit_diff == 0.0 for t in report.tasks)
    assert [t.name for t in report.tasks] == ["fashion", "fashion2"]
