"""Inputs for tests/test_figures.py: every figure function with small inputs to draw it from.

Synthetic results are shaped like what each experiment's ``run`` returns (seeded; three seeds,
so 95% intervals are wide and leave [0, 1]; one all-zero panel where the real runs have one);
the theory figures draw from real checks at 20 instances, the ``inspect`` figures from random
in-memory adapters.
"""
from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch

from analysis import registry
from analysis.registry import Result

SEEDS = (0, 1, 2)


# --- synthetic results, shaped like each experiment's ``run`` output ---------------------------

def _rates(rng, n: int, zero: bool = False) -> list[float]:
    return [0.0] * n if zero else rng.uniform(0, 1, n).round(3).tolist()


@cache
def mechanism_results() -> list[Result]:
    """Latent F: the logit lens finds the new bridge nowhere (an all-zero panel, as measured)."""
    from analysis.experiments import mechanism
    from toymodels.pipeline import LIBRARIES

    rng, out = np.random.default_rng(0), []
    for c in mechanism.grid("quick"):
        L, libs = c.pipeline.base.model.n_layers, list(LIBRARIES)
        names = ["base", "single/AB", "single/BC", "single/AC"] + [f"{m}/{lib}" for m in c.methods for lib in libs]
        tokens = ["BOS", "A", "r1", "r2", "SEP"] + (["B"] if c.fmt == "cot" else [])
        res = {"fmt": c.fmt, "familiarity": c.familiarity, "seed": c.seed, "n_layers": L, "tokens": tokens,
               "probe_chance": None if c.familiarity == "F" else 1 / 24, "models": {}, "router": {}}
        for name in names:
            m = {"composed": float(rng.uniform()), "broadcast": float(rng.uniform()),
                 "lens_bridge_top1": _rates(rng, L + 1, zero=(c.fmt, c.familiarity) == ("latent", "F")),
                 "keys": {k: rng.normal(0.5, 0.4, L).tolist() for k in ("two_hop", "two_hop_unpaired", "one_hop",
                                                                         "control")}}
            if c.familiarity != "F":
                m["probe_bridge_acc"] = _rates(rng, L + 1)
            res["models"][name] = m
        roles = ["q", "k", "v", "o", "mlp_in", "mlp_out"]
        for lib in libs:
            n = len(LIBRARIES[lib])
            weights = rng.dirichlet(np.ones(n), size=(len(roles) * L, len(tokens)))  # (P, T, n)
            res["router"][f"arrow/{lib}"] = {"roles": [r for r in roles for _ in range(L)],
                                             "layers": [i for _ in roles for i in range(L)],
                                             "mean": weights.tolist(), "adapters": list(LIBRARIES[lib])}
        out.append(Result(c.key(), c, res))
    return out


def _two_hop_scores(rng, zero: bool, experts: tuple[str, ...]) -> dict:
    """One model's scores on one split, with every metric the two-hop figures read."""
    n = int(rng.integers(0, 9))
    right = 0.0 if zero else float(rng.uniform(0, 0.9))
    return {"composed": 0.0 if zero else float(rng.uniform()), "pretrain_test_id": 0.9, "pretrain_test_ood": 0.4,
            "broadcast": {"composed": 0.0 if zero else float(rng.uniform(0, 0.5))},
            "facts": {e: float(rng.uniform()) for e in experts},
            "specificity": {"right": right, "wrong": right / 4, "margin": right * 3 / 4},
            "conditional": {"composed": None if zero or n == 0 else float(rng.integers(0, n + 1) / n),
                            "n": 0 if zero else n}}


