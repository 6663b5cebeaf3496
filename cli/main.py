"""The ``snowhub`` command line: a thin Typer/Rich layer over :class:`snowhub.Hub`.

Every user mistake arrives here as a :class:`snowhub.SnowhubError` and leaves as one line on stderr with
exit status 1; an interrupt leaves with status 130. The hub itself guarantees it is left unchanged.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from snowhub import Hub, SnowhubError, TrainConfig, __version__
from snowhub.models.sources import SOURCES
from snowhub_cli.progress import RichProgress

app = typer.Typer(
    name="snowhub",
    help="Lifelong-learning task manager: one frozen source model, an append-only sequence of SNOW task deltas.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

HubOption = Annotated[Optional[Path], typer.Option(
    "--hub", help="Hub directory (default: $SNOWHUB_HOME, else ./.snowhub).", show_default=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
DeviceOption = Annotated[str, typer.Option("--device", help="auto (CUDA if present), cpu, or cuda[:N].")]
_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


@contextmanager
def handled() -> Iterator[None]:
    """Turn snowhub's errors and Ctrl-C into one line and an exit status, never a traceback."""
    try:
        yield
    except SnowhubError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print("interrupted: nothing was changed in the hub", markup=False, highlight=False)
        raise typer.Exit(130) from None


def _print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} %"


def _params(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k"


def _version(value: bool) -> None:
    if value:
        out.print(f"snowhub {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Show the version and exit.")] = False) -> None:
    """Lifelong-learning task manager: one frozen source model, an append-only sequence of SNOW task deltas."""


@app.command()
def init(
    source: Annotated[str, typer.Option("--source", help=f"Pretrained source: {', '.join(SOURCES)}.")],
    weights: Annotated[Optional[Path], typer.Option(
        "--weights", help="Local state dict for the source (safetensors, or a weights-only torch file).")] = None,
    hub: HubOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a hub around a frozen, pretrained source model."""
    with handled(), Hub.init(hub, source, weights) as h:
        row = h.source_row()
        if as_json:
            _print_json({"hub": str(h.layout.root), "source": row.name, "weights_origin": row.weights_origin,
                         "weights_sha256": row.weights_sha256, "parameters": row.parameter_count,
                         "taps": row.taps, "has_head": row.head_classes is not None})
            return
        out.print(f"created hub {h.layout.root} with source {row.name} ({_params(row.parameter_count)} parameters, "
                  f"weights from {row.weights_origin})", markup=False, highlight=False)
        if row.head_classes is not None:
            out.print(f"task 0 'imagenet' serves the source's own {len(row.head_classes)}-class head", markup=False)


@app.command("add-task")
def add_task(
    name: Annotated[str, typer.Argument(help="Unique task name (letters, digits, '_' or '-').")],
    data: Annotated[Path, typer.Option("--data", help="ImageFolder tree, one with train/ and val/ (or test/), "
                                                      "or the CUB-200-2011 release folder.")],
    epochs: Annotated[int, typer.Option(help="Passes over the training images.")] = _DEFAULTS["epochs"],
    batch_size: Annotated[int, typer.Option(help="Images per SGD step.")] = _DEFAULTS["batch_size"],
    lr: Annotated[float, typer.Option(help="Peak learning rate (SGD, momentum 0.9, cosine decay).")] = _DEFAULTS["lr"],
    k_ratio: Annotated[float, typer.Option(help="K/N: share of each tap's channels the delta's stages subscribe to.")] = _DEFAULTS["k_ratio"],
    head_k_ratio: Annotated[float, typer.Option(help="K/N of the last tap, read by the classifier only (the paper: 0.125).")] = _DEFAULTS["head_k_ratio"],
    width_divisor: Annotated[float, typer.Option(help="The delta is the source narrowed by this factor.")] = _DEFAULTS["width_divisor"],
    image_size: Annotated[Optional[int], typer.Option(help="Resolution in pixels (default: the source's, 224).")] = None,
    noise_var: Annotated[float, typer.Option(help="σ² of the channel pooling selection noise.")] = _DEFAULTS["noise_var"],
    hflip: Annotated[bool, typer.Option("--hflip/--no-hflip", help="Random horizontal flips (off for digits, text).")] = True,
    val_fraction: Annotated[float, typer.Option(help="Share held out for validation when the data has no split.")] = _DEFAULTS["val_fraction"],
    seed: Annotated[int, typer.Option(help="Seed for data order, augmentation, init and noise.")] = _DEFAULTS["seed"],
    workers: Annotated[Optional[int], typer.Option(help="DataLoader workers (default: 0 on a 2-core CPU, more with CUDA).")] = None,
    device: DeviceOption = "auto",
    hub: HubOption = None,
    as_json: JsonOption = False,
) -> None:
    """Train a new task's delta against the frozen source and append it to the hub."""
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, k_ratio=k_ratio, head_k_ratio=head_k_ratio,
                         width_divisor=width_divisor, image_size=image_size, noise_var=noise_var, hflip=hflip,
                         val_fraction=val_fraction, seed=seed, device=device, num_workers=workers)
    with handled(), Hub.open(hub) as h, RichProgress(err) as progress:
        info = h.add_task(name, data, config, progress)
        if as_json:
            _print_json(info.to_dict())
            return
        d = info.details
        out.print(f"added task {info.seq} '{info.name}': {len(info.classes)} classes, val top-1 {_pct(info.val_top1)}, "
                  f"top-5 {_pct(info.val_top5)}; trained in {d['train_seconds']:.1f} s at "
                  f"{d['train_images_per_s']:.1f} images/s; delta {_params(info.delta_params)} parameters "
                  f"({100 * info.delta_params / info.source_params:.1f} % of the source), K = {info.k}",
                  markup=False, highlight=False)


