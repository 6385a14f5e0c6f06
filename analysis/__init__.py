"""Analysis of robustgrid results: DuckDB over the Parquet store.

Reads Parquet only; imports neither TensorFlow nor Ray.
"""

from analysis.pareto import hypervolume, nondominated, pareto_front, trial_points
from analysis.query import connect, parquet_glob

__all__ = ["connect", "hypervolume", "nondominated", "pareto_front", "parquet_glob", "trial_points"]
