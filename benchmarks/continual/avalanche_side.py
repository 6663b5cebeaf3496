"""Avalanche's strategies on a multi-head copy of the source, fed the tensors snowhub reads from its folders.

The model (:class:`MultiHeadNet`): the pretrained source (every weight trainable: fine-tuning) with its
classifier removed, and Avalanche's ``MultiHeadClassifier`` (one linear head per task, added by the strategy's
model adaptation). The backbone runs once over the whole mini-batch and only the heads are split by task:
Avalanche's default multi-task forward runs the backbone per task share of a batch, and a replay batch with a
one-image share then fails in BatchNorm (what crashed Replay at task 4 in the first trial).

Images: each task's training images as uint8 ``(3, h, w)`` tensors of the files, augmented per sample by
snowhub's own training transform (random resized crop, flips where the task allows them); test images through
snowhub's serving transform once. Avalanche's own datasets and loaders of files are not used (no downloads).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.transforms import v2

from benchmarks.backbones import Pretrained, set_module
from benchmarks.continual.sequences import TaskFolder
from snowhub.data import eval_transform, load_rgb, train_transform
from snowhub.data.layouts import discover
from snowhub.models.frozen import InputNormalizer

STRATEGIES = ("Naive", "EWC", "LwF", "SI", "Replay-200", "Replay-1000", "Cumulative", "FT-copy")
EVAL_BATCH = 200
# BatchNorm: the statistics stay the source's (its layers run in eval mode while the network trains; their scales
# and shifts train). Fine-tuned with batch statistics at 32 px (1x1 maps in the last stages, batches of 16-64),
# the network fell to 45-77 % on T-shirt against trouser (momentum 0.01 or 0.1, lr 1e-4 to 1e-2, SGD or Adam);
# with them frozen, lr 1e-3, 97-98 %.


def _avalanche():
    """Avalanche's modules, imported when a strategy runs (the ``continual`` extra)."""
    import avalanche.models as models
    import avalanche.training.supervised as supervised
    from avalanche.benchmarks.scenarios import benchmark_from_datasets
    from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
    from avalanche.benchmarks.scenarios.task_aware import with_task_labels
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset as tensor_dataset
    from avalanche.training.plugins import EvaluationPlugin

    return models, supervised, benchmark_from_datasets, with_classes_timeline, with_task_labels, tensor_dataset, \
        EvaluationPlugin


def multi_head_net(pretrained: Pretrained):
    """The source with Avalanche's multi-head classifier (``(B, 3, H, W)`` uint8, task labels → logits); its
    BatchNorm statistics frozen (see the module's note)."""
    models = _avalanche()[0]

    class MultiHeadNet(models.MultiTaskModule):
        def __init__(self):
            super().__init__()
            spec = pretrained.spec
            self.normalizer = InputNormalizer(spec.mean, spec.std)
            self.backbone = pretrained.copy()
            features = self.backbone.get_submodule(spec.head).in_features
            set_module(self.backbone, spec.head, nn.Identity())
            self.heads = models.MultiHeadClassifier(features, initial_out_features=2, masking=False)

        def train(self, mode: bool = True):
            super().train(mode)
            for module in self.backbone.modules():  # statistics frozen: see the note above multi_head_net
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
            return self

        def forward(self, x, task_labels):
            return self.heads(self.backbone(self.normalizer(x)), task_labels)

        def forward_single_task(self, x, task_label):
            return self.heads(self.backbone(self.normalizer(x)), task_label)

    return MultiHeadNet()


