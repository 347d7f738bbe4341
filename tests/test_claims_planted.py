"""Every registered claim's verdict flips with planted data (issue 12, item 6).

Generic part, for EVERY claim in the registry (new claims join automatically): per-seed values
planted on the claimed side of the margin give "supported", the same values reflected about
the margin give "not supported"; where the metric's range is symmetric, flipping the measure's
sign flips the verdict; two seeds, one shared base model, or a zero-width interval give
"underpowered"; a ceiling under its threshold gives "not testable". The numbers go through
the report's own path (:func:`analysis.report.judge_measure`: the claim, its bounds, its
ceiling, the units), with the claim's ``per_seed`` replaced by the planted values.

Then a few ``per_seed`` functions on small hand-made result dicts, where a sign error in the
measure itself would hide (REUSE-2's with_AC - hops was such a gap): swapping the two sides of
the measure negates it and flips the verdict.
"""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from analysis import registry
from analysis.experiments.mechanism_claims import bridge_inside, old_bridge_seen, probe_bridge_inside
from analysis.experiments.rank_depth import best_hops_reuse, capacity_growth, reuse_rank_gain
from analysis.experiments.two_hop_claims import (OOD_COMMAND, UNSEEN_TEMPLATE_COMMAND, ac_gain, template_confound,
                                                 template_gain)
from analysis.registry import Ceiling, ClaimMeasure, Result
from analysis.report import judge_measure, missing, questions_per_split
from analysis.verdict import NOT_SUPPORTED, NOT_TESTABLE, SUPPORTED, UNDERPOWERED

MEASURES = [m for e in registry.experiments(include_hidden=True).values() for m in e.claims]
IDS = [m.claim.id for m in MEASURES]
NOISE = np.array([0.9, -1.3, 0.4, 1.6, -0.2, -1.4])  # 6 seeds, zero mean, all within +-2


def _step(measure: ClaimMeasure) -> float:
    """How far from the margin to plant: 0.05, or less where the metric's range ends sooner."""
    lowest, highest = measure.bounds
    margin = measure.claim.margin
    return min(0.05, (margin - lowest) / 2, (highest - margin) / 2)


def _claimed_side(measure: ClaimMeasure) -> float:
    return -1.0 if measure.claim.direction == "below" else 1.0


def _planted(measure: ClaimMeasure, values, base_seeds=None, ceiling=None):
    """The report's verdict on planted per-seed ``values`` (one config per seed). ``ceiling``: the
    planted ceiling's distance above its threshold; a claim that has a ceiling gets one that
    holds (+0.1) unless told otherwise."""
    if ceiling is None and measure.ceiling is not None:
        ceiling = 0.1
    configs = [SimpleNamespace(seed=s) if base_seeds is None else SimpleNamespace(seed=s, base_seed=base_seeds[s])
               for s in range(len(values))]
    results = [Result(str(s), c, {}) for s, c in enumerate(configs)]
    fields = {"per_seed": lambda rs: list(values)}
    if ceiling is not None:
        threshold = measure.ceiling.threshold if measure.ceiling is not None else 0.5
        fields["ceiling"] = Ceiling("planted ceiling", lambda rs: [threshold + ceiling] * len(values), threshold)
    return judge_measure(dataclasses.replace(measure, **fields), results)[0]


def _values(measure: ClaimMeasure, centre: float) -> list[float]:
    return list(centre + _step(measure) / 10 * NOISE)


def test_every_registered_experiment_with_claims_is_covered():
    assert len(MEASURES) >= 16 and len(set(IDS)) == len(IDS)
    assert {"REUSE-2", "REUSE-4", "RD-1", "MECH-2", "SELFTEST-1"} <= set(IDS)


@pytest.mark.parametrize("measure", MEASURES, ids=IDS)
def test_claimed_side_is_supported_and_its_mirror_image_is_not(measure):
    margin, side = measure.claim.margin, _claimed_side(measure)
    claimed = _values(measure, margin + side * _step(measure))
    mirrored = [2 * margin - v for v in claimed]
    assert _planted(measure, claimed).outcome == SUPPORTED
    assert _planted(measure, mirrored).outcome == NOT_SUPPORTED


