"""Analysis of robustgrid results: DuckDB over the Parquet store (schema: analysis/SCHEMA.md).

Reads Parquet only; imports neither TensorFlow nor Ray.  Plots live in
``analysis.plots`` (matplotlib), the HTML report in ``analysis.report``, the
statistics (Wilson, McNemar, corrected t, Holm) in ``analysis.inference``.
"""

from analysis import pareto
from analysis.assignments import per_layer
from analysis.baseline import compare_to_baseline
from analysis.effects import (
    jr_effects,
    reduction_effects,
    robustness_curve,
)
from analysis.inference import corrected_t, holm, mcnemar_exact, wilson
from analysis.paired import mcnemar
from analysis.pareto import hypervolume, nondominated, pareto_front, resolve, trial_points
from analysis.query import connect, parquet_glob, stale_keys

__all__ = [
    "compare_to_baseline",
    "connect",
    "corrected_t",
    "holm",
    "hypervolume",
    "jr_effects",
    "mcnemar",
    "mcnemar_exact",
    "nondominated",
    "pareto",
    "pareto_front",
    "parquet_glob",
    "per_layer",
    "reduction_effects",
    "resolve",
    "robustness_curve",
    "stale_keys",
    "trial_points",
    "wilson",
]
