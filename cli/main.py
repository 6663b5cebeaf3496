"""The ``snowhub`` command line: a thin Typer/Rich layer over :class:`snowhub.Hub`.

Every user mistake arrives here as a :class:`snowhub.SnowhubError` and leaves as one line on stderr with
exit status 1; an interrupt leaves with status 130. The hub itself guarantees it is left unchanged.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperCommand

from snowhub import DeltaConfig, Hub, RunOptions, TrainConfig, __version__, available_sources
from snowhub.models.sources import PROVIDERS
from snowhub_cli import distributed, export, render
from snowhub_cli import evaluate as evaluate_command
from snowhub_cli import lifecycle as lifecycle_commands
from snowhub_cli import registry as registry_commands
from snowhub_cli import trust as trust_commands
from snowhub_cli.options import DeviceOption, HubOption, JsonOption, RegistryOption, Runtime, one_line_errors
from snowhub_cli.progress import RichProgress
from snowhub_cli.serve import serve as _serve

app = typer.Typer(
    name="snowhub",
    help="Lifelong-learning task manager: one frozen source model, an append-only sequence of SNOW task deltas.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# The flags' defaults are the library's (TrainConfig's own fields and its DeltaConfig's).
_DEFAULTS = {f.name: f.default for f in (*fields(TrainConfig), *fields(DeltaConfig))}
_RUN_DEFAULTS = {f.name: f.default for f in fields(RunOptions)}


def _version(value: bool) -> None:
    if value:
        render.line(f"snowhub {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Show the version and exit.")] = False) -> None:
    """Lifelong-learning task manager: one frozen source model, an append-only sequence of SNOW task deltas."""


@app.command()
def init(
    source: Annotated[str, typer.Option("--source", help=f"Pretrained source: {', '.join(available_sources())}, "
                                                         "or any model as timm:<arch> or torchvision:<arch> "
                                                         "(snowhub sources).")],
    weights: Annotated[Optional[str], typer.Option(
        "--weights", help="Local state dict for the source (safetensors, or a weights-only torch file; the whole "
                          "model's or its backbone's), or 'random' (speed and memory tests).")] = None,
    image_size: Annotated[Optional[int], typer.Option(
        "--image-size", help="The hub's default image size in pixels (timm:/torchvision: sources; default: the "
                             "model's own).", min=1)] = None,
    taps: Annotated[Optional[str], typer.Option(
        "--taps", help="Comma-separated module (timm) or graph-node (torchvision) names to tap instead of the "
                       "discovered ones, in forward order.")] = None,
    hub: HubOption = None,
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a hub around a frozen, pretrained source model (its registry in the hub, or at --registry)."""
    tap_names = [t.strip() for t in taps.split(",") if t.strip()] if taps else None
    with one_line_errors(), Hub.init(hub, source, weights, registry, image_size=image_size, taps=tap_names) as h:
        render.source_created(str(h.layout.root), h.source_record(), as_json)


@app.command()
def sources() -> None:
    """List the built-in source names and how to name any timm or torchvision model."""
    for name in available_sources():
        render.line(name)
    for provider in PROVIDERS.values():
        render.line(f"{provider.scheme}:<arch>  any {provider.scheme} model; {provider.how}")


def _parameters(text: str | None) -> int | None:
    """``--budget``'s value: ``500k`` → 500000, ``2M`` / ``2.5m`` → 2000000 / 2500000, ``140000`` as is."""
    if text is None:
        return None
    scale = {"k": 1_000, "m": 1_000_000}.get(text.strip()[-1:].lower(), 1)
    try:
        return round(float(text.strip()[:-1] if scale > 1 else text) * scale)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a number of parameters (e.g. 500k, 2M)", param_hint="--budget") from None


def _given(ctx: typer.Context, *names: str) -> tuple[str, ...]:
    """The options among `names` the user set (on the command line or from the environment), not defaulted."""
    sources = {n: ctx.get_parameter_source(n) for n in names}  # Typer's own click: compare the enum by name
    return tuple(n for n, source in sources.items() if source is not None and source.name != "DEFAULT")