SYMMETRIC = [m for m in MEASURES if m.bounds[0] == -m.bounds[1]]


@pytest.mark.parametrize("measure", SYMMETRIC, ids=[m.claim.id for m in SYMMETRIC])
def test_flipping_the_sign_of_the_measure_flips_the_verdict(measure):
    """Values of size |margin| + step on the claimed side: their negatives lie on the other side."""
    side = _claimed_side(measure)
    values = _values(measure, side * (abs(measure.claim.margin) + 0.05))
    assert _planted(measure, values).outcome == SUPPORTED
    assert _planted(measure, [-v for v in values]).outcome == NOT_SUPPORTED


@pytest.mark.parametrize("measure", MEASURES, ids=IDS)
def test_too_few_independent_units_or_no_spread_is_underpowered(measure):
    claimed = _values(measure, measure.claim.margin + _claimed_side(measure) * _step(measure))
    assert _planted(measure, claimed[:2]).outcome == UNDERPOWERED
    assert _planted(measure, claimed, base_seeds=[0, 0, 0, 1, 1, 1]).outcome == UNDERPOWERED
    assert _planted(measure, claimed, base_seeds=[0, 1, 2, 0, 1, 2]).outcome == SUPPORTED
    assert _planted(measure, [claimed[0]] * 6).outcome == UNDERPOWERED


@pytest.mark.parametrize("measure", MEASURES, ids=IDS)
def test_a_ceiling_under_its_threshold_makes_the_claim_not_testable(measure):
    """The claim's own ceiling threshold where it has one, else a planted one."""
    claimed = _values(measure, measure.claim.margin + _claimed_side(measure) * _step(measure))
    assert _planted(measure, claimed, ceiling=-0.01).outcome == NOT_TESTABLE
    assert _planted(measure, claimed, ceiling=+0.01).outcome == SUPPORTED


# --- per_seed functions on hand-made results ---------------------------------------------------

REUSE = {m.claim.id: m for m in registry.get("two_hop_reuse").claims}


def _two_hop(seed: int, scores: dict[str, float], condition: str = "main", fmt: str = "latent",
             recipe: str = "memorised") -> Result:
    """One two_hop_reuse result: each model's composed accuracy, the same on F, H and R."""
    config = SimpleNamespace(seed=seed, fmt=fmt, condition=condition, recipe=recipe,
                             pipeline=SimpleNamespace(methods=("average", "ties", "joint")))
    models = {name: {"composed": acc, "broadcast": {"composed": 0.0}} for name, acc in scores.items()}
    return Result(f"{seed}-{condition}-{fmt}-{recipe}", config, {"splits": {f: {"models": models} for f in "FHR"}})


def _libraries(with_ac: float, hops: float) -> dict[str, float]:
    return {"average/with_AC": with_ac, "ties/with_AC": with_ac, "average/hops": hops, "ties/hops": hops,
            "joint/with_AC": 0.0, "joint/hops": 1.0}  # joint is not data-free: left out of the measure


def test_reuse_2_measure_is_with_ac_minus_hops_and_its_sign_flip_flips_the_verdict():
    def results(swap: bool):
        out = []
        for s in range(4):
            with_ac, hops = 0.6 + 0.01 * s, 0.1  # seeds differ, so the interval has width
            out += [_two_hop(s, _libraries(*((hops, with_ac) if swap else (with_ac, hops))), fmt=fmt)
                    for fmt in ("latent", "cot")]
        return out

    gain, loss = ac_gain(results(False)), ac_gain(results(True))
    np.testing.assert_allclose(gain, [0.5 + 0.01 * s for s in range(4)], atol=1e-12)
    np.testing.assert_allclose(loss, [-g for g in gain], atol=1e-12)
    measure = REUSE["REUSE-2"]
    assert measure.per_seed is ac_gain
    assert judge_measure(measure, results(False))[0].outcome == SUPPORTED
    assert judge_measure(measure, results(True))[0].outcome == NOT_SUPPORTED


