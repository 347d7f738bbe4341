"""``qa_reuse`` (toymodels/qa_reuse.py, analysis/experiments/qa_reuse.py): the metrics against
hand counts, the oracle, the claims on planted results (both sides), and the experiment end
to end on a tiny random Llama saved as a local HF folder with a word tokenizer."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from analysis import registry
from analysis.cli import main
from analysis.registry import Result
from analysis.report import judge_measure
from analysis.verdict import NOT_SUPPORTED, NOT_TESTABLE, SUPPORTED, UNDERPOWERED, judge
from toymodels import qa_reuse as q
from toymodels.lora import LoRAConfig
from toymodels.reuse_options import ReuseOptions
from toymodels.seeds import numpy_rng
from toymodels.tasks import history_qa as h
from toymodels.tasks import natural
from toymodels.tasks.natural import answer_logprob, encode_pairs
from toymodels.train import TrainConfig

transformers = pytest.importorskip("transformers")

from analysis.experiments import qa_reuse as exp  # noqa: E402
from toymodels.pretrained import LogitsLM, tiny_llama  # noqa: E402

TASK = h.QAConfig(n_countries=1, cities_per_country=2, n_real=2, n_ood=2)


def tiny_protocol(**change) -> q.QAReuseConfig:
    cfg = q.QAReuseConfig(task=TASK, lora=LoRAConfig(rank=2, alpha=4.0, targets=("q", "down")),
                          finetune=TrainConfig(steps=4, batch_size=8, lr=1e-2, warmup_steps=0, eval_every=2,
                                               weight_decay=0.0),
                          methods=("average", "arrow", "oracle"), reuse=ReuseOptions(lorahub_budget=2), n_control=2)
    return dataclasses.replace(cfg, **change)


def word_tokenizer(seeds=(0,)):
    """Every word of the templates, the real tables and the chains of ``TASK`` drawn for ``seeds``."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    chains = [c for s in seeds for c in h.make_chains(TASK, numpy_rng(s, "qa", "chains"))]
    text = [*h.TEMPLATES.values(), *natural.TEMPLATES.values(), *h.real_words(),
            *(n for row in natural.WORLD for n in row[:3]), *(n for c in chains for n in (c.person, c.city, c.answer))]
    words = sorted({w for t in text for w in t.split()})
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *words])}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]"), len(words) + 1


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "m"
    tok, vocab = word_tokenizer((0, 1))
    tiny_llama(torch.Generator().manual_seed(0), vocab=vocab).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# --- metrics against hand counts --------------------------------------------------------------

def chain(person, answer, in_ac=False):
    return h.Chain("F", person, person + "ville", "country", answer, in_ac)


def test_wrong_answers_are_other_distinct_answers():
    tests = [chain("a", "X"), chain("b", "Y"), chain("c", "X"), chain("d", "Z")]
    assert q.wrong_answers(tests, 3) == [["Y", "Z"], ["X", "Z"], ["Y", "Z"], ["X", "Y"]]
    assert q.wrong_answers(tests, 1) == [["Y"], ["X"], ["Y"], ["X"]]


def test_split_scores_against_a_hand_count():
    """Three test questions (answers X, Y, X): gold P 0.5, 0.2, 0.1; wrong rows (Y, X, Y) P 0.3, 0.4, 0.2;
    one-hops right for questions 0 and 2 only; composed right for 0 and 1."""
    tests = [chain("a", "X"), chain("b", "Y"), chain("c", "X")]
    t, f = True, False
    s = {"F/composed": (torch.tensor([t, t, f]), torch.tensor([0.5, 0.2, 0.1]).log()),
         "F/wrong": (torch.tensor([f, f, f]), torch.tensor([0.3, 0.4, 0.2]).log()),
         "F/hop1": (torch.tensor([t, t, t]), torch.zeros(3)), "F/hop2": (torch.tensor([t, f, t]), torch.zeros(3)),
         "F/facts/AB": (torch.tensor([t, f]), torch.zeros(2))}
    out = q.split_scores(s, "F", tests, 3, ["AB", "BC"], {"F/AC/country": 0.25, "F/BC/country": 0.5})
    assert out["composed"] == pytest.approx(2 / 3)
    assert out["composed_logprob"] == pytest.approx(float(torch.tensor([0.5, 0.2, 0.1]).log().mean()))
    right, wrong = (0.5 + 0.2 + 0.1) / 3, (0.3 + 0.4 + 0.2) / 3
    assert out["specificity"]["right"] == pytest.approx(right)
    assert out["specificity"]["wrong"] == pytest.approx(wrong)
    assert out["specificity"]["margin"] == pytest.approx(right - wrong)
    logs = torch.tensor([0.5, 0.2, 0.1]).log() - torch.tensor([0.3, 0.4, 0.2]).log()
    assert out["specificity"]["logprob_margin"] == pytest.approx(float(logs.mean()))
    assert out["specificity"]["exact_margin"] == pytest.approx(2 / 3) and out["specificity"]["questions"] == 3
    assert out["conditional"] == {"composed": 0.5, "n": 2}
    assert out["facts"] == {"AB": 0.5} and out["broadcast"] == {"BC": 0.5, "AC": 0.25}


