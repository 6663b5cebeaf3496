"""Channel pooling: a delta's learnable top-K subscription to one source feature map (SNOW, section 2.2,
Figure 3 and Algorithm 1 in appendix A.1).

Each of the N source channels has one learnable score m. While training, the K channels with the largest
``m + N(0, σ²)`` are selected and multiplied by their *noise-free* scores, so gradients reach exactly the
selected scores and the unselected ones stay put until noise gives them a turn. At inference the
deterministic top-K of the scores is used; :meth:`ChannelPooling.freeze` stores those indices when a task
is registered, so serving never depends on a tie-break again.

The paper leaves open which of the delta's K input positions each selected channel takes. Here a channel
keeps its position (its *slot*) for as long as it stays selected, and a newly selected channel takes the
slot of the one it replaced: the weights of the delta's next layer stay attached to the same source
channel. Ordering by channel index (one swap shifts every later channel) or by score (scores cross all
the time) moved most positions at every step and cost up to 14 points of accuracy (docs/benchmarks.md).
"""

from __future__ import annotations

import math

import torch
from torch import nn

INIT_SPREAD = 0.1


class ChannelPooling(nn.Module):
    """Select K of N source channels and scale each by its learned score.

    The selected maps are standardised with fixed per-channel statistics of the source (measured once on
    the task's training images by :meth:`calibrate`) *before* the score multiply: the source's channels
    differ in scale by orders of magnitude, and a BatchNorm *after* the multiply would cancel the score's
    gradient.

    Args:
        channels: N, channels of the source map.
        k: K, channels to keep (``1 <= K <= N``); the paper uses K = N/8.
        noise_var: σ², variance of the selection noise while training (paper: 1e-3).

    Forward:
        x: ``(B, N, H, W)`` source feature map. Returns ``(B, K, H, W)``, the selected channels, each in
        its slot (see the module docstring).
    """

    def __init__(self, channels: int, k: int, noise_var: float = 1e-3):
        super().__init__()
        if not 1 <= k <= channels:
            raise ValueError(f"K must be in [1, {channels}], got {k}")
        self.channels, self.k, self.noise_std = channels, k, math.sqrt(noise_var)
        # Scores start spread well beyond the noise σ: the initial top-K is a random but *stable* subset
        # (equal scores would reshuffle the subset every step, feeding the delta's next convolution a
        # different channel in each position); the noise then trades channels near the top-K boundary.
        self.scores = nn.Parameter(1.0 + INIT_SPREAD * torch.randn(channels))
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("inv_std", torch.ones(channels))
        self.register_buffer("indices", torch.zeros(k, dtype=torch.long))
        # Host flags, so a forward pass never waits for the GPU to answer a question about a tensor:
        # `frozen` is saved in the state dict as before (a bool tensor, see _save_to_state_dict).
        self.frozen = False
        # Training state only (not saved): the slot of each selected channel, once the first selection
        # placed them (`placed`).
        self.register_buffer("slots", torch.full((k,), -1, dtype=torch.long), persistent=False)
        self.placed = False
        # Where the selection noise comes from: None = torch's global RNG (one process); a multi-process
        # training gives every rank the same generator, reseeded from (seed, step), so all ranks select
        # the same channels (snowhub.training._distributed.PoolingNoise). Not saved.
        self.noise: torch.Generator | None = None

    def select(self) -> torch.Tensor:
        """Indices ``(K,)`` used by the next forward: noisy top-K in training, else deterministic, in slots.

        In training the placement is remembered, so a channel keeps its slot from step to step while the
        noise trades channels at the top-K boundary.
        """
        if self.frozen:
            return self.indices
        scores = self.scores.detach()
        if self.training and self.noise_std > 0:
            noise = (torch.randn_like(scores) if self.noise is None else
                     torch.randn(scores.shape, generator=self.noise, device=scores.device, dtype=scores.dtype))
            scores = scores + noise * self.noise_std
        placed = self._place(torch.topk(scores, self.k, sorted=False).indices)
        if self.training:
            self.slots.copy_(placed)
            self.placed = True
        return placed

    def _place(self, chosen: torch.Tensor) -> torch.Tensor:
        """Order the ``(K,)`` channel indices `chosen` by slot: kept channels stay, newcomers fill the gaps.

        The i-th newcomer (in `chosen`'s order) takes the i-th freed slot (in slot order). Written with
        ranks and gathers instead of boolean masks: a masked read or write has a data-dependent size, so on
        a GPU it stops the host until the device has counted the mask.
        """
        if not self.placed:
            return chosen.sort().values
        # Both hold K distinct channels: assume_unique spares isin's torch.unique, which syncs on a GPU.
        freed = ~torch.isin(self.slots, chosen, assume_unique=True)  # (K,) slots whose channel left the top-K
        kept = torch.isin(chosen, self.slots, assume_unique=True)  # (K,) False for the newcomers (one per freed slot)
        newcomers_first = chosen.index_select(0, torch.argsort(kept.to(torch.uint8), stable=True))
        freed_rank = (torch.cumsum(freed, 0) - 1).clamp_min(0)  # the r-th freed slot takes newcomer r
        return torch.where(freed, newcomers_first.index_select(0, freed_rank), self.slots)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = self.select()
        # In float32 whatever the input: under autocast the taps arrive in bfloat16 or float16, and a
        # per-channel mean rounded to 8 mantissa bits shifts every standardised map by a constant bias.
        dtype = torch.promote_types(x.dtype, torch.float32)
        scale = (self.inv_std[idx] * self.scores[idx]).to(dtype)
        shift = self.mean[idx].to(dtype)
        out = (x.index_select(1, idx).to(dtype) - shift.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1)
        return out.to(x.dtype)  # back to the autocast dtype (the next convolution runs in it anyway)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "frozen"] = torch.tensor(self.frozen)  # the format of the former buffer

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "frozen"
        if key in state_dict:
            value = state_dict[key]
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                error_msgs.append(f"{key}: expected a one-element tensor, got {value!r}")
            else:
                self.frozen = bool(value)  # once, when loading
            state_dict = {k: v for k, v in state_dict.items() if k != key}
        elif strict:
            missing_keys.append(key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    @torch.no_grad()
    def calibrate(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Set the per-channel standardisation from source statistics ``mean, std`` of shape ``(N,)``.

        A channel that hardly moves on the calibration images (a ReLU unit that is nearly always 0) would
        be scaled up enormously the first time it fires; its std is floored at a tenth of the tap's median.
        """
        floor = max(1e-3, 0.1 * float(std.median()))
        self.mean.copy_(mean)
        self.inv_std.copy_(1.0 / std.clamp_min(floor))

    @torch.no_grad()
    def freeze(self) -> torch.Tensor:
        """Fix the deterministic top-K of the trained scores for serving; returns the indices ``(K,)`` in the
        slots training left them in, so serving feeds the delta exactly what it learned on."""
        self.indices.copy_(self._place(torch.topk(self.scores, self.k, sorted=False).indices))
        self.frozen = True
        return self.indices.clone()

    def extra_repr(self) -> str:
        return f"channels={self.channels}, k={self.k}, noise_std={self.noise_std:.4g}"
