"""``code_reuse``: the experiment end to end on a tiny config (through analysis.sweep), execution
accuracy vs exact match on planted decodings, and the claims' measures on planted results both ways."""
import copy
import dataclasses

import pytest
import torch
from figure_inputs import code_reuse_results
from torch import nn

from analysis import registry
from analysis.cache import MissingResultsError
from analysis.experiments import code_reuse as cr
from analysis.figures.code_reuse import methods_figure
from analysis.registry import Result
from analysis.report import claim_verdicts, draw_figures
from analysis.verdict import NOT_SUPPORTED, NOT_TESTABLE, SUPPORTED, UNDERPOWERED, judge
from toymodels import seeds
from toymodels.code_reuse import CodeReuseConfig, composed_execution, make_corpus, with_probes
from toymodels.span_presets import tiny_code_reuse
from toymodels.span_family import final_answer_rows
from toymodels.tasks.code_corpus import random_inputs
from toymodels.tasks.code_dsl import Program, render
from toymodels.tasks.code_experts import make_code_expert_set
from toymodels.tasks.knowledge import EOS
from sweep_helpers import sweep_tiny

EXPERIMENT = registry.get("code_reuse")
TINY = cr.make_grid(tiny_code_reuse(), range(2), ("average", "arrow"))


def test_registered_with_both_styles_and_its_own_base_per_seed():
    quick, paper = EXPERIMENT.configs("quick"), EXPERIMENT.configs("paper")
    assert [c.seed for c in quick] == [0, 1, 2] and len({c.key() for c in quick}) == 3
    assert all(c.styles == ("call", "inline") for c in quick + paper)
    assert set(quick[0].reuse.methods) == {"average", "sum", "ties", "arrow"}
    assert {"lorahub", "oracle"} <= set(paper[0].reuse.methods) and len(paper) == 5


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return sweep_tiny(EXPERIMENT, TINY, tmp_path_factory.mktemp("results"))[1]


def test_results_hold_every_metric_for_both_styles(results):
    for r in results:
        assert set(r.result["precondition"]) == {"task_A", "task_B", "cross_test", "translate_test", "helpers"}
        for style in ("call", "inline"):
            out = r.result["styles"][style]
            assert 0 < out["chance"]["composed"] < 1 and out["n_composed"] == 3
            assert out["tasks"]["composed"] == out["tasks"]["semantics"]
            for name in ("base", "single/semantics", "joint/skills", "average/skills", "arrow/with_composed"):
                s = out["models"][name]
                assert 0 <= s["composed"] <= 1 and 0 <= s["composed_exec"] <= 1 and s["composed_logprob"] <= 0
                assert set(s["specificity"]) == {"right", "wrong", "margin"} and "n" in s["conditional"]
                assert 0 <= s["broadcast"]["composed"] <= 1 and 0 <= s["composed_chain"] <= 1  # fmt via
        # the styles share the tasks (paired comparison, toymodels/code_reuse.py docstring)
        assert r.result["styles"]["call"]["tasks"] == r.result["styles"]["inline"]["tasks"]


def test_figures_claims_and_summary_come_from_the_results(results, tmp_path, capsys):
    written = draw_figures(EXPERIMENT, results, tmp_path, "quick")
    assert {p.name for p in written} >= {"code_reuse_methods.png", "code_reuse_methods.json"}
    rows = claim_verdicts(EXPERIMENT, results)
    assert [v.claim.id for v, _ in rows] == ["CODE-0", "TEMPLATE-1-code-call", "TEMPLATE-1-code-ceiling",
                                             "TEMPLATE-1-code-inline", "TEMPLATE-1-code-gain"]
    # a joint ceiling under its threshold makes a claim not testable; else two seeds are fewer than 3
    # independent units: underpowered, whatever the values
    assert all(len(vals) == 2 for _, vals in rows)
    assert all(v.outcome == (NOT_TESTABLE if v.ceiling is not None and not v.ceiling.reached else UNDERPOWERED)
               for v, _ in rows)
    assert [v.ceiling is not None for v, _ in rows] == [False, True, True, True, True]
    EXPERIMENT.summary(results)
    printed = capsys.readouterr().out
    assert "style call" in printed and "style inline" in printed and "cross_test" in printed


def test_figure_with_missing_data_names_the_command():
    with pytest.raises(MissingResultsError, match="lora-limits run code_reuse"):
        methods_figure([])


# --- execution accuracy vs exact match, on planted decodings -----------------------------------

class Planted(nn.Module):
    """Greedy decoding writes ``answers[i]`` (then EOS) after row ``i``'s prompt: at every position
    the next token of the planted row is the argmax."""

    def __init__(self, rows: list[list[int]], d_vocab: int):
        super().__init__()
        self.rows, self.d_vocab = rows, d_vocab
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, tokens):  # (B, T) -> (B, T, d_vocab)
        out = torch.zeros(*tokens.shape, self.d_vocab)
        for b, row in enumerate(self.rows):
            for t in range(tokens.shape[1]):
                out[b, t, row[t + 1] if t + 1 < len(row) else EOS] = 1.0
        return out


@pytest.fixture(scope="module")
def code_set():
    cfg = dataclasses.replace(tiny_code_reuse(), experts=dataclasses.replace(tiny_code_reuse().experts, style="call"))
    pre = make_corpus(cfg, 0)
    es, _ = with_probes(make_code_expert_set(pre, cfg.experts, seeds.numpy_rng(0, "experts")))
    return cfg, pre, es