@cache
def two_hop_results() -> list[Result]:
    """Latent F: every model answers nothing (an all-zero panel); only the CoT results have the
    OOD split O (the figures say where a split is missing)."""
    from analysis.experiments import two_hop_reuse as th

    rng, out = np.random.default_rng(1), []
    for c in th.grid("quick"):
        methods = c.pipeline.methods
        names = (["base", "single/AB", "single/BC", "single/AC", "joint/hops", "joint/with_AC"]
                 + [f"{m}/{lib}" for m in methods for lib in ("hops", "with_AC")])
        splits = {}
        for fam in ("F", "H", "R") + (("O",) if c.fmt == "cot" else ()):
            zero = (c.fmt, fam) == ("latent", "F")
            models = {n: _two_hop_scores(rng, zero, ("AB", "BC", "AC", "D0", "D1")) for n in names}
            splits[fam] = {"r1": 0, "r2": 1, "n_composed": 16, "models": models, "experts": {},
                           "chance": {"composed": 1 / 160, "broadcast": {"AC": 0.05, "BC": 0.05}}}
        res = {"fmt": c.fmt, "condition": c.condition, "seed": c.seed, "base_seed": 0,
               "base": {"steps": 100, "seconds": 1.0, "reached_target": True, "final": {"test_id": 0.95}},
               "splits": splits}
        out.append(Result(c.key(), c, res))
    return out


@cache
def rank_depth_results() -> list[Result]:
    from analysis.experiments import rank_depth as rd

    rng, out, n = np.random.default_rng(2), [], 16
    for depth in (1, 2):
        base = rd.sweep_base(depth, "quick")
        for rank in (1, 2, 4):
            for seed in SEEDS:
                c = rd.point(base, rank, seed, "quick")
                models = {"single/AB": {"composed": 0.0, "facts": 1.0, "broadcast": {"composed": 0.0}}}
                models |= {f"{m}/{lib}": {"composed": float(rng.uniform()), "facts": 1.0,
                                          "broadcast": {"composed": float(rng.uniform(0, 0.5))}}
                           for m in ("average", "arrow", "joint") for lib in ("hops", "with_AC")}
                capacity = {"n_facts": n, "bound": min(rank, n), "recalled_trained": int(rng.integers(0, n + 1)),
                            "recalled_construction": int(rng.integers(0, n + 1)), "norm_required": 2.0,
                            "error_trained": float(rng.uniform(1, 10)), "ey_tail": float(2 / (1 + rank))}
                res = {"rank": rank, "depth": depth, "seed": seed, "fmt": "cot",
                       "base": {"test_id": float(rng.uniform(0.9, 1)), "atomic": 1.0, "steps": 100,
                                "reached_target": True},
                       "capacity": capacity,
                       "reuse": {fam: {"n_composed": 16, "chance": 1 / 64, "models": models} for fam in ("F", "R")}}
                out.append(Result(c.key(), c, res))
    return out


@cache
def pretrained_results() -> list[Result]:
    from analysis.experiments import pretrained_two_hop as pt

    rng, fams = np.random.default_rng(3), ("F", "H", "R")
    order = ["base", "single/AB", "single/BC", "single/AC", "joint/hops", "joint/with_AC",
             "average/hops", "arrow/hops", "average/with_AC", "arrow/with_AC"]
    res = {"model": "tiny (synthetic)", "seed": 0, "familiarity": {"exact": 0.6},
           "r_split": {"countries": 10, "requested": 12, "known_only": True}, "order": order,
           "table": {m: {f: {"composed": float(rng.uniform()), "logprob": -1.0, "one_hop": 0.9} for f in fams}
                     for m in order},
           "broadcast": {m: {f: {"BC": float(rng.uniform(0, 0.3)), "AC": 0.1} for f in fams} for m in order},
           "chance": {f: {"BC": 0.05, "AC": 0.05} for f in fams}}
    c = pt.grid("quick")[0]
    return [Result(c.key(), c, res)]


@cache
def pretrained_peft_results() -> list[Result]:
    """pretrained_peft, two seeds x two backends; PEFT's numbers a small perturbation of ours."""
    from analysis.experiments import pretrained_peft as pp

    rng, fams, out = np.random.default_rng(6), ("F", "H", "R"), []
    models = ["base", "single/AB", "joint/hops", "average/hops", "arrow/with_AC"]
    tables = {}
    for c in pp.grid("quick"):
        ours = tables.setdefault(c.seed, {m: {f: {"composed": float(rng.uniform()),
                                                  "specificity": {"logprob_margin": float(rng.uniform(-2, 3))}}
                                              for f in fams} for m in models})
        table = ours if c.lora_backend == "ours" else {
            m: {f: {"composed": min(1.0, v["composed"] + float(rng.choice([0.0, 1 / 24]))),
                    "specificity": {"logprob_margin": v["specificity"]["logprob_margin"] + float(rng.normal(0, 0.05))}}
                for f, v in row.items()} for m, row in ours.items()}
        out.append(Result(c.key(), c, {"model": "tiny (synthetic)", "seed": c.seed, "table": table}))
    return out