class _LowMemoryCommand(TyperCommand):
    """add-task's parser: ``--low-memory`` takes auto, on or off, and alone (the former flag) means on."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        args = list(args)
        for i, arg in enumerate(args):
            if arg == "--low-memory" and (i + 1 == len(args) or args[i + 1] not in ("auto", "on", "off")):
                args.insert(i + 1, "on")
        return super().parse_args(ctx, args)


@app.command("add-task", cls=_LowMemoryCommand)
def add_task(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Task name (letters, digits, '_' or '-'); a new one unless --new-version.")],
    data: Annotated[Path, typer.Option("--data", help="ImageFolder tree, one with train/ and val/ (or test/), "
                                                      "or the CUB-200-2011 release folder.")],
    epochs: Annotated[int, typer.Option(help="Passes over the training images.")] = _DEFAULTS["epochs"],
    batch_size: Annotated[int, typer.Option(help="Images per SGD step, over all processes together (each of N takes 1/N).")] = _DEFAULTS["batch_size"],
    lr: Annotated[float, typer.Option(help="Peak learning rate (SGD, momentum 0.9, cosine decay).")] = _DEFAULTS["lr"],
    k_ratio: Annotated[float, typer.Option(help="K/N: share of each tap's channels the delta's stages subscribe to.")] = _DEFAULTS["k_ratio"],
    head_k_ratio: Annotated[float, typer.Option(help="K/N of the last tap, read by the classifier only (the paper: 0.125).")] = _DEFAULTS["head_k_ratio"],
    width_divisor: Annotated[float, typer.Option(help="The delta is the source narrowed by this factor.")] = _DEFAULTS["width_divisor"],
    budget: Annotated[Optional[str], typer.Option(
        "--budget", metavar="PARAMS", help="Most parameters the task may add, e.g. 500k or 2M: picks --width-divisor "
        "and --k-ratio for the largest delta that fits (either, when given, is kept).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Resolution in pixels (default: the source's, 224).")] = None,
    noise_var: Annotated[float, typer.Option(help="σ² of the channel pooling selection noise.")] = _DEFAULTS["noise_var"],
    hflip: Annotated[Optional[bool], typer.Option("--hflip/--no-hflip", help="Random horizontal flips (off for digits, text) [default: on, off with --cache-features].", show_default=False)] = None,
    val_fraction: Annotated[float, typer.Option(help="Share held out for validation when the data has no split.")] = _DEFAULTS["val_fraction"],
    seed: Annotated[int, typer.Option(help="Seed for data order, augmentation, init and noise.")] = _DEFAULTS["seed"],
    workers: Annotated[Optional[int], typer.Option(help="DataLoader workers (default: 0 on a 2-core CPU, more with CUDA).")] = None,
    device: DeviceOption = "auto",
    nproc_per_node: Annotated[Optional[int], typer.Option("--nproc-per-node", help=distributed.NPROC_HELP)] = None,
    low_memory: Annotated[str, typer.Option(
        "--low-memory", metavar="[auto|on|off]",
        help="Train stage by stage, the source a few images at a time, recomputing the delta in backward: the "
             "same delta (up to float rounding), far less memory at large images, slower at small ones (one "
             "process); on a CPU, malloc then returns freed blocks of 1 MiB and more to the OS (with huge pages; "
             "SNOWHUB_MALLOC=default leaves glibc as it is). auto: on when the source's taps for one batch reach "
             "64 MiB (ResNet-50 at 224 px: on; 64 px quickstart: off); --low-memory alone: on.")
    ] = _RUN_DEFAULTS["low_memory"],
    cache_features: Annotated[bool, typer.Option("--cache-features", help="Run the source once over the training "
                                                 "images and train every epoch on its cached float16 taps: much "
                                                 "faster epochs, no augmentation, disk in the hub's staging/ (one process).")] = False,
    cache_limit: Annotated[float, typer.Option("--cache-limit", help="Most disk the feature cache may take, GiB.")] = _RUN_DEFAULTS["cache_limit_gib"],
    source_precision: Annotated[str, typer.Option("--source-precision", help="float32, or bfloat16: the source's training "
                                                  "forward in bfloat16 where the device has it (faster; serving stays float32).")] = _DEFAULTS["source_precision"],
    new_version: Annotated[bool, typer.Option("--new-version", help="Train the next version of the existing task "
                                              "NAME (e.g. on more data); its earlier versions stay as they are, "
                                              "and a bare NAME follows the new one unless alias 'production' is "
                                              "set.")] = False,
    hub: HubOption = None,
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Train a new task's delta (or a task's next version) against the frozen source and append it to the hub."""
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, image_size=image_size,
                         hflip=not cache_features if hflip is None else hflip, val_fraction=val_fraction, seed=seed,
                         feature_cache=cache_features, source_precision=source_precision,
                         delta=DeltaConfig(k_ratio=k_ratio, head_k_ratio=head_k_ratio, width_divisor=width_divisor,
                                           noise_var=noise_var, budget=_parameters(budget),
                                           budget_keeps=_given(ctx, "width_divisor", "k_ratio")),
                         run=RunOptions(device=device, num_workers=workers, low_memory=low_memory,
                                        cache_limit_gib=cache_limit))
    if nproc_per_node is not None or distributed.launched():  # several processes (docs/distributed.md)
        return distributed.add_task(ctx, name, data, config, nproc_per_node, hub, as_json, registry=registry,
                                    new_version=new_version)
    with one_line_errors(), Hub.open(hub, registry=registry) as h, RichProgress(render.err) as progress:
        info = h.add_task(name, data, config, progress, new_version=new_version)
        if as_json:
            render.print_json(info.to_dict())
        else:
            render.task_added(info)


