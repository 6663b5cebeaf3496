"""Research behind docs/benchmarks.md's analysis, apart from the benchmark suites: candidate product changes
patched in from the outside (``python -m benchmarks experiment``), several seeds read back side by side
(``seeds``), one training step broken into parts (``profile``), and the pruned-copy initialisation of issue 14.
"""
