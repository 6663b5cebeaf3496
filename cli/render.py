"""How the CLI shows results: Rich tables on stdout, problems on stderr, JSON with ``--json``.

Commands in :mod:`snowhub_cli.main` parse options and call the library; everything a person reads is
formatted here.
"""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.table import Table

from snowhub import TaskInfo
from snowhub.checks import DoctorReport, ForgettingReport
from snowhub.numerics import describe_environment
from snowhub.serving import ImagePrediction
from snowhub.store import SourceRecord

out = Console()
err = Console(stderr=True)


def line(text: str) -> None:
    """One plain line on stdout (no Rich markup or highlighting)."""
    out.print(text, markup=False, highlight=False, soft_wrap=True)


def problem(text: str, kind: str = "error") -> None:
    """One ``error: …`` (or ``warning: …``) line on stderr."""
    err.print(f"{kind}: {text}", markup=False, highlight=False, soft_wrap=True)


def print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} %"


def params(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k"


def source_created(root: str, source: SourceRecord, as_json: bool) -> None:
    if as_json:
        print_json({"hub": root, "source": source.name, "weights_origin": source.weights_origin,
                    "weights_file_sha256": source.weights_file_sha256, "tensors_sha256": source.tensors_sha256,
                    "parameters": source.parameter_count, "taps": source.taps,
                    "has_head": source.head_classes is not None})
        return
    line(f"created hub {root} with source {source.name} ({params(source.parameter_count)} parameters, "
         f"weights from {source.weights_origin})")
    if source.head_classes is not None:
        line(f"task 0 'imagenet' serves the source's own {len(source.head_classes)}-class head")


def task_added(info: TaskInfo) -> None:
    d = info.details
    line(f"added task {info.seq} '{info.name}': {len(info.classes)} classes, val top-1 {pct(info.val_top1)}, "
         f"top-5 {pct(info.val_top5)}; trained in {d['train_seconds']:.1f} s at {d['train_images_per_s']:.1f} "
         f"images/s; delta {params(info.delta_params)} parameters "
         f"({100 * info.delta_params / info.source_params:.1f} % of the source), K = {info.k_total}")
    if (h := info.details.get("hyperparams", {})).get("budget") is not None:  # add-task --budget: what it chose
        line(f"budget {params(h['budget'])}: width divisor {h['width_divisor']:g}, K ratio {h['k_ratio']:g} → "
             f"{params(h['budget_params'])} parameters")


# Above this many rows Rich's per-cell layout takes seconds; the same columns as plain aligned text take ms.
_RICH_ROWS = 100
_COLUMNS = ("seq", "name", "classes", "K", "parameters", "val top-1", "created")
_RIGHT = {"seq", "classes", "K", "parameters", "val top-1"}


def task_table(root: str, source_name: str, tasks: list[TaskInfo]) -> None:
    title = f"{root}  (source: {source_name})"
    rows = [(str(t.seq), _listed_name(t), str(len(t.classes)), str(t.k_total) if t.k_total else "—",
             params(t.source_params) + " (source)" if t.seq == 0 else params(t.delta_params), pct(t.val_top1),
             t.created_at[:16].replace("T", " ")) for t in tasks]
    if len(rows) > _RICH_ROWS:
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(_COLUMNS)]
        cell = [(str.rjust if c in _RIGHT else str.ljust) for c in _COLUMNS]
        lines = [title, "  ".join(f(c, w) for f, c, w in zip(cell, _COLUMNS, widths)).rstrip(),
                 "  ".join("-" * w for w in widths)]
        lines += ["  ".join(f(v, w) for f, v, w in zip(cell, r, widths)).rstrip() for r in rows]
        out.file.write("\n".join(lines) + "\n")
    else:
        table = Table(title=title)
        for col in _COLUMNS:
            table.add_column(col, justify="right" if col in _RIGHT else "left")
        for row in rows:
            table.add_row(*row)
        out.print(table)
    untrusted(tasks)


def _versioned(name: str, version: int) -> str:
    """``birds`` for version 1, ``birds@2`` for a later one: how every table names a task's version."""
    return name + (f"@{version}" if version > 1 else "")


