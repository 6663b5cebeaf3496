"""snowhub as a notebook uses it: everything from `import snowhub`, images in memory as well as on disk."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import numpy as np
import pytest
import torch
from PIL import Image

import snowhub
import snowhub.errors
from snowhub import (
    ConfigError,
    DataError,
    DeltaConfig,
    DoctorReport,
    Hub,
    ImagePrediction,
    RunOptions,
    SnowhubError,
    SourceError,
    SourceRecord,
    TaskInfo,
    TaskNotFoundError,
    TrainConfig,
    available_sources,
)


def _public_errors(module) -> dict[str, type]:
    return {name: cls for name, cls in vars(module).items()
            if inspect.isclass(cls) and issubclass(cls, Exception) and cls.__module__ == module.__name__}


def test_every_error_is_defined_in_snowhub_errors_and_exported():
    """A SnowhubError defined in any other module (outside the HTTP server's private ones) fails here."""
    defined = _public_errors(snowhub.errors)
    assert set(defined) <= set(snowhub.__all__)
    assert all(getattr(snowhub, name) is cls for name, cls in defined.items())
    elsewhere = []
    for info in pkgutil.walk_packages(snowhub.__path__, "snowhub."):
        if "._" in info.name or info.name.startswith("snowhub.serving.http") or info.name == "snowhub.errors":
            continue  # private modules; the HTTP server's errors become responses, never reach a caller
        module = importlib.import_module(info.name)
        elsewhere += [f"{info.name}.{name}" for name, cls in _public_errors(module).items()
                      if issubclass(cls, SnowhubError)]
    assert elsewhere == []
    # the old import paths name the same classes
    from snowhub.export import BundleError, ExportError
    from snowhub.store import HubReadOnlyError, HubWriteError
    from snowhub.training import DistributedError
    assert (BundleError, ExportError, HubReadOnlyError, HubWriteError, DistributedError) == (
        snowhub.BundleError, snowhub.ExportError, snowhub.HubReadOnlyError, snowhub.HubWriteError,
        snowhub.DistributedError)


def test_all_names_what_is_there_and_nothing_private():
    assert len(set(snowhub.__all__)) == len(snowhub.__all__)
    assert all(hasattr(snowhub, name) and not name.startswith("_") or name == "__version__"
               for name in snowhub.__all__)


def test_a_notebook_predicts_pil_images_and_tensors_as_it_predicts_their_files(trained_hub, fashion_dir):
    files = sorted((fashion_dir / "val" / "Bag").glob("*.png"))[:2] + \
        sorted((fashion_dir / "val" / "Trouser").glob("*.png"))[:1]
    with Image.open(files[2]) as opened:  # a grey PNG, as it comes from disk: converted to RGB by predict
        grey = opened.copy()
    rgb = Image.open(files[0]).convert("RGB")
    tensor = torch.from_numpy(np.array(Image.open(files[1]).convert("RGB"))).permute(2, 0, 1).contiguous()
    with Hub.open(trained_hub) as hub:
        from_files = hub.predict(files, top=3, device="cpu")
        in_memory = hub.predict([rgb, tensor, grey], top=3, device="cpu")
        named = hub.predict([rgb], tasks=["fashion"], device="cpu", names=["my bag"])
        assert isinstance(hub.source_record(), SourceRecord)
        assert all(isinstance(t, TaskInfo) for t in hub.tasks())
        with pytest.raises(DataError, match=r"image 0 is a torch.float32 tensor of shape \(3, 28, 28\)"):
            hub.predict([tensor.float()], device="cpu")
        with pytest.raises(DataError, match=r"shape \(28, 28, 3\); give uint8 RGB pixels as \(3, H, W\)"):
            hub.predict([tensor.permute(1, 2, 0)], device="cpu")
        with pytest.raises(ConfigError, match="names has 2 entries for 1 images"):
            hub.predict([rgb], device="cpu", names=["a", "b"])
        with pytest.raises(SnowhubError):  # every error a user causes is one of these
            hub.predict([rgb], tasks=["no-such-task"], device="cpu")
    assert all(isinstance(p, ImagePrediction) for p in in_memory)
    assert [p.tasks for p in in_memory] == [p.tasks for p in from_files]
    assert [p.image for p in in_memory] == ["image 0", "image 1", "image 2"]
    assert [p.image for p in from_files] == [str(f) for f in files]
    assert named[0].image == "my bag" and list(named[0].tasks) == ["fashion"]
    alone, together = named[0].tasks["fashion"], from_files[0].tasks["fashion"]  # all 3 classes, batch of 1 and 3
    assert [label for label, _ in alone] == [label for label, _ in together]
    assert [p for _, p in alone] == pytest.approx([p for _, p in together], abs=1e-4)
    assert from_files[0].tasks["fashion"][0][0] == "Bag" and from_files[2].tasks["fashion"][0][0] == "Trouser"


def test_the_doctor_and_its_report_from_the_top_level(trained_hub):
    report = Hub.doctor(trained_hub)
    assert isinstance(report, DoctorReport) and report.ok and report.tasks == 2
    with pytest.raises(TaskNotFoundError), Hub.open(trained_hub) as hub:
        hub.task("nope")


def test_an_unknown_source_names_every_available_one_and_writes_nothing(tmp_path):
    with pytest.raises(SourceError) as caught:
        Hub.init(tmp_path / "hub", "vgg")
    message = str(caught.value)
    assert message.startswith("unknown source 'vgg'") and "\n" not in message
    assert all(name in message for name in available_sources()) and len(available_sources()) >= 4
    assert not (tmp_path / "hub").exists()


@pytest.mark.parametrize("config, name", [
    (TrainConfig(lr=-1), "lr"), (TrainConfig(batch_size=0), "batch_size"), (TrainConfig(image_size=8), "image_size"),
    (TrainConfig(feature_cache=True), "feature_cache"), (TrainConfig(delta=DeltaConfig(k_ratio=2)), "k_ratio"),
    (TrainConfig(run=RunOptions(num_workers=-1)), "num_workers"),
])
def test_library_errors_name_parameters_and_the_cli_alone_shows_flags(config, name):
    from snowhub_cli.flags import FLAGS, as_flags

    with pytest.raises(ConfigError) as caught:
        config.validate()
    message = str(caught.value)
    assert f"`{name}`" in message and "--" not in message
    assert FLAGS[name] in as_flags(message) and "`" not in as_flags(message)


def test_serve_and_launch_errors_name_parameters_and_serve_prints_its_own_flags():
    from snowhub.serving.http import ServeConfig
    from snowhub.training import check_processes
    from snowhub_cli.flags import SERVE_FLAGS, as_flags

    cases = [(lambda: ServeConfig(threads=0).validate(), "threads", "--threads"),
             (lambda: ServeConfig(max_image_pixels=0).validate(), "max_image_pixels", "--max-image-pixels"),
             (lambda: ServeConfig(tasks=()).validate(), "tasks", "--tasks"),
             (lambda: check_processes(0, "cpu", 0), "processes", "--nproc-per-node")]
    for call, name, flag in cases:
        with pytest.raises(ConfigError) as caught:
            call()
        message = str(caught.value)
        assert f"`{name}`" in message and "--" not in message
        assert as_flags(message, SERVE_FLAGS).startswith(f"{flag} ")


def test_every_flag_the_cli_maps_to_is_an_option_it_has():
    import click
    import typer

    from snowhub_cli.flags import FLAGS, SERVE_FLAGS
    from snowhub_cli.main import app

    def options(command: click.Command) -> set[str]:
        found = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        for sub in getattr(command, "commands", {}).values():
            found |= options(sub)
        return found

    assert (set(FLAGS.values()) | set(SERVE_FLAGS.values())) - options(typer.main.get_command(app)) == set()