@app.command("list")
def list_tasks(hub: HubOption = None, as_json: JsonOption = False) -> None:
    """List the hub's tasks in append order."""
    with handled(), Hub.open(hub) as h:
        tasks = h.tasks()
        if as_json:
            _print_json({"hub": str(h.layout.root), "source": h.source_row().name,
                         "tasks": [{k: v for k, v in t.to_dict().items() if k != "classes"} for t in tasks]})
            return
        table = Table(title=f"{h.layout.root}  (source: {h.source_row().name})")
        for col in ("seq", "name", "classes", "K", "parameters", "val top-1", "created"):
            table.add_column(col, justify="right" if col in ("seq", "classes", "K", "parameters", "val top-1") else "left")
        for t in tasks:
            params = _params(t.source_params) + " (source)" if t.seq == 0 else _params(t.delta_params)
            table.add_row(str(t.seq), t.name + (" (!)" if "record_problem" in t.details else ""),
                          str(len(t.classes)), str(t.k) if t.k else "—", params, _pct(t.val_top1),
                          t.created_at[:16].replace("T", " "))
        out.print(table)
        _warn_untrusted(tasks)


def _warn_untrusted(tasks: list) -> None:
    """One stderr line per task whose registry record does not match its seal (marked (!) above)."""
    for t in tasks:
        if problem := t.details.get("record_problem"):
            err.print(f"warning: {problem}", markup=False, highlight=False)


@app.command()
def show(name: Annotated[str, typer.Argument(help="Task name (imagenet = the source's head).")],
         hub: HubOption = None, as_json: JsonOption = False) -> None:
    """Show everything recorded about one task."""
    with handled(), Hub.open(hub) as h:
        info = h.task(name)
        data = info.to_dict()
        if as_json:
            _print_json(data)
            return
        table = Table(show_header=False, title=f"task {info.seq}: {info.name}")
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")
        for key, value in data.items():
            if key == "classes":
                value = ", ".join(value[:20]) + (f", … ({len(value)} in all)" if len(value) > 20 else "")
            elif key == "cp_indices":
                value = "; ".join(f"{tap}: {len(idx)} channels" for tap, idx in value.items())
            elif key == "metrics":
                value = "; ".join(f"epoch {e['epoch']}: top-1 {e['val_top1']:.2f} %" for e in value.get("history", []))
            elif isinstance(value, dict):
                value = json.dumps(value, default=str)
            table.add_row(key, str(value))
        out.print(table)
        _warn_untrusted([info])


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    task: Annotated[Optional[list[str]], typer.Option("--task", help="Task to answer (repeatable).")] = None,
    all_tasks: Annotated[bool, typer.Option("--all", help="Answer every task (the default without --task).")] = False,
    top: Annotated[int, typer.Option("--top", help="Labels per task.", min=1)] = 5,
    device: DeviceOption = "auto",
    hub: HubOption = None,
    as_json: JsonOption = False,
) -> None:
    """Classify images with one or all tasks; one source pass serves every task."""
    with handled(), Hub.open(hub) as h:
        if task and all_tasks:
            raise typer.BadParameter("give --task or --all, not both")
        results = h.predict([str(p) for p in images], None if all_tasks or not task else list(task), top, device)
        if as_json:
            _print_json([r.to_dict() for r in results])
            return
        for r in results:
            table = Table(title=r.image, show_lines=False)
            table.add_column("task")
            table.add_column(f"top-{top}")
            for name, answers in r.tasks.items():
                table.add_row(name, ", ".join(f"{label} {p:.1f} %" for label, p in answers))
            out.print(table)


