"""Analysis of robustgrid results: DuckDB over the Parquet store (schema: analysis/SCHEMA.md).

Reads Parquet only; imports neither TensorFlow nor Ray.  Plots live in
``analysis.plots`` (matplotlib), the HTML report in ``analysis.report``.
"""

from analysis import pareto
from analysis.effects import compare_to_baseline, reduction_effects, robustness_curve
from analysis.pareto import hypervolume, nondominated, pareto_front, trial_points
from analysis.query import connect, parquet_glob

__all__ = [
    "compare_to_baseline",
    "connect",
    "hypervolume",
    "nondominated",
    "pareto",
    "pareto_front",
    "parquet_glob",
    "reduction_effects",
    "robustness_curve",
    "trial_points",
]
