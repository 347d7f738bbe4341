"""Claims of ``two_hop_reuse``, each one number per seed (issue 12 item 6), read through
:mod:`analysis.experiments.two_hop_read`.

REUSE-1 is read three ways on the same hops-library models, each against the joint-data
LoRA's composed accuracy (the ceiling): composed minus the other-subject control (the
original reading), the specificity margin on the true composed prompts (broadcast measured
like for like), and conditional composition (the questions whose two hops the reused model
still answers: "knows both, cannot combine"). REUSE-3 (familiarity) and REUSE-OOD (subjects
never inside a pretraining chain, Wang et al. 2024) compare splits on the hops library, where
no expert was trained on the composed questions. A claim whose data is not in the grid
(split O in the quick profile) says so through ``needs`` and gets no verdict.
"""
from __future__ import annotations

import dataclasses

from typing import Callable

from analysis.experiments.two_hop_read import (FORMATS, by_seed, conditional, data_free, method_mean,
                                               model_value, select, splits_of)
from analysis.registry import Ceiling, ClaimMeasure, Result
from analysis.stats import ACCURACY, DIFFERENCE, paired_differences
from analysis.verdict import Claim

MARGIN = 0.1
# A reuse verdict is read against the joint-data LoRA on the same experts' data (issue 12): when it
# answers fewer than half the composed questions, nothing that fine-tunes on this data composes
# either, and the claim is "not testable" here. 0.5 is a convention (half the composed questions).
CEILING = 0.5
# Conditional composition: a model that answers a random one of a split's 8 new answers C gets
# 1/8 of the questions right without composing; 0.25 is twice that (a convention).
CONDITIONAL_MARGIN = 0.25
UNSEEN_TEMPLATE_COMMAND = "lora-limits run two_hop_reuse --set pipeline.base.task.two_hop_ratio=0"
NO_RECIPE_AXIS = ("REUSE-0", "REUSE-4")  # claims judged over all recipes at once (see claims())
OOD_SPLIT, ID_SPLIT = "O", "R"  # O is built like R, with subjects that never start a pretraining chain
OOD_COMMAND = ("lora-limits run two_hop_reuse --set pipeline.base.task.ood_frac=0.2 "
               "--set pipeline.familiarities=R,O")  # in this order: split O needs ood_frac > 0 first


# --- preconditions ----------------------------------------------------------------------

def base_composes(results: list[Result]) -> list[float]:
    """Per seed: the base model's exact match on held-out familiar chains (worst format)."""
    seeds: dict[int, float] = {}
    for r in select(results):
        seeds[r.config.seed] = min(seeds.get(r.config.seed, 1.0), r.result["base"]["final"]["test_id"])
    return list(seeds.values())


def experts_retain(results: list[Result]) -> list[float]:
    """Per seed: the one-hop experts' (AB, BC) exact match on the base's held-out familiar
    chains, the worse expert, mean over splits and formats (are the edits local?)."""
    def worse(r: Result) -> float:
        splits = r.result["splits"].values()
        return min(sum(s["models"][f"single/{e}"]["pretrain_test_id"] for s in splits) / len(splits)
                   for e in ("AB", "BC"))
    return list(by_seed(select(results), worse).values())


# --- REUSE-1: three readings of {AB, BC} reuse --------------------------------------------

def hops_beyond_broadcast(fmt: str) -> Callable[[list[Result]], list[float]]:
    """Per seed: max over data-free methods of (composed - broadcast control) on ``hops``."""
    def measure(results: list[Result]) -> list[float]:
        rs = select(results, fmt)
        return list(by_seed(rs, lambda r: max(model_value(r, f"{m}/hops") - model_value(r, f"{m}/hops", "broadcast")
                                              for m in data_free(rs))).values())
    measure.__name__ = f"hops_beyond_broadcast_{fmt}"
    return measure


def hops_specificity(fmt: str) -> Callable[[list[Result]], list[float]]:
    """Per seed: max over data-free methods of the specificity margin on ``hops`` minus the base
    model's, mean over splits: what reuse adds on the same prompts. The base's own margin is not
    0 where the prompt holds what it knows (in CoT the gold bridge B is teacher forced, and in H
    the fact B r2 -> C is the base's own), as the pretrained PRE-* claims also subtract it."""
    def measure(results: list[Result]) -> list[float]:
        rs = select(results, fmt)
        return list(by_seed(rs, lambda r: max(model_value(r, f"{m}/hops", "margin") for m in data_free(rs))
                            - model_value(r, "base", "margin")).values())
    measure.__name__ = f"hops_specificity_{fmt}"
    return measure


