"""``pretrained_code`` (toymodels/pretrained_code.py, analysis/experiments/pretrained_code.py): the
task draw and prompts, the scores against an independent scoring, CODE-PRE-0 on planted results
(both sides) and the experiment end to end on a tiny random Llama with a word tokenizer."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from analysis import registry
from analysis.cli import main
from analysis.registry import Result
from analysis.verdict import NOT_SUPPORTED, SUPPORTED, UNDERPOWERED, judge
from toymodels import pretrained_code as pc
from toymodels.seeds import numpy_rng
from toymodels.tasks.code_langs import REDUCERS, describe, render_language
from toymodels.tasks.natural import answer_scores, encode_pairs

transformers = pytest.importorskip("transformers")

from analysis.experiments import pretrained_code as exp  # noqa: E402
from toymodels.pretrained import LogitsLM, load_causal_lm, tiny_llama  # noqa: E402

TINY = pc.PretrainedCodeConfig(n_programs=6, n_shots=1)


def test_programs_are_distinct_in_range_and_seeded():
    cfg = pc.PretrainedCodeConfig(n_programs=40, min_ops=2, max_ops=3)
    a, b, c = (pc.draw_programs(cfg, numpy_rng(s, "code_pre", "programs")) for s in (0, 0, 1))
    assert a == b and a != c and len(set(a)) == 40
    assert all(2 <= len(p.steps) <= 3 and p.reducer in (None, *REDUCERS) for p in a)
    with pytest.raises(ValueError, match="protocol.n_programs=200: could not draw"):
        pc.draw_programs(pc.PretrainedCodeConfig(n_programs=200, max_ops=1), np.random.default_rng(0))


def test_shots_are_other_tasks_and_the_prompt_never_holds_the_gold():
    programs = pc.draw_programs(pc.PretrainedCodeConfig(n_programs=12), np.random.default_rng(0))
    shots = pc.draw_shots(12, 3, np.random.default_rng(1))
    for i, s in enumerate(shots):
        assert len(set(s)) == 3 and i not in s
        for lang in ("python", "javascript"):
            prompt, answer = pc.prompt_pair(programs, s, i, lang)
            lines = prompt.splitlines()
            assert answer == render_language(programs[i], lang) and answer not in lines
            assert lines[-1] == ("# " if lang == "python" else "// ") + describe(programs[i])
            assert [lines[2 + 3 * k] for k in range(3)] == [render_language(programs[j], lang) for j in s]
            assert len(lines) == 1 + 3 * 3 + 1


@pytest.mark.parametrize("change, match", [
    pytest.param({"n_shots": 6}, "protocol.n_shots=6: must be < n_programs=6", id="shots"),
    pytest.param({"languages": ("python", "cobol")}, "protocol.languages", id="language"),
    pytest.param({"min_ops": 3, "max_ops": 2}, "protocol.min_ops=3", id="ops"),
    pytest.param({"reducer_prob": 1.5}, "protocol.reducer_prob=1.5", id="prob"),
])
def test_bad_configs_name_the_field(change, match):
    with pytest.raises(ValueError, match=match):
        pc.PretrainedCodeConfig(**{"n_programs": 6, **change})


def word_tokenizer(cfg, seeds=(0, 1)):
    """Every whitespace-separated word of the prompts and answers of ``cfg`` for ``seeds``."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = set()
    for s in seeds:
        programs = pc.draw_programs(cfg, numpy_rng(s, "code_pre", "programs"))
        shots = pc.draw_shots(cfg.n_programs, cfg.n_shots, numpy_rng(s, "code_pre", "shots"))
        for lang in cfg.languages:
            for i in range(len(programs)):
                words |= set(" ".join(pc.prompt_pair(programs, shots[i], i, lang)).split())
    vocab = {w: i for i, w in enumerate(["[UNK]", *sorted(words)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]"), len(vocab)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "m"
    tok, vocab = word_tokenizer(TINY)
    tiny_llama(torch.Generator().manual_seed(0), vocab=vocab).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_scores_equal_an_independent_scoring_row_by_row(tiny_folder):
    model, tok = load_causal_lm(tiny_folder, "unused")
    out = pc.run_pretrained_code(TINY, model, tok, seed=0)
    programs = pc.draw_programs(TINY, numpy_rng(0, "code_pre", "programs"))
    shots = pc.draw_shots(6, 1, numpy_rng(0, "code_pre", "shots"))
    assert out["n_programs"] == 6 and list(out["languages"]) == ["python", "javascript"]
    for lang, s in out["languages"].items():
        pairs = [pc.prompt_pair(programs, shots[i], i, lang) for i in range(6)]
        exact, logprob = answer_scores(LogitsLM(model), encode_pairs(pairs, tok))  # full logits, one row at a time
        assert [r["exact"] for r in s["rows"]] == exact.tolist()
        np.testing.assert_allclose([r["logprob"] for r in s["rows"]], logprob.numpy(), atol=1e-4)
        assert s["exact"] == pytest.approx(exact.float().mean().item())
        assert s["logprob"] == pytest.approx(logprob.mean().item(), abs=1e-4)
        assert [r["gold"] for r in s["rows"]] == [a for _, a in pairs] and s["logprob"] < 0
        n_words = np.array([len(a.split()) for _, a in pairs])
        assert s["logprob_per_token"] == pytest.approx(float(np.mean(logprob.numpy() / n_words)), abs=1e-4)
        ops = np.array([len(p.steps) for p in programs])
        assert s["by_ops"] == {str(k): pytest.approx(exact.numpy()[ops == k].mean()) for k in sorted(set(ops))}
    assert out["prompt_example"]["javascript"].endswith(out["languages"]["javascript"]["rows"][0]["gold"])
    assert "=>" in out["prompt_example"]["javascript"] and "=>" not in out["prompt_example"]["python"]


def planted(seed: int, python: float, javascript: float, n: int = 48) -> Result:
    scores = {"n_programs": n, "config": {"n_shots": 3},
              "languages": {lang: {"exact": v, "logprob": -9.0, "logprob_per_token": -0.5, "answer_tokens": 18.0,
                                   "by_ops": {"1": v, "2": v}} for lang, v in (("python", python),
                                                                               ("javascript", javascript))}}
    return Result(f"k{seed}", exp.CodeRunConfig(seed=seed), {"model": "m", "seed": seed, "scores": scores})


@pytest.mark.parametrize("python, javascript, outcome", [
    pytest.param(0.9, 0.8, SUPPORTED, id="both"),
    pytest.param(0.9, 0.2, NOT_SUPPORTED, id="python-only"),
    pytest.param(0.1, 0.8, NOT_SUPPORTED, id="javascript-only"),
])
def test_claim_on_planted_results_both_sides(python, javascript, outcome):
    measure = registry.get("pretrained_code").claims[0]
    results = [planted(s, python + 0.02 * s, javascript - 0.02 * s) for s in range(3)]
    values = measure.per_seed(results)
    assert values == pytest.approx([min(python + 0.02 * s, javascript - 0.02 * s) for s in range(3)])
    assert judge(measure.claim, values).outcome == outcome
    detail = measure.detail(results)
    assert f"Python {np.mean([python + 0.02 * s for s in range(3)]):.3f}" in detail
    assert ("is not run" in detail) == (outcome != SUPPORTED) and "UNDERPOWERED" not in detail
    assert measure.questions(results) == {"Python": 48, "JavaScript": 48}


def test_two_seeds_are_underpowered_and_the_gate_says_why():
    measure = registry.get("pretrained_code").claims[0]
    results = [planted(s, 0.05 * s, 0.0) for s in range(2)]
    verdict = judge(measure.claim, measure.per_seed(results))
    assert verdict.outcome == UNDERPOWERED and verdict.reading == NOT_SUPPORTED
    detail = measure.detail(results)
    assert "Python 0.025, JavaScript 0.000" in detail and "Python and JavaScript" in detail
    assert "code reuse on the pretrained model is not run" in detail and "2 seed(s) < 3" in detail


def test_registered_for_paper_reproduce_only():
    e = registry.get("pretrained_code")
    assert e.reproduce_profiles == ("paper",) and [m.claim.id for m in e.claims] == ["CODE-PRE-0"]
    assert [c.seed for c in e.configs("quick")] == [0, 1, 2] and [c.seed for c in e.configs("paper")] == [0, 1, 2, 3, 4]
    assert all(c.protocol.n_programs >= 48 for p in ("quick", "paper") for c in e.configs(p))


def test_cli_run_prints_table_and_figure(tiny_folder, tmp_path, capsys):
    argv = ["run", "pretrained_code", "--quiet", "--results", str(tmp_path / "r"), "--figures", str(tmp_path / "fig"),
            "--set", f"model={tiny_folder}", "--set", "protocol.n_shots=1", "--set", "protocol.n_programs=6"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "3 computed" in text and "JavaScript" in text and "logprob/token" in text
    sidecar = json.loads((tmp_path / "fig" / "pretrained_code.json").read_text())
    assert sidecar["data"]["seeds"] == [0, 1, 2] and sidecar["data"]["languages"] == ["python", "javascript"]
    assert set(sidecar["data"]["panels"]["exact"]) == {"seed 0", "seed 1", "seed 2"}
    assert (tmp_path / "fig" / "pretrained_code.png").stat().st_size > 0


@pytest.mark.parametrize("setting, match", [
    pytest.param("model=/nonexistent/nope.gguf", "no such file or folder", id="missing-model"),
    pytest.param("protocol.n_shots=48", "protocol.n_shots=48", id="shots"),
    pytest.param("protocol.languages=python,cobol", "protocol.languages", id="language"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, setting, match):
    assert main(["run", "pretrained_code", "--results", str(tmp_path), "--set", setting]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err
    assert not any(tmp_path.iterdir())


@pytest.mark.pretrained
def test_smollm2_scores_a_few_tasks(tmp_path):
    """The real SmolLM2 on 4 tasks per language (opt in: -m pretrained)."""
    out = exp.run(exp.CodeRunConfig(protocol=pc.PretrainedCodeConfig(n_programs=4, n_shots=2)), "cpu", tmp_path)
    for s in out["scores"]["languages"].values():
        assert 0 <= s["exact"] <= 1 and s["logprob"] < 0 and s["answer_tokens"] > 3
