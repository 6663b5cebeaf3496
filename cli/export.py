"""``snowhub export onnx|task`` and ``snowhub import``: tasks out of a hub (ONNX, ``.snowtask``) and back in."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from snowhub import Hub
from snowhub_cli import render
from snowhub_cli.options import HubOption, JsonOption, RegistryOption, one_line_errors
from snowhub_cli.progress import RichProgress

app = typer.Typer(help="Take tasks out of the hub: one ONNX graph, or a .snowtask bundle for another hub.",
                  no_args_is_help=True)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


@app.command("onnx")
def onnx(
    tasks: Annotated[Optional[list[str]], typer.Argument(
        help="Tasks to export: NAME, NAME@VERSION or NAME@ALIAS (imagenet = the source's own head).",
        show_default=False)] = None,
    all_tasks: Annotated[bool, typer.Option("--all", help="Every delta task of the hub (the version each name "
                                                          "means now; retired versions never).")] = False,
    output: Annotated[Path, typer.Option("--output", help="New (or empty) directory for model.onnx, labels.json, "
                                                          "preprocessing.json and README.md.")] = ...,
    image_size: Annotated[Optional[int], typer.Option(
        "--image-size", help="Input size in px (default: the tasks' own; needed when they differ).")] = None,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset (18 or later).")] = 18,
    source_head: Annotated[bool, typer.Option("--source-head", help="Also export the source's ImageNet head.")] = False,
    hub: HubOption = None,
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Export tasks as one ONNX graph (the source once, every delta), verified with ONNX Runtime first."""
    with one_line_errors(), Hub.open(hub, registry=registry) as h:
        if bool(tasks) == all_tasks:
            raise typer.BadParameter("give task names or --all (not both)")
        render.err.print("exporting and checking with ONNX Runtime …", markup=False, highlight=False)
        result = h.export_onnx(None if all_tasks else list(tasks), output, image_size, opset, source_head)
        if as_json:
            render.print_json(result.to_dict())
            return
        v = result.verification
        render.line(f"wrote {result.directory}: model.onnx ({_size(result.files['model.onnx'])}) with outputs "
                    f"{', '.join('logits_' + t for t in result.tasks)} for uint8 images (batch, 3, {result.image_size}, "
                    f"{result.image_size}), opset {result.opset}; labels.json, preprocessing.json, README.md")
        render.line(f"checked with ONNX Runtime (CPU) on {v.images} probe images at batch {' and '.join(map(str, v.batches))}: "
                    f"max |logit difference| {v.max_abs_diff:.3g}, the same top-1 everywhere")


@app.command("task")
def task(
    name: Annotated[str, typer.Argument(help="The task to export: NAME (its production alias, else its latest "
                                                "version), NAME@VERSION or NAME@ALIAS.")],
    output: Annotated[Path, typer.Option("--output", help="The new .snowtask file.")],
    sign: Annotated[Optional[Path], typer.Option(
        "--sign", metavar="KEYFILE", help="Sign it with this Ed25519 private key (PEM; `snowhub keys generate`).")] = None,
    hub: HubOption = None,
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write one task (delta, classes, indices, metrics, probe set, source identity) as a .snowtask bundle."""
    with one_line_errors(), Hub.open(hub, registry=registry) as h:
        info = h.export_task(name, output, sign)
        if as_json:
            render.print_json(info.to_dict())
        else:
            signed = f"signed by {info.signer}" if info.signer else "unsigned (hubs refuse it without --allow-unsigned)"
            render.line(f"wrote {info.path} ({_size(info.size)}): task '{info.task}', {len(info.members)} members "
                        f"hashed in its manifest, {signed}; import it with `snowhub import` into a hub on the same "
                        "source")


def import_bundle(
    bundle: Annotated[Path, typer.Argument(help="A .snowtask file from `snowhub export task`.")],
    new_name: Annotated[Optional[str], typer.Option("--as", help="Register it under this name instead.")] = None,
    new_version: Annotated[bool, typer.Option(
        "--new-version", help="Append it as the next version of the task of that name here (which must exist).",
    )] = False,
    allow_unsigned: Annotated[bool, typer.Option(
        "--allow-unsigned", help="Import it even if unsigned or signed by a key this hub does not trust.")] = False,
    hub: HubOption = None,
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Append a .snowtask bundle's task, only if this hub's source matches and its probe logits are bit-identical."""
    with one_line_errors(), Hub.open(hub, registry=registry) as h, RichProgress(render.err) as progress:
        info = h.import_task(bundle, new_name, progress, allow_unsigned=allow_unsigned, new_version=new_version)
        if as_json:
            render.print_json(info.to_dict())
        else:
            origin = info.details.get("lineage") or info.details.get("metrics", {}).get("lineage") or {}
            signer = origin.get("signer") or {}
            by = ("unsigned" if signer.get("unsigned") else
                  f"signed by {signer.get('fingerprint')}{'' if signer.get('trusted') else ' (not trusted)'}")
            render.line(f"imported task {info.seq} '{info.name}' version {info.version} from {bundle.name} "
                        f"(task {origin.get('seq')} "
                        f"'{origin.get('name')}' of {origin.get('hub')}, {by}): {len(info.classes)} classes, val "
                        f"top-1 {render.pct(info.val_top1)}; probe logits bit-identical on this hub")
