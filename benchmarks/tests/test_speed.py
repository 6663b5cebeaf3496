"""The ``paper-cpu`` configuration's speed jobs (issue 15): a few timed steps per method and batch size on
random images, one fresh process each, and their report section."""

from __future__ import annotations

import pytest
import torch

from benchmarks.backbones import load_pretrained
from benchmarks.configs import CONFIGS, Job, plan
from benchmarks.report import speed_section
from benchmarks.speed import run_speed, speed_analysis
from snowhub.progress import SilentProgress


def test_paper_cpu_plans_every_method_at_batch_32_and_the_low_memory_variants():
    config = CONFIGS["paper-cpu"]
    assert (config.source, config.image_size, config.weights) == ("resnet50", 224, "random")
    jobs = plan(config)
    assert [(j.kind, j.method, j.batch) for j in jobs[:5]] == [("speed", m, 32) for m in ("FO", "FE", "FT", "MP", "SNOW")]
    variants = ("--low-memory off", "bfloat16 source")  # SNOW itself: add-task's default, --low-memory auto
    assert [(j.label, j.batch) for j in jobs[5:-1]] == [(f"SNOW {v} · batch 32", 32) for v in variants]
    assert jobs[-1].kind == "serve" and len({j.key for j in jobs}) == len(jobs)
    assert Job.from_dict(jobs[3].to_dict()) == jobs[3]


def test_speed_jobs_measure_steps_and_the_report_gives_the_ratios():
    """Tiny geometry (resnet18 with random weights, 32 px, batch 4): every method trains; the report
    puts SNOW ÷ FT and FT ÷ SNOW memory per batch size beside the paper's Table 7."""
    config = CONFIGS["paper-cpu"].replace(source="resnet18", image_size=32, speed_steps=1, skip_steps=1,
                                          device="cpu")
    pretrained = load_pretrained("resnet18", random_weights=True)
    assert pretrained.origin == "random"
    results = []
    for method, mib in (("FT", 400.0), ("SNOW", 100.0)):
        r = run_speed(config, Job("speed", method, batch=4), pretrained, torch.device("cpu"), SilentProgress())
        assert r["images_per_s"] == pytest.approx(4 * r["steps"] / r["seconds"]) and r["seconds"] > 0
        assert len(r["losses"]) == 2 and all(v == v for v in r["losses"])
        r |= {"job": Job("speed", method, batch=4).to_dict()}
        r["memory"] |= {"training_mib": mib, "rss_peak_mib": mib + 50}
        results.append(r)
    assert results[1]["params"]["trainable"] < results[0]["params"]["trainable"] / 5
    analysis = speed_analysis(results)
    assert analysis["4"]["ratios"]["ft_over_snow_memory"] == 4.0
    assert analysis["4"]["ratios"]["snow_over_ft_images_per_s"] == pytest.approx(
        results[1]["images_per_s"] / results[0]["images_per_s"])
    text = "\n".join(speed_section(analysis))
    assert "FT ÷ SNOW memory **4.00×**" in text and "### batch 4" in text
