"""``snowhub evaluate`` / ``Hub.evaluate`` on the session hub's real Fashion-MNIST task: the numbers are the
ones ``Hub.predict`` answers, each evaluation is a registry event, and bad test folders are one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fixtures.hubkit import assert_one_line_error
from snowhub import Hub
from snowhub.errors import DataError
from snowhub.evaluation.metrics import ConfusionCounter, metrics_of
from snowhub_cli.main import app


def _cli(*args, hub: Path):
    return CliRunner().invoke(app, [*map(str, args), "--hub", str(hub)])


def _expected(hub: Path, folder: Path) -> tuple[dict, list[str]]:
    """top-1, top-5 and per-class (images, correct, predicted) counted from Hub.predict's own answers."""
    files = sorted(folder.glob("*/*.png"))
    with Hub.open(hub) as h:
        answers = h.predict(files, ["fashion"], top=5, device="cpu")
        classes = h.task("fashion").classes
    truth = [f.parent.name for f in files]
    tops = [[label for label, _ in a.tasks["fashion"]] for a in answers]
    per_class = {c: [sum(t == c for t in truth), sum(t == c and top[0] == c for t, top in zip(truth, tops)),
                     sum(top[0] == c for top in tops)] for c in classes}
    top1 = 100.0 * sum(t == top[0] for t, top in zip(truth, tops)) / len(files)
    top5 = 100.0 * sum(t in top for t, top in zip(truth, tops)) / len(files)
    return {"images": len(files), "top1": top1, "top5": top5, "per_class": per_class}, classes


def test_the_numbers_are_the_ones_predict_answers_and_the_evaluation_is_recorded(hub_copy, fashion_dir, tmp_path):
    expected, classes = _expected(hub_copy, fashion_dir / "val")
    with Hub.open(hub_copy) as h:
        before = len(h.registry.events("fashion"))
        result = h.evaluate("fashion", fashion_dir / "val", batch_size=5, device="cpu", plot=tmp_path / "plots")
        events = h.registry.events("fashion")
    m = result.metrics
    assert (m.images, m.top1, m.top5) == (expected["images"], pytest.approx(expected["top1"]),
                                          pytest.approx(expected["top5"]))
    assert m.class_names == classes
    for c in m.classes:
        images, correct, predicted = expected["per_class"][c.name]
        assert (c.images, c.correct, c.predicted) == (images, correct, predicted)
        assert c.recall == pytest.approx(100.0 * correct / images)
        assert c.precision == (None if predicted == 0 else pytest.approx(100.0 * correct / predicted))
    assert sum(map(sum, m.confusion)) == m.images and [m.confusion[i][i] for i in range(3)] == [
        c.correct for c in m.classes]
    # recorded: one sealed `evaluated` event with the test set's fingerprint and the numbers
    assert len(events) == before + 1 and events[-1].kind == "evaluated" and events[-1].id == result.event
    assert events[-1].version == 1 and events[-1].problem is None
    assert events[-1].payload["dataset"]["fingerprint"] == result.fingerprint
    assert events[-1].payload["metrics"]["top1"] == pytest.approx(m.top1, abs=1e-4)
    # the plot is a real PNG of a readable size
    png = Path(result.plot)
    assert png.name == "fashion-v1-confusion.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as image:
        assert image.format == "PNG" and min(image.size) >= 400


