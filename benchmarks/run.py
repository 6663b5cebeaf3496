"""The ``methods``, ``paper-cpu`` and ``serving`` suites: ``python -m benchmarks methods --config {smoke,cpu,...}``.

Each job (one method on one dataset, or the serving measurements) runs in a fresh worker process, one at
a time, so its timings and peak memory are its own; every worker runs a copy of the code taken when the
run starts (``benchmarks.snapshot``), so later edits to the working tree cannot mix in. ``paper-cpu`` is
this suite with ``--config paper-cpu``; ``serving`` plans only the serving job. Results land in ``--out``
(default ``benchmarks/results/<config>-<date>-<time>/``): ``results.md``, ``results.json`` and the
figures; worker logs in ``benchmarks/results/tmp/``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from benchmarks.configs import METHODS, BenchConfig, DatasetSpec, Job, get_config, plan
from benchmarks.environment import describe_environment
from benchmarks.output import command_line, default_out
from benchmarks.snapshot import make_snapshot

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_DATA = RESULTS / "tmp" / "data"


DEFAULT_CONFIG = {"methods": "cpu", "paper-cpu": "paper-cpu", "serving": "cpu"}


def add_arguments(p: argparse.ArgumentParser, suite: str = "methods") -> None:
    """The options of the ``methods`` suite (and of ``paper-cpu`` and ``serving``, which change defaults)."""
    default = DEFAULT_CONFIG.get(suite, "cpu")
    p.add_argument("--config", default=default, help=f"smoke, cpu, cpu-long, gpu or paper-cpu (default: {default})")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="folder of the datasets; the offline ones are prepared there if missing")
    p.add_argument("--out", type=Path, help="the run's folder (default benchmarks/results/<config>-<date>-<time>)")
    p.add_argument("--dataset", action="append", default=[], metavar="NAME=PATH[:noflip]",
                   help="benchmark this dataset instead of the configuration's (repeatable)")
    p.add_argument("--methods", help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--epochs", type=int, help="override the configuration's epochs")
    p.add_argument("--seed", type=int, help="override the configuration's seed (data order, init, noise)")
    p.add_argument("--device", help="auto, cpu or cuda[:N] (default: the configuration's)")
    p.add_argument("--no-variants", action="store_true", help="skip the SNOW variants (subscription, K, width)")
    p.add_argument("--no-serving", action="store_true", help="skip the serving measurements")
    p.add_argument("--weights", choices=("pretrained", "random"),
                   help="source weights: pretrained, or random (speed and memory only; paper-cpu's default)")
    p.add_argument("--source", help="the source instead of the configuration's: a built-in name or timm:<arch> / "
                   "torchvision:<arch> (docs/sources.md); FE is left out of serving for a discovered source")
    p.add_argument("--product", default="worktree",
                   help="which snowhub/ to measure: worktree (default, as on disk at the start) or a git revision")


def configure(args: argparse.Namespace) -> BenchConfig:
    config = get_config(args.config)
    changes: dict = {}
    if args.dataset:
        datasets = []
        for item in args.dataset:
            name, _, rest = item.partition("=")
            path, _, flag = rest.partition(":")
            if not name or not path:
                raise SystemExit(f"--dataset {item!r}: expected NAME=PATH[:noflip]")
            datasets.append(DatasetSpec(name, str(Path(path).resolve()), hflip=flag != "noflip"))
        changes |= {"datasets": tuple(datasets), "ablation_datasets": (datasets[0].name,)}
    if args.methods:
        methods = tuple(m.strip().upper() for m in args.methods.split(","))
        if unknown := [m for m in methods if m not in METHODS]:
            raise SystemExit(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
        changes["methods"] = methods
    if args.epochs:
        changes["epochs"] = args.epochs
    if args.seed is not None:
        changes["seed"] = args.seed
    if args.device:
        changes["device"] = args.device
    if args.weights:
        changes["weights"] = args.weights
    if args.no_variants:
        changes["variants"] = ()
    if getattr(args, "source", None):
        changes |= _source_changes(config, args.source)
    return config.replace(**changes)


def _source_changes(config: BenchConfig, source: str) -> dict:
    """The configuration's changes for `source` (checked here, so a bad name stops the run before any job).
    FE's serving split (``benchmarks.backbones.suffix_after_tap``) exists for the built-in sources only, so a
    discovered source is served without FE (FE still trains in the speed and train jobs)."""
    from snowhub.errors import SnowhubError
    from snowhub.models.sources import get_spec

    try:
        get_spec(source)
    except SnowhubError as error:
        raise SystemExit(f"--source {source}: {error}") from None
    changes: dict = {"source": source}
    if ":" in source:
        changes |= {"serve_methods": tuple(m for m in config.serve_methods if m != "FE"),
                    "serve_table_methods": tuple(m for m in config.serve_table_methods if m != "FE")}
    return changes


def prepare_offline_data(config: BenchConfig, data: Path, console: Console) -> None:
    """Write Fashion-MNIST and MNIST-5k with ``examples/prepare_data.py`` if a relative dataset is missing."""
    if all(Path(d.path).is_absolute() or (data / d.path).is_dir() for d in config.datasets):
        return
    console.print(f"preparing the offline datasets in {data} …")
    subprocess.run([sys.executable, str(REPO / "examples" / "prepare_data.py"), str(data)], check=True)


class JobRunner:
    """Runs jobs in worker processes and draws their progress."""

    def __init__(self, config: BenchConfig, data: Path, work: Path, code: Path, console: Console):
        self.config, self.data, self.work, self.code, self.console = config, data, work, code, console
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                            console=console)

    def _env(self) -> dict:
        env = dict(os.environ, PYTHONPATH=str(self.code) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        if self.config.threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.config.threads)
        return env

    def run(self, job: Job) -> dict:
        """Run `job`; return its result, or ``{"job": ..., "error": message}`` if the worker failed."""
        spec = self.work / f"{job.key}.job.json"
        result_path, log_path = self.work / f"{job.key}.result.json", self.work / f"{job.key}.log"
        spec.write_text(json.dumps({"job": job.to_dict(), "config": self.config.to_dict(),
                                    "data": str(self.data), "result": str(result_path)}))
        phase = None
        with open(log_path, "w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "benchmarks.worker", str(spec)], cwd=self.code,
                                    env=self._env(), stdout=subprocess.PIPE, stderr=log, text=True)
            try:
                for line in proc.stdout:
                    if not line.startswith("@@progress "):
                        log.write(line)
                        continue
                    phase = self._draw(job, json.loads(line[len("@@progress "):]), phase)
                code = proc.wait()
            finally:
                if proc.poll() is None:  # the runner is being stopped: take the worker down with it
                    proc.terminate()
                    proc.wait()
        if phase is not None:
            self.bar.remove_task(phase)
        if code != 0 or not result_path.is_file():
            tail = log_path.read_text().strip().splitlines()[-1:] or ["(no output)"]
            return {"job": job.to_dict(), "error": f"worker exited with status {code}: {tail[0]}",
                    "log": str(log_path)}
        return json.loads(result_path.read_text())

    def _draw(self, job: Job, event: dict, phase):
        kind = event["event"]
        if kind == "start":
            if phase is not None:
                self.bar.remove_task(phase)
            return self.bar.add_task(f"  {job.label}: {event['description']}", total=event["total"], info="")
        if kind == "advance" and phase is not None:
            info = "  ".join(f"{k} {v}" for k, v in event["info"].items())
            self.bar.update(phase, advance=event["steps"], info=info)
        elif kind == "finish":
            if phase is not None:
                self.bar.remove_task(phase)
            if event.get("message"):
                self.console.print(f"  {job.label}: {event['message']}", highlight=False)
            return None
        return phase


def summary_line(result: dict) -> str:
    """One line per finished job."""
    label = result["job"]["label"]
    if "error" in result:
        return f"[red]✗ {label}: {result['error']}[/red] (log: {result.get('log')})"
    if result["job"]["kind"] == "serve":
        return f"✓ {label}: source alone {result['source_images_per_s']:.1f} images/s"
    if result["job"]["kind"] == "speed":
        return (f"✓ {label}: {result['images_per_s']:.2f} images/s ({result['images_per_cpu_s']:.2f} per CPU-s), "
                f"{result['memory']['training_mib']:.0f} MiB, {result['wall_seconds']:.0f} s")
    loop = result["loop"]
    return (f"✓ {label}: top-1 {result['top1']:.2f} %, top-5 {result['top5']:.2f} %, "
            f"{loop['images_per_s']:.1f} images/s ({loop['images_per_cpu_s']:.1f} per CPU-s), "
            f"{result['memory']['training_mib']:.0f} MiB, "
            f"{result['params']['trainable'] / 1e6:.3f} M trainable, {result['wall_seconds']:.0f} s")


def _jobs(config: BenchConfig, args: argparse.Namespace) -> list[Job]:
    """The configuration's plan, less the serving job (``--no-serving``) or only it (the ``serving`` suite)."""
    if getattr(args, "suite", "methods") == "serving":
        return [j for j in plan(config) if j.kind == "serve"]
    return [j for j in plan(config) if not (args.no_serving and j.kind == "serve")]


