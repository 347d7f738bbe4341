"""``pretrained_peft``: PEFT as a cross-check of our hand-written LoRA on the pretrained model
(issue 13 item 5). Each seed of ``pretrained_two_hop``'s grid runs twice, the LoRAs trained by
our ``LoRALinear`` (``lora_backend=ours``) and by PEFT's ``get_peft_model``
(``lora_backend=peft``) on the same data, seeds and inits; everything after training (merges,
routing, scoring) is the same code. On a tiny random Llama the two agree to float rounding
(``tests/test_peft_backend.py``); here the question is whether they still agree on SmolLM2,
where float-order differences in the gradients can grow over a run.

The ``ours`` configs are exactly ``pretrained_two_hop``'s (same config, same cache key): a
record that ``pretrained_two_hop`` already holds in the same results folder is reused, not
recomputed (so ``make pretrained`` followed by this experiment trains only the PEFT runs).

``reproduce_profiles = ("paper",)``, as for the other SmolLM2 experiments.

Claims (one number per seed, the two backends paired by seed):

- ``PEFT-1-logprob``: the largest disagreement, over every scored model (base, single experts,
  joint LoRAs, every reuse method on both libraries) and split, of the specificity log-prob
  margin (the measure of PRE-1-*-logprob), is below PRE-1's margin;
- ``PEFT-1-exact``: the same for composed exact match, below PRE-1's exact margin.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from analysis.cache import ResultCache
from analysis.experiments import pretrained_two_hop as two_hop
from analysis.experiments.pretrained_claims import EXACT_MARGIN, LOGPROB_MARGIN, MIN_UNITS
from analysis.figures.pretrained_peft import BACKENDS, backend_figure, paired_values
from analysis.registry import ClaimMeasure, Experiment, Result, register
from analysis.stats import ACCURACY
from analysis.tables import print_table
from analysis.verdict import Claim

FIGURE = ("pretrained_peft",)


def grid(profile: str) -> list[two_hop.PretrainedRunConfig]:
    return [replace(c, lora_backend=b) for c in two_hop.grid(profile) for b in BACKENDS]


def run(config: two_hop.PretrainedRunConfig, device: str, results: Path | str) -> dict:
    """``pretrained_two_hop``'s cached result for an ``ours`` config when it is there, else
    a fresh run of that experiment's ``run``."""
    if config.lora_backend == "ours":
        record = ResultCache(results, two_hop.EXPERIMENT.name).load(config.key(), config)
        if record is not None:
            return record["result"]
    return two_hop.run(config, device, results)


def disagreement(metric: str):
    """Per seed: max over models and splits of |peft - ours| of ``metric``; seeds missing a
    backend give no value."""
    def per_seed(results: list[Result]) -> list[float]:
        out = []
        for seed, pairs in sorted(paired_values(results, metric).items()):
            if pairs:
                out.append(float(max(abs(p - o) for o, p in pairs)))
        return out
    return per_seed


def detail(results: list[Result]) -> str:
    seeds = {b: sorted(r.config.seed for r in results if r.config.lora_backend == b) for b in BACKENDS}
    power = "" if len(seeds["peft"]) >= MIN_UNITS else \
        f"underpowered: {len(seeds['peft'])} paired seed(s), fewer than {MIN_UNITS}; "
    pairs = paired_values(results, "composed")
    n = sum(len(p) for p in pairs.values())
    same = sum(o == p for ps in pairs.values() for o, p in ps)
    return (f"{power}seeds per backend {seeds}; composed exact match identical in {same} of {n} "
            f"(model, split, seed) cells")


def claims() -> tuple[ClaimMeasure, ...]:
    return (
        ClaimMeasure(Claim(
            "PEFT-1-logprob", "PEFT's LoRA gives the same reuse results as ours on SmolLM2: no scored model "
            "(base, experts, joint LoRAs, every reuse method) differs in specificity by PRE-1's margin",
            "max over models and splits of |peft - ours| specificity logprob_margin", "below", LOGPROB_MARGIN,
            f"PRE-1-*-logprob's margin ({LOGPROB_MARGIN:g} nats): a smaller disagreement cannot change one of "
            "those verdicts by itself"),
            disagreement("logprob_margin"), FIGURE, detail),
        ClaimMeasure(Claim(
            "PEFT-1-exact", "PEFT's LoRA gives the same composed exact match as ours on SmolLM2 for every scored "
            "model and split", "max over models and splits of |peft - ours| composed exact match", "below",
            EXACT_MARGIN, f"PRE-1-*-exact's margin ({EXACT_MARGIN:g}: just over one composed question of 24)"),
            disagreement("composed"), FIGURE, detail, bounds=ACCURACY),
    )


def print_all(results: list[Result], out=None) -> None:
    for metric in ("composed", "logprob_margin"):
        pairs = paired_values(results, metric)
        rows = [[seed, len(ps), f"{max(abs(p - o) for o, p in ps):.4f}" if ps else "-",
                 f"{np.mean([p - o for o, p in ps]):+.4f}" if ps else "-"] for seed, ps in sorted(pairs.items())]
        print(f"\nPEFT vs ours, {metric}: per seed, cells compared, max |peft - ours|, mean peft - ours", file=out)
        print_table(["seed", "cells", "max |diff|", "mean diff"], rows, out=out, rule=True)


EXPERIMENT = register(Experiment(
    name="pretrained_peft",
    description="PEFT's LoRA vs ours on the pretrained two-hop protocol (same data, seeds, inits); "
                "reproduce: paper profile only",
    grid=grid,
    run=run,
    figures={"pretrained_peft": backend_figure},
    claims=claims(),
    reproduce_profiles=("paper",),
    preflight=two_hop.preflight,
    summary=print_all,
))
