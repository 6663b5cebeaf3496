"""The source never changes: parameters and BatchNorm statistics bit-identical after training a task,
BatchNorm in eval mode even when the wrapper is put in train mode."""

import torch

from conftest import FAST, pretrained_source
from snowhub import Hub, TrainConfig
from snowhub.store import tensor_digest


def test_train_mode_keeps_every_source_module_in_eval_and_without_gradients():
    source = pretrained_source()
    source.train()
    assert all(not m.training for m in source.modules())
    assert all(not p.requires_grad for p in source.parameters())


def test_source_forward_does_not_move_batchnorm_statistics():
    source = pretrained_source("mobilenet_v2")
    before = tensor_digest(source.state_dict())
    source.train()
    source(torch.randn(8, 3, 64, 64))
    assert tensor_digest(source.state_dict()) == before


def test_add_task_leaves_source_parameters_and_buffers_bit_identical(tmp_path, fashion_dir):
    with Hub.init(tmp_path / "hub", "efficientnet_lite0") as hub:
        source = hub.artifacts(torch.device("cpu")).source()
        before = {k: v.clone() for k, v in source.state_dict().items()}
        assert any("running_mean" in k for k in before)
        hub.add_task("fashion", fashion_dir, TrainConfig(**FAST))
        after = hub.artifacts(torch.device("cpu")).source().state_dict()
        assert hub.artifacts(torch.device("cpu")).source() is source
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert tensor_digest(after) == tensor_digest(before)
        report = hub.verify_forgetting(device="cpu")
        assert report.source_ok


def test_source_logits_are_real_imagenet_predictions():
    """Task 0 is served from real weights: a flat grey image is not confidently any class, a shifted
    normalisation would change the answer, and the head has 1000 outputs."""
    source = pretrained_source()
    x = source.normalizer(torch.full((1, 3, 224, 224), 128, dtype=torch.uint8))
    taps, logits = source(x)
    assert logits.shape == (1, 1000)
    assert [t.shape[1] for t in taps] == [t.channels for t in source.taps]
    assert logits.softmax(1).max() < 0.9
