"""``two_hop_reuse``: registration and grids, a tiny grid through analysis.sweep into a temp
results dir, its figures, and claim verdicts computed from (real and planted) data."""
import copy
import dataclasses

import pytest

from analysis import registry
from analysis.cache import MissingResultsError
from analysis.experiments import two_hop_reuse as th
from analysis.figures.two_hop import templates_figure
from analysis.registry import Result
from analysis.report import claim_verdicts, draw_figures, missing
from analysis.verdict import NOT_SUPPORTED, NOT_TESTABLE, SUPPORTED, UNDERPOWERED, judge
from toymodels.presets import tiny_two_hop
from sweep_helpers import sweep_tiny

EXPERIMENT = registry.get("two_hop_reuse")


def tiny_pipeline(fmt):
    return dataclasses.replace(tiny_two_hop(fmt), familiarities=("F", "R"))


TINY = th.make_grid(tiny_pipeline, {"main": (1, 0), "shared": (1, 1)}, range(2), ("average", "arrow"))


def test_registered_with_quick_and_paper_grids():
    assert "two_hop_reuse" in registry.experiments()
    assert set(EXPERIMENT.figures) == {"two_hop_methods", "two_hop_libraries", "two_hop_templates", "two_hop_retention",
                                       "two_hop_conditional", "two_hop_specificity", "two_hop_ood"}
    quick, paper = EXPERIMENT.configs("quick"), EXPERIMENT.configs("paper")
    assert len(quick) == 2 * len(th.CONDITIONS) * 3 == len({c.key() for c in quick})
    assert all(c.base_seed == c.seed for c in quick) and {c.seed for c in quick} == {0, 1, 2}  # independent
    assert len(paper) == 2 * len(th.PAPER_CONDITIONS) * 5 and all(c.base_seed == c.seed for c in paper)
    shared = [c for c in quick if c.condition == "shared"]
    assert shared and all(c.pipeline.experts.shared_template > 0 for c in shared)
    assert all(c.pipeline.experts.n_distractors == 0 for c in paper if "no_distractors" in c.condition)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    summary, results = sweep_tiny(EXPERIMENT, TINY, root)
    assert summary.computed == len(TINY)
    assert len(list((root / "models").glob("*.safetensors"))) == 2 * 2  # one per (format, seed): conditions share it
    return results


def test_results_hold_accuracy_broadcast_and_chance_for_every_model(results):
    for r in results:
        for split in r.result["splits"].values():
            assert 0 < split["chance"]["composed"] < 1
            for name in ("base", "single/AB", "joint/hops", "average/hops", "arrow/with_AC"):
                scores = split["models"][name]
                assert 0 <= scores["composed"] <= 1 and 0 <= scores["broadcast"]["composed"] <= 1


def test_figures_draw_from_the_results(results, tmp_path):
    written = draw_figures(EXPERIMENT, results, tmp_path, "quick")
    assert {p.name for p in written} >= {f"{n}.{e}" for n in EXPERIMENT.figures for e in ("png", "json")}


def test_claims_produce_verdicts_from_the_data(results):
    """Two seeds, each its own base: every measured claim is underpowered, or not testable where its
    ceiling fails; the tiny grid has no split O, so REUSE-OOD is not measured."""
    rows = claim_verdicts(EXPERIMENT, results)
    unmeasured = {m.claim.id for m in EXPERIMENT.claims if missing(m, results) is not None}
    assert {"REUSE-OOD-latent", "REUSE-OOD-cot"} <= unmeasured <= {"REUSE-OOD-latent", "REUSE-OOD-cot",
                                                                   "REUSE-1-latent-conditional",
                                                                   "REUSE-1-cot-conditional"}
    assert [v.claim.id for v, _ in rows] == [m.claim.id for m in EXPERIMENT.claims if m.claim.id not in unmeasured]
    for verdict, values in rows:
        expected = NOT_TESTABLE if verdict.ceiling is not None and not verdict.ceiling.reached else UNDERPOWERED
        assert verdict.outcome == expected and verdict.units == 2, verdict.claim.id
        assert len(values) == 2 or verdict.claim.id.endswith("-conditional")  # a seed may know no two hops


def _planted(results, composed, broadcast):
    """The tiny results with every hops-library reuse score replaced."""
    out = []
    for r in results:
        res = copy.deepcopy(r.result)
        for split in res["splits"].values():
            for name, scores in split["models"].items():
                if name.endswith("/hops"):
                    scores["composed"], scores["broadcast"]["composed"] = composed(r.config.seed), broadcast
        out.append(Result(r.key, r.config, res))
    return out


def test_reuse_1_verdict_follows_planted_numbers_both_ways(results):
    """REUSE-1 is judged from the data: planted composition refutes it, planted failure supports it."""
    measure = next(m for m in EXPERIMENT.claims if m.claim.id == "REUSE-1-latent")
    composes = _planted(results, lambda s: 0.9 + 0.01 * s, 0.05)
    fails = _planted(results, lambda s: 0.02 * s, 0.3)
    # 2 seeds: the verdict is underpowered; its CI still reads one way or the other
    for planted, reading in ((composes, NOT_SUPPORTED), (fails, SUPPORTED)):
        verdict = judge(measure.claim, measure.per_seed(planted))
        assert (verdict.outcome, verdict.reading) == (UNDERPOWERED, reading)


def test_figure_with_missing_data_names_the_command(results):
    with pytest.raises(MissingResultsError, match="lora-limits run two_hop_reuse"):
        templates_figure([r for r in results if r.config.condition == "main"])