@cache
def qa_results() -> list[Result]:
    """qa_reuse, two seeds; OOD has no broadcast (no expert learned an answer for it)."""
    from analysis.experiments import qa_reuse as qa

    rng, out = np.random.default_rng(4), []
    models = ["base", "single/AB", "single/BC", "single/AC", "joint/hops", "average/hops", "arrow/hops",
              "joint/with_AC", "average/with_AC", "arrow/with_AC"]
    for c in qa.grid("quick"):
        def split(sp):
            s = {"composed": float(rng.uniform()), "composed_logprob": -float(rng.uniform(1, 5)),
                 "specificity": {"margin": float(rng.uniform(-0.3, 0.6))}}
            return s if sp == "OOD" else dict(s, broadcast={"BC": float(rng.uniform(0, 0.3)), "AC": 0.1})
        protocol = {"config": {"methods": ["average", "arrow"]},
                    "models": {m: {"splits": {sp: split(sp) for sp in ("F", "H", "R", "OOD")}} for m in models},
                    "splits": {sp: {"composed": 4} for sp in ("F", "H", "R", "OOD")}}
        out.append(Result(c.key(), c, {"model": "tiny (synthetic)", "seed": c.seed, "protocol": protocol}))
    return out


@cache
def math_reuse_results() -> list[Result]:
    from analysis.experiments import math_reuse as mr

    rng, out = np.random.default_rng(3), []
    for c in mr.grid("quick"):
        names = (["base", "single/facts", "single/procedure", "single/composed", "single/D0"]
                 + [f"{m}/{lib}" for m in ("joint",) + c.run.methods for lib in ("skills", "with_composed")])
        templates = {t: {"n_composed": 16, "chance": {"composed": 0.01}, "experts": {},
                         "models": {n: {"composed": float(rng.uniform()),
                                        "broadcast": {"composed": float(rng.uniform(0, 0.3))}} for n in names}}
                     for t in c.templates}
        res = {"seed": c.seed, "templates": templates,
               "base": {"precondition": {"atomic": 0.98, "context_test": 0.95, "memory_test": 0.9}}}
        out.append(Result(c.key(), c, res))
    return out


@cache
def code_reuse_results() -> list[Result]:
    """Both styles, three seeds; the broadcast control of every model is 0 in one style's panel."""
    from analysis.experiments import code_reuse as cr

    rng, out = np.random.default_rng(0), []
    for c in cr.grid("quick"):
        ms = c.reuse.methods
        names = ["base", "single/semantics", "single/syntax", "single/composed", "single/D0", "joint/skills",
                 "joint/with_composed"] + [f"{m}/{lib}" for m in ms for lib in ("skills", "with_composed")]
        styles = {}
        for style in c.styles:
            models = {n: {"composed": float(rng.uniform(0, 1)), "composed_exec": float(rng.uniform(0, 1)),
                          "composed_logprob": float(-rng.uniform(0, 20)),
                          "broadcast": {"composed": float(rng.uniform(0, 0.3)) * (style == "call")},
                          "conditional": {"composed": float(rng.uniform(0, 1)), "n": 4},
                          "specificity": {"right": 0.5, "wrong": 0.1, "margin": 0.4}} for n in names}
            styles[style] = {"n_composed": 8, "tasks": {}, "experts": {}, "models": models,
                             "chance": {"composed": 0.01, "broadcast": {"composed": 0.08}}}
        out.append(Result(c.key(), c, {"seed": c.seed, "base": {"steps": 10, "seconds": 1.0, "reached_target": False,
                                                                  "final": {}},
                                         "precondition": {"cross_test": float(rng.uniform(0.5, 1))}, "styles": styles}))
    return out