@dataclass
class TaskTensors:
    """One task as tensors: raw training images (uint8 ``(3, h, w)``), labels, and the test view at `size`."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    hflip: bool


def _pil_tensor(path) -> torch.Tensor:
    return v2.functional.pil_to_tensor(load_rgb(path))


def load_task(task: TaskFolder, size: int, resize_ratio: float) -> TaskTensors:
    """The images and labels of `task` as snowhub discovers them (``train/`` and ``val/``, sorted)."""
    split = discover(task.folder)
    view = eval_transform(size, resize_ratio)
    return TaskTensors(torch.stack([_pil_tensor(p) for p, _ in split.train]),
                       torch.tensor([y for _, y in split.train]),
                       torch.stack([view(load_rgb(p)) for p, _ in split.val]),
                       torch.tensor([y for _, y in split.val]), task.hflip)


def make_benchmark(tasks: Sequence[TaskTensors], size: int):
    """An Avalanche task-incremental benchmark of `tasks` (task label = position)."""
    _, _, from_datasets, with_classes, with_tasks, tensor_dataset, _ = _avalanche()
    train, test = [], []
    for t, data in enumerate(tasks):
        augment = v2.Compose([v2.ToPILImage(), train_transform(size, data.hflip)])
        train.append(tensor_dataset(data.train_x, data.train_y, targets=data.train_y, task_labels=t,
                                    transform_groups={"train": (augment, None), "eval": (augment, None)}))
        test.append(tensor_dataset(data.test_x, data.test_y, targets=data.test_y, task_labels=t))
    return with_classes(with_tasks(from_datasets(train=train, test=test)))


def make_strategy(name: str, model: nn.Module, hp: dict, epochs: int, batch: int):
    """Avalanche strategy `name` (:data:`STRATEGIES`) with SGD (momentum 0.9) at ``hp["lr"]`` and its λ/α."""
    _, supervised, *_, evaluation_plugin = _avalanche()
    common = dict(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=hp["lr"], momentum=0.9),
                  criterion=nn.CrossEntropyLoss(), train_mb_size=batch, train_epochs=epochs,
                  eval_mb_size=EVAL_BATCH, device="cpu", evaluator=evaluation_plugin(loggers=[]))
    if name in ("Naive", "FT-copy"):
        return supervised.Naive(**common)
    if name == "EWC":
        return supervised.EWC(ewc_lambda=hp["ewc_lambda"], mode="separate", **common)
    if name == "LwF":
        return supervised.LwF(alpha=hp["lwf_alpha"], temperature=hp.get("lwf_temperature", 2.0), **common)
    if name == "SI":
        return supervised.SynapticIntelligence(si_lambda=hp["si_lambda"], **common)
    if name.startswith("Replay-"):
        return supervised.Replay(mem_size=int(name.split("-")[1]), **common)
    if name == "Cumulative":
        return supervised.Cumulative(**common)
    raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")


@torch.no_grad()
def accuracy(model: nn.Module, data: TaskTensors, task: int) -> float:
    """Top-1 (%) of `model`'s head `task` on the task's test tensors, in eval mode."""
    model.eval()
    hits = 0
    for start in range(0, len(data.test_y), EVAL_BATCH):
        logits = model(data.test_x[start:start + EVAL_BATCH], task)
        hits += int((logits.argmax(1) == data.test_y[start:start + EVAL_BATCH]).sum())
    return 100.0 * hits / len(data.test_y)


def state_bytes(module: nn.Module) -> int:
    """Bytes of `module`'s parameters and buffers as stored (float32 and int64 tensors)."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def run_strategy(name: str, pretrained: Pretrained, tasks: Sequence[TaskTensors], hp: dict, epochs: int,
                 batch: int, seed: int, size: int, upto: int | None = None) -> dict:
    """Train strategy `name` over `tasks` in order (the first `upto`); after each, test every task seen.

    Returns ``{"matrix": R (rows: after task i, %), "train_seconds": [per task], "eval_seconds": [...],
    "images_per_task": [...], "bytes": {...}}``. ``FT-copy`` fine-tunes a fresh copy of the source per task
    (nothing is forgotten; each task keeps its own network).
    """
    torch.manual_seed(seed)
    bench = make_benchmark(tasks, size)
    stream = list(bench.train_stream)[:upto or len(tasks)]
    model = multi_head_net(pretrained)
    strategy = None if name == "FT-copy" else make_strategy(name, model, hp, epochs, batch)
    matrix, train_s, eval_s = [], [], []
    for i, experience in enumerate(stream):
        if name == "FT-copy":
            model = multi_head_net(pretrained)
            strategy = make_strategy(name, model, hp, epochs, batch)
            torch.manual_seed(seed + i)
        start = time.perf_counter()
        strategy.train(experience, num_workers=0)
        train_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        matrix.append([accuracy(model, tasks[j], j) if name != "FT-copy" or j == i else None for j in range(i + 1)])
        eval_s.append(time.perf_counter() - start)
    if name == "FT-copy":  # each task is served by its own network: its diagonal stays
        matrix = [[matrix[j][j] for j in range(i + 1)] for i in range(len(matrix))]
    sizes = [len(t.train_y) for t in tasks[:len(stream)]]
    trained = [sum(sizes[:i + 1]) if name == "Cumulative" else n for i, n in enumerate(sizes)]
    return {"matrix": matrix, "train_seconds": train_s, "eval_seconds": eval_s,
            "train_images": [epochs * n for n in trained], "bytes": storage(name, model, tasks[:len(stream)])}


def storage(name: str, model: nn.Module, tasks: Sequence[TaskTensors]) -> dict:
    """Bytes stored after the last task beyond the source: ``serve`` (to answer every task; a network fine-tuned
    in place replaces the source, whose own task is then lost, and adds only its heads; ``FT-copy`` adds a whole
    network per task) and ``learn`` (the strategy's state kept to go on learning); ``per_task``: their sum / T."""
    network, heads, n = state_bytes(model.backbone), state_bytes(model.heads), len(tasks)
    per_image = int(tasks[0].train_x[0].numel())  # uint8 pixels of an image as handed to the strategy
    images = sum(len(t.train_y) for t in tasks)
    serve = n * (network + heads) if name == "FT-copy" else heads
    learn = {"EWC": 2 * n * network,  # separate mode: a Fisher diagonal and the parameters after each task
             "LwF": network + heads,  # the previous model, distilled from
             "SI": 3 * network,  # the old parameters, the running path integral and the importances
             "Replay-200": min(200, images) * per_image, "Replay-1000": min(1000, images) * per_image,
             "Cumulative": images * per_image}.get(name, 0)
    return {"network": network, "heads": heads, "serve": serve, "learn": learn, "per_task": (serve + learn) / n}
