"""``math_reuse``: the library run (toymodels/math_reuse.py) and the experiment (registration, a
tiny grid through analysis.sweep, figure with sidecar, claims recomputed by hand, summary)."""
import dataclasses
import io
import json

import pytest
import torch

from analysis import registry
from analysis.cache import MissingResultsError
from analysis.experiments import math_reuse as mr
from analysis.figures.math_reuse import methods_figure
from analysis.registry import Result
from analysis.report import claim_verdicts, draw_figures
from toymodels.math_reuse import LIBRARIES, MathReuseConfig, libraries, make_corpus, with_condition_probes
from toymodels.presets import math_finetune, math_lora
from toymodels.span_presets import tiny_math_reuse
from toymodels.seeds import numpy_rng
from toymodels.span_family import rows
from toymodels.tasks.math_experts import make_math_expert_set
from toymodels.tasks.math_problems import solve
from sweep_helpers import sweep_tiny

EXPERIMENT = registry.get("math_reuse")
TINY = [mr.MathReuseExpConfig(tiny_math_reuse(), seed=s) for s in (0, 1)]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    return sweep_tiny(EXPERIMENT, TINY, tmp_path_factory.mktemp("results"))[1]


def test_registered_with_grids_claims_and_figure():
    assert [m.claim.id for m in EXPERIMENT.claims] == ["MATH-0", "TEMPLATE-1-same", "TEMPLATE-1-different"]
    quick, paper = EXPERIMENT.configs("quick"), EXPERIMENT.configs("paper")
    assert [c.seed for c in quick] == [0, 1, 2] and len(paper) == 5  # every seed its own base
    assert all(c.templates == ("same", "different") for c in quick + paper)
    assert set(EXPERIMENT.figures) == {"math_reuse_methods"}


def test_bad_configs_name_the_field():
    with pytest.raises(ValueError, match="templates=\\('odd',\\)"):
        mr.MathReuseExpConfig(tiny_math_reuse(), templates=("odd",))
    cfg = tiny_math_reuse()
    with pytest.raises(ValueError, match="model.d_vocab=8"):
        dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, d_vocab=8))
    with pytest.raises(ValueError, match="methods"):
        dataclasses.replace(cfg, methods=("nope",))


def test_quick_grid_runs_in_reproduce_with_the_math_recipe_and_the_skills_library():
    quick, paper = EXPERIMENT.configs("quick"), EXPERIMENT.configs("paper")
    assert "quick" in EXPERIMENT.reproduce_profiles
    for c in quick:
        assert (c.run.finetune, c.run.lora, c.run.libraries) == (math_finetune(), math_lora(), ("skills",))
        assert c.run.finetune.target_acc is None and c.run.experts.n_composed >= 32  # fixed steps; issue 12 item 5
    assert all(c.run.libraries == LIBRARIES for c in paper)
    assert (MathReuseConfig().finetune, MathReuseConfig().lora) == (math_finetune(), math_lora())


def test_libraries_pick_the_reused_sets_and_bad_names_are_errors():
    cfg = tiny_math_reuse()
    for bad in [("skills", "nope"), (), ("skills", "skills")]:
        with pytest.raises(ValueError, match="math_reuse.libraries"):
            dataclasses.replace(cfg, libraries=bad)
    es = make_math_expert_set(make_corpus(cfg, 0), cfg.experts, numpy_rng(0, "experts"))
    assert libraries(es, ("skills",)) == {"skills": ["facts", "procedure", "D0"]}
    assert libraries(es) == {"skills": ["facts", "procedure", "D0"],
                             "with_composed": ["facts", "procedure", "composed", "D0"]}


