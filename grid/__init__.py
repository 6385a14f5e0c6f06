"""The grid: study files -> Ray Tune trials -> Parquet.  Knows Ray Tune, not TensorFlow."""