@app.command("list")
def list_tasks(
    all_versions: Annotated[bool, typer.Option("--all", help="Retired versions too.")] = False,
    tag: Annotated[Optional[list[str]], typer.Option("--tag", metavar="KEY=VALUE",
                                                     help="Only tasks with this tag (repeatable: all of them).")] = None,
    hub: HubOption = None, registry: RegistryOption = None, as_json: JsonOption = False,
) -> None:
    """List the hub's task versions in append order (retired ones with --all)."""
    with one_line_errors(), Hub.open(hub, registry=registry) as h:
        tasks, source = h.tasks(all=all_versions, tags=tag or ()), h.source_record().name
        if as_json:
            render.print_json({"hub": str(h.layout.root), "source": source,
                               "tasks": [{k: v for k, v in t.to_dict().items() if k != "classes"} for t in tasks]})
        else:
            render.task_table(str(h.layout.root), source, tasks)


@app.command()
def show(name: Annotated[str, typer.Argument(help="Task: NAME, NAME@VERSION or NAME@ALIAS (imagenet = the "
                                                  "source's head).")],
         hub: HubOption = None, registry: RegistryOption = None, as_json: JsonOption = False) -> None:
    """Show everything recorded about one task."""
    with one_line_errors(), Hub.open(hub, registry=registry) as h:
        info = h.task(name)
        if as_json:
            render.print_json(info.to_dict())
        else:
            render.task_details(info)


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    task: Annotated[Optional[list[str]], typer.Option("--task", help="Task to answer: NAME, NAME@VERSION or "
                                                      "NAME@ALIAS (repeatable).")] = None,
    all_tasks: Annotated[bool, typer.Option("--all", help="Answer every task (the default without --task).")] = False,
    top: Annotated[int, typer.Option("--top", help="Labels per task.", min=1)] = 5,
    device: DeviceOption = "auto",
    runtime: Annotated[Runtime, typer.Option(
        "--runtime", help="auto (ONNX Runtime on a CPU for the graphs `snowhub serve` built and checked, PyTorch "
        "for the rest and on a GPU), torch, or onnxruntime (graphs built first; a task whose graph fails its check "
        "is refused).")] = Runtime.auto,
    hub: HubOption = None,
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Classify images with one or all tasks; one source pass serves every task."""
    with one_line_errors(), Hub.open(hub, registry=registry) as h:
        if task and all_tasks:
            raise typer.BadParameter("give --task or --all, not both")
        results = h.predict([str(p) for p in images], None if all_tasks or not task else list(task), top, device,
                            runtime=runtime.value)
        if as_json:
            render.print_json([r.to_dict() for r in results])
        else:
            render.predictions(results, top)


@app.command("verify-forgetting")
def verify_forgetting(
    device: DeviceOption = "auto",
    strict: Annotated[bool, typer.Option(
        "--strict", help="Demand bit-identical probe logits even where they were recorded on another machine, "
                         "device or torch build.")] = False,
    hub: HubOption = None,
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Prove no task forgot or changed: hashes, then every task re-evaluated on its probe set.

    Per task: bit-identical (required where the numerics environment is the one the task was recorded in),
    within tolerance (another CPU kernel family, device or torch build: same labels, logits within a measured
    tolerance), changed, or damaged. Exit status 0 only when the source and every task are unchanged; 2 when
    something changed.
    """
    with one_line_errors(), Hub.open(hub, registry=registry) as h, RichProgress(render.err) as progress:
        report = h.verify_forgetting(device, progress, strict=strict)
        if as_json:
            render.print_json(report.to_dict())
        else:
            render.forgetting(report)
        if not report.ok:
            raise typer.Exit(2)


@app.command()
def doctor(hub: HubOption = None, registry: RegistryOption = None, as_json: JsonOption = False) -> None:
    """Check the whole hub's integrity without running models: registry, seals, hashes, files.

    Exit status 0 when nothing is wrong (warnings allowed); 2 when a problem was found.
    """
    with one_line_errors():
        report = Hub.doctor(hub, registry)
        if as_json:
            render.print_json(report.to_dict())
        else:
            render.doctor(report)
        if not report.ok:
            raise typer.Exit(2)


app.command("serve")(_serve)  # snowhub serve (cli/serve.py)
app.add_typer(lifecycle_commands.alias, name="alias")  # snowhub alias set|delete (cli/lifecycle.py)
for _command in ("retire", "restore", "tag", "describe", "history"):  # a task's life (cli/lifecycle.py)
    app.command(_command)(getattr(lifecycle_commands, _command))
app.command("evaluate")(evaluate_command.evaluate)  # snowhub evaluate (cli/evaluate.py)
app.add_typer(export.app, name="export")  # snowhub export onnx|task (cli/export.py)
app.add_typer(registry_commands.app, name="registry")  # snowhub registry copy (cli/registry.py)
app.command("import")(export.import_bundle)
app.add_typer(trust_commands.keys, name="keys")  # snowhub keys generate (cli/trust.py)
app.add_typer(trust_commands.trust, name="trust")  # snowhub trust add|list (cli/trust.py)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
