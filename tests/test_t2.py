"""T2 - summed, averaged or routed one-hop adapters cannot answer the two-hop question
(paper: Theorem 2)."""
import dataclasses

import numpy as np
import pytest
import torch

from analysis.figures.recall import t2_margin_vs_overlap
from theory.claims import Check, ClaimSettings
from theory.merge import weighted_delta_sum
from theory.recall import READOUTS, RecallConfig, build_recall_model, rank_one_edit
from theory.routing import arrow_prototype, arrow_prototype_lowrank
from theory.t2 import METHODS, REGIMES, TIE, T2Config, decomposition, run_t2, sample_two_hop, t2_claim
from theory.t2_readout import readout_checks
from theory.t2_regimes import _rate_vs_chance, composition_check, outcomes, regime_checks

TINY = dict(d_model=16, d_mlp=64, n_entities=16, n_relations=3)


def _cfg(keys="centred", readout="additive", **kw):
    return T2Config(recall=RecallConfig(**TINY, keys=keys, readout=readout), **kw)


def _run(keys="centred", n=40, seed=0, readout="additive", **kw):
    return run_t2(_cfg(keys, readout, **kw), n, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("keys", REGIMES)
@pytest.mark.parametrize("top_k,temperature", [pytest.param(1, 1.0, id="top1"), pytest.param(2, 0.5, id="top2,T=0.5")])
def test_T2_identity_holds_for_every_method(keys, top_k, temperature):
    """T2: "(W + DW) v' = W v' + c1 (<v1,v'>/||v1||^2) delta1 + c2 (<v2,v'>/||v2||^2) delta2",
    for sum, average, arbitrary weights and Arrow routing (input-dependent c)."""
    r = _run(keys, top_k=top_k, temperature=temperature)
    for m in METHODS:
        assert r[f"{m}.identity_err"].max() < 1e-9
        assert r[f"{m}.span_err"].max() < 1e-9
    assert np.abs(r["a2"][:, :2]).mean() > 0.05  # the delta2 term is really there (nonzero overlaps)
    c = r["routing.c"]  # (n, 2, P)
    assert np.allclose(c.sum(1), 1.0)
    if top_k == 1:
        assert set(np.unique(c)) <= {0.0, 1.0} and (c[:, 0, 0] != c[:, 0, 1]).any()  # input-dependent


def test_T2_decomposition_detects_a_missing_term():
    """Two-sided: with NONZERO adapters, dropping the delta2 term breaks the identity by c2 a2 delta2."""
    model = build_recall_model(RecallConfig(**TINY, keys="raw"), torch.Generator().manual_seed(0))
    v1, v2, vp = model.key(0, 0), model.key(1, 1), model.key(2, 0, 1)
    ads = [rank_one_edit(model, v1, 5), rank_one_edit(model, v2, 6)]
    merged = model.logits(vp, weighted_delta_sum(ads, [1.0, 1.0]))[:, None]  # (|E|, 1)
    deltas = torch.cat([a.B for a in ads], dim=1)  # (|E|, 2)
    a = torch.stack([v1 @ vp / v1.dot(v1), v2 @ vp / v2.dot(v2)])[:, None]  # (2, 1)
    base = model.logits(vp)[:, None]
    c = torch.ones(2, 1, dtype=torch.float64)
    assert (merged - decomposition(base, deltas, c, a)).abs().max() < 1e-12
    c_drop = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    gap = (merged - decomposition(base, deltas, c_drop, a)).abs().max()
    assert gap == pytest.approx(float((a[1] * deltas[:, 1]).abs().max()), rel=1e-9) and gap > 0.1


def test_T2_prompt_orthogonal_to_v2_gets_no_z_gain():
    """T2: "the correct answer z~ gains only through <v2, v'>": a key orthogonal to v2 gets
    exactly W v' + c1 a1 delta1."""
    model = build_recall_model(RecallConfig(**TINY, keys="centred"), torch.Generator().manual_seed(1))
    v1, v2 = model.key(0, 0), model.key(1, 1)
    vp = model.key(2, 0, 1)
    vp = vp - v2 * (v2 @ vp) / v2.dot(v2)
    ads = [rank_one_edit(model, v1, 5), rank_one_edit(model, v2, 6)]
    out = model.logits(vp, weighted_delta_sum(ads, [1.0, 1.0]))
    assert torch.allclose(out, model.logits(vp) + (v1 @ vp / v1.dot(v1)) * ads[0].B[:, 0], atol=1e-12)


@pytest.mark.parametrize("r", [1, 3])
def test_arrow_prototype_from_factors_equals_the_svd_of_the_delta(r):
    """Routing (T2's Arrow): the prototype from the factors (r x r core) is the delta's top
    right singular vector up to sign, also for a batch; a different adapter's is not."""
    g = torch.Generator().manual_seed(r)
    B, A = (torch.randn(5, *shape, generator=g, dtype=torch.float64) for shape in ((12, r), (r, 20)))
    dense = arrow_prototype(B @ A)  # (5, 20): one batched SVD
    assert torch.allclose(dense[2], arrow_prototype((B @ A)[2]))
    low = arrow_prototype_lowrank(B, A)
    assert torch.allclose((low * dense).sum(-1).abs(), torch.ones(5, dtype=torch.float64), atol=1e-10)
    assert (low[0] @ dense[1]).abs() < 0.9


def test_T2_sampling_constraints():
    model = build_recall_model(RecallConfig(**TINY), torch.Generator().manual_seed(0), batch=200)
    t = sample_two_hop(model, torch.Generator().manual_seed(1))
    assert (t.r1 != t.r2).all()
    assert ((t.y != t.x) & (t.y != model.answer(t.x, t.r1))).all()
    assert ((t.z != t.y) & (t.z != model.answer(t.y, t.r2))).all()
    assert ((t.x_control != t.x) & (t.x_control != t.y) & (model.answer(t.x_control, t.r1) != t.y)).all()


@pytest.mark.parametrize("readout", READOUTS)
@pytest.mark.parametrize("keys", REGIMES)
def test_T2_bridge_composes_while_two_hop_prompt_does_not(keys, readout):
    """T2 two-sided, under both readouts: on "x r1 r2" the merged model says z~ no more often
    than on a control prompt (no composition); with a bridge key (v' = v2) it says z~ on the
    true prompt and rarely on the control."""
    r = _run(keys, n=200, readout=readout)
    hit = r["sum.margin_z"] > TIE  # (n, P)
    assert hit[:, 0].mean() - hit[:, 1].mean() < 0.08
    assert hit[:, 2].mean() > 0.9 and hit[:, 3].mean() < 0.3
    assert np.allclose(r["a2"][:, 2], 1.0)  # the bridge key IS v2


def test_outcomes_are_three_way():
    """Ties are their own outcome: win (margin > TIE), tie (|margin| <= TIE), loss."""
    o = outcomes(np.array([[0.5, 1e-12, -1e-12, -0.3]]))
    assert o["win"].tolist() == [[True, False, False, False]]
    assert o["tie"].tolist() == [[False, True, True, False]]
    assert o["loss"].tolist() == [[False, False, False, True]]
    assert o["reach"].tolist() == [[True, True, True, False]]


def test_average_merge_ties_on_a_perfect_bridge():
    """T2 identity with c = 1/2 and v' = v2: z~ gains 1/2 and the old answer r2(y~) loses 1/2,
    so z~ TIES instead of winning (wins only where the delta1 term breaks the tie)."""
    r = _run("relation", n=200)
    o = outcomes(r["average.margin_z"])
    assert o["tie"][:, 2].mean() > 0.7 and o["win"][:, 2].mean() < 0.2
    assert o["tie"][:, :2].mean() == 0.0  # never on two-hop prompts (no exact structure there)


def _planted(r: dict) -> dict:
    """Composition planted: the "true" and "control" prompts replaced by the bridge prompts,
    so the true prompt's key IS v2 (the model composes) and the control's is a bridge control."""
    return {k: (v[..., [2, 3, 2, 3]] if v.ndim == 2 and v.shape[-1] == 4 else v) for k, v in r.items()}


@pytest.mark.parametrize("method", ["average", "sum", "routing"])
def test_T2_no_composition_fails_when_the_model_composes(method):
    """Two-sided no_composition: it PASSES on ordinary two-hop prompts and FAILS on a planted
    instance where composition happens (a bridge-aligned key). For the average merge the
    planted composition shows as TIES; counting ties as "no composition" (the old rule, wins
    only) would have passed it."""
    cfg, r = _cfg("relation"), _run("relation", n=200)
    ordinary = {c.id: c for c in regime_checks("relation", r, cfg)}
    planted = {c.id: c for c in regime_checks("relation", _planted(r), cfg)}
    cid = f"T2.relation.{method}.no_composition"
    assert ordinary[cid].passed and not planted[cid].passed
    if method == "average":
        win = outcomes(_planted(r)["average.margin_z"])["win"]
        se = np.std(win[:, 0].astype(float) - win[:, 1], ddof=1) / np.sqrt(win.shape[0])
        assert win[:, 0].mean() - win[:, 1].mean() <= 3.09 * se  # wins alone: the bug's "no composition"


def test_composition_check_counts_ties_as_z():
    """Synthetic margins: z~ tying on every true prompt while losing on controls is
    composition ("no composition" fails, "composition" passes); losing on both is not."""
    n = 100
    ties = {"x.margin_z": np.stack([np.zeros(n), -np.ones(n)], axis=1)}
    losses = {"x.margin_z": -np.ones((n, 2))}
    for arrays, composes in ((ties, True), (losses, False)):
        o = outcomes(arrays["x.margin_z"])
        assert composition_check("T2.x", "m", o, 0, 1, composes=False).passed is not composes
        assert composition_check("T2.x", "m", o, 0, 1, composes=True).passed is composes


def test_T2_overlap_is_exchangeable_between_true_and_control():
    """T2: "v2 is computed from e_{y~}, which the prompt never contains": its overlap with the
    true and the control two-hop key has the same distribution."""
    r = _run("raw", n=300)
    d = r["a2"][:, 0] - r["a2"][:, 1]
    assert abs(d.mean()) < 4 * d.std() / np.sqrt(d.size)
    assert r["a2"][:, 0].mean() > 0.3  # and it is not small for raw keys


def test_T2_overlap_is_zero_on_average_only_in_the_relation_regime():
    """Two-sided (theory/recall.py): globally centred keys of "x r1 r2" and v2 share e_r2 and
    overlap (PAPER's example fails: cos ~0.3, as predicted from the hidden states with fresh
    units); relation-centred keys have E<v2, v'> = 0 by construction (mean a2 and cos ~ 0)."""
    cen, rel = _run("centred", n=150), _run("relation", n=150)
    se = lambda x: x.std(ddof=1) / np.sqrt(x.size)  # noqa: E731
    c = cen["cos2"][:, 0]
    assert c.mean() > 0.2 and abs(c.mean() - cen["cos2_fresh"].mean()) < 4 * se(c - cen["cos2_fresh"])
    a2 = rel["a2"][:, 0]
    assert abs(a2.mean()) < 4 * se(a2) and abs(rel["cos2"][:, 0].mean()) < 4 * se(rel["cos2"][:, 0])
    assert cen["a2"][:, 0].mean() > 10 * se(cen["a2"][:, 0])  # and the centred overlap is far from 0


def _readout_runs(n=150):
    runs = {(ro, k): (_cfg(k, ro), _run(k, n=n, seed=i, readout=ro))
            for i, (ro, k) in enumerate((ro, k) for ro in READOUTS for k in REGIMES)}
    checks = [c for (ro, k), (cfg, r) in runs.items()
              for c in regime_checks(k, r, cfg, "T2" if ro == READOUTS[0] else f"T2.{ro}")]
    return runs, checks


def test_T2_readout_first_hop_finding_is_two_sided():
    """t2_readout.py: the additive readout puts v1's input inside the two-hop key, so the first
    hop y~ wins far more often there than with random maps; with the readouts' runs swapped
    the same check fails."""
    runs, checks = _readout_runs()
    assert {c.id: c for c in readout_checks(runs, checks)}["T2.readout.first_hop"].passed
    swapped = {(READOUTS[1 - READOUTS.index(ro)], k): v for (ro, k), v in runs.items()}
    assert not {c.id: c for c in readout_checks(swapped, checks)}["T2.readout.first_hop"].passed
    a1 = {ro: np.mean([runs[ro, k][1]["a1"][:, 0].mean() for k in REGIMES]) for ro in READOUTS}
    assert a1["additive"] > a1["random_maps"] + 0.2


def test_T2_readout_conclusions_lists_a_changed_verdict():
    """T2.readout.conclusions passes when every conclusion has the same verdict under both
    readouts and fails, naming it, when one differs."""
    runs, checks = _readout_runs(n=20)
    same = [dataclasses.replace(c, passed=True) for c in checks]
    assert {c.id: c for c in readout_checks(runs, same)}["T2.readout.conclusions"].passed
    flip = "T2.random_maps.raw.sum.no_composition"
    changed = [dataclasses.replace(c, passed=c.id != flip) for c in checks]
    check = {c.id: c for c in readout_checks(runs, changed)}["T2.readout.conclusions"]
    assert not check.passed and check.measured == 1 and "raw.sum.no_composition" in check.statement


@pytest.mark.parametrize("rate,side,passes", [
    pytest.param(0.05, "=", True, id="=chance"), pytest.param(0.15, "=", False, id="=above"),
    pytest.param(0.05, ">", False, id=">at-chance"), pytest.param(0.15, ">", True, id=">above"),
    pytest.param(0.05, "<=", True, id="<=at-chance"), pytest.param(0.15, "<=", False, id="<=above"),
])
def test_rate_vs_chance_is_two_sided(rate, side, passes):
    """The chance checks fail when the statement is false: "= chance" and "<= chance" fail
    above chance, "> chance" fails at chance (1000 instances, chance 1/20)."""
    hits = np.zeros(1000, dtype=bool)
    hits[: int(rate * 1000)] = True
    assert _rate_vs_chance("T2.x", "s", hits, 0.05, side).passed is passes


def test_T2_claim_and_figure():
    checks = t2_claim(ClaimSettings(instances=10))
    ids = {c.id for c in checks}
    assert {"T2.identity", "T2.span", "T2.sympy", "T2.raw.overlap_kernel", "T2.centred.shared_relation",
            "T2.relation.zero_overlap", "T2.relation.above_random_directions",
            "T2.relation.bridge.sum.composition", "T2.relation.sum.chance_at_zero_overlap",
            "T2.relation.sum.control_follows_overlap", "T2.centred.sum.control_above_chance",
            "T2.relation.bridge.average.composition", "T2.random_maps.relation.sum.no_composition",
            "T2.random_maps.raw.overlap_kernel", "T2.readout.conclusions", "T2.readout.first_hop",
            "T2.readout.gap"} <= ids
    assert {i.removeprefix("T2.random_maps.") for i in ids if i.startswith("T2.random_maps.")} == {
        i.removeprefix("T2.") for i in ids if i.split(".")[1] in REGIMES}  # every conclusion under both readouts
    assert all(c.passed for c in checks if c.id in ("T2.identity", "T2.span", "T2.sympy"))
    fig, data = t2_margin_vs_overlap(checks, shown=6)
    assert len(data["raw"]["a2"]["bridge_true"]) == 6 and data["instances"] == 10
    assert set(data["relation"]["margin_z"]) == {"sum", "routing", "bridge"}
    with pytest.raises(ValueError, match="lora-limits theory --claim T2"):
        t2_margin_vs_overlap([c for c in checks if not any(f".{r}." in c.id for r in REGIMES)])


@pytest.mark.parametrize("kw,msg", [
    pytest.param(dict(top_k=3), "top_k=3", id="top_k=3"),
    pytest.param(dict(temperature=0.0), "temperature=0.0", id="T=0"),
    pytest.param(dict(weight_range=(0.0, 1.0)), "weight_range", id="w=0"),
    pytest.param(dict(recall=RecallConfig(**{**TINY, "n_relations": 1})), "n_relations=1", id="|R|=1"),
    pytest.param(dict(recall=RecallConfig(**TINY, n_facts=10)), "n_facts=10", id="N<all"),
])
def test_T2_config_rejects_bad_values(kw, msg):
    with pytest.raises(ValueError, match=msg):
        T2Config(**{"recall": RecallConfig(**TINY), **kw})