def _listed_name(t: TaskInfo) -> str:
    """``birds``, ``birds@2 [production]``, ``birds@1 (retired)``: a version after the first, its aliases."""
    name = _versioned(t.name, t.version)
    name += (f" [{', '.join(t.aliases)}]" if t.aliases else "") + (" (retired)" if t.retired else "")
    return name + (" (!)" if t.record_problem else "")


def untrusted(tasks: list[TaskInfo]) -> None:
    """One stderr line per task whose registry record does not match its seal (marked (!) in tables)."""
    for t in tasks:
        if t.record_problem:
            problem(t.record_problem, "warning")


def task_details(info: TaskInfo) -> None:
    table = Table(show_header=False, title=f"task {info.seq}: {info.name}")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in info.to_dict().items():
        if key == "classes":
            value = ", ".join(value[:20]) + (f", … ({len(value)} in all)" if len(value) > 20 else "")
        elif key == "cp_indices":
            value = "; ".join(f"{tap}: {len(idx)} channels" for tap, idx in value.items())
        elif key == "metrics":
            value = "; ".join(f"epoch {e['epoch']}: top-1 {e['val_top1']:.2f} %" for e in value.get("history", []))
        elif key == "versions":  # every version of the task, its aliases, which are retired
            value = "; ".join(f"{v['version']} (task {v['seq']}, top-1 {pct(v['val_top1'])}"
                              + "".join(f", {a}" for a in v["aliases"]) + (", retired" if v["retired"] else "") + ")"
                              for v in value)
        elif key == "aliases":
            value = ", ".join(value) or "—"
        elif key == "evaluations":  # snowhub evaluate's records, oldest first
            value = "\n".join(f"{e['at'][:16].replace('T', ' ')} v{e['version']} on {e['data']} ({e['images']} images,"
                              f" {e['fingerprint'][:12]}): top-1 {pct(e['top1'])}, top-5 {pct(e['top5'])}"
                              for e in value) or "—"
        elif isinstance(value, dict):
            value = json.dumps(value, default=str)
        table.add_row(key, str(value))
    out.print(table)
    untrusted([info])


def predictions(results: list[ImagePrediction], top: int) -> None:
    for r in results:
        table = Table(title=r.image, show_lines=False)
        table.add_column("task")
        table.add_column(f"top-{top}")
        for name, answers in r.tasks.items():
            table.add_row(name, ", ".join(f"{label} {p:.1f} %" for label, p in answers))
        out.print(table)


def forgetting(report: ForgettingReport) -> None:
    table = Table(title="forgetting check")
    for col in ("seq", "task", "verdict", "top-1 then", "top-1 now", "max |Δ logit|", "recorded in"):
        table.add_column(col)
    elsewhere: dict[str, list[str]] = {}  # environment → the tasks recorded there, when not here
    for t in report.tasks:
        name = _versioned(t.name, t.version)
        if t.same_environment:
            recorded = "here"
        else:
            recorded = "elsewhere" if t.recorded_environment else "unknown"
            elsewhere.setdefault(describe_environment(t.recorded_environment), []).append(name)
        table.add_row(str(t.seq), name, t.verdict or t.status, pct(t.recorded_top1), pct(t.current_top1),
                      "—" if t.max_logit_diff is None else f"{t.max_logit_diff:.2g}", recorded)
    out.print(table)
    line(f"checked in: {describe_environment(report.checked_environment)}")
    for environment, names in elsewhere.items():
        line(f"recorded in: {environment} ({', '.join(names)}); "
             + ("--strict: bit-identical demanded" if report.strict
                else f"accepted within {report.tolerance:.2g} with the same labels"))
    line(f"source weights: {'unchanged' if report.source_ok else 'CHANGED'}")
    line("backward transfer (BWT): " + ("—" if report.bwt is None else f"{report.bwt:+.2f} points"))
    for text in report.problems():
        problem(text)
    line("no task forgot anything" if report.ok else "FAILED: see the problems above")


def doctor(report: DoctorReport) -> None:
    for text in report.warnings:
        problem(text, "warning")
    for text in report.problems:
        problem(text)
    verdict = "ok" if report.ok else f"FAILED: {len(report.problems)} problem(s)"
    line(f"{verdict}: {report.hub}: {report.tasks} task(s), {report.files} file(s) checked")