def test_cli_json_shape_and_a_subset_of_the_classes(hub_copy, fashion_dir, tmp_path):
    subset = tmp_path / "two-classes"
    for name in ("Trouser", "Bag"):
        shutil.copytree(fashion_dir / "val" / name, subset / name)
    result = _cli("evaluate", "fashion", "--data", subset, "--json", "--device", "cpu", "--batch-size", "7",
                  hub=hub_copy)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert set(out) == {"task", "version", "reference", "dataset", "metrics", "seconds", "images_per_second",
                        "runtime", "plot", "event"}
    assert (out["task"], out["version"], out["plot"]) == ("fashion", 1, None) and isinstance(out["event"], int)
    assert out["dataset"]["images"] == 24 and out["dataset"]["classes"] == {"Bag": 12, "Trouser": 12}
    metrics = out["metrics"]
    assert set(metrics) == {"images", "top1", "top5", "macro_precision", "macro_recall", "per_class", "confusion"}
    sandal = next(c for c in metrics["per_class"] if c["class"] == "Sandal")
    assert sandal["images"] == 0 and sandal["recall"] is None and sandal["accuracy"] is None
    assert set(sandal) == {"class", "images", "predicted", "correct", "accuracy", "precision", "recall"}
    assert len(metrics["confusion"]["matrix"]) == 3 and metrics["confusion"]["classes"][0] == "Bag"
    text = _cli("evaluate", "fashion", "--data", subset, "--device", "cpu", hub=hub_copy)
    assert text.exit_code == 0 and "top-1" in text.stdout and "Trouser" in text.stdout
    # show lists both evaluations, oldest first
    shown = json.loads(_cli("show", "fashion", "--json", hub=hub_copy).stdout)["evaluations"]
    assert [e["event"] for e in shown][-2:][0] == out["event"] and len(shown) == 2
    assert shown[0]["top1"] == pytest.approx(metrics["top1"]) and shown[0]["fingerprint"] == out["dataset"]["fingerprint"]
    assert shown[0]["version"] == 1 and shown[0]["images"] == 24 and shown[0]["data"] == str(subset.resolve())
    table = _cli("show", "fashion", hub=hub_copy)
    assert table.exit_code == 0 and "evaluations" in table.stdout and "24 images" in table.stdout


@pytest.mark.parametrize("layout, message", [
    ({"Trouser": 2, "Sneaker": 1, "Coat": 1}, "does not know the classes Coat, Sneaker"),
    ({}, "no images in"),
    ({"Trouser": 0, "Bag": 0}, "no images in"),
])
def test_unknown_classes_and_no_images_are_one_line_and_write_nothing(hub_copy, fashion_dir, tmp_path, layout,
                                                                       message):
    data = tmp_path / "test"
    data.mkdir()
    for name, count in layout.items():
        (data / name).mkdir()
        for i, source in enumerate(sorted((fashion_dir / "val" / "Trouser").glob("*.png"))[:count]):
            shutil.copy(source, data / name / f"{i}.png")
    with Hub.open(hub_copy) as h:
        before = len(h.registry.events())
    result = _cli("evaluate", "fashion", "--data", data, "--plot", tmp_path / "plots", "--device", "cpu",
                  hub=hub_copy)
    assert_one_line_error(result, message)
    assert not (tmp_path / "plots").exists()
    with Hub.open(hub_copy) as h:
        assert len(h.registry.events()) == before
        with pytest.raises(DataError, match=message):
            h.evaluate("fashion", data, device="cpu")


def test_metrics_of_a_known_confusion_matrix():
    counter = ConfusionCounter(["a", "b", "c"])
    logits = torch.tensor([[3.0, 1, 0], [3, 1, 0], [0, 3, 1], [1, 0, 3], [2, 3, 0]])
    counter.add(logits, torch.tensor([0, 1, 1, 1, 1]))  # a→a, b→a, b→b, b→c, b→b
    m = counter.metrics()
    assert m.confusion == [[1, 0, 0], [1, 2, 1], [0, 0, 0]]
    assert (m.top1, m.top5) == (60.0, 100.0)
    a, b, c = m.classes
    assert (a.recall, a.precision, b.recall, b.precision) == (100.0, 50.0, 50.0, 100.0)
    assert (c.recall, c.precision) == (None, 0.0)  # no image of c; predicted once, wrongly
    assert (m.macro_recall, m.macro_precision) == (75.0, 75.0)  # over a and b, the classes with images
    with pytest.raises(ValueError, match="no images"):
        metrics_of(torch.zeros(2, 2, dtype=torch.int64), 0, ["a", "b"])