@cache
def pretrained_code_results() -> list[Result]:
    """pretrained_code, two seeds; JavaScript exact match 0 in one seed (as a weak base gives)."""
    from analysis.experiments import pretrained_code as pcode

    rng, out = np.random.default_rng(5), []
    for c in pcode.grid("quick"):
        langs = {lang: {"exact": float(rng.uniform(0, 0.6)) * (lang == "python" or c.seed == 0),
                        "logprob": -float(rng.uniform(5, 30)), "logprob_per_token": -float(rng.uniform(0.2, 2)),
                        "answer_tokens": 18.0, "by_ops": {"1": 0.3, "2": 0.1}} for lang in ("python", "javascript")}
        scores = {"n_programs": 48, "config": {"n_shots": 3}, "languages": langs}
        out.append(Result(c.key(), c, {"model": "tiny (synthetic)", "seed": c.seed, "scores": scores}))
    return out


@cache
def pretrained_math_results() -> list[Result]:
    """pretrained_math, three seeds; the gate low (as SmolLM2's) and every control 0 in the
    different-template panel (an all-zero series, not an all-zero panel)."""
    from analysis.experiments import pretrained_math as pmath

    rng, out = np.random.default_rng(6), []
    for c in pmath.grid("quick"):
        names = ["base", "single/facts", "single/procedure", "joint/skills"] + [f"{m}/skills" for m in c.run.methods]
        templates = {t: {"n_composed": 10, "n_control": 10, "experts": {},
                         "models": {n: {"composed": float(rng.uniform(0, 0.6)),
                                        "broadcast": {"composed": float(rng.uniform(0, 0.3)) * (t == "same")}}
                                    for n in names}} for t in c.run.templates}
        gate = {"exact": float(rng.uniform(0, 0.2)), "problems": 24, "by_steps": {"1": 0.3, "2": 0.0}}
        out.append(Result(c.key(), c, {"model": "tiny (synthetic)", "seed": c.seed, "templates": templates,
                                       "protocol": {"gate": gate}}))
    return out


SYNTHETIC = {"mechanism": mechanism_results, "two_hop_reuse": two_hop_results, "rank_depth": rank_depth_results,
             "pretrained_two_hop": pretrained_results, "qa_reuse": qa_results, "math_reuse": math_reuse_results,
             "code_reuse": code_reuse_results, "pretrained_code": pretrained_code_results,
             "pretrained_peft": pretrained_peft_results, "pretrained_math": pretrained_math_results}


@cache
def theory_checks(claim_id: str):
    from theory.claims import ClaimSettings, run_claims

    torch.set_num_threads(1)
    return run_claims([claim_id], ClaimSettings(instances=20, seed=0))


@cache
def inspect_report() -> dict:
    from analysis.inspect_adapters import PeftAdapter, inspect
    from theory.merge import Factors

    gen, paths = torch.Generator().manual_seed(0), ["layers.0.q", "layers.1.q"]
    adapters = [PeftAdapter(name, None, {}, {p: Factors(A=torch.randn(3, 10, generator=gen),
                                                         B=torch.randn(12, 3, generator=gen), scale=0.5)
                                              for p in paths}) for name in ("AB", "BC", "AC")]
    return inspect(adapters)


def cases():
    """``pytest.param(name, fn, inputs)`` for every figure; ``inputs()`` builds (and caches) its input."""
    from analysis.figures import inspect as inspect_figures
    from analysis.figures.theory import theory_figures

    for experiment in registry.experiments().values():
        for name, fn in experiment.figures.items():
            yield pytest.param(name, fn, lambda e=experiment.name: SYNTHETIC[e](), id=name)
    for name, claim_id, fn in theory_figures():
        yield pytest.param(name, fn, lambda c=claim_id: theory_checks(c), id=name)
    for name, fn in inspect_figures.FIGURES:
        yield pytest.param(name, fn, inspect_report, id=name)
