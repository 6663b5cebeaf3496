"""Channel pooling (SNOW section 2.2, Algorithm 1): noisy top-K in training, deterministic top-K at
inference, and gradients that reach exactly the selected scores."""

import torch

from snowhub.models.channel_pooling import ChannelPooling
from snowhub.models.delta import Delta, DeltaShape
from snowhub.models.sources import Tap


def _pool(n=32, k=4, noise_var=1e-3):
    torch.manual_seed(0)
    pool = ChannelPooling(n, k, noise_var)
    with torch.no_grad():
        pool.scores.copy_(torch.linspace(0, 1, n)[torch.randperm(n)])
    return pool


def test_a_channel_keeps_its_slot_while_it_stays_selected():
    pool = ChannelPooling(320, 40, noise_var=1e-3).train()  # many near-ties at the top-K boundary
    x = torch.randn(2, 320, 3, 3)
    assert pool(x).shape == (2, 40, 3, 3)
    previous, newcomers = pool.select(), 0
    for _ in range(30):
        current = pool.select()
        assert len(set(current.tolist())) == 40
        kept = torch.isin(previous, current)
        assert torch.equal(current[kept], previous[kept])  # kept channels did not move
        newcomers += int((~kept).sum())
        previous = current
    assert newcomers > 0  # the noise did trade channels, so the check above was exercised


def test_output_is_selected_maps_standardised_then_scaled_by_noise_free_scores():
    pool = _pool().eval()
    mean, std = torch.rand(32), torch.rand(32) + 0.5
    pool.calibrate(mean, std)
    x = torch.randn(3, 32, 4, 4)
    idx = torch.topk(pool.scores.detach(), 4).indices.sort().values  # untrained: slots in index order
    expected = (x[:, idx] - mean[idx].view(1, -1, 1, 1)) / std[idx].view(1, -1, 1, 1) * pool.scores[idx].view(1, -1, 1, 1)
    assert torch.allclose(pool(x), expected, atol=1e-6)


def test_gradient_reaches_only_the_selected_scores():
    pool = _pool(noise_var=0.0).train()
    out = pool(torch.randn(2, 32, 3, 3))
    out.pow(2).sum().backward()
    selected = torch.topk(pool.scores.detach(), 4).indices
    grad = pool.scores.grad
    mask = torch.zeros(32, dtype=torch.bool)
    mask[selected] = True
    assert (grad[mask] != 0).all()
    assert (grad[~mask] == 0).all()


def test_training_noise_gives_near_ties_a_turn_but_inference_is_deterministic():
    pool = ChannelPooling(16, 4, noise_var=1e-3)
    with torch.no_grad():
        pool.scores.fill_(1.0)  # equal scores: selection decided by noise alone
    pool.train()
    torch.manual_seed(1)
    picks = {tuple(pool.select().tolist()) for _ in range(20)}
    assert len(picks) > 1
    pool.eval()
    x = torch.randn(1, 16, 2, 2)
    assert torch.equal(pool(x), pool(x))
    assert len({tuple(pool.select().tolist()) for _ in range(5)}) == 1


def test_freeze_stores_the_deterministic_top_k_and_ignores_later_score_changes():
    pool = _pool()
    expected = torch.topk(pool.scores.detach(), 4).indices.sort().values  # untrained: index order
    assert torch.equal(pool.freeze(), expected)
    with torch.no_grad():
        pool.scores.mul_(-1)  # would pick the opposite channels if still live
    pool.train()
    assert torch.equal(pool.select(), expected)


def test_freeze_serves_each_channel_in_the_slot_training_left_it_in():
    pool = _pool(n=64, k=8).train()
    for _ in range(10):
        pool.select()
    trained = pool.slots.clone()
    best = torch.topk(pool.scores.detach(), 8).indices
    frozen = pool.freeze()
    assert set(frozen.tolist()) == set(best.tolist())
    kept = torch.isin(trained, best)
    assert kept.any() and torch.equal(frozen[kept], trained[kept])