def test_reuse_2_gain_is_per_seed_not_pooled():
    """Seed s gains 0.1 * s: the measure keeps the seeds apart, in seed order."""
    rs = [_two_hop(s, {"average/hops": 0.2, "ties/hops": 0.2, "average/with_AC": 0.2 + 0.1 * s,
                       "ties/with_AC": 0.2 + 0.1 * s}) for s in (2, 0, 1)]
    np.testing.assert_allclose(ac_gain(rs), [0.0, 0.1, 0.2], atol=1e-12)


def test_reuse_4_measure_is_shared_minus_main_and_its_sign_flip_flips_the_verdict():
    def results(shared, main):
        return [_two_hop(s, {"average/hops": acc + 0.01 * s, "ties/hops": acc}, condition)
                for s in range(4) for condition, acc in (("shared", shared), ("main", main))]

    up, down = template_gain(results(0.5, 0.2)), template_gain(results(0.2, 0.5))
    np.testing.assert_allclose(up, [0.3] * 4, atol=1e-12)
    np.testing.assert_allclose(down, [-0.3] * 4, atol=1e-12)
    measure = REUSE["REUSE-4"]
    assert measure.per_seed is template_gain
    def fifth(shared, main):  # a fifth seed whose gain is 0.325, not 0.3, so the interval has width
        return [_two_hop(9, {"average/hops": shared + 0.05, "ties/hops": shared}, "shared"),
                _two_hop(9, {"average/hops": main + 0.05, "ties/hops": main})]

    assert judge_measure(measure, results(0.5, 0.2) + fifth(0.525, 0.2))[0].outcome == SUPPORTED
    assert judge_measure(measure, results(0.2, 0.5) + fifth(0.2, 0.525))[0].outcome == NOT_SUPPORTED


def test_reuse_4_pairs_shared_with_main_of_the_same_recipe():
    """The grid runs "shared" in one recipe: main results of other recipes must not enter the gain."""
    rs = [_two_hop(s, {"average/hops": 0.5 + 0.01 * s, "ties/hops": 0.5}, "shared") for s in range(3)]
    rs += [_two_hop(s, {"average/hops": 0.2, "ties/hops": 0.2}) for s in range(3)]
    other = [_two_hop(s, {"average/hops": 0.9, "ties/hops": 0.9}, recipe="fixed300_r8") for s in range(3)]
    np.testing.assert_allclose(template_gain(rs + other), [0.3, 0.305, 0.31], atol=1e-12)


def test_recipe_axis_gives_a_verdict_per_recipe_and_robust_only_if_all_hold():
    """REUSE-2 on hand-made results in two recipes: supported in both reads robust; reuse that
    gains in one recipe and not the other reads "not robust"; one recipe alone is no axis."""
    from analysis.report import _recipes, recipe_verdicts

    measure = REUSE["REUSE-2"]
    assert measure.recipe is not None and REUSE["REUSE-0"].recipe is None and REUSE["REUSE-4"].recipe is None

    def results(recipe: str, gain: float):
        return [_two_hop(s, _libraries(0.2 + gain + 0.01 * s, 0.2), recipe=recipe) for s in range(4)]

    both = recipe_verdicts(measure, results("memorised", 0.3) + results("fixed300_r8", 0.3))
    assert set(both) == {"memorised", "fixed300_r8"} and _recipes(both) == "robust"
    split = recipe_verdicts(measure, results("memorised", 0.3) + results("fixed300_r8", -0.3))
    assert split["memorised"].outcome == SUPPORTED and split["fixed300_r8"].outcome == NOT_SUPPORTED
    assert _recipes(split) == "not robust (1 of 2 recipes supported)"
    assert recipe_verdicts(measure, results("memorised", 0.3)) == {}


def _capacity(seed: int, depth: int, rank: int, recalled: int) -> Result:
    return Result(f"{seed}{depth}{rank}", None, {"seed": seed, "depth": depth, "rank": rank,
                                                 "capacity": {"recalled_trained": recalled, "n_facts": 64}})


