"""``mechanism``: registration, a tiny grid through analysis.sweep into a temp results dir,
per-layer probe outputs, figures and claim verdicts."""
import dataclasses

import pytest

from analysis import registry
from analysis.cache import MissingResultsError
from analysis.experiments import mechanism as mech
from analysis.figures.mechanism import bridge_figure, router_figure
from analysis.report import claim_verdicts, draw_figures
from analysis.verdict import NOT_TESTABLE, UNDERPOWERED
from toymodels.presets import tiny_two_hop
from sweep_helpers import sweep_tiny

EXPERIMENT = registry.get("mechanism")
TINY = [mech.MechanismConfig(mech._pipeline(tiny_two_hop(fmt)), fam, ("average", "arrow"), seed=s)
        for fmt, fam in (("latent", "R"), ("cot", "F")) for s in (0, 1)]


def test_registered_with_quick_and_paper_grids():
    assert "mechanism" in registry.experiments()
    quick, paper = EXPERIMENT.configs("quick"), EXPERIMENT.configs("paper")
    assert {(c.fmt, c.familiarity) for c in quick} == {(f, fam) for f in ("latent", "cot") for fam in ("F", "R")}
    assert {c.seed for c in quick} == {0, 1, 2} and all(c.base_seed == c.seed for c in quick)
    assert len(paper) == 2 * 3 * 5 and all(c.base_seed == c.seed for c in paper)
    assert all(c.pipeline.experts.n_distractors == 0 for c in quick + paper)
    with pytest.raises(ValueError, match="familiarity='X'"):
        dataclasses.replace(quick[0], familiarity="X")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return sweep_tiny(EXPERIMENT, TINY, tmp_path_factory.mktemp("results"))[1]


def test_per_layer_measurements_have_one_value_per_layer(results):
    for r in results:
        L = r.result["n_layers"]
        for name, m in r.result["models"].items():
            assert len(m["lens_bridge_top1"]) == len(m["lens_answer_top1"]) == L + 1, name
            assert all(len(v) == L for v in m["keys"].values()), name
            assert ("probe_bridge_acc" in m) == (r.config.familiarity != "F")  # F bridges are unseen labels
        router = r.result["router"]["arrow/hops"]
        assert len(router["mean"]) == len(router["roles"]) and router["adapters"] == ["AB", "BC"]
        # the BC expert read by itself: its own prompts have coefficient 1 (T2 normalisation)
        assert all(abs(c - 1) < 1e-6 for c in r.result["models"]["single/BC"]["keys"]["one_hop"])


def test_figures_and_claims(results, tmp_path):
    written = draw_figures(EXPERIMENT, results, tmp_path, "quick")
    assert {p.name for p in written} >= {f"{n}.png" for n in EXPERIMENT.figures}
    for verdict, values in claim_verdicts(EXPERIMENT, results):  # both seeds on one base model: 1 unit
        expected = NOT_TESTABLE if verdict.ceiling is not None and not verdict.ceiling.reached else UNDERPOWERED
        assert (verdict.outcome, verdict.units, len(values)) == (expected, 1, 2), verdict.claim.id


def test_figure_with_missing_data_names_the_command():
    with pytest.raises(MissingResultsError, match="lora-limits run mechanism"):
        bridge_figure([])
    with pytest.raises(MissingResultsError, match="lora-limits run mechanism"):
        router_figure([])
