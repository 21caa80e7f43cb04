"""Independent judged benchmarks: Arena-Hard-Auto, MT-Bench and AlpacaEval style protocols.

``eva bench`` runs one suite on one model; a run's ``evaluation.benchmarks`` run it as the
``benchmark`` step of every iteration. Importing the package is cheap: the judge client and
the generation backends are loaded when used.
"""

from eva_runtime.spec import BENCH_SUITES as SUITES

__all__ = ["SUITES"]