def _contains(seq: list, sub: list) -> bool:
    return any(seq[i:i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


def test_condition_probes_hold_each_composed_problems_facts_and_procedure():
    """Needs, checked independently from the tokens: the needed taught rows are exactly those
    that state one of the problem's facts with its value (a lookup line ``attr ent = v ;`` in a
    worked solution, or the atomic row ``BOS ent attr -> v``); the procedure twin asks the same
    question type with the same constants about other entities, with its values stated, and its
    answer is the solver's on those stated values."""
    cfg = tiny_math_reuse("same")
    pre = make_corpus(cfg, 0)
    world, tok = pre.world, pre.world.tokenizer
    for template in ("same", "different"):
        cfg = dataclasses.replace(cfg, experts=dataclasses.replace(cfg.experts, template=template))
        es = make_math_expert_set(pre, cfg.experts, numpy_rng(0, "experts"))
        es, needs = with_condition_probes(pre, es, numpy_rng(0, "twins"))
        taught, twins = rows(es.probes["taught_facts"]), rows(es.probes["procedure_twin"])

        def states(row, e, a, v):
            q, ans = row
            if template == "same":
                return _contains(ans, [tok.attribute(a), tok.entity(e), tok.symbol("=")] + tok.number(v) +
                                 [tok.symbol(";")])
            return q == [1, tok.entity(e), tok.attribute(a)] and ans == tok.number(v) + [2]

        assert len(needs) == len(es.problems["composed"]) == len(twins)
        for i, (p, need) in enumerate(zip(es.problems["composed"], needs)):
            want = [k for k, row in enumerate(taught) if any(states(row, e, a, v) for e, a, v in p.facts)]
            assert want and [k for name, k in need if name == "taught_facts"] == want
            assert need[-1] == ("procedure_twin", i)
            q, ans = twins[i]
            qt = world.qtypes[p.qtype]
            at = q.index(tok.qtype(p.qtype))
            ents = q[at + 1:at + 1 + qt.n_slots]
            assert not set(ents) & {tok.entity(int(e)) for e in es.entities["facts"]}
            stated = {(q[t], q[t + 1]): q[t + 3] - tok.symbol("0") for t in range(at - 4)
                      if q[t + 2] == tok.symbol("=") and q[t + 4] == tok.symbol(";")}  # one-digit facts
            values = {(a, s): stated[(tok.attribute(a), ents[s])] for a, s in qt.facts}
            answer = solve(qt, values, p.consts, world.config.max_value)[-1][3]
            assert ans[-1 - len(tok.number(answer)):] == tok.number(answer) + [2]
            assert ans[-2 - len(tok.number(answer))] == tok.symbol("ANS")


def test_tiny_grid_runs_both_templates_on_one_base(swept):
    for r in swept:
        out = r.result
        assert set(out["templates"]) == {"same", "different"}
        assert set(out["base"]["precondition"]) == {"atomic", "context_test", "memory_test"}
        for t in out["templates"].values():
            models = t["models"]
            assert {"base", "single/facts", "single/procedure", "single/composed", "joint/skills",
                    "joint/with_composed", "average/skills", "arrow/with_composed"} <= set(models)
            for s in models.values():
                assert 0 <= s["composed"] <= 1 and 0 <= s["broadcast"]["composed"] <= 1
                assert s["conditional"]["n"] <= t["n_composed"]
                assert set(s["specificity"]) == {"right", "wrong", "margin"}
                assert "composed_chain" in s  # worked format


def _planted(seed: int, same: dict, different: dict, precondition: float) -> Result:
    """A result whose every method scores ``composed``/``control`` from the dicts (joint from ``joint``)."""
    def models(d):
        out = {f"{m}/skills": {"composed": d["composed"], "broadcast": {"composed": d["control"]}}
               for m in ("average", "arrow")}
        return out | {"joint/skills": {"composed": d["joint"], "broadcast": {"composed": 0.0}}}
    cfg = mr.MathReuseExpConfig(dataclasses.replace(tiny_math_reuse(), methods=("average", "arrow")), seed=seed)
    return Result(str(seed), cfg, {"seed": seed, "base": {"precondition": {"context_test": precondition,
                                                                            "memory_test": 0.95}},
                                   "templates": {"same": {"models": models(same)},
                                                 "different": {"models": models(different)}}})


def test_template_claims_flip_with_planted_data():
    """Same template composing near the ceiling: TEMPLATE-1-same supported; the different template
    composing too: TEMPLATE-1-different not supported; and the reverse. A failed ceiling (joint 0)
    does not make "close to the ceiling" true."""
    good = [_planted(s, {"composed": 0.8 + 0.01 * s, "control": 0.1, "joint": 0.9},
                     {"composed": 0.1, "control": 0.1 + 0.01 * s, "joint": 0.9}, 0.9 + 0.01 * s) for s in range(4)]
    bad = [_planted(s, {"composed": 0.1, "control": 0.1 + 0.01 * s, "joint": 0.9 - 0.01 * s},
                    {"composed": 0.8 + 0.01 * s, "control": 0.1, "joint": 0.9}, 0.3 + 0.01 * s) for s in range(4)]
    want = {"MATH-0": "supported", "TEMPLATE-1-same": "supported", "TEMPLATE-1-different": "supported"}
    assert {v.claim.id: v.outcome for v, _ in claim_verdicts(EXPERIMENT, good)} == want
    assert {v.claim.id: v.outcome for v, _ in claim_verdicts(EXPERIMENT, bad)} == {k: "not supported" for k in want}
    assert mr.beyond_control("same")(good) == pytest.approx([0.7, 0.71, 0.72, 0.73])
    assert mr.composes_near_ceiling(good) == pytest.approx([0.1, 0.11, 0.12, 0.13])  # the ceiling term binds
    assert mr.composes_near_ceiling(bad) == pytest.approx([-0.6, -0.59, -0.58, -0.57])
    floor = [_planted(s, {"composed": 0.0, "control": 0.05 + 0.01 * s, "joint": 0.0},
                      {"composed": 0.0, "control": 0.0, "joint": 0.0}, 0.9) for s in range(4)]
    assert mr.composes_near_ceiling(floor) == pytest.approx([-0.15, -0.16, -0.17, -0.18])


def test_figure_and_sidecar_and_summary(swept, tmp_path):
    paths = draw_figures(EXPERIMENT, swept, tmp_path, "quick")
    assert "math_reuse_methods.png" in {p.name for p in paths}
    data = json.loads((tmp_path / "math_reuse_methods.json").read_text())["data"]
    for template in ("same", "different"):
        want = sum(r.result["templates"][template]["models"]["average/skills"]["composed"] for r in swept) / 2
        i = data[template]["models"].index("average/skills")
        assert data[template]["composed"][i]["mean"] == pytest.approx(want)
    with pytest.raises(MissingResultsError, match="lora-limits run math_reuse"):
        methods_figure([])
    out = io.StringIO()
    mr.summary(swept, out)
    assert "template same" in out.getvalue() and "average/skills" in out.getvalue()


def test_composed_answers_follow_the_solver():
    """Independent of the scorer: every composed problem's answer equals solve() on the world's values."""
    cfg: MathReuseConfig = tiny_math_reuse()
    pre = make_corpus(cfg, 0)
    es = make_math_expert_set(pre, cfg.experts, numpy_rng(0, "experts"))
    for p in es.problems["composed"]:
        qt = pre.world.qtypes[p.qtype]
        values = {(a, s): int(pre.world.values[p.entities[s], a]) for a, s in qt.facts}
        assert solve(qt, values, p.consts, pre.world.config.max_value)[-1][3] == p.answer
    assert torch.equal(es.composed.tokens, es.train["composed"].tokens)
