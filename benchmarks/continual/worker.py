"""One job of the continual suite in a fresh process: ``python -m benchmarks.continual.worker JOB.json``.

The job file holds ``{"method", "sequence", "folders": [[name, path, hflip], …], "seeds", "epochs", "batch",
"size", "source", "hp", "work", "result"}``; the result (one record per seed, the process's peak memory) is
written as JSON to ``result``. A fresh process per (sequence, method) makes the peak resident memory that
method's own.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from benchmarks.memory import current_rss_mib, peak_rss_mib

RSS_LIBS = current_rss_mib()


def run_job(job: dict) -> dict:
    """Run `job` (the keys above) in this process; ``{"runs": [record per seed], "peak_rss_mib": …}``."""
    from benchmarks.continual.sequences import TaskFolder

    folders = [TaskFolder(name, Path(path), hflip) for name, path, hflip in job["folders"]]
    runs = []
    if job["method"] == "snowhub":
        from benchmarks.continual.snow_side import run_snowhub

        for seed in job["seeds"]:
            runs.append(run_snowhub(job["source"], folders, Path(job["work"]) / f"hub-{seed}", epochs=job["epochs"],
                                    batch=job["batch"], size=job["size"], seed=seed))
    else:
        from benchmarks.backbones import load_pretrained
        from benchmarks.continual.avalanche_side import load_task, run_strategy

        pretrained = load_pretrained(job["source"])
        tasks = [load_task(f, job["size"], pretrained.spec.eval_resize_ratio) for f in folders]
        for seed in job["seeds"]:
            runs.append(run_strategy(job["method"], pretrained, tasks, job["hp"], job["epochs"], job["batch"], seed,
                                     job["size"], upto=job.get("upto")))
    for seed, run in zip(job["seeds"], runs):
        run["seed"] = seed
    return {"runs": runs, "peak_rss_mib": peak_rss_mib() - RSS_LIBS}


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    torch.set_num_threads(job.get("threads", 1))
    result = run_job(job)
    Path(job["result"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
