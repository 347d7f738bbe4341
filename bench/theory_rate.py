"""Theory checks per second: T2 instances (``theory.t2.run_t2``, every reuse method, all four
prompts), batched as the ``theory`` verb runs them, against one instance per call."""
from __future__ import annotations

import torch

from bench.measure import Row, interleaved
from theory.t2 import T2Config, run_t2


def t2(device: torch.device, quick: bool) -> list[Row]:
    cfg, n, m = T2Config(), (100 if quick else 1000), (10 if quick else 100)
    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `lora-limits theory` runs the claims (tiny matrices: threads cost more)
    try:
        t = interleaved({"batched": lambda: run_t2(cfg, n, g), "single": lambda: [run_t2(cfg, 1, g) for _ in range(m)]},
                        repeats=2 if quick else 5, device=torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    return [Row("t2_instances", n / t["batched"], m / t["single"], "instances/s", None,
                f"T2Config() defaults, {n} instances per call, 1 thread (as the theory verb); "
                "reference: one instance per call")]