def test_rd_1_measure_is_largest_minus_smallest_rank_and_its_sign_flip_flips_the_verdict():
    def results(at_1, at_64):
        return [_capacity(s, d, r, n + s) for s in range(4) for d in (1, 2) for r, n in ((1, at_1), (64, at_64))]

    grows, shrinks = capacity_growth(results(2, 50)), capacity_growth(results(50, 2))
    np.testing.assert_allclose(grows, [48 / 64] * 4)
    np.testing.assert_allclose(shrinks, [-48 / 64] * 4)
    measure = next(m for m in registry.get("rank_depth").claims if m.claim.id == "RD-1")
    assert measure.per_seed is capacity_growth
    spread = [_capacity(7, 1, 1, 2), _capacity(7, 1, 64, 40)]  # a fifth seed grows by 38, not 48
    assert judge_measure(measure, results(2, 50) + spread)[0].outcome == SUPPORTED
    flipped = [_capacity(7, 1, 1, 40), _capacity(7, 1, 64, 2)]
    assert judge_measure(measure, results(50, 2) + flipped)[0].outcome == NOT_SUPPORTED


def _lens(seed, shares, fmt="latent", familiarity="F", old=(0.0, 0.0, 0.0, 0.0)):
    """One mechanism result: average/hops's new-bridge lens shares, the base's old-bridge shares (R)."""
    config = SimpleNamespace(seed=seed, fmt=fmt, familiarity=familiarity)
    models = {"average/hops": {"lens_bridge_top1": shares, "probe_bridge_acc": [0.0, 0.1, 0.1, 0.0],
                               "lens_old_bridge_top1": [0.0] * 4},
              "base": {"lens_old_bridge_top1": list(old), "probe_old_bridge_acc": [0.0, 0.5, 0.6, 0.7]}}
    models |= {name: {"lens_bridge_top1": [0.0] * 4, "probe_bridge_acc": [0.0] * 4, "composed": 1.0}
               for name in ("single/AB", "single/AC")}
    return Result(f"{seed}{fmt}{familiarity}", config, {"models": models, "probe_chance": 0.125})


def test_mech_2_measure_reads_the_inner_layers_of_the_latent_format():
    """Max over inner layers (first and last left out) of the bridge's logit-lens share, latent only."""
    seen = (0.0, 0.9, 0.2, 0.0)  # the positive control holds: the lens finds the base's own bridge
    low = [_lens(s, [0.9, 0.05 + 0.01 * s, 0.0, 0.9], familiarity="R", old=seen) for s in range(4)]
    low += [_lens(0, [0.0, 1.0, 1.0, 0.0], "cot", "R", seen)]
    np.testing.assert_allclose(bridge_inside(low), [0.05, 0.06, 0.07, 0.08])
    measure = next(m for m in registry.get("mechanism").claims if m.claim.id == "MECH-2")
    assert measure.per_seed is bridge_inside
    assert judge_measure(measure, low)[0].outcome == SUPPORTED
    high = [_lens(s, [0.0, 0.5 + 0.01 * s, 0.1, 0.0], familiarity="R", old=seen) for s in range(4)]
    assert judge_measure(measure, high)[0].outcome == NOT_SUPPORTED


def test_mech_2_positive_control_is_the_base_finding_its_own_bridge():
    """MECH-2 is read against the lens finding the OLD bridge r1(A) in the base (latent R, inner
    layers): a lens that misses it makes the claim not testable, whatever the new bridge does."""
    measure = next(m for m in registry.get("mechanism").claims if m.claim.id == "MECH-2")
    assert measure.ceiling.per_seed.__name__ == "old_bridge_seen_lens"
    def results(old):
        return [_lens(s, [0.0, 0.05 + 0.01 * s, 0.0, 0.0], familiarity=f, old=old)
                for s in range(4) for f in ("F", "R")]
    blind, sees = (0.9, 0.1, 0.2, 0.9), (0.0, 0.1, 0.4, 0.0)  # outer layers do not count
    np.testing.assert_allclose(old_bridge_seen("lens")(results(sees)), [0.4] * 4)
    assert judge_measure(measure, results(blind))[0].outcome == NOT_TESTABLE
    assert judge_measure(measure, results(sees))[0].outcome == SUPPORTED
    assert "in the base 0.40 (the lens's positive control)" in measure.detail(results(sees))