def run(args: argparse.Namespace) -> int:
    """Run the planned jobs one by one and write the report; 1 if a job failed."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so a killed run stops its worker too
    config = configure(args)
    console = Console(stderr=True)
    data = args.data.resolve()
    jobs = _jobs(config, args)
    if any(j.kind == "train" for j in jobs):
        prepare_offline_data(config, data, console)
    out = (args.out or default_out(config.name)).resolve()
    work = RESULTS / "tmp" / f"{config.name}-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True)
    environment = describe_environment() | {"code": make_snapshot(work / "code", args.product)}
    console.print(f"[bold]snowhub benchmark[/bold] '{config.name}': {len(jobs)} jobs, source {config.source}, "
                  f"{config.image_size} px, batch {config.batch_size}, {config.epochs} epochs → {out}")
    started = time.time()
    runner = JobRunner(config, data, work, work / "code", console)
    results = []
    with runner.bar:
        overall = runner.bar.add_task("[bold]all jobs", total=len(jobs), info="")
        for job in jobs:
            runner.bar.update(overall, info=job.label)
            results.append(runner.run(job))
            console.print(summary_line(results[-1]), highlight=False)
            runner.bar.advance(overall)
    wall = time.time() - started
    environment["load_average_end"] = os.getloadavg()

    from benchmarks.report import write_report

    command = command_line(getattr(args, "suite", "methods"), getattr(args, "argv", []))
    paths = write_report(out, config, results, environment, wall, command, suite=getattr(args, "suite", "methods"))
    console.print(f"done in {wall / 60:.1f} min: " + ", ".join(str(p.relative_to(REPO)) if p.is_relative_to(REPO)
                                                          else str(p) for p in paths))
    return 1 if any("error" in r for r in results) else 0
