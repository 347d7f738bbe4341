"""Side-by-side benchmarks (issue 11): every number is a ratio of two things measured in the
same run. Run them with ``lora-limits bench [--quick] [--json]``; results are written to
``bench/results/<machine>.json``. :mod:`bench.suite` lists the benchmarks."""

# The benchmarks in run order (:func:`bench.suite.benchmarks` maps each to its function).
NAMES = ("toy_step", "stacked_adapters", "stacked_bases", "hf_lora_tiny", "hf_lora_smollm2", "svd", "t2")
