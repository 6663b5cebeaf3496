"""One delta trained by several processes with PyTorch's DistributedDataParallel (``docs/distributed.md``).

Every process (a *rank*) was started by PyTorch's elastic launcher (``torchrun``, or ``snowhub add-task
--nproc-per-node N``, which runs the same engine) and finds its rank, the world size and the rendezvous in
its environment. :func:`join_process_group` joins them (NCCL on CUDA, gloo on the CPU); the
:class:`ProcessGroup` it yields is the training strategy (:mod:`snowhub.training.strategy`) that
:func:`snowhub.training.train_delta` runs through to train as one of them:

- the training images are sharded with a seeded :class:`~torch.utils.data.DistributedSampler`
  (``set_epoch`` every epoch); ``--batch-size`` is the **global** batch, each rank takes batch / world
  size, so the learning rate and schedule are those of one process with the same batch;
- each image's augmentation is drawn from a generator seeded by (seed, epoch, image), so a global batch is
  the same images, cropped and flipped the same way, whatever the number of processes;
- only the delta is wrapped in ``DistributedDataParallel`` (gradients averaged over the ranks; rank 0's
  buffers broadcast at every step); the source is frozen, runs under ``no_grad`` in every rank and never
  joins the gradient sync or the buffer broadcast;
- **every rank selects the same channels** (SNOW section 2.2, Algorithm 1): the channel pooling noise
  ``N(0, σ²)`` comes from one generator per rank seeded by (seed, step), identical on all ranks
  (:class:`PoolingNoise`), and the channel statistics are all-reduced before they are stored;
- BatchNorm in the delta is synchronised (``SyncBatchNorm``) on CUDA; on the CPU PyTorch has no
  SyncBatchNorm, so each rank normalises with its own per-rank batch and rank 0's running statistics are
  the ones kept (DDP broadcasts them);
- after every epoch the ranks compare a digest of their deltas and stop if they ever differ.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from snowhub.data import ImageListDataset, make_loader
from snowhub.device import available_cpus
from snowhub.errors import ConfigError, DistributedError
from snowhub.evaluation import EvalResult, evaluate_forward
from snowhub.models.channel_pooling import ChannelPooling
from snowhub.models.delta import Delta
from snowhub.models.frozen import FrozenSource
from snowhub.progress import Progress
from snowhub.training.calibration import calibrate_channel_pooling
from snowhub.training.config import TrainConfig
from snowhub.training._launch import launched
from snowhub.training.strategy import EpochLosses, Forward

# How long a rank waits in a collective for the others (the writer lock is never waited for, see Hub.add_task).
TIMEOUT = timedelta(minutes=30)


def check_processes(processes: int, device_type: str, gpus: int) -> None:
    """Refuse a number of processes per machine that cannot run: below 1, or more than the GPUs of a CUDA machine
    (one process per GPU).

    Raises:
        ConfigError: with what to pass instead.
    """
    if processes < 1:
        raise ConfigError(f"`processes` must be at least 1, got {processes}")
    if device_type == "cuda" and processes > gpus:
        raise ConfigError(f"`processes` is {processes} but this machine has {gpus} CUDA GPU(s): start at most "
                          f"{gpus} (one process per GPU), or train on the CPU with `device` cpu")


def _mix(*values: int) -> int:
    """A 63-bit seed from integers, the same on every machine and Python (no hash randomisation)."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, values)).encode()).digest()[:8], "little") >> 1


class PoolingNoise:
    """The channel pooling noise of a multi-process training: one generator on `device`, used by every
    :class:`ChannelPooling` of `delta`, reseeded from (seed, step) before each step, so that every rank draws
    the same ``N(0, σ²)`` and selects the same top-K (Algorithm 1: ``topK(w + N(0, σ²), K)``)."""

    def __init__(self, delta: Delta, seed: int, device: torch.device):
        self.seed = seed
        self.generator = torch.Generator(device=device)
        self.pools = [pool for pool in delta.pools if isinstance(pool, ChannelPooling)]
        for pool in self.pools:
            pool.noise = self.generator

    def reseed(self, step: int) -> None:
        """Seed the noise of global step `step` (0-based); host-side, no device sync."""
        self.generator.manual_seed(_mix(self.seed, step))

    def detach(self) -> None:
        """Give the pools back torch's global RNG (as a delta made in one process has)."""
        for pool in self.pools:
            pool.noise = None


