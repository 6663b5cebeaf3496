"""Training learns real images, is reproducible on CPU, and validates its options."""

import dataclasses
import pytest
import torch

from conftest import FAST, pretrained_source
from snowhub import DeltaConfig, Hub
from snowhub.data import discover
from snowhub.errors import ConfigError
from snowhub.device import pick_device
from snowhub.models.staged import source_autocast_dtype
from snowhub.store import tensor_digest
from snowhub.training import TrainConfig, train_delta


@pytest.fixture(scope="module")
def source():
    return pretrained_source()


@pytest.fixture(scope="module")
def trained(source, fashion_dir):
    """One training with `FAST` on `fashion_dir`, shared by the tests below."""
    return train_delta(source, discover(fashion_dir), TrainConfig(**FAST), pick_device("cpu"))


def test_same_seed_and_data_give_the_same_weights_on_cpu(source, fashion_dir, trained, trained_hub):
    # The session hub's task 'fashion' is another training with the same seed and data (`FAST`, `fashion_dir`),
    # by `snowhub add-task` in the same process.
    with Hub.open(trained_hub) as hub:
        row = hub.registry.get_task("fashion")
        registered = hub.artifacts(torch.device("cpu")).delta(row)
    assert tensor_digest(registered.state_dict()) == tensor_digest(trained.delta.state_dict())
    assert row.cp_indices == trained.cp_indices
    other = train_delta(source, discover(fashion_dir), TrainConfig(**(FAST | {"seed": 1})), pick_device("cpu"))
    assert tensor_digest(other.delta.state_dict()) != tensor_digest(trained.delta.state_dict())


def test_low_memory_training_gives_the_same_delta_bit_for_bit(source, fashion_dir, trained):
    # --low-memory (StagedForward: taps freed once pooled, delta blocks recomputed in backward) changes how a
    # step is computed, not what it computes.
    run = dataclasses.replace(FAST["run"], low_memory=True)
    low = train_delta(source, discover(fashion_dir), TrainConfig(**(FAST | {"run": run})), pick_device("cpu"))
    assert tensor_digest(low.delta.state_dict()) == tensor_digest(trained.delta.state_dict())
    assert low.cp_indices == trained.cp_indices and low.val.top1 == trained.val.top1


def test_learns_real_fashion_mnist_classes_well_above_chance(trained):
    result = trained
    assert result.val.images == 36
    assert result.val.top1 >= 80.0  # chance is 33 %
    assert result.images_per_s > 0 and result.train_seconds > 0
    assert [h["epoch"] for h in result.history] == list(range(1, FAST["epochs"] + 1))
    assert all(len(idx) == k for idx, k in zip(result.cp_indices.values(), result.delta.shape.ks))


@pytest.mark.parametrize("field,value", [("epochs", 0), ("k_ratio", 0.0), ("k_ratio", 1.5), ("head_k_ratio", 0.0),
                                         ("width_divisor", 0.5), ("width_divisor", 100), ("lr", -1.0),
                                         ("image_size", 16), ("batch_size", 0)])
def test_out_of_range_options_are_refused(field, value):
    architecture = field in {f.name for f in dataclasses.fields(DeltaConfig)}
    config = TrainConfig(delta=DeltaConfig(**{field: value})) if architecture else TrainConfig(**{field: value})
    # The library names the parameter as Python spells it; the CLI maps it to its flag (cli/flags.py).
    with pytest.raises(ConfigError, match=f"^`{field}` must"):
        config.validate()


def test_a_bfloat16_source_trains_where_the_device_has_it_and_is_refused_where_not(source, fashion_dir, trained):
    """--source-precision bfloat16: the source's training forward in bfloat16, everything else float32."""
    cpu = pick_device("cpu")
    config = TrainConfig(**(FAST | {"source_precision": "bfloat16"}))
    if source_autocast_dtype(cpu) is None:  # a CPU without AVX-512 BF16 / AMX
        with pytest.raises(ConfigError, match="needs bfloat16 arithmetic"):
            train_delta(source, discover(fashion_dir), config, cpu)
        return
    dtypes: list[torch.dtype] = []
    first = next(m for m in source.modules() if isinstance(m, torch.nn.Conv2d))
    hook = first.register_forward_hook(lambda _m, _a, out: dtypes.append(out.dtype))
    try:
        low = train_delta(source, discover(fashion_dir), config, cpu)
    finally:
        hook.remove()
    assert torch.bfloat16 in dtypes and torch.float32 in dtypes  # training in bfloat16, validation in float32
    assert all(p.dtype == torch.float32 for p in low.delta.state_dict().values() if p.is_floating_point())
    assert low.val.top1 >= 80.0  # chance is 33 %
    assert tensor_digest(low.delta.state_dict()) != tensor_digest(trained.delta.state_dict())