def test_split_scores_read_specificity_where_a_question_has_wrong_answers():
    """A fourth question, the only one of its relation, has no wrong answer: specificity is read
    over the other three (as in the two-hop family: one function), composed over all four."""
    tests = [chain("a", "X"), chain("b", "Y"), chain("c", "X"), h.Chain("F", "d", "dville", "continent", "Q", False)]
    t, f = True, False
    s = {"F/composed": (torch.tensor([t, t, f, t]), torch.tensor([0.5, 0.2, 0.1, 0.9]).log()),
         "F/wrong": (torch.tensor([f, f, f]), torch.tensor([0.3, 0.4, 0.2]).log()),
         "F/hop1": (torch.tensor([t, t, t, t]), torch.zeros(4)), "F/hop2": (torch.tensor([t, t, t, t]), torch.zeros(4))}
    out = q.split_scores(s, "F", tests, 3, [], {})
    assert out["composed"] == pytest.approx(3 / 4) and out["n_composed"] == 4
    assert out["specificity"]["right"] == pytest.approx((0.5 + 0.2 + 0.1) / 3)
    assert out["specificity"]["questions"] == 3
    alone = q.split_scores({k: (v[0][3:], v[1][3:]) if k != "F/wrong" else (v[0][:0], v[1][:0])
                            for k, v in s.items()}, "F", tests[3:], 3, [], {})
    assert alone["specificity"] is None and alone["composed"] == 1.0


def test_oracle_picks_the_best_adapter_per_split():
    def score(f, h_, lp):
        return {"splits": {"F": {"composed": f, "composed_logprob": lp}, "H": {"composed": h_, "composed_logprob": lp}},
                "retention": {"world_capital": f + h_}}
    per = [score(0.5, 0.0, -1.0), score(0.5, 1.0, -2.0), score(0.0, 0.5, -3.0)]
    out = q.oracle(per, ["AB", "BC", "AC"])
    assert out["splits"]["F"]["adapter"] == "AB"  # tie on accuracy: the better log-prob
    assert out["splits"]["H"]["adapter"] == "BC" and out["retention"] == {"world_capital": 1.5}


def test_sheet_scores_each_distinct_row_once(tiny_folder):
    """Against scoring each list alone: same numbers, shared rows encoded once."""
    from toymodels.pretrained import load_causal_lm
    from toymodels.tasks.natural import answer_scores

    model, tok = load_causal_lm(tiny_folder, "unused")
    lm = LogitsLM(model)
    a, b, c = (h.TEMPLATES["born_in"].format(P="Albert Einstein"), " Ulm"), ("The capital of France is", " Paris"), \
        (h.TEMPLATES["country"].format(A="Ulm"), " Germany")
    parts = {"x": [a, b], "y": [b, c, a]}
    sheet = q.Sheet(parts, tok)
    assert len(sheet.rows) == 3
    got = sheet.score(lm)
    for name, pairs in parts.items():
        exact, logprob = answer_scores(lm, encode_pairs(pairs, tok))
        assert torch.equal(got[name][0], exact)
        torch.testing.assert_close(got[name][1], logprob, atol=1e-5, rtol=0)
    assert len(set(got["y"][1].tolist())) == 3  # distinct rows, distinct numbers: the check can fail


