"""What travels beside an exported graph: ``labels.json``, ``preprocessing.json`` and the model card.

The card is a ``README.md`` in the Hugging Face convention: YAML front matter (``library_name``,
``base_model``, ``base_model_relation: adapter``, ``tags``, ``model-index`` with each task's recorded
validation top-1/top-5 and dataset summary), then what the tasks are, how they were trained, and a short
ONNX Runtime example (``tests/test_export_onnx.py`` runs it). Every front-matter value is written as one
line of JSON, which is also YAML, so any YAML or JSON reader gets the same values.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from snowhub._version import __version__
from snowhub.names import SOURCE_TASK
from snowhub.store import SourceRecord, TaskRecord

# The hyper-parameters a card lists (the record keeps every one).
_TRAINING_KEYS = ("epochs", "batch_size", "lr", "score_lr_scale", "weight_decay", "warmup_epochs", "image_size",
                  "hflip", "seed", "k_ratio", "head_k_ratio", "width_divisor", "noise_var", "device")

EXAMPLE_IMAGE = "photo.jpg"


def preprocessing(source: SourceRecord, image_size: int) -> dict:
    """What a caller does before the graph (``preprocessing.json``): decode to RGB, resize the shorter side to
    ``resize`` px (bilinear, antialiased, as Pillow does), centre-crop ``size`` px, uint8 NCHW. The mean/std
    normalisation is inside the graph and listed for reference only."""
    pre = source.preprocessing
    ratio = float(pre.get("resize", 256)) / float(pre.get("crop", 224))
    return {"input": "images", "dtype": "uint8", "layout": "NCHW", "color": "RGB", "size": image_size,
            "resize": round(image_size * ratio), "resize_interpolation": "bilinear (antialiased, Pillow)",
            "crop": "center", "mean": list(pre["mean"]), "std": list(pre["std"]),
            "normalization": "inside the graph: (images / 255 - mean) / std"}


def labels(tasks: Sequence[str], classes: dict[str, list[str]]) -> dict[str, list[str]]:
    """``labels.json``: task → class names in logit order."""
    return {t: list(classes[t]) for t in tasks}


def onnx_example() -> str:
    """The ONNX Runtime example of the card: one image, every task's top-1 (Python, numpy, Pillow)."""
    return f'''import json, numpy as np, onnxruntime as ort
from PIL import Image, ImageOps
pre, labels = json.load(open("preprocessing.json")), json.load(open("labels.json"))
image = ImageOps.exif_transpose(Image.open("{EXAMPLE_IMAGE}"))  # 16-bit grey: its top 8 bits, as predict reads it
image = (Image.fromarray((np.asarray(image).clip(0, 65535) >> 8).astype(np.uint8)) if image.mode.startswith("I")
         else image).convert("RGB")
w, h, r, s = *image.size, pre["resize"], pre["size"]
image = image.resize((r, int(r * h / w)) if w <= h else (int(r * w / h), r), Image.BILINEAR)
left, top = round((image.width - s) / 2), round((image.height - s) / 2)
x = np.asarray(image.crop((left, top, left + s, top + s))).transpose(2, 0, 1)[None]  # uint8 (1, 3, S, S)
session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
for out, logits in zip(session.get_outputs(), session.run(None, {{"images": np.ascontiguousarray(x)}})):
    task = out.name.removeprefix("logits_")
    print(task, labels[task][int(logits[0].argmax())])
'''


def _front(items: dict) -> str:
    return "---\n" + "".join(f"{key}: {json.dumps(value, ensure_ascii=False)}\n" for key, value in items.items()) + "---\n"


def _dataset(task: TaskRecord) -> dict:
    summary = task.dataset_summary
    root = str(summary.get("root", task.name)).rstrip("/").rsplit("/", 1)[-1] or task.name
    return {"type": "imagefolder", "name": root, "split": "validation",
            "args": {"layout": summary.get("layout"), "val_source": summary.get("val_source"),
                     "train_images": summary.get("train_images"), "val_images": summary.get("val_images"),
                     "fingerprint": task.dataset_fingerprint}}


def _result(task: TaskRecord) -> dict:
    return {"task": {"type": "image-classification", "name": task.name},
            "dataset": _dataset(task),
            "metrics": [{"type": "accuracy", "name": "val top-1", "value": round(task.val_top1, 2)},
                        {"type": "top_5_accuracy", "name": "val top-5", "value": round(task.val_top5, 2)}]}


