"""``python -m autotune``: per-shape tuning of tritonconv's kernels into the persistent cache."""