# --- end to end on a tiny model -------------------------------------------------------------

def test_run_on_tiny_llama(tiny_folder):
    from toymodels.pretrained import load_causal_lm

    model, tok = load_causal_lm(tiny_folder, "unused")
    out = q.run_qa_reuse(tiny_protocol(), model, tok, seed=0)
    want = ["base", "single/AB", "single/BC", "single/AC", "joint/hops"]
    want += [f"{m}/hops" for m in ("average", "arrow", "oracle")] + ["joint/with_AC"]
    want += [f"{m}/with_AC" for m in ("average", "arrow", "oracle")]
    assert list(out["models"]) == want
    assert out["splits"] == {"F": {"people": 2, "composed": 1}, "H": {"people": 2, "composed": 1},
                             "R": {"people": 2, "composed": 1}, "OOD": {"people": 2, "composed": 2}}
    chains = [h.Chain(**c) for c in out["chains"]]
    for split in h.SPLITS:  # the base's log-prob equals an independent scoring of the composed pairs
        tests = h.composed_chains(chains, split)
        oracle_lp = answer_logprob(LogitsLM(model), encode_pairs([c.two_hop() for c in tests], tok)).mean().item()
        assert out["models"]["base"]["splits"][split]["composed_logprob"] == pytest.approx(oracle_lp, abs=1e-4)
    for name, score in out["models"].items():
        assert set(score["splits"]) == set(h.SPLITS) and set(score["retention"]) == {"world_capital", "ood_one_hop"}
        members = ["AB", "BC"] if name.endswith("/hops") else ["AB", "BC", "AC"]
        assert set(score["splits"]["F"]["facts"]) == set(members)
        assert "broadcast" not in score["splits"]["OOD"] and set(score["splits"]["H"]["broadcast"]) == {"BC", "AC"}
    base, ab = out["models"]["base"]["splits"]["F"], out["models"]["single/AB"]["splits"]["F"]
    assert base["composed_logprob"] != ab["composed_logprob"]  # the LoRA changed the model
    assert out["experts"]["AB"]["steps"] >= 1 and out["familiarity"]["known"] == 0  # a random model knows nothing


def test_same_seed_same_result_other_seed_other_lora(tiny_folder):
    from toymodels.pretrained import load_causal_lm

    model, tok = load_causal_lm(tiny_folder, "unused")
    cfg = tiny_protocol(methods=("average",), joint=False, n_control=0)
    a, b, c = (q.run_qa_reuse(cfg, model, tok, seed=s) for s in (0, 0, 1))
    assert a["models"] == b["models"] and a["chains"] != c["chains"]


# --- the experiment: CLI run, figure, claims ------------------------------------------------

