"""The numbers the reuse protocol produced before it was factored into one module (issue 10),
and the cache keys of every experiment's grids: both must survive any refactor unchanged.
Regenerated once since, on purpose: the one seed rule (``toymodels/seeds.py``, CACHE_VERSION 2)
gave every LoRA, merge, split and base its own stream, which changes every draw.

``python tests/protocol_regression.py`` rewrites ``tests/fixtures/protocol_regression.json``
from the code as it is; do that only when a change of numbers is intended and explained.
Timings (``seconds``) are dropped; everything else is kept.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

FIXTURE = Path(__file__).parent / "fixtures" / "protocol_regression.json"
PRETRAINED_METHODS = ("average", "sum", "ties", "dare", "svd", "factor_average", "lorahub", "arrow", "oracle")


def strip(value):
    """``value`` without timings, with tuples as lists (what JSON gives back)."""
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, (list, tuple)):
        return [strip(v) for v in value]
    return value


def toy_runs() -> dict:
    """The tests' toy pipeline, both formats, every split (minutes: the slow test)."""
    from toymodels import presets
    from toymodels.pipeline import run_two_hop

    return {fmt: strip(run_two_hop(presets.tiny_two_hop(fmt), seed=0, device="cpu")) for fmt in ("latent", "cot")}


def toy_run_r() -> dict:
    """One split (R) of the CoT toy pipeline: every protocol step, in seconds (the default test)."""
    import dataclasses

    from toymodels import presets
    from toymodels.pipeline import run_two_hop

    return strip(run_two_hop(dataclasses.replace(presets.tiny_two_hop("cot"), familiarities=("R",)), seed=0,
                             device="cpu"))


def pretrained_run() -> dict:
    from tests.test_pretrained import word_tokenizer
    from toymodels.lora import LoRAConfig
    from toymodels.pretrained import tiny_llama
    from toymodels.pretrained_two_hop import PretrainedTwoHopConfig, draw_chains, run_pretrained_two_hop
    from toymodels.scoring import ReuseOptions
    from toymodels.tasks import natural
    from toymodels.tasks.natural import NaturalConfig, eval_pairs, expert_pairs
    from toymodels.train import TrainConfig

    cfg = PretrainedTwoHopConfig(
        task=NaturalConfig(n_countries=1, cities_per_country=2, relations2=("capital",)),
        lora=LoRAConfig(rank=2, targets=("q", "down")),
        finetune=TrainConfig(steps=3, batch_size=4, lr=1e-2, warmup_steps=0, eval_every=1, weight_decay=0.0,
                             target_acc=1.0, target_set="facts"),
        methods=PRETRAINED_METHODS, reuse=ReuseOptions(lorahub_budget=3), familiarity_facts=2, n_control=3)
    chains = draw_chains(cfg.task, 0)
    pairs = [p for ps in [*expert_pairs(chains).values(), *eval_pairs(chains).values()] for p in ps]
    words = {w for p, a in pairs + natural.known_fact_pairs(2) for w in (p + a).split()}
    model = tiny_llama(torch.Generator().manual_seed(0), vocab=len(words) + 1)
    return strip(run_pretrained_two_hop(cfg, model, word_tokenizer(sorted(words)), seed=0))


def grid_keys() -> dict:
    from analysis import registry

    return {name: {profile: [c.key() for c in exp.configs(profile)] for profile in registry.PROFILES}
            for name, exp in registry.experiments(include_hidden=True).items()}


def compute() -> dict:
    return {"toy_two_hop": toy_runs(), "toy_two_hop_cot_R": toy_run_r(), "pretrained_two_hop": pretrained_run(),
            "grid_keys": grid_keys()}


def differences(want, got, path: str = "", tol: float = 1e-6, new_keys: bool = False) -> list[str]:
    """Where ``got`` differs from ``want``: floats beyond ``tol`` relative to ``max(1, |want|)``
    (float32 rounding of a log-probability; NaN equals NaN), anything else unequal. With
    ``new_keys``, dict keys that ``want`` lacks are allowed (outputs may gain metrics)."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = [f"{path}/{k}: missing" for k in want if k not in got]
        out += [] if new_keys else [f"{path}/{k}: unexpected" for k in got if k not in want]
        return out + [d for k in want if k in got for d in differences(want[k], got[k], f"{path}/{k}", tol, new_keys)]
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return [f"{path}: length {len(got)} != {len(want)}"]
        return [d for i, (w, g) in enumerate(zip(want, got)) for d in differences(w, g, f"{path}[{i}]", tol, new_keys)]
    if isinstance(want, float) or isinstance(got, float):
        if isinstance(want, bool) or isinstance(got, bool) or not isinstance(got, (int, float)):
            return [f"{path}: {got!r} != {want!r}"]
        if math.isnan(want) and math.isnan(got) or abs(want - got) <= tol * max(1.0, abs(want)):
            return []
        return [f"{path}: {got!r} != {want!r}"]
    return [] if want == got else [f"{path}: {got!r} != {want!r}"]


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).parent.parent))
    torch.set_num_threads(1)  # as tests/conftest.py: float sums in the same order
    FIXTURE.write_text(json.dumps(compute(), indent=1, sort_keys=True, allow_nan=True) + "\n")