def hops_conditional(fmt: str) -> Callable[[list[Result]], list[float]]:
    """Per seed: conditional composition of data-free reuse on ``hops``, pooled over the data-free
    methods and the splits (right / n); a seed where no method answers both hops of any question
    gives no value (the per-method counts are in the detail line). Pooled, not the max over
    methods: a method counts 0-18 questions per seed, and a max over such ratios sits at 1 as soon
    as one method answers 1 of 1."""
    def measure(results: list[Result]) -> list[float]:
        rs, seeds = select(results, fmt), {}
        for r in rs:
            for m in data_free(rs):
                right, n = conditional(r, f"{m}/hops")
                k, total = seeds.get(r.config.seed, (0.0, 0))
                seeds[r.config.seed] = (k + right, total + n)
        return [k / n for _, (k, n) in sorted(seeds.items()) if n]
    measure.__name__ = f"hops_conditional_{fmt}"
    return measure


def conditional_needs(fmt: str) -> Callable[[list[Result]], str | None]:
    def needs(results: list[Result]) -> str | None:
        if hops_conditional(fmt)(results):
            return None
        return (f"no data-free {{AB, BC}} model ({fmt}) answers both one-hop facts of any composed question, so "
                "conditional composition has no question to count")
    return needs


def joint_ceiling(fmt: str, familiarities: tuple[str, ...] | None = None) -> Ceiling:
    """The joint-data LoRA on {AB, BC}'s data: composed accuracy per seed, mean over the splits named
    (default every split of the result)."""
    where = "mean over F/H/R" if familiarities is None else "/".join(familiarities)
    def measure(results: list[Result]) -> list[float]:
        return list(by_seed(select(results, fmt), lambda r: model_value(r, "joint/hops", "composed",
                                                                         familiarities)).values())
    return Ceiling(f"joint/hops composed accuracy ({fmt}, {where})", measure, CEILING)


def reuse_detail(fmt: str) -> Callable[[list[Result]], str]:
    """Every REUSE-1 reading side by side per model on ``hops`` (mean over seeds and F/H/R;
    conditional pooled over seeds and splits as right / n)."""
    def detail(results: list[Result]) -> str:
        rs = select(results, fmt)
        rows = []
        for model in ["base", "joint/hops"] + [f"{m}/hops" for m in data_free(rs)]:
            mean = {w: sum(model_value(r, model, w) for r in rs) / len(rs)
                    for w in ("composed", "broadcast", "margin", "right", "wrong", "retention")}
            right, n = map(sum, zip(*(conditional(r, model) for r in rs)))
            rows.append(f"{model}: composed {mean['composed']:.2f}, broadcast {mean['broadcast']:.2f}, margin "
                        f"{mean['margin']:.3f} (P right {mean['right']:.3f}, wrong {mean['wrong']:.3f}), conditional "
                        f"{right:.0f}/{n}, retention of AB, BC {mean['retention']:.2f}")
        forced = " (CoT: P read after the gold bridge B, i.e. the second hop with B in context)" * (fmt == "cot")
        return f"{fmt}, mean over {len(rs)} seeds and F/H/R{forced}: " + "; ".join(rows)
    return detail


# --- library, familiarity, OOD and templates ------------------------------------------------

def ac_gain(results: list[Result]) -> list[float]:
    """Per seed: mean data-free composed accuracy, with_AC minus hops (both formats)."""
    return list(by_seed(select(results), lambda r: method_mean(r, "with_AC") - method_mean(r, "hops")).values())


def split_gap(fmt: str, high: str, low: str) -> Callable[[list[Result]], list[float]]:
    """Per seed: mean data-free composed accuracy of ``hops``, split ``high`` minus split ``low``."""
    def measure(results: list[Result]) -> list[float]:
        rs = select(results, fmt)
        return list(by_seed(rs, lambda r: method_mean(r, "hops", [high]) - method_mean(r, "hops", [low])).values())
    measure.__name__ = f"split_gap_{fmt}_{high}_{low}"
    return measure


def split_detail(fmt: str, splits: tuple[str, ...]) -> Callable[[list[Result]], str]:
    """Per split: composed accuracy and one-hop retention of the data-free methods (mean) and of
    the joint LoRA, and the base model's own held-out composition where the split records it."""
    def detail(results: list[Result]) -> str:
        rs, parts = select(results, fmt), []
        for f in splits:
            def mean(value):
                return sum(value(r) for r in rs) / len(rs)
            base = rs[0].result["splits"][f]["models"]["base"]
            own = "pretrain_test_ood" if f == OOD_SPLIT and "pretrain_test_ood" in base else "pretrain_test_id"
            parts.append(f"{f}: reuse composed {mean(lambda r: method_mean(r, 'hops', [f])):.2f} (retention "
                         f"{mean(lambda r: method_mean(r, 'hops', [f], 'retention')):.2f}), joint "
                         f"{mean(lambda r: model_value(r, 'joint/hops', 'composed', [f])):.2f}, base on its held-out "
                         f"chains ({own.removeprefix('pretrain_')}) {mean(lambda r: r.result['splits'][f]['models']['base'][own]):.2f}")
        return f"{fmt}, mean over {len(rs)} seeds: " + "; ".join(parts)
    return detail


