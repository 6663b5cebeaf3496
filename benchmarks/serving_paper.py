"""``serving-http --geometry paper``: the runtimes at the paper's serving geometry (section 3.2, Table 4).

ResNet-50 with random weights at 224 px, in one process: images/s of the source alone and of the source +
1, 5 and 20 tasks, at batch 1 and 32, for each runtime (``--runtime torch,onnxruntime``) side by side in one
run, through the product's own seam (``Hub.predictor(...).logits``: uint8 images in, every task's logits out,
as the server's batcher calls it; decoding and resizing left out). Each figure is the best of interleaved
rounds (``--rounds``: every configuration once per round, for ``--min-seconds`` at batch 1, after a warm-up
call; at batch 32 one call each), compared with the source alone on the same runtime and with the FLOP-count ideal (the source-alone
speed × source FLOPs ÷ (source + N deltas) FLOPs; ``torch.utils.flop_counter``: convolutions and matrix
products).

The hub: one task trained for one step on a few Fashion-MNIST images at 224 px, exported as a bundle and
imported under 19 more names. Every task is then a separate artifact (its own delta file, its own ONNX
Runtime session) with the same cost as a trained one; accuracy does not change what a forward pass costs.

The source alone on ONNX Runtime is the runtime's own source graph (``export_source_graph``, the same
session options), run without any delta.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.environment import describe_environment
from benchmarks.output import command_line, default_out, header, write_results
from benchmarks.serving import forward_flops

REPO = Path(__file__).resolve().parent.parent
TASK_COUNTS = (1, 5, 20)
BATCHES = (1, 32)
SIZE = 224


def build_paper_hub(root: Path, tasks: int = max(TASK_COUNTS)) -> Path:
    """ResNet-50 (random weights) + `tasks` tasks at 224 px: one trained for one step, the rest imported
    from its bundle under new names (each one its own artifact)."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import write_fashion

    from snowhub import Hub, RunOptions, TrainConfig

    hub_path = root / "hub"
    data = write_fashion(root / "data", "train", 6, {0: "T-shirt_top", 1: "Trouser", 7: "Sneaker"})
    with Hub.init(hub_path, "resnet50", weights="random") as hub:
        hub.add_task("task1", data, TrainConfig(epochs=1, image_size=SIZE, batch_size=16, seed=0,
                                                run=RunOptions(device="cpu", num_workers=0)))
        bundle = hub.export_task("task1", root / "task1.snowtask").path
        for i in range(2, tasks + 1):
            hub.import_task(bundle, f"task{i}", allow_unsigned=True)
    return hub_path


def _rate(call, images: torch.Tensor, min_seconds: float) -> float:
    """images/s of `call(images)` over at least `min_seconds` and one call."""
    n, start = 0, time.perf_counter()
    while n < 1 or time.perf_counter() - start < min_seconds:
        call(images)
        n += 1
    return n * len(images) / (time.perf_counter() - start)


def _interleaved(calls: dict[int, object], images: torch.Tensor, min_seconds: float, rounds: int,
                 warm_up: bool = True) -> dict[int, float]:
    """The best images/s of each of `calls` over `rounds` rounds, each round measuring every call once in turn
    (after one warm-up call each, if `warm_up`): on a shared machine the load changes within a run, and the
    best of interleaved rounds compares the calls under the least of it."""
    for call in calls.values() if warm_up else ():
        call(images)
    best = dict.fromkeys(calls, 0.0)
    for _ in range(rounds):
        for key, call in calls.items():
            best[key] = max(best[key], _rate(call, images, min_seconds))
    return best


def _source_alone(runtime: str, predictor, threads: int, work: Path):
    """A callable running only the source pass of `runtime` on uint8 images."""
    from snowhub.models.network import MultiTaskNetwork

    source = predictor.artifacts.source()
    if runtime == "torch":
        network = MultiTaskNetwork(source, {}, None)
        return torch.no_grad()(network)
    import numpy as np

    import onnxruntime as ort

    path = _cached_source_graph(predictor) or work / f"source-{SIZE}.onnx"
    if not path.is_file():
        from snowhub.export.artifact_graphs import export_source_graph

        export_source_graph(source, SIZE, False, path)
    options = ort.SessionOptions()  # as the runtime's own sessions (snowhub.serving.runtime_onnx)
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda images: session.run(None, {"images": np.ascontiguousarray(images.numpy())})


def _cached_source_graph(predictor) -> Path | None:
    """The runtime's own source graph at 224 px without the head, from the hub's graph cache (its manifest
    names it and the file's sha256 matches), or None."""
    import hashlib
    import json

    from snowhub.export.graph_cache import CACHE_DIR

    for manifest in sorted((predictor.artifacts.registry.layout.root / CACHE_DIR).glob("*.json")):
        found = json.loads(manifest.read_text())
        built = found.get("built_from", {})
        graph = manifest.with_suffix(".onnx")
        if (built.get("graph"), built.get("image_size"), built.get("head")) == ("source", SIZE, False) and \
                graph.is_file() and hashlib.sha256(graph.read_bytes()).hexdigest() == found.get("sha256"):
            return graph
    return None


