"""The one benchmark entry point: ``python -m benchmarks SUITE [options]`` (``--help`` after a suite for its own).

Every suite writes ``results.json`` (one envelope, :mod:`benchmarks.output`) and ``results.md`` into its run
folder, by default ``benchmarks/results/<suite>-<date>-<time>/``. The research tools behind
docs/benchmarks.md's analysis (``benchmarks/research/``) are suites too.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# suite: (module, one line). Modules are imported only when their suite runs (each pulls in torch, ONNX, ...).
SUITES: dict[str, tuple[str, str]] = {
    "methods": ("benchmarks.run", "SNOW against FO, FE, FT, MP, PN: a configuration's jobs (--config smoke, cpu, "
                                  "cpu-long, gpu), each in a fresh worker process"),
    "paper-cpu": ("benchmarks.run", "the methods suite at the paper's geometry (ResNet-50, 224 px, random weights): "
                                    "speed, memory and serving, no accuracy"),
    "serving": ("benchmarks.run", "the methods suite's serving job alone: source + N tasks, SNOW against FE and FT"),
    "serving-http": ("benchmarks.serving_http", "snowhub serve under load: requests/s, p50/p99, batching on/off"),
    "export": ("benchmarks.export", "ONNX Runtime against PyTorch on the exported graph"),
    "registry": ("benchmarks.registry", "list/show on 1,000 and 10,000 tasks, SQLite and PostgreSQL"),
    "distributed": ("benchmarks.distributed", "one add-task on 1, 2, ... processes (DistributedDataParallel)"),
    "feature-cache": ("benchmarks.feature_cache", "FT/FE/FO and SNOW with and without --cache-features, in one process"),
    "evaluate": ("benchmarks.evaluate", "snowhub evaluate against the in-process Predictor and Hub.predict on "
                                        "1,000 labelled images, and the CLI's start-up (issues 26, 29)"),
    "report": ("benchmarks.report", "re-render a methods run's results.md and figures from its results.json"),
    "experiment": ("benchmarks.research.experiments", "research: SNOW with one candidate product change patched in"),
    "seeds": ("benchmarks.research.seeds", "research: several seeds side by side (mean, spread, time to accuracy)"),
    "profile": ("benchmarks.research.profile_snow", "research: where one training step of FT and of SNOW goes"),
    "continual": ("benchmarks.continual", "snowhub beside Avalanche's continual-learning strategies: accuracy "
                                          "matrices, BWT, forgetting, cost per task (issue 29)"),
    "front": ("benchmarks.research.front", "research: top-1 against parameters per task, every method and SNOW "
                                           "budget, several seeds (issue 28)"),
}


def _usage() -> str:
    width = max(map(len, SUITES))
    lines = [__doc__.split("\n\n")[0], "", "usage: python -m benchmarks SUITE [options]", "", "suites:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in SUITES.items()]
    return "\n".join(lines + ["", "python -m benchmarks SUITE --help: the suite's options"]) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run suite ``argv[0]`` with the rest of `argv`; its exit status (2 with usage on a bad suite)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(_usage())
        return 0 if argv else 2
    suite, rest = argv[0], argv[1:]
    if suite not in SUITES:
        sys.stderr.write(f"error: unknown suite {suite!r}; choose one of: {', '.join(SUITES)}\n")
        return 2
    module_name, summary = SUITES[suite]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks {suite}", description=summary)
    module.add_arguments(parser, suite)
    args = parser.parse_args(rest)
    args.suite, args.argv = suite, rest
    return module.run(args)


if __name__ == "__main__":
    sys.exit(main())