class _EpochSampler(DistributedSampler):
    """:class:`DistributedSampler` that yields ``(epoch, index)``, so the dataset can seed each image's
    augmentation by its epoch even in persistent DataLoader workers (their copy of the dataset is stale)."""

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((epoch, index) for index in super().__iter__())


class _SeededAugmentation(Dataset):
    """``dataset[(epoch, i)]`` is ``dataset[i]`` with torch's CPU RNG seeded by (seed, epoch, i) during the
    transform (and restored after): an image's crop and flip do not depend on which rank or worker reads it."""

    def __init__(self, dataset: ImageListDataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_mix(self.seed, epoch, index))
            return self.dataset[index]


def _to_plain_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``SyncBatchNorm`` in `module` by the ``BatchNorm2d`` it was made from (same parameters and
    buffers), so the trained delta is the same class as one trained in one process."""
    for name, child in module.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            plain = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats, device=child.weight.device)
            plain.load_state_dict(child.state_dict())
            plain.train(child.training)
            setattr(module, name, plain)
        else:
            _to_plain_batchnorm(child)
    return module


@dataclass
class ProcessGroup:
    """This process's place in a multi-process training, once joined (:func:`join_process_group`): the
    training strategy (:class:`snowhub.training.strategy.TrainingStrategy`) of one rank.

    Attributes:
        rank, world_size: global rank and number of processes; local_rank: rank on this machine.
        device: this rank's device (``cuda:LOCAL_RANK`` or the CPU); backend: ``"nccl"`` or ``"gloo"``.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def writes(self) -> bool:
        """Rank 0: the only one that shows progress, takes the writer lock and registers the task."""
        return self.rank == 0

    @staticmethod
    def check(config: TrainConfig, cache_dir: Path | None) -> None:
        """Refuse what only one process can train with (:meth:`TrainConfig.check_single_process`)."""
        config.check_single_process()

    # -- collectives ------------------------------------------------------------------------------

    def all_reduce_sum(self, tensors: Sequence[torch.Tensor]) -> None:
        """Sum `tensors` (any shapes, one dtype) over every rank, in place, in one collective."""
        flat = torch.cat([t.reshape(-1) for t in tensors]).to(self.device)
        dist.all_reduce(flat)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def _gather(self, values: Sequence[float]) -> torch.Tensor:
        """``(world_size, len(values))`` float64: every rank's `values`."""
        mine = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        out = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(out, mine)
        return torch.stack(out).cpu()

    # -- data -------------------------------------------------------------------------------------

    def per_rank_batch(self, batch_size: int) -> int:
        """Each rank's share of the global `batch_size`. Raises ConfigError unless it divides evenly."""
        if batch_size % self.world_size:
            raise ConfigError(f"`batch_size` {batch_size} (the global batch) does not divide into {self.world_size} "
                              f"processes; use a multiple of {self.world_size}")
        return batch_size // self.world_size

    def train_loader(self, samples: Sequence[tuple[Path, int]], transform, batch_size: int, seed: int,
                     num_workers: int) -> DataLoader:
        """This rank's shard of the training images, reshuffled each epoch from `seed` (:meth:`set_epoch`),
        `batch_size` (per rank) at a time, augmentation seeded per image (:class:`_SeededAugmentation`).
        Every rank gets the same number of batches (the sampler pads the last shard)."""
        dataset = _SeededAugmentation(ImageListDataset(list(samples), transform), seed)
        sampler = _EpochSampler(dataset, self.world_size, self.rank, shuffle=True, seed=seed)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                          generator=torch.Generator().manual_seed(seed), pin_memory=self.device.type == "cuda",
                          persistent_workers=num_workers > 0, drop_last=len(sampler) > batch_size)

    def calibration_loader(self, samples: Sequence[tuple[Path, int]], transform, batch_size: int, seed: int,
                           num_workers: int) -> DataLoader:
        """A shuffled shard of the training images (eval transform) for :func:`calibrate_channel_pooling`."""
        dataset = ImageListDataset(list(samples), transform)
        return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                          sampler=DistributedSampler(dataset, self.world_size, self.rank, shuffle=True, seed=seed),
                          pin_memory=self.device.type == "cuda")

    def val_loader(self, samples: Sequence, transform, batch_size: int, seed: int, num_workers: int) -> DataLoader:
        """This rank's :meth:`shard` of the validation images, in order (:meth:`evaluate` sums the ranks)."""
        return make_loader(self.shard(samples), transform, batch_size, shuffle=False, seed=seed,
                           num_workers=num_workers, device=self.device)

    def calibrate(self, source: FrozenSource, delta: Delta, loader: DataLoader, device: torch.device,
                  chunk: int | None = None) -> None:
        """:func:`calibrate_channel_pooling` on this rank's share of the images, the sums all-reduced: every rank
        stores the statistics of the whole budget."""
        calibrate_channel_pooling(source, delta, loader, device, max_images=self.share(512),
                                  reduce=self.all_reduce_sum, chunk=chunk)

    def share(self, images: int) -> int:
        """This rank's part of a budget of `images` spread over the ranks."""
        return math.ceil(images / self.world_size)

    def shard(self, samples: Sequence) -> list:
        """Every world_size-th sample from this rank's (no padding: counts stay exact)."""
        return list(samples[self.rank::self.world_size])

    @staticmethod
    def set_epoch(loader: DataLoader, epoch: int) -> None:
        """Reshuffle `loader`'s shard for `epoch` (the same permutation on every rank)."""
        loader.sampler.set_epoch(epoch)

    # -- the delta --------------------------------------------------------------------------------

    def wrap(self, delta: Delta) -> DistributedDataParallel:
        """`delta` (only the delta: DDP refuses a module without trainable parameters, and the frozen source
        must never join the gradient sync) in DistributedDataParallel, its BatchNorm synchronised on CUDA.
        DDP's constructor broadcasts rank 0's parameters and buffers, so every rank starts from rank 0's."""
        if self.device.type == "cuda":
            delta = nn.SyncBatchNorm.convert_sync_batchnorm(delta)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(delta, device_ids=ids)  # buffers: rank 0's, broadcast at every forward

    @staticmethod
    def pooling_noise(delta: Delta, seed: int, device: torch.device) -> PoolingNoise:
        """The (seed, step)-seeded channel pooling noise of `delta` (:class:`PoolingNoise`)."""
        return PoolingNoise(delta, seed, device)

    @staticmethod
    def unwrap(delta: Delta) -> Delta:
        """The trained `delta` with plain BatchNorm again (the class a one-process training makes)."""
        return _to_plain_batchnorm(delta)

    def broadcast_buffers(self, delta: Delta) -> None:
        """Rank 0's BatchNorm running statistics (and every other buffer) to every rank: each rank's last
        forward updated its own (per-rank BatchNorm on the CPU), the kept delta is rank 0's."""
        for buffer in delta.buffers():
            dist.broadcast(buffer, 0)

    def verify_in_sync(self, delta: Delta, when: str) -> None:
        """Stop the training if any rank's delta (parameters, buffers, channel pooling slots) differs from rank
        0's, bit for bit.

        Raises:
            DistributedError: naming the ranks that differ.
        """
        digest = hashlib.sha256()
        for tensor in (*delta.parameters(), *delta.buffers()):
            digest.update(tensor.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy().tobytes())
        words = [float(int.from_bytes(digest.digest()[i:i + 6], "little")) for i in range(0, 24, 6)]
        table = self._gather(words)
        differ = [r for r in range(self.world_size) if not torch.equal(table[r], table[0])]
        if differ:
            raise DistributedError(f"the deltas of rank(s) {', '.join(map(str, differ))} differ from rank 0's "
                                   f"{when}; nothing was registered (this is a bug: please report it)")

    def end_epoch(self, delta: Delta, losses: EpochLosses, epoch: int) -> EpochLosses:
        """The global batches' losses of `epoch` (each step's averaged over the ranks); rank 0's BatchNorm
        statistics to every rank; then stop unless every rank holds the same delta.

        Raises:
            DistributedError: the ranks' deltas differ.
        """
        steps = self.mean_losses(losses.steps)
        images = losses.images * self.world_size
        self.broadcast_buffers(delta)
        self.verify_in_sync(delta, f"after epoch {epoch}")
        return EpochLosses(steps, sum(steps) / max(1, len(steps)) * images, images)

    def evaluate(self, forward: Forward, module: nn.Module, loader: DataLoader, device: torch.device,
                 progress: Progress) -> EvalResult:
        """:func:`snowhub.evaluation.evaluate_forward` over every rank's :meth:`shard` of the validation images,
        the counts summed: the result is that of the whole validation set, on every rank."""
        n_local = len(loader.dataset)
        local = (evaluate_forward(forward, module, loader, device, progress) if n_local
                 else EvalResult(0.0, 0.0, 0.0, 0))
        totals = self._gather([round(local.top1 * n_local / 100), round(local.top5 * n_local / 100),
                               local.loss * n_local, n_local]).sum(0)
        top1, top5, loss, n = (float(v) for v in totals)
        if n == 0:
            raise DistributedError("there are no validation images to evaluate")
        return EvalResult(100.0 * top1 / n, 100.0 * top5 / n, loss / n, int(n))

    def mean_losses(self, losses: Sequence[float]) -> list[float]:
        """Each step's loss averaged over the ranks (equal per-rank batches: the global batch's mean loss)."""
        if not losses:
            return []
        return (self._gather(losses).mean(0)).tolist()

    # -- the hub ----------------------------------------------------------------------------------

    def check_shared_directory(self, directory: Path) -> None:
        """Prove that every rank sees the same `directory` (the hub's ``staging/``): rank 0 writes a random token
        into it, every rank must read it back. With one machine this trivially holds; across machines it fails
        unless the hub is on storage every machine mounts at the same path. Rank 0 removes the token (a killed
        rank 0 leaves it for the next writer's clean-up: anything in ``staging/`` is a leftover).

        Raises:
            DistributedError: naming the ranks (and their hosts' count) that do not see it.
        """
        token = torch.zeros(16, dtype=torch.uint8)
        if self.writes:
            token = torch.frombuffer(bytearray(os.urandom(16)), dtype=torch.uint8)
        token = token.to(self.device)
        dist.broadcast(token, 0)
        nonce = bytes(token.cpu().tolist()).hex()
        path = directory / f"distributed-{nonce}.token"
        try:
            if self.writes:
                directory.mkdir(exist_ok=True)
                with open(path, "w", encoding="ascii") as fh:
                    fh.write(nonce)
                    fh.flush()
                    os.fsync(fh.fileno())
            dist.barrier()
            try:
                seen = path.read_text(encoding="ascii") == nonce
            except OSError:
                seen = False
            table = self._gather([float(seen)])
            dist.barrier()
        finally:
            if self.writes:
                path.unlink(missing_ok=True)
        blind = [r for r in range(self.world_size) if table[r, 0] != 1.0]
        if blind:
            raise DistributedError(
                f"rank(s) {', '.join(map(str, blind))} of {self.world_size} cannot see the hub directory "
                f"{directory.parent} that rank 0 writes to: put the hub on storage every machine mounts at the same "
                "path (NFS or a cluster file system) and pass that --hub on every machine")


@contextmanager
def join_process_group(device: torch.device) -> Iterator[ProcessGroup]:
    """Join the training's process group from the launcher's environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``), NCCL on CUDA and gloo on the CPU, and leave it after.

    On the CPU each rank uses its share of this machine's cores for the training and the thread count it
    had afterwards (probe logits record the thread count: ``snowhub.numerics``).

    Raises:
        ConfigError: not started by a launcher, or a CUDA rank without its own GPU.
    """
    if not launched():
        raise ConfigError("not started by torchrun: a multi-process add-task runs as `snowhub add-task "
                          "--nproc-per-node N` or `torchrun ... -m snowhub_cli add-task ...`")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device.type == "cuda":
        check_processes(local_world, "cuda", torch.cuda.device_count())
    backend = "nccl" if device.type == "cuda" else "gloo"
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(threads, available_cpus() // local_world)))
    dist.init_process_group(backend, timeout=TIMEOUT, device_id=device if device.type == "cuda" else None)
    try:
        yield ProcessGroup(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)
    finally:
        dist.destroy_process_group()
        torch.set_num_threads(threads)