def test_cli_run_prints_table_and_figure(tiny_folder, tmp_path, capsys):
    argv = ["run", "qa_reuse", "--results", str(tmp_path / "r"), "--figures", str(tmp_path / "fig"),
            "--set", f"model={tiny_folder}", "--set", "protocol.r_known_only=false",
            "--set", "protocol.task.ac_frac=0.5",  # before cities_per_country: each --set is validated
            "--set", "protocol.task.n_countries=1", "--set", "protocol.task.cities_per_country=2",
            "--set", "protocol.task.n_real=2", "--set", "protocol.task.n_ood=2", "--set", "protocol.n_control=2",
            "--set", "protocol.lora.rank=2", "--set", "protocol.lora.targets=q,down",
            "--set", "protocol.finetune.steps=4", "--set", "protocol.finetune.warmup_steps=0",
            "--set", "protocol.methods=average,oracle"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "3 computed" in text and "OOD acc" in text and "average/hops" in text and "base one-hop familiarity" in text
    sidecar = json.loads((tmp_path / "fig" / "qa_reuse.json").read_text())
    assert sidecar["data"]["splits"] == list(h.SPLITS) and sidecar["data"]["seeds"] == [0, 1, 2]
    panel = sidecar["data"]["panels"]["composed"]["OOD"]
    assert len(panel["values"]) == len(panel["control"]) == len(sidecar["data"]["models"])
    assert (tmp_path / "fig" / "qa_reuse.png").stat().st_size > 0


def test_registered_for_paper_reproduce_only():
    e = registry.get("qa_reuse")
    assert e.reproduce_profiles == ("paper",) and len(e.configs("quick")) == 3 and len(e.configs("paper")) == 3
    assert {c.seed for c in e.configs("quick")} == {0, 1, 2}  # issue 12: >= 3 independent seeds
    assert [m.claim.id for m in e.claims] == [f"QA-{k}-{s}" for s in h.SPLITS for k in (1, 2)] + ["QA-3"]


def planted(seed: int, composed: dict[str, float], base: float | dict = 0.1, cast: float = 0.0, n: int = 12) -> Result:
    """A result whose hops/with_AC reuse scores ``composed[model]`` on every split (half of it on F);
    ``base``: the base's composed accuracy, one number or per split."""
    def split(acc, margin):
        return {"composed": acc, "composed_logprob": -1.0, "specificity": {"margin": margin},
                "broadcast": {"AC": cast, "BC": 0.0}}
    base = base if isinstance(base, dict) else dict.fromkeys(h.SPLITS, base)
    models = {"base": {"splits": {sp: split(base[sp], 0.0) for sp in h.SPLITS}}}
    for name, acc in composed.items():
        models[name] = {"splits": {sp: split(acc * (0.5 if sp == "F" else 1.0), acc) for sp in h.SPLITS}}
    protocol = {"config": {"methods": ["average", "ties", "oracle"]}, "models": models,
                "splits": {sp: {"composed": n} for sp in h.SPLITS}}
    return Result(f"k{seed}", exp.QARunConfig(seed=seed), {"protocol": protocol, "seed": seed, "model": "m"})


@pytest.mark.parametrize("gain, outcome", [pytest.param(0.5, SUPPORTED, id="composes"),
                                           pytest.param(0.0, NOT_SUPPORTED, id="does-not")])
def test_claims_on_planted_results_both_sides(gain, outcome):
    results = [planted(s, {"average/hops": 0.1 + gain + 0.01 * s, "ties/hops": 0.1, "oracle/hops": 1.0,
                           "average/with_AC": 0.2 + gain + 0.01 * s, "ties/with_AC": 0.2 + gain,
                           "joint/hops": 1.0, "joint/with_AC": 1.0})
               for s in range(3)]
    claims = {m.claim.id: m for m in registry.get("qa_reuse").claims}
    qa1 = claims["QA-1-R"].per_seed(results)
    assert qa1 == pytest.approx([gain + 0.01 * s for s in range(3)])  # max over data-free (not oracle)
    assert judge(claims["QA-1-R"].claim, qa1).outcome == outcome
    qa2 = claims["QA-2-H"].per_seed(results)
    assert qa2 == pytest.approx([0.1 + gain + 0.01 * s for s in range(3)])
    gap = claims["QA-3"].per_seed(results)  # R - F = half the with_AC accuracy, mean over average and ties
    assert gap == pytest.approx([((0.2 + gain + 0.01 * s) + (0.2 + gain)) / 4 for s in range(3)])
    assert "UNDERPOWERED" not in claims["QA-1-R"].detail(results)
    for claim in ("QA-1-R", "QA-2-H", "QA-3"):  # the joint LoRAs compose: the ceiling is reached
        assert judge_measure(claims[claim], results)[0].ceiling.reached


def test_familiarity_is_read_as_gains_over_the_base():
    """The base answers R at 0.7 and F at 0: with_AC reuse at 0.8 on R and 0.4 on F (planted: F
    scores half) gains 0.1 on R and 0.4 on F, so R - F is -0.3 (absolute accuracies would give +0.4)."""
    results = [planted(s, {"average/with_AC": 0.8, "ties/with_AC": 0.8}, base={"F": 0.0, "H": 0.0, "R": 0.7, "OOD": 0.7})
               for s in range(3)]
    claims = {m.claim.id: m for m in registry.get("qa_reuse").claims}
    assert claims["QA-3"].per_seed(results) == pytest.approx([-0.3] * 3)


@pytest.mark.parametrize("joint, testable", [pytest.param(0.9, True, id="ceiling-composes"),
                                             pytest.param(0.15, False, id="ceiling-fails")])
def test_ceiling_makes_a_claim_not_testable(joint, testable):
    """Issue 12: read against the joint-data LoRA on the same data. Its composed accuracy minus the
    control (base 0.1) must exceed the margin, else the verdict is 'not testable' whatever reuse does."""
    results = [planted(s, {"average/hops": 0.6 + 0.01 * s, "ties/hops": 0.6, "joint/hops": joint,
                           "average/with_AC": 0.6, "ties/with_AC": 0.6, "joint/with_AC": joint}) for s in range(3)]
    claims = {m.claim.id: m for m in registry.get("qa_reuse").claims}
    qa1 = judge_measure(claims["QA-1-H"], results)[0]
    assert qa1.ceiling.values == pytest.approx((joint - 0.1,) * 3)
    assert qa1.outcome == (SUPPORTED if testable else NOT_TESTABLE) and qa1.reading == SUPPORTED
    qa2 = judge_measure(claims["QA-2-H"], results)[0]  # the joint's margin gain over the base's 0
    assert qa2.ceiling.values == pytest.approx((joint,) * 3) and qa2.ceiling.reached
    qa3 = judge_measure(claims["QA-3"], results)[0]  # min over F (joint/2 - 0.1) and R (joint - 0.1)
    assert qa3.ceiling.values == pytest.approx((joint / 2 - 0.1,) * 3)
    assert (qa3.outcome == NOT_TESTABLE) == (joint / 2 - 0.1 <= 0.1)


def test_broadcast_raises_the_control_and_underpower_is_said():
    results = [planted(s, {"average/hops": 0.6, "ties/hops": 0.6}, cast=0.6, n=4) for s in range(2)]
    claims = {m.claim.id: m for m in registry.get("qa_reuse").claims}
    assert claims["QA-1-F"].per_seed(results) == pytest.approx([0.3 - 0.6] * 2)  # F scores half, control 0.6
    verdict = judge(claims["QA-1-F"].claim, claims["QA-1-F"].per_seed(results))
    assert verdict.outcome == UNDERPOWERED and verdict.reading == NOT_SUPPORTED  # 2 seeds: too few units
    detail = claims["QA-1-F"].detail(results)
    assert "UNDERPOWERED" in detail and "2 seed(s) < 3" in detail and "F 4" in detail


@pytest.mark.parametrize("setting, match", [
    pytest.param("model=/nonexistent/nope.gguf", "no such file or folder", id="missing-model"),
    pytest.param("protocol.task.n_countries=0", "task.n_countries", id="bad-size"),
    pytest.param("protocol.n_wrong=0", "n_wrong", id="bad-n_wrong"),
    pytest.param("protocol.task.cities_per_country=1", "task.ac_frac", id="no-AC-rows"),  # quick's ac_frac 1/3
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, setting, match):
    assert main(["run", "qa_reuse", "--results", str(tmp_path), "--set", setting]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err
    assert not any(tmp_path.iterdir())  # nothing written


# --- the real SmolLM2 (opt in: -m pretrained) ------------------------------------------------

@pytest.mark.pretrained
def test_smollm2_end_to_end_small(tmp_path):
    """The experiment on the bundled SmolLM2 with a cut-down protocol (minutes on a CPU)."""
    protocol = dataclasses.replace(q.quick(), task=h.QAConfig(n_countries=1, cities_per_country=2, n_real=2, n_ood=2),
                                   finetune=dataclasses.replace(q.quick().finetune, steps=5),
                                   methods=("average", "arrow"), n_control=2)
    out = exp.run(exp.QARunConfig(protocol=protocol), "cpu", tmp_path)["protocol"]
    assert out["familiarity"]["known"] > 0  # SmolLM2 answers some birthplaces and countries
    for split in ("R", "OOD"):  # R and OOD hold facts the base answers
        if out["splits"][split]["people"]:
            assert out["models"]["base"]["splits"][split]["conditional"]["n"] == out["splits"][split]["composed"]
