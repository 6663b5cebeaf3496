"""add-task's steps apart: data fingerprinted when discovered and checked again before registering."""

from __future__ import annotations

import shutil

import pytest

import snowhub.hub as hub_module
from conftest import FAST
from fixtures.hubkit import cached_training, snapshot
from snowhub import Hub, TrainConfig
from snowhub.errors import DataError


def test_data_edited_while_training_is_not_registered(hub_copy, fashion_dir, tmp_path, monkeypatch):
    data = shutil.copytree(fashion_dir, tmp_path / "data")
    before = snapshot(hub_copy)

    def train_while_the_data_changes(source, split, config, device, progress=None, cache_dir=None):
        result = cached_training(source, split, config, device, progress)
        victim = next((data / "train" / "Bag").glob("*.png"))
        victim.write_bytes(victim.read_bytes() + b"appended")  # same name, new size
        return result

    monkeypatch.setattr(hub_module, "train_delta", train_while_the_data_changes)
    with Hub.open(hub_copy) as hub:
        with pytest.raises(DataError, match="changed while the task was training; nothing was registered"):
            hub.add_task("edited", data, TrainConfig(**FAST))
        assert [t.name for t in hub.tasks()] == ["imagenet", "fashion", "fashion2"]
    assert snapshot(hub_copy) == before