def ood_needs(fmt: str) -> Callable[[list[Result]], str | None]:
    def needs(results: list[Result]) -> str | None:
        have = splits_of(select(results, fmt))
        if OOD_SPLIT in have and ID_SPLIT in have:
            return None
        return (f"split {OOD_SPLIT} (OOD subjects) is not in these results (splits {', '.join(have) or 'none'}): "
                f"run a grid with it, e.g. `{OOD_COMMAND}`")
    return needs


def recipe_of(r: Result) -> str:
    """The fine-tune recipe a result was trained with (``TwoHopReuseConfig.recipe``): the
    report's recipe axis (a verdict per recipe, and whether the claim holds in all)."""
    return r.config.recipe


def template_gain(results: list[Result]) -> list[float]:
    """Per seed: mean data-free composed accuracy of hops, shared templates minus main, main
    read in the recipes the shared condition ran (the grid runs shared in one recipe only)."""
    shared = select(results, condition="shared")
    recipes = {recipe_of(r) for r in shared}
    on = by_seed(shared, lambda r: method_mean(r, "hops"))
    off = by_seed([r for r in select(results) if recipe_of(r) in recipes], lambda r: method_mean(r, "hops"))
    return paired_differences(on, off)


def template_confound(results: list[Result]) -> str:
    """REUSE-4's confound (issue 12): how much of the template the base saw in pretraining."""
    task = results[0].config.pipeline.base.task
    seen = (f"{1 - task.heldout_frac:.0%} of the in-distribution two-hop chains" if task.two_hop_ratio is None
            else f"{task.two_hop_ratio:g} two-hop chains per atomic fact")
    return (f"the base models were pretrained on {seen}, in the same 'X r1 r2' template the shared examples use, "
            "so 'shared' adds a template the base already knew (issue 12); a base that never saw a two-hop chain is "
            f"opt-in, not in this grid: `{UNSEEN_TEMPLATE_COMMAND}` (that base cannot compose by construction, so "
            "REUSE-0 fails there and REUSE-4 asks whether the shared examples alone teach the template)")


# --- the claim table ------------------------------------------------------------------------