def _plant(pre, es, programs: list[list[str]]) -> Planted:
    """Each composed row answered with its gold A program, ``;`` and ``programs[i]`` (fmt via)."""
    tok, rows = pre.world.tokenizer, []
    for i, words in enumerate(programs):
        prompt = es.composed.tokens[i][:int(es.composed.answer_mask[i].int().argmax())].tolist()
        rows.append(prompt + tok.encode(render(es.gold["composed"][i], "A") + [";"] + words) + [EOS])
    return Planted(rows, tok.d_vocab)


def test_execution_counts_equivalent_programs_that_exact_match_rejects(code_set):
    cfg, pre, es = code_set
    gold = es.gold["composed"]
    assert pre.config.fmt == "via" and all(any(op == "call" for op, _ in p.steps) for p in gold)  # all call helpers
    inline = [render(p.inline(pre.world.helpers), "B") for p in gold]  # same semantics, other (longer) text
    # a reducer added or dropped: an int where the gold gives a list, or vice versa, on every input
    wrong = [render(Program(p.steps, None if p.reducer else "sum"), "B") for p in gold]
    inputs = random_inputs(seeds.numpy_rng(0, "inputs"), 16)
    cases = {"gold": ([render(p, "B") for p in gold], 1.0, 1.0), "equivalent": (inline, 0.0, 1.0),
             "wrong": (wrong, 0.0, 0.0), "malformed": ([["x", "|", "|"]] * len(gold), 0.0, 0.0),
             "other syntax": ([render(p, "A") for p in gold], 0.0, 0.0)}
    for name, (programs, exact, execution) in cases.items():
        model = _plant(pre, es, programs)
        sep = pre.world.tokenizer.id(";")
        assert final_answer_rows(model, es.composed, sep, cfg.decode_extra).float().mean().item() == exact, name
        assert composed_execution(model, es, pre, inputs, cfg.decode_extra) == execution, name


# --- claims on planted results: a flipped effect flips the verdict ------------------------------

def _planted(call: float, inline: float, joint: float, broadcast: float = 0.05) -> list[Result]:
    """Synthetic results with every skills-library method at ``call`` / ``inline`` composed accuracy
    (plus a per-seed jitter), the joint LoRA at ``joint`` and the broadcast control at ``broadcast``."""
    out = []
    for r in code_reuse_results():
        res = copy.deepcopy(r.result)
        for style, level in (("call", call), ("inline", inline)):
            for name, s in res["styles"][style]["models"].items():
                if name.endswith("/skills"):
                    s["composed"] = level + (0.01 if style == "call" else 0.02) * r.config.seed  # gain varies too
                    s["composed"] = joint if name == "joint/skills" else s["composed"]
                    s["broadcast"]["composed"] = broadcast
        out.append(Result(r.key, r.config, res))
    return out


def _verdict(claim_id: str, results) -> str:
    measure = next(m for m in EXPERIMENT.claims if m.claim.id == claim_id)
    return judge(measure.claim, measure.per_seed(results)).outcome


def test_template_1_follows_planted_numbers_both_ways():
    works = _planted(call=0.8, inline=0.0, joint=0.85)
    fails = _planted(call=0.0, inline=0.8, joint=0.85)
    assert _verdict("TEMPLATE-1-code-call", works) == SUPPORTED
    assert _verdict("TEMPLATE-1-code-call", fails) == NOT_SUPPORTED
    assert _verdict("TEMPLATE-1-code-ceiling", works) == SUPPORTED
    assert _verdict("TEMPLATE-1-code-ceiling", fails) == NOT_SUPPORTED
    assert _verdict("TEMPLATE-1-code-inline", works) == SUPPORTED
    assert _verdict("TEMPLATE-1-code-inline", fails) == NOT_SUPPORTED
    assert _verdict("TEMPLATE-1-code-gain", works) == SUPPORTED
    assert _verdict("TEMPLATE-1-code-gain", fails) == NOT_SUPPORTED


def test_broadcast_cancels_apparent_composition():
    """Composed accuracy that the broadcast control matches is not composition (T2)."""
    assert _verdict("TEMPLATE-1-code-call", _planted(call=0.8, inline=0.0, joint=0.85, broadcast=0.8)) == NOT_SUPPORTED


def test_precondition_follows_the_base_both_ways():
    def planted(level):
        out = []
        for r in code_reuse_results():
            res = copy.deepcopy(r.result)
            res["precondition"]["cross_test"] = level + 0.01 * r.config.seed
            out.append(Result(r.key, r.config, res))
        return out
    assert _verdict("CODE-0", planted(0.9)) == SUPPORTED and _verdict("CODE-0", planted(0.1)) == NOT_SUPPORTED


def test_bad_configs_name_the_field():
    with pytest.raises(ValueError, match="code_reuse.styles"):
        cr.CodeReuseExperimentConfig(styles=("call", "call"))
    with pytest.raises(ValueError, match="model.d_vocab"):
        dataclasses.replace(tiny_code_reuse(), model=dataclasses.replace(tiny_code_reuse().model, d_vocab=10))
    with pytest.raises(ValueError, match="code_reuse.methods"):
        dataclasses.replace(tiny_code_reuse(), methods=("nope",))
    with pytest.raises(ValueError, match="model.n_ctx"):
        from toymodels.code_reuse import train_code_base
        cfg = tiny_code_reuse()
        train_code_base(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, n_ctx=20)), 0, "cpu")
    assert isinstance(tiny_code_reuse(), CodeReuseConfig)