def _reuse_point(seed: int, depth: int, rank: int, reuse: float, joint: float) -> Result:
    """One rank_depth point: every method's and the joint LoRA's composed accuracy, both libraries."""
    models = {f"{m}/{lib}": {"composed": value} for lib in ("hops", "with_AC")
              for m, value in (("average", reuse), ("arrow", reuse / 2), ("joint", joint))}
    return Result(f"{seed}{depth}{rank}", None, {"seed": seed, "depth": depth, "rank": rank,
                                                 "reuse": {f: {"models": models, "n_composed": 8} for f in "FR"}})


@pytest.mark.parametrize("claim_id", ["RD-4", "RD-5"])
def test_rd_4_and_rd_5_are_read_against_the_joint_lora(claim_id):
    """Reuse failing at every rank says nothing when the joint-data LoRA fails there too: under
    the 0.5 ceiling the verdict is not testable; with the ceiling reached the same reuse numbers
    give the claim's verdict, and raising reuse flips it."""
    measure = next(m for m in registry.get("rank_depth").claims if m.claim.id == claim_id)
    def results(reuse_at_64, joint):
        return [_reuse_point(s, d, r, (0.05 + 0.01 * s) if r == 1 else reuse_at_64 + 0.01 * s, joint)
                for s in range(4) for d in (1, 2) for r in (1, 64)]
    np.testing.assert_allclose(best_hops_reuse(results(0.1, 0.9)), [0.1, 0.11, 0.12, 0.13])
    np.testing.assert_allclose(reuse_rank_gain(results(0.1, 0.9)), [0.05] * 4)  # best method, both libraries
    np.testing.assert_allclose(measure.ceiling.per_seed(results(0.1, 0.03)), [0.03] * 4)
    assert judge_measure(measure, results(0.1, 0.03))[0].outcome == NOT_TESTABLE
    assert judge_measure(measure, results(0.1, 0.9))[0].outcome == SUPPORTED
    assert judge_measure(measure, results(0.9, 0.9))[0].outcome == NOT_SUPPORTED


def test_rank_depth_claims_state_their_questions():
    """Capacity claims count the edits on one matrix; reuse claims the composed questions per split."""
    rows = [Result("a", None, {"capacity": {"n_facts": 64}, "reuse": {"F": {"n_composed": 8}, "R": {"n_composed": 8}}}),
            Result("b", None, {"capacity": {"n_facts": 64}, "reuse": {"F": {"n_composed": 6}, "R": {"n_composed": 9}}})]
    by_id = {m.claim.id: m for m in registry.get("rank_depth").claims}
    assert {i: questions_per_split(by_id[i], rows) for i in ("RD-1", "RD-2", "RD-3", "RD-4", "RD-5")} == {
        "RD-1": "edits on one matrix 64", "RD-2": "edits on one matrix 64", "RD-3": "edits on one matrix 64",
        "RD-4": "F 6, R 8", "RD-5": "F 6, R 8"}


# --- the issue-12 restatements of two_hop_reuse's claims, on hand-made results -----------------

def _scored(composed=0.0, right=0.0, wrong=0.0, known=0, answered=0, retention=1.0) -> dict:
    """One model's scores on one split: ``known`` questions with both hops answered, ``answered`` of them composed."""
    return {"composed": composed, "broadcast": {"composed": 0.0}, "facts": {"AB": retention, "BC": retention},
            "specificity": {"right": right, "wrong": wrong, "margin": right - wrong},
            "conditional": {"composed": answered / known if known else None, "n": known},
            "pretrain_test_id": 0.9, "pretrain_test_ood": 0.5}