def front_matter(source: SourceRecord, tasks: Sequence[TaskRecord], name: str, extra_tags: Sequence[str]) -> dict:
    """The card's metadata (Hugging Face keys first), as a dict."""
    return {"library_name": "snowhub", "base_model": source.name,
            "base_model_sha256": source.weights_file_sha256, "base_model_relation": "adapter",
            "pipeline_tag": "image-classification",
            "tags": ["snowhub", "snow", "channel-pooling", "image-classification", source.name, *extra_tags],
            "model-index": [{"name": name, "results": [_result(t) for t in tasks]}]}


def _task_lines(tasks: Sequence[TaskRecord]) -> str:
    rows = ["| task | classes | val top-1 | val top-5 | trained on | image size |", "|---|---|---|---|---|---|"]
    for t in tasks:
        classes = ", ".join(t.class_names[:8]) + (", …" if len(t.class_names) > 8 else "")
        s = t.dataset_summary
        rows.append(f"| {t.name} (version {t.version}) | {len(t.class_names)}: {classes} | {t.val_top1:.2f} % | "
                    f"{t.val_top5:.2f} % | "
                    f"{s.get('train_images')} train / {s.get('val_images')} val images | {t.image_size} px |")
    return "\n".join(rows)


def _training_lines(tasks: Sequence[TaskRecord]) -> str:
    lines = []
    for t in tasks:
        opts = ", ".join(f"{k} {t.hyperparams[k]}" for k in _TRAINING_KEYS if k in t.hyperparams)
        ks = t.hyperparams.get("delta_shape", {}).get("ks")
        lines.append(f"- **{t.name}**: {opts}; K per tap {ks}; {t.delta_params:,} delta parameters, "
                     f"{t.train_seconds:.1f} s of training.")
    return "\n".join(lines)


def onnx_card(source: SourceRecord, tasks: Sequence[TaskRecord], head: bool, image_size: int, opset: int,
              max_abs_diff: float) -> str:
    """The exported graph's ``README.md``: front matter, then the tasks, their training, how to run it."""
    outputs = ([f"`logits_{SOURCE_TASK}` (the source's own 1000-class head)"] if head else []) + \
              [f"`logits_{t.name}`" for t in tasks]
    name = f"{source.name}-" + "-".join(([] if not head else [SOURCE_TASK]) + [t.name for t in tasks])
    off_size = [t.name for t in tasks if t.image_size != image_size]
    warning = (f"\n**Note:** {', '.join(off_size)} were trained at another size than the {image_size} px of this "
               "file; their recorded accuracy is for their own size.\n" if off_size else "")
    return f"""{_front(front_matter(source, tasks, name, ["onnx"]))}
# {name}

SNOW task deltas (Yoo et al., *SNOW: Subscribing to Knowledge via Channel Pooling*) on the frozen
**{source.name}** source (weights sha256 `{source.weights_file_sha256}`), exported by snowhub {__version__} as
one ONNX graph: the source runs once and every task's delta reads its feature maps through channel
pooling with the indices frozen at registration.

- Input `images`: uint8 `(batch, 3, {image_size}, {image_size})`, RGB, any batch size; normalisation is inside.
- Outputs: {", ".join(outputs)}, float32 `(batch, classes)`; class names in `labels.json`.
- Opset {opset}; checked against PyTorch with ONNX Runtime (CPU) at batch 1 and 16: max |logit difference|
  {max_abs_diff:.3g}, the same top-1 everywhere.
{warning}
## Tasks

{_task_lines(tasks) if tasks else "Only the source's own ImageNet head."}

## Training

Each delta was trained with SGD (momentum 0.9, warm-up then cosine decay) against the frozen source:

{_training_lines(tasks) if tasks else "-"}

## Running it with ONNX Runtime

Preprocess as `preprocessing.json` says (resize the shorter side, centre crop, uint8), then:

```python
{onnx_example()}```
"""


def bundle_card(source: SourceRecord, task: TaskRecord) -> str:
    """The ``README.md`` inside a ``.snowtask`` bundle: the same front matter, what it is, how to import it."""
    return f"""{_front(front_matter(source, [task], task.name, ["snowtask"]))}
# {task.name}

One SNOW task delta for the frozen **{source.name}** source (weights sha256 `{source.weights_file_sha256}`),
exported by snowhub {__version__}. It imports only into a hub built on the same source weights and taps:

```bash
snowhub init --source {source.name}      # once, if you have no such hub yet
snowhub import {task.name}.snowtask        # --as NEWNAME if the name is taken, --new-version for its next version
snowhub verify-forgetting
```

{_task_lines([task])}

## Training

{_training_lines([task])}
"""
