"""Benchmarks: SNOW against its transfer/lifelong baselines (FO, FE, FT, MP, PN) and against the paper.

Run ``python -m benchmarks.run --config cpu`` (or ``smoke``, ``gpu``); see ``docs/benchmarks.md``.
"""