def claims() -> tuple[ClaimMeasure, ...]:
    bars, lib, tmpl = ("two_hop_methods",), ("two_hop_libraries",), ("two_hop_templates",)
    spec, cond, ret, ood = ("two_hop_specificity",), ("two_hop_conditional",), ("two_hop_retention",), ("two_hop_ood",)
    rows = [ClaimMeasure(Claim(
        "REUSE-0", "the base model composes: it answers held-out two-hop questions about familiar entities "
        "(precondition of the reuse test)", "base exact match on held-out chains (worse format)", "above", 0.9,
        "0.9 is the bar the base recipe was built to clear (presets.quick_base: >= 90% exact match on held-out "
        "chains), a convention for 'composes' far above chance (1 / #entities)"),
        base_composes, bounds=ACCURACY),  # no figure: two_hop_methods' "base" bar is the NEW composed questions, not these
        ClaimMeasure(Claim(
            "REUSE-0L", "the one-hop experts keep the base model's ability to compose familiar chains (the edits "
            "are local; precondition)", "worse of AB, BC: exact match on held-out familiar chains", "above", 0.8,
            "a convention: 0.8 lets an expert lose about 0.1 of the base's ~0.9 held-out accuracy (about one "
            "chain in ten) before its edit counts as not local"),
            experts_retain, bounds=ACCURACY)]  # no figure plots the experts' held-out accuracy
    for fmt in FORMATS:
        forced = (" (teacher forced after the gold bridge B: in CoT this reads the second hop with B in context, "
                  "not the model's own bridge)") * (fmt == "cot")
        rows += [
            ClaimMeasure(Claim(
                f"REUSE-1-{fmt}", f"no data-free merge or routing of the one-hop experts {{AB, BC}} answers the "
                f"composed questions beyond the broadcast control ({fmt} format)",
                "max over data-free methods of (composed accuracy - broadcast-control rate), hops library, "
                "mean over F/H/R", "below", MARGIN,
                f"a convention: {MARGIN:g} is just under one composed question of a split's 8 (0.125); an excess "
                "over the broadcast control smaller than that, averaged over F/H/R, is not counted as composition"),
                hops_beyond_broadcast(fmt), bars + ret, reuse_detail(fmt), DIFFERENCE, joint_ceiling(fmt)),
            ClaimMeasure(Claim(
                f"REUSE-1-{fmt}-specificity", f"on the true composed prompts, no data-free merge or routing of "
                f"{{AB, BC}} gives the right new answer C_i more probability than the other questions' new answers "
                f"C_j ({fmt} format; broadcast measured like for like)",
                f"max over data-free methods of the specificity margin P(C_i) - mean P(C_j), hops library, minus "
                f"the base model's margin, mean over F/H/R{forced}", "below", MARGIN,
                f"a convention: {MARGIN:g} of probability more on the right than on a wrong new answer is a tenth "
                "of what a model that composes perfectly and broadcasts nothing shows (margin 1); an edit that "
                "broadcasts its answers has margin <= 0"),
                hops_specificity(fmt), spec, reuse_detail(fmt), DIFFERENCE, joint_ceiling(fmt)),
            ClaimMeasure(Claim(
                f"REUSE-1-{fmt}-conditional", f"knows both hops, cannot combine them: data-free reuse of {{AB, BC}} "
                f"does not answer the composed questions whose two one-hop facts the same model answers ({fmt})",
                "composed accuracy over the questions whose AB and BC facts the reused model answers, pooled over "
                "the data-free methods and F/H/R", "below",
                CONDITIONAL_MARGIN,
                f"a convention: {CONDITIONAL_MARGIN:g} is twice the 1/8 a model gets by answering a random one of "
                "a split's 8 new answers C (pure broadcast, no composition)"),
                hops_conditional(fmt), cond, reuse_detail(fmt), ACCURACY, joint_ceiling(fmt),
                needs=conditional_needs(fmt)),
        ]
    rows.append(ClaimMeasure(Claim(
        "REUSE-2", "including the target-task expert AC is necessary: reuse with AC answers far more composed "
        "questions than {AB, BC} alone", "with_AC - hops composed accuracy (mean over data-free methods, F/H/R, "
        "formats)", "above", MARGIN, f"a convention for 'far more': {MARGIN:g} is just under one composed "
        "question of a split's 8 (0.125), averaged over methods, splits and formats"), ac_gain, lib, bounds=DIFFERENCE))
    for fmt in FORMATS:
        rows += [
            ClaimMeasure(Claim(
                f"REUSE-3-{fmt}", f"unfamiliar entities (F) compose worse than familiar ones (R) when {{AB, BC}} "
                f"are reused ({fmt}; no expert saw the composed questions)",
                "R - F composed accuracy of hops reuse (mean over data-free methods)", "above", 0.05,
                "a convention: 0.05 is under one composed question of a split's 8 (0.125), so a gap of one "
                "question per split counts"),
                split_gap(fmt, "R", "F"), ret, split_detail(fmt, ("R", "F")), DIFFERENCE,
                joint_ceiling(fmt, (ID_SPLIT,))),
        ]
    for fmt in FORMATS:
        rows += [
            ClaimMeasure(Claim(
                f"REUSE-OOD-{fmt}", f"subjects whose facts were pretrained but that never start a pretraining chain "
                f"(O, Wang et al. 2024) compose worse than in-distribution ones (R) when {{AB, BC}} are reused "
                f"({fmt})", "R - O composed accuracy of hops reuse (mean over data-free methods)", "above", 0.05,
                "the scale of REUSE-3: 0.05 is under one composed question of a split's 8 (0.125), a convention"),
                split_gap(fmt, ID_SPLIT, OOD_SPLIT), ood, split_detail(fmt, (ID_SPLIT, OOD_SPLIT)), DIFFERENCE,
                joint_ceiling(fmt, (ID_SPLIT,)), needs=ood_needs(fmt)),
        ]
    rows.append(ClaimMeasure(Claim(
        "REUSE-4", "shared templates (two-hop examples over other entities in the AB and BC data) raise reuse "
        "accuracy of {AB, BC}", "shared - main composed accuracy of hops (mean over data-free methods, F/H/R, "
        "formats)", "above", 0.05, "a convention: 0.05 is about one more composed question of the 24 a format "
        "asks per seed (8 per split x F/H/R; 1/24 = 0.042), averaged over methods"),
        template_gain, tmpl, template_confound, DIFFERENCE))
    # the recipe axis for every claim on fine-tuned models; REUSE-0 reads the base alone, and
    # REUSE-4's shared condition runs in one recipe (template_gain pairs it within that recipe)
    return tuple(m if m.claim.id in NO_RECIPE_AXIS else dataclasses.replace(m, recipe=recipe_of) for m in rows)
