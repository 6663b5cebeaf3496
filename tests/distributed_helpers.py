"""What each worker of tests/test_distributed.py runs (a module, so the elastic launcher's spawned workers can
import it): the real :func:`snowhub.training.train_delta` as one rank, with a step hook that compares the
ranks' deltas after every step."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

# The training both runs use: 32 px, 2 epochs, global batch 16 (8 per rank with 2 ranks).
EPOCHS, BATCH = 2, 16


def _state(delta) -> torch.Tensor:
    """Every parameter of `delta` and every buffer of its channel pooling layers (slots, statistics), as one
    float64 vector. Not the BatchNorm running statistics: on the CPU each rank updates its own in each forward,
    and DDP broadcasts rank 0's at the next one (train_delta checks them equal after every epoch)."""
    parts = [t.detach().reshape(-1).double() for t in (*delta.parameters(), *delta.pools.buffers())]
    return torch.cat(parts)


def train_rank(hub: str, data: str, blind_dir: str) -> dict:
    """Train one rank of the launch; return what the test compares.

    ``blind_dir``: rank 1 checks this directory instead of the hub's staging directory first, so the shared
    storage check must fail (on every rank, naming rank 1); then the real check and the training run.
    """
    from snowhub import Hub, RunOptions, TrainConfig
    from snowhub.data import discover
    from snowhub.training import DistributedError, join_process_group, train_delta

    device = torch.device("cpu")
    config = TrainConfig(epochs=EPOCHS, image_size=32, batch_size=BATCH, seed=0, run=RunOptions("cpu", 0))
    split = discover(data, val_fraction=config.val_fraction, seed=config.seed)
    with Hub.open(hub, clean=False) as h:
        source = h.artifacts(device).source()
        staging = h.layout.staging_dir
        out: dict = {"max_diff": [], "selected_equal": []}
        with join_process_group(device) as group:
            rank = group.rank
            try:
                group.check_shared_directory(Path(blind_dir) if rank == 1 else staging)
                out["blind_error"] = None
            except DistributedError as exc:
                out["blind_error"] = str(exc)
            group.check_shared_directory(staging)

            def compare(step: int, delta) -> None:
                mine = _state(delta)
                every = [torch.empty_like(mine) for _ in range(group.world_size)]
                dist.all_gather(every, mine)
                out["max_diff"].append(max(float((t - every[0]).abs().max()) for t in every))
                slots = torch.cat([p.slots.double() for p in delta.pools])
                gathered = [torch.empty_like(slots) for _ in range(group.world_size)]
                dist.all_gather(gathered, slots)
                out["selected_equal"].append(all(torch.equal(g, gathered[0]) for g in gathered))

            result = train_delta(source, split, config, device, None, group, compare)
        out.update(rank=rank, world=group.world_size, losses=result.step_losses, val_top1=result.val.top1,
                   val_loss=result.val.loss, history=result.history, processes=result.processes,
                   cp_indices=result.cp_indices, staging_left=sorted(p.name for p in staging.iterdir())
                   if staging.is_dir() else [])
    return out