def _run(seed: int, splits: dict[str, dict[str, dict]], fmt: str = "latent") -> Result:
    """One two_hop_reuse result with the given ``{split: {model: scores}}`` (methods average, ties)."""
    config = SimpleNamespace(seed=seed, fmt=fmt, condition="main",
                             pipeline=SimpleNamespace(methods=("average", "ties"), base=None))
    return Result(f"{seed}-{fmt}", config, {"splits": {f: {"models": m} for f, m in splits.items()}})


def _every(fams: str, **models: dict) -> dict[str, dict[str, dict]]:
    base = {"base": _scored(), "joint/hops": _scored(composed=1.0, right=0.9, known=8, answered=8)}
    return {f: base | {name.replace("_", "/"): scores for name, scores in models.items()} for f in fams}


@pytest.mark.parametrize("fmt", ["latent", "cot"])
def test_reuse_1_specificity_reads_the_margin_and_its_sign_flip_flips_the_verdict(fmt):
    """Per seed the best method's P(right) - P(wrong); swapping right and wrong negates it."""
    measure = REUSE[f"REUSE-1-{fmt}-specificity"]
    def results(swap: bool):
        out = []
        for s in range(4):
            right, wrong = 0.6 + 0.01 * s, 0.1
            if swap:
                right, wrong = wrong, right
            out.append(_run(s, _every("FHR", average_hops=_scored(right=right, wrong=wrong),
                                      ties_hops=_scored(right=0.0, wrong=0.7)), fmt))  # ties: always the lower
        return out
    np.testing.assert_allclose(measure.per_seed(results(False)), [0.5 + 0.01 * s for s in range(4)])
    np.testing.assert_allclose(measure.per_seed(results(True)), [-0.5 - 0.01 * s for s in range(4)])
    assert judge_measure(measure, results(False))[0].outcome == NOT_SUPPORTED  # composes: P(right) >> P(wrong)
    assert judge_measure(measure, results(True))[0].outcome == SUPPORTED  # broadcasts: the margin is negative
    known = results(False)  # the base already puts 0.45 more on the right answer (e.g. CoT's forced bridge)
    for r in known:
        for split in r.result["splits"].values():
            split["models"]["base"] = _scored(right=0.5, wrong=0.05)
    np.testing.assert_allclose(measure.per_seed(known), [0.05 + 0.01 * s for s in range(4)])


@pytest.mark.parametrize("fmt", ["latent", "cot"])
def test_reuse_1_conditional_pools_the_known_questions_and_flips_with_them(fmt):
    measure = REUSE[f"REUSE-1-{fmt}-conditional"]
    def results(answered):  # average knows 4 chains per split and answers ``answered`` (+1 in seed 3's R)
        return [_run(s, {f: _every(f, average_hops=_scored(known=4, answered=answered + (s == 3 and f == "R")),
                                   ties_hops=_scored(known=0))[f] for f in "FHR"}, fmt) for s in range(4)]
    fails, composes = results(0), results(3)
    np.testing.assert_allclose(measure.per_seed(fails), [0, 0, 0, 1 / 12])
    np.testing.assert_allclose(measure.per_seed(composes), [0.75, 0.75, 0.75, 10 / 12])
    assert judge_measure(measure, fails)[0].outcome == SUPPORTED
    assert judge_measure(measure, composes)[0].outcome == NOT_SUPPORTED
    assert missing(measure, fails) is None
    nobody = [_run(s, _every("FHR", average_hops=_scored(), ties_hops=_scored()), fmt) for s in range(4)]
    assert measure.per_seed(nobody) == [] and "no data-free" in missing(measure, nobody)


def _split_results(fmt, high_split, low_split, high, low):
    return [_run(s, {high_split: _every(high_split, average_hops=_scored(composed=high + 0.02 * s),
                                        ties_hops=_scored(composed=high))[high_split],
                     low_split: _every(low_split, average_hops=_scored(composed=low),
                                       ties_hops=_scored(composed=low))[low_split]}, fmt) for s in range(4)]


