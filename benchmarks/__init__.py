"""Benchmarks: SNOW against its transfer/lifelong baselines (FO, FE, FT, MP, PN), its serving, export, registry
and distributed costs, and against the paper.

Run ``python -m benchmarks SUITE`` (``python -m benchmarks --help`` lists the suites, e.g. ``methods --config
cpu``); see ``docs/benchmarks.md``.
"""
