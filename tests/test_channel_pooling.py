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
