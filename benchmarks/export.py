"""ONNX Runtime against PyTorch: images/s of the exported graph (source + 1 and + 5 task deltas, batch 1 and 32).

The graph is the product's (:class:`snowhub.export.graph.ExportNetwork`, exported and verified by
:func:`snowhub.export.onnx_file.export_graph` / ``verify_graph``) around the pretrained source, with deltas of the
product's default shape (random task weights and frozen channel pooling: they do not change the cost). Both
runtimes use the same CPU threads (torch's, or ``--threads``) and run the same uint8 batches back to back, warmed up;
each figure is the median of ``--repeats`` timed runs of ``--iterations`` forward passes.

    .venv/bin/python -m benchmarks export                       # efficientnet_lite0, 64 px, ~3 min on 2 cores
    .venv/bin/python -m benchmarks export --source mobilenet_v2 --image-size 224

Prints a Markdown table (the one in docs/export.md) and writes it with every setting to ``--out`` (default
``benchmarks/results/export-<date>-<time>/``): ``results.json`` (one row per graph and batch) and ``results.md``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import onnx
import onnxruntime as ort
import torch

from benchmarks.backbones import load_pretrained
from benchmarks.environment import describe_environment
from benchmarks.output import command_line, default_out, header, write_results
from benchmarks.snapshot import rerun_in_snapshot, snapshot_info
from snowhub.export.graph import ExportNetwork
from snowhub.export.onnx_file import export_graph, verify_graph
from snowhub.models.delta import Delta, DeltaShape
from snowhub.training import DeltaConfig

def _deltas(spec, count: int, classes: int = 10) -> dict[str, Delta]:
    torch.manual_seed(0)
    config = DeltaConfig()
    deltas = {}
    for i in range(count):
        shape = DeltaShape.from_ratios(spec.block, spec.taps, config.width_divisor, config.k_ratio, classes,
                                       config.noise_var, config.head_k_ratio)
        delta = Delta(shape).eval()
        delta.freeze_channel_pooling()
        deltas[f"task{i + 1}"] = delta
    return deltas


def _rate(run, batch: int, iterations: int, repeats: int) -> float:
    for _ in range(3):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iterations):
            run()
        times.append(time.perf_counter() - start)
    return batch * iterations / statistics.median(times)


def measure(source: str, image_size: int, tasks: list[int], batches: list[int], iterations: int,
            repeats: int) -> list[dict]:
    pretrained = load_pretrained(source)
    rows = []
    for count in tasks:
        network = ExportNetwork(pretrained.frozen_source(), _deltas(pretrained.spec, count), None)
        images = torch.randint(0, 256, (max(batches), 3, image_size, image_size), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(0))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            start = time.perf_counter()
            export_graph(network, images[:1], 18, path)
            export_s = time.perf_counter() - start
            check = verify_graph(path, network, images)
            size = path.stat().st_size
            onnx.checker.check_model(str(path))
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()  # the same threads as PyTorch
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for batch in batches:
                x = images[:batch].contiguous()
                feed = {"images": x.numpy()}
                with torch.inference_mode():
                    torch_rate = _rate(lambda: network(x), batch, iterations, repeats)
                ort_rate = _rate(lambda: session.run(None, feed), batch, iterations, repeats)
                rows.append({"tasks": count, "batch": batch, "pytorch_images_per_s": round(torch_rate, 1),
                             "onnxruntime_images_per_s": round(ort_rate, 1), "ratio": round(ort_rate / torch_rate, 2),
                             "model_bytes": size, "export_s": round(export_s, 1),
                             "max_abs_diff": check.max_abs_diff})
                print(f"source + {count} task(s), batch {batch}: PyTorch {torch_rate:.1f}, ONNX Runtime "
                      f"{ort_rate:.1f} images/s ({ort_rate / torch_rate:.2f}x)", flush=True)
    return rows


def table(rows: list[dict], source: str, image_size: int) -> str:
    lines = [f"{source}, {image_size} px, {torch.get_num_threads()} threads, torch {torch.__version__}, "
             f"onnxruntime {ort.__version__}", "",
             "| graph | batch | PyTorch images/s | ONNX Runtime images/s | ORT / PyTorch | model.onnx | max logit diff |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| source + {r['tasks']} task{'s' if r['tasks'] > 1 else ''} | {r['batch']} | "
                     f"{r['pytorch_images_per_s']:.1f} | {r['onnxruntime_images_per_s']:.1f} | {r['ratio']:.2f}x | "
                     f"{r['model_bytes'] / 1e6:.1f} MB | {r['max_abs_diff']:.2g} |")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser, suite: str = "export") -> None:
    """The ``export`` suite's options."""
    parser.add_argument("--source", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for both runtimes (default: torch's; 1 on a busy machine, where two "
                             "spinning OpenMP threads per process slow PyTorch down by orders of magnitude)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results/...)")
    parser.add_argument("--product", default="worktree",
                        help="which snowhub/ to measure: worktree (default, as on disk at the start) or a git revision")


def run(args: argparse.Namespace) -> int:
    """Measure in a frozen copy of the code (``--product``), print the table, write the results folder."""
    out = args.out or default_out("export")
    code = rerun_in_snapshot("export", args.argv, args.product, {"--out": out})
    if code is not None:
        return code
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    environment = describe_environment() | {"code": snapshot_info()}
    started = time.perf_counter()
    rows = measure(args.source, args.image_size, args.tasks, args.batches, args.iterations, args.repeats)
    wall = time.perf_counter() - started
    text = table(rows, args.source, args.image_size)
    print(text)
    command = command_line("export", args.argv)
    settings = {k: v for k, v in vars(args).items() if k not in ("argv", "out", "suite", "product")} | {"threads": torch.get_num_threads()}
    write_results(out, "export", command, rows, "\n".join(header("export", command, environment, wall)) + text,
                  settings=settings, environment=environment, wall_seconds=wall)
    print(f"wrote {out}")
    return 0