def measure_paper(hub: Path, runtimes: list[str], min_seconds: float, rounds: int, work: Path,
                  task_counts: tuple[int, ...] = TASK_COUNTS) -> tuple[list[dict], dict]:
    """One row per runtime, batch and task count (0 = the source alone); and the FLOPs per image."""
    from snowhub import Hub
    from snowhub.device import available_cpus

    threads = max(1, available_cpus() - 1)  # as `snowhub serve` runs its forward passes
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    images = {b: torch.randint(0, 256, (b, 3, SIZE, SIZE), dtype=torch.uint8) for b in BATCHES}
    rows, flops = [], {}
    with Hub.open(hub) as h:
        names = [t.name for t in h.tasks()]
        reference = h.predictor("cpu", "torch")
        flops[0] = forward_flops(_source_alone("torch", reference, threads, work), images[1])
        for n in task_counts:
            flops[n] = forward_flops(reference.runtime.network(reference.tasks(names[:n])), images[1])
        for runtime in runtimes:
            predictor = h.predictor("cpu", runtime)
            predictor.prepare(names[:max(task_counts)])  # ONNX Runtime: graphs built (or read) and checked
            calls = {0: _source_alone(runtime, predictor, threads, work)} | {
                n: (lambda x, k=n: predictor.logits(x, names[:k])) for n in task_counts}
            for batch in BATCHES:
                # batch 32: one call per configuration, warmed up by the batch-1 rounds (a call takes minutes
                # on a loaded 2-core machine)
                best = (_interleaved(calls, images[batch], min_seconds, rounds) if batch == 1 else
                        _interleaved(calls, images[batch], 0.0, 1, warm_up=False))
                for n, rate in best.items():
                    ideal = best[0] * flops[0] / flops[n]
                    rows.append({"runtime": runtime, "batch": batch, "tasks": n, "images_per_s": rate,
                                 "vs_source": rate / best[0], "vs_ideal": rate / ideal, "ideal_images_per_s": ideal})
                print(f"  {runtime} batch {batch:2d}: source alone {best[0]:6.2f} images/s; " + ", ".join(
                    f"+{r['tasks']} tasks {r['images_per_s']:.2f} ({r['vs_source']:.2f}x, {r['vs_ideal']:.2f}x ideal)"
                    for r in rows[-len(task_counts):]), flush=True)
    return rows, {"source": flops[0], **{f"source_plus_{n}": flops[n] for n in task_counts}}


def markdown_paper(rows: list[dict], flops: dict) -> list[str]:
    """The table: images/s, ÷ the source alone and ÷ the FLOP-count ideal, per runtime and batch."""
    lines = ["| runtime | batch | tasks | images/s | ÷ source alone | ÷ FLOP-count ideal |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['runtime']} | {r['batch']} | {'source alone' if r['tasks'] == 0 else '+ ' + str(r['tasks'])} | "
              f"{r['images_per_s']:.2f} | {r['vs_source']:.2f}× | {r['vs_ideal']:.2f}× |" for r in rows]
    return lines + ["", "GFLOPs per image: " + ", ".join(f"{k} {v / 1e9:.2f}" for k, v in flops.items()) + "."]


def plot_paper(path: Path, rows: list[dict]) -> None:
    """images/s against the number of tasks, one line per runtime and batch, with the FLOP-count ideal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for (runtime, batch), colour in zip([(r, b) for r in dict.fromkeys(x["runtime"] for x in rows) for b in BATCHES],
                                        ("tab:blue", "tab:cyan", "tab:red", "tab:orange")):
        mine = [r for r in rows if r["runtime"] == runtime and r["batch"] == batch]
        ax.plot([r["tasks"] for r in mine], [r["images_per_s"] for r in mine], "o-", color=colour,
                label=f"{runtime}, batch {batch}")
        ax.plot([r["tasks"] for r in mine], [r.get("ideal_images_per_s", r["images_per_s"]) for r in mine], ":",
                color=colour, label=f"{runtime}, batch {batch}: FLOP-count ideal")
    ax.set(xlabel="added tasks (0 = the source alone)", ylabel="images/s", xticks=sorted({r["tasks"] for r in rows}),
           title="ResNet-50 (random weights), 224 px, in process")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_paper(args: argparse.Namespace) -> int:
    """Build or open the paper-geometry hub, measure each runtime, write the results folder."""
    out = args.out or default_out("serving-http-paper")
    out.mkdir(parents=True, exist_ok=True)
    environment, started = describe_environment(), time.perf_counter()
    hub = args.hub or build_paper_hub(out / "work")
    runtimes = [r.strip() for r in args.runtime.split(",") if r.strip()]
    with tempfile.TemporaryDirectory() as work:
        counts = tuple(int(n) for n in args.paper_tasks.split(","))
        rows, flops = measure_paper(hub, runtimes, args.min_seconds, args.rounds, Path(work), counts)
    wall, command = time.perf_counter() - started, command_line("serving-http", args.argv)
    summary = {f"{r['runtime']}_batch_{r['batch']}_source_plus_{r['tasks']}_vs_source": r["vs_source"]
               for r in rows if r["tasks"]}
    text = header("serving-http", command, environment, wall) + markdown_paper(rows, flops)
    settings = {"geometry": "paper", "source": "resnet50 (random weights)", "image_size": SIZE,
                "batches": list(BATCHES), "tasks": list(counts), "runtimes": runtimes,
                "min_seconds": args.min_seconds, "rounds": args.rounds}
    write_results(out, "serving-http", command, rows, "\n".join(text), settings=settings, environment=environment,
                  summary=summary | {"flops_per_image": flops}, wall_seconds=wall)
    plot_paper(out / "serving_paper.png", rows)
    print(f"results in {out}")
    return 0