@pytest.mark.parametrize("fmt", ["latent", "cot"])
@pytest.mark.parametrize("claim,low_split", [("REUSE-3", "F"), ("REUSE-OOD", "O")])
def test_split_gaps_are_r_minus_the_other_split_on_hops_and_flip_with_it(claim, low_split, fmt):
    measure = REUSE[f"{claim}-{fmt}"]
    worse = _split_results(fmt, "R", low_split, 0.6, 0.1)  # the other split composes worse: the claim
    np.testing.assert_allclose(measure.per_seed(worse), [0.5 + 0.01 * s for s in range(4)])
    assert judge_measure(measure, worse)[0].outcome == SUPPORTED
    better = [_run(s, {"R": r.result["splits"][low_split]["models"], low_split: r.result["splits"]["R"]["models"]},
                   fmt) for s, r in enumerate(worse)]  # the two splits swapped
    np.testing.assert_allclose(measure.per_seed(better), [-0.5 - 0.01 * s for s in range(4)])
    assert judge_measure(measure, better)[0].outcome == NOT_SUPPORTED
    assert missing(measure, worse) is None


@pytest.mark.parametrize("fmt", ["latent", "cot"])
def test_reuse_ood_is_not_measured_without_split_o_and_says_how_to_get_it(fmt):
    measure = REUSE[f"REUSE-OOD-{fmt}"]
    without = _split_results(fmt, "R", "F", 0.6, 0.1)
    why = missing(measure, without)
    assert why.startswith("split O (OOD subjects) is not in these results (splits R, F)")
    assert OOD_COMMAND in why


def test_the_opt_in_commands_the_claims_name_build_their_configs():
    """REUSE-OOD's command gives a config with split O; REUSE-4's a base that sees no two-hop chain.
    Their ``--set`` assignments are applied in order to a quick config."""
    from analysis.experiments.two_hop_reuse import grid
    from toymodels.config import apply_overrides

    config = apply_overrides(grid("quick")[0], [a for a in OOD_COMMAND.split() if "=" in a])
    assert "O" in config.pipeline.familiarities and config.pipeline.base.task.ood_frac > 0
    config = apply_overrides(grid("quick")[-1], [a for a in UNSEEN_TEMPLATE_COMMAND.split() if "=" in a])
    assert config.pipeline.base.task.two_hop_ratio == 0 and config.condition == "shared"
    assert UNSEEN_TEMPLATE_COMMAND in template_confound([Result("k", config, {})])


def test_split_claims_read_the_joint_lora_on_r_as_their_ceiling():
    """REUSE-3 and REUSE-OOD are not testable when the joint-data LoRA does not compose on R."""
    worse = _split_results("cot", "R", "F", 0.6, 0.1)
    for r in worse:
        r.result["splits"]["R"]["models"]["joint/hops"] = _scored(composed=0.2)
    assert judge_measure(REUSE["REUSE-3-cot"], worse)[0].outcome == NOT_TESTABLE


def test_mech_2_probe_reads_the_probe_on_latent_r_against_the_probe_finding_the_base_bridge():
    """MECH-2-probe: the probe's accuracy on B in average/hops (latent R, inner layers), read against
    the same probe reading the base's own bridge; raising B's accuracy flips the verdict."""
    measure = next(m for m in registry.get("mechanism").claims if m.claim.id == "MECH-2-probe")
    assert measure.per_seed is probe_bridge_inside

    def results(new, old=(0.0, 0.5, 0.6, 0.7)):
        out = []
        for s in range(4):
            r = _lens(s, [0.0] * 4, familiarity="R")
            r.result["models"]["average/hops"]["probe_bridge_acc"] = [0.9, new + 0.01 * s, 0.0, 0.9]
            r.result["models"]["base"]["probe_old_bridge_acc"] = list(old)
            out += [r, _lens(s, [0.0] * 4, familiarity="F")]  # F has no probe: not read
        return out
    np.testing.assert_allclose(probe_bridge_inside(results(0.05)), [0.05, 0.06, 0.07, 0.08])
    assert judge_measure(measure, results(0.05))[0].outcome == SUPPORTED
    assert judge_measure(measure, results(0.6))[0].outcome == NOT_SUPPORTED
    assert judge_measure(measure, results(0.05, old=(0.9, 0.1, 0.1, 0.9)))[0].outcome == NOT_TESTABLE