@app.command("verify-forgetting")
def verify_forgetting(
    device: DeviceOption = "auto",
    strict: Annotated[bool, typer.Option(
        "--strict", help="Demand bit-identical probe logits even where they were recorded on another machine, "
                         "device or torch build.")] = False,
    hub: HubOption = None,
    as_json: JsonOption = False,
) -> None:
    """Prove no task forgot or changed: hashes, then every task re-evaluated on its probe set.

    Per task: bit-identical (required where the numerics environment is the one the task was recorded in),
    within tolerance (another CPU kernel family, device or torch build: same labels, logits within a measured
    tolerance), changed, or damaged. Exit status 0 only when the source and every task are unchanged; 2 when
    something changed.
    """
    with handled(), Hub.open(hub) as h, RichProgress(err) as progress:
        report = h.verify_forgetting(device, progress, strict=strict)
        if as_json:
            _print_json(report.to_dict())
        else:
            _print_forgetting(report)
        if not report.ok:
            raise typer.Exit(2)


def _print_forgetting(report) -> None:
    from snowhub.numerics import describe_environment

    table = Table(title="forgetting check")
    for col in ("seq", "task", "verdict", "top-1 then", "top-1 now", "max |Δ logit|", "recorded in"):
        table.add_column(col)
    elsewhere: dict[str, list[str]] = {}  # environment → the tasks recorded there, when not here
    for t in report.tasks:
        if t.same_environment:
            recorded = "here"
        else:
            recorded = "elsewhere" if t.recorded_environment else "unknown"
            elsewhere.setdefault(describe_environment(t.recorded_environment), []).append(t.name)
        table.add_row(str(t.seq), t.name, t.verdict or t.status, _pct(t.recorded_top1), _pct(t.current_top1),
                      "—" if t.max_logit_diff is None else f"{t.max_logit_diff:.2g}", recorded)
    out.print(table)
    out.print(f"checked in: {describe_environment(report.checked_environment)}", markup=False, highlight=False,
              soft_wrap=True)
    for environment, names in elsewhere.items():
        out.print(f"recorded in: {environment} ({', '.join(names)}); "
                  + ("--strict: bit-identical demanded" if report.strict
                     else f"accepted within {report.tolerance:.2g} with the same labels"),
                  markup=False, highlight=False, soft_wrap=True)
    out.print(f"source weights: {'unchanged' if report.source_ok else 'CHANGED'}", markup=False)
    out.print("backward transfer (BWT): " + ("—" if report.bwt is None else f"{report.bwt:+.2f} points"),
              markup=False)
    for problem in report.problems():
        err.print(f"error: {problem}", markup=False, highlight=False, soft_wrap=True)
    out.print("no task forgot anything" if report.ok else "FAILED: see the problems above", markup=False)


@app.command()
def doctor(hub: HubOption = None, as_json: JsonOption = False) -> None:
    """Check the whole hub's integrity without running models: registry, seals, hashes, files.

    Exit status 0 when nothing is wrong (warnings allowed); 2 when a problem was found.
    """
    from snowhub.doctor import check_hub
    from snowhub.hub import default_hub_path

    with handled():
        report = check_hub(hub if hub is not None else default_hub_path())
        if as_json:
            _print_json(report.to_dict())
        else:
            for line in report.warnings:
                err.print(f"warning: {line}", markup=False, highlight=False, soft_wrap=True)
            for line in report.problems:
                err.print(f"error: {line}", markup=False, highlight=False, soft_wrap=True)
            verdict = "ok" if report.ok else f"FAILED: {len(report.problems)} problem(s)"
            out.print(f"{verdict}: {report.hub}: {report.tasks} task(s), {report.files} file(s) checked",
                      markup=False, highlight=False, soft_wrap=True)
        if not report.ok:
            raise typer.Exit(2)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
