"""The continual-learning suite, ``python -m benchmarks continual`` (:mod:`benchmarks.continual.suite`)."""

from benchmarks.continual.suite import add_arguments, run

__all__ = ["add_arguments", "run"]
