"""snowhub's side of the continual suite, through its Python API as a user drives it.

One hub per seed on the same pretrained source as the Avalanche side (``Hub.init(source=...)``, the
quickstart's ``snowhub init --source efficientnet_lite0``); per task ``Hub.add_task`` on the task's folder,
then every task so far evaluated on its test images: ``Hub.evaluate`` on the task's ``val/`` folder (``snowhub
evaluate TASK --data DIR``), or ``Hub.predict`` over the decoded images with a snowhub that has no evaluate. Bytes per task: what ``add-task`` added
under the hub's ``tasks/`` folder (the delta, its probe set and metadata).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.continual.sequences import TaskFolder
from snowhub import Hub
from snowhub.data import load_rgb
from snowhub.data.layouts import discover
from snowhub.training import RunOptions, TrainConfig

EVAL_BATCH = 200


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def _test_set(task: TaskFolder) -> tuple[list, list[str]]:
    """The decoded test images of `task` and their class names, as snowhub discovers the folder."""
    split = discover(task.folder)
    return [load_rgb(p) for p, _ in split.val], [split.class_names[y] for _, y in split.val]


def _accuracy(hub: Hub, task: TaskFolder, images: list, labels: list[str]) -> float:
    if hasattr(hub, "evaluate"):  # snowhub evaluate TASK --data DIR, the user's own way
        return float(hub.evaluate(task.name, task.folder / "val", batch_size=EVAL_BATCH, device="cpu",
                                  runtime="torch", record=False).metrics.top1)
    task = task.name
    answers = hub.predict(images, tasks=[task], top=1, device="cpu", runtime="torch")
    hits = sum(a.tasks[task][0][0] == label for a, label in zip(answers, labels))
    return 100.0 * hits / len(labels)


def run_snowhub(source: str, tasks: Sequence[TaskFolder], work: Path, *, epochs: int, batch: int, size: int,
                seed: int) -> dict:
    """Add `tasks` in order to a fresh hub in `work` (removed first if there) and test every task seen after each.

    Returns the same record as :func:`benchmarks.continual.avalanche_side.run_strategy`, with ``add_task_seconds``
    (the whole ``add_task`` call) beside ``train_seconds`` (its training loop, as the registry records it).
    """
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    tests = [([], []) if hasattr(Hub, "evaluate") else _test_set(t) for t in tasks]
    matrix, train_s, add_s, eval_s, added = [], [], [], [], []
    with Hub.init(work, source) as hub:
        for i, task in enumerate(tasks):
            before = _folder_bytes(hub.layout.tasks_dir)
            config = TrainConfig(epochs=epochs, batch_size=batch, image_size=size, hflip=task.hflip, seed=seed,
                                 run=RunOptions(device="cpu", num_workers=0))
            start = time.perf_counter()
            info = hub.add_task(task.name, task.folder, config)
            add_s.append(time.perf_counter() - start)
            train_s.append(float(info.details.get("train_seconds") or add_s[-1]))
            added.append(_folder_bytes(hub.layout.tasks_dir) - before)
            start = time.perf_counter()
            matrix.append([_accuracy(hub, tasks[j], *tests[j]) for j in range(i + 1)])
            eval_s.append(time.perf_counter() - start)
    shutil.rmtree(work, ignore_errors=True)  # the hub itself is not kept: its numbers are
    sizes = [len(discover(t.folder).train) for t in tasks]
    return {"matrix": matrix, "train_seconds": train_s, "add_task_seconds": add_s, "eval_seconds": eval_s,
            "train_images": [epochs * n for n in sizes],
            "bytes": {"serve": sum(added), "learn": 0, "per_task": sum(added) / len(tasks), "added": added}}