def test_scores_are_trained_through_a_delta():
    """The failed public reproduction never trained its scores; here an SGD step must move them."""
    taps = (Tap("a", 16, 2, 1), Tap("b", 24, 4, 1), Tap("c", 32, 8, 1))
    delta = Delta(DeltaShape.from_ratios("inverted_residual", taps, 8, 1 / 4, 3)).train()
    before = [p.scores.detach().clone() for p in delta.pools]
    opt = torch.optim.SGD(delta.parameters(), lr=0.5)
    images = torch.randn(4, 3, 32, 32)
    features = [torch.randn(4, t.channels, 32 // t.stride, 32 // t.stride) for t in taps]
    loss = torch.nn.functional.cross_entropy(delta(images, features), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    for pool in delta.pools:
        assert pool.scores.grad is not None and pool.scores.grad.abs().sum() > 0
    opt.step()
    assert all(not torch.equal(b, p.scores.detach()) for b, p in zip(before, delta.pools))


def test_initial_scores_keep_most_channels_selected_under_training_noise():
    """Scores start spread beyond σ, so training noise trades channels at the top-K boundary only (equal
    scores would draw a new random subset at every step)."""
    torch.manual_seed(0)
    pool = ChannelPooling(320, 40, noise_var=1e-3).train()
    first = set(pool.select().tolist())
    assert sum(len(first & set(pool.select().tolist())) for _ in range(20)) / 20 >= 20
    with torch.no_grad():
        pool.scores.fill_(1.0)
    first = set(pool.select().tolist())
    assert sum(len(first & set(pool.select().tolist())) for _ in range(20)) / 20 < 10


# --- no host synchronisation, float32 arithmetic, the frozen flag on the host (issue 17) ---

import pytest  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402


def _masked_place(slots: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """The placement as first written, with boolean masks (each one a GPU→CPU synchronisation)."""
    kept = torch.isin(slots, chosen)
    placed = slots.clone()
    placed[~kept] = chosen[~torch.isin(chosen, slots)]
    return placed


def test_placement_without_masks_is_the_masked_placement():
    generator = torch.Generator().manual_seed(0)
    for trial in range(300):
        n = int(torch.randint(1, 400, (), generator=generator))  # K > 17 takes isin's sorting path
        k = int(torch.randint(1, n + 1, (), generator=generator))
        pool = ChannelPooling(n, k)
        slots = torch.randperm(n, generator=generator)[:k]
        # from "nothing changed" to "everything changed", newcomers in any order
        keep = int(torch.randint(0, k + 1, (), generator=generator))
        stay = slots[torch.randperm(k, generator=generator)[:keep]].tolist()
        others = [c for c in torch.randperm(n, generator=generator).tolist() if c not in stay]
        chosen = torch.tensor(stay + others[:k - keep])[torch.randperm(k, generator=generator)]
        pool.slots.copy_(slots)
        pool.placed = True
        assert torch.equal(pool._place(chosen), _masked_place(slots, chosen)), (trial, slots, chosen)


class _SyncOps(TorchDispatchMode):
    """Records the operators that make the host wait for the device: a scalar read (``item``, ``bool``),
    boolean-mask indexing, ``nonzero`` and ``unique`` (their output size depends on the data)."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func.overloadpacket.__name__)
        if name in ("_local_scalar_dense", "is_nonzero", "nonzero", "masked_select", "item", "_unique", "_unique2",
                    "unique_dim", "unique_consecutive"):
            self.found.append(name)
        if name == "isin" and not (args[2] if len(args) > 2 else kwargs.get("assume_unique", False)):
            self.found.append("isin without assume_unique")  # its sorting path calls unique (seen inside only)
        if name in ("index", "index_put", "index_put_"):
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(t is not None and t.dtype in (torch.bool, torch.uint8) for t in indices):
                self.found.append(f"{name} with a boolean mask")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mode", ["training, first step", "training, later steps", "eval", "frozen"])
def test_forward_never_waits_for_the_device(mode, monkeypatch):
    """On a GPU, ``bool(tensor)``, ``.item()``, boolean masks and ``unique`` each stop the host until the
    device is done; channel pooling runs about 5 times per delta forward, so it must use none of them.
    (K = 40 of 320, a real tap's size: ``torch.isin`` then takes its sorting path, which calls ``unique``
    unless told the inputs are unique already.)"""
    pool = ChannelPooling(320, 40, noise_var=1e-2).train()
    x = torch.randn(2, 320, 3, 3)
    if mode != "training, first step":
        for _ in range(3):
            pool(x)
    if mode == "eval":
        pool.eval()
    if mode == "frozen":
        pool.freeze()
        pool.eval()

    def no_host_read(self, *args):
        raise AssertionError("a tensor was read on the host inside the forward pass")

    with monkeypatch.context() as patch:
        patch.setattr(torch.Tensor, "__bool__", no_host_read)
        patch.setattr(torch.Tensor, "item", no_host_read)
        with _SyncOps() as ops:
            out = pool(x)
            if mode.startswith("training"):
                out.sum().backward()
    assert ops.found == []
    assert out.shape == (2, 40, 3, 3)


def test_standardise_and_scale_run_in_float32_under_bf16_autocast():
    """Under autocast the taps arrive in bfloat16; a mean rounded to bfloat16 would shift a channel whose
    mean is large against its spread (here 100.3 ± 0.5: bfloat16's step at 100 is 0.5, a bias of 0.4 σ)."""
    torch.manual_seed(0)
    pool = ChannelPooling(4, 4).eval()
    mean = torch.tensor([100.3, -7.1, 0.0, 1000.7])
    std = torch.tensor([0.5, 0.1, 1.0, 2.0])
    pool.calibrate(mean, std)
    with torch.no_grad():
        pool.inv_std.copy_(1.0 / std)  # no std floor: the test is about the arithmetic
        pool.scores.copy_(torch.tensor([1.03, 0.97, 1.1, 0.9]))
    x = (mean.view(1, -1, 1, 1) + std.view(1, -1, 1, 1) * torch.randn(8, 4, 5, 5)).to(torch.bfloat16)
    idx = pool.select()
    exact = ((x.double()[:, idx] - mean.double()[idx].view(1, -1, 1, 1)) / std.double()[idx].view(1, -1, 1, 1)
             * pool.scores.detach().double()[idx].view(1, -1, 1, 1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = pool(x)
    assert out.dtype == torch.bfloat16  # handed on in the autocast dtype
    error = (out.double() - exact).abs().max().item()
    assert error < 2e-2  # one bfloat16 rounding of a value of a few σ
    # what the former bfloat16 arithmetic gave: a bias of a good fraction of σ
    old = (x[:, idx] - mean[idx].to(torch.bfloat16).view(1, -1, 1, 1)) * (pool.inv_std[idx] * pool.scores[idx]).to(
        torch.bfloat16).view(1, -1, 1, 1)
    assert (old.double() - exact).abs().max().item() > 10 * error


def test_the_gradient_of_the_scores_stays_float32_under_autocast():
    pool = ChannelPooling(16, 4).train()
    x = torch.randn(2, 16, 3, 3).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pool(x).float().sum().backward()
    assert pool.scores.grad.dtype == torch.float32 and pool.scores.grad.abs().sum() > 0


def test_float32_input_is_computed_as_before():
    """No autocast (the CPU, probe logits): the same operations as the former forward, bit for bit."""
    pool = _pool().train()
    pool.calibrate(torch.rand(32), torch.rand(32) + 0.5)
    x = torch.randn(3, 32, 4, 4)
    torch.manual_seed(5)
    out = pool(x)
    idx = pool.slots.clone()
    former = (x.index_select(1, idx) - pool.mean[idx].view(1, -1, 1, 1)) * (pool.inv_std[idx] * pool.scores[idx]).view(
        1, -1, 1, 1)
    assert out.dtype == torch.float32 and torch.equal(out, former)


def test_the_frozen_flag_is_saved_and_restored_as_the_former_buffer():
    pool = _pool()
    state = pool.state_dict()
    assert state["frozen"].dtype == torch.bool and state["frozen"].shape == () and not bool(state["frozen"])
    assert "slots" not in state  # training state only
    expected = pool.freeze()
    state = pool.state_dict()
    assert list(state) == ["scores", "mean", "inv_std", "indices", "frozen"]  # the stored file's keys
    assert bool(state["frozen"])

    served = ChannelPooling(32, 4)
    served.load_state_dict(state)
    assert served.frozen is True
    with torch.no_grad():
        served.scores.mul_(-1)  # a live selection would now pick other channels
    assert torch.equal(served.eval().select(), expected)

    unfrozen = _pool()
    unfrozen.load_state_dict(ChannelPooling(32, 4).state_dict())
    assert unfrozen.frozen is False

    incomplete = {k: v for k, v in state.items() if k != "frozen"}
    with pytest.raises(RuntimeError, match="frozen"):
        ChannelPooling(32, 4).load_state_dict(incomplete)
    with pytest.raises(RuntimeError, match="Unexpected"):
        ChannelPooling(32, 4).load_state_dict(state | {"surplus": torch.zeros(1)})


def test_a_delta_file_of_an_older_snowhub_loads_frozen(tmp_path):
    """Delta files hold ``pools.<i>.frozen`` as a bool tensor (the former buffer): read it into the flag."""
    from safetensors.torch import load_file, save_file

    taps = (Tap("a", 16, 2, 1), Tap("b", 24, 4, 1), Tap("c", 32, 8, 1))
    shape = DeltaShape.from_ratios("inverted_residual", taps, 8, 1 / 4, 3)
    delta = Delta(shape).eval()
    indices = delta.freeze_channel_pooling()
    save_file({k: v.contiguous() for k, v in delta.state_dict().items()}, str(tmp_path / "d.safetensors"))
    state = load_file(str(tmp_path / "d.safetensors"))
    assert all(state[f"pools.{i}.frozen"].dtype == torch.bool for i in range(3))
    loaded = Delta(shape)
    loaded.load_state_dict(state)
    assert all(p.frozen for p in loaded.pools)
    assert {t.name: p.indices.tolist() for t, p in zip(taps, loaded.pools)} == indices
    images = torch.randn(2, 3, 16, 16)
    features = [torch.randn(2, t.channels, 16 // t.stride, 16 // t.stride) for t in taps]
    assert torch.equal(loaded.eval()(images, features), delta(images, features))
