"""``pretrained_math`` (toymodels/tasks/math_natural.py, toymodels/pretrained_math.py,
analysis/experiments/pretrained_math.py): every rendered answer against SymPy over the problem's
expression with the values read back from the English text, the two facts templates, greedy
decoding against an independent loop, the claims on planted results (both sides, and "not
testable" when the gate fails), and the experiment end to end on a tiny random Llama."""
from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import sympy
import torch

from analysis import registry
from analysis.cli import main
from analysis.registry import Result
from analysis.verdict import NOT_SUPPORTED, NOT_TESTABLE, SUPPORTED, judge
from toymodels import presets
from toymodels import pretrained_math as pm
from toymodels.lora import LoRAConfig
from toymodels.tasks import math_natural as nat
from toymodels.tasks.math_problems import ATTRIBUTES, MathWorldConfig

transformers = pytest.importorskip("transformers")

from analysis.experiments import pretrained_math as exp  # noqa: E402
from toymodels.pretrained import LogitsLM, load_causal_lm, tiny_causal_lm  # noqa: E402
from toymodels.pretrained_metrics import greedy_texts  # noqa: E402

TINY = pm.PretrainedMathConfig(
    world=MathWorldConfig(n_entities=2, n_context=4, n_new=6, n_qtypes=3, n_new_qtypes=2), n_fact_entities=2,
    n_procedure=4, n_composed=3, n_probe=2, n_gate=2, n_shots=1, decode_extra=2,
    lora=LoRAConfig(rank=2, alpha=4.0, targets=("q", "v")),
    finetune=presets.pretrained_finetune(steps=4, batch_size=4, eval_every=2), methods=("average", "arrow"))
SETS = ("procedure", "composed", "control", "in_context", "shots")


# --- the English text, checked independently ----------------------------------------------

def read_facts(text: str) -> dict[tuple[str, str], int]:
    """``(attribute, English name) -> value`` of every fact sentence in ``text`` (regexes built
    from the sentence templates, not from the renderer's functions)."""
    out = {}
    for attr, template in nat.SENTENCES.items():
        pattern = re.escape(template).replace(r"\{e\}", r"(?P<e>[a-z]+)").replace(r"\{v\}", r"(?P<v>\d+)")
        for m in re.finditer(pattern, text):
            out[(attr, m.group("e"))] = int(m.group("v"))
    return out


def sympy_answer(world, p, values: dict[tuple[str, str], int]) -> int:
    """SymPy over ``p.expression`` (symbols ``<attribute>_<toy name>``), each symbol given the value
    the English text (or the world, for recalled facts) holds for its entity's English name."""
    expr = sympy.sympify(p.expression)
    subs = {}
    for sym in expr.free_symbols:
        attr, toy = str(sym).split("_")
        e = next(e for e in p.entities if world.tokenizer.entity_name(e) == toy)
        subs[sym] = values[(attr, nat.name(world, e))]
    return int(expr.subs(subs))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_rendered_answer_equals_sympy_both_formats(seed):
    data = pm.draw_data(pm.quick(), seed)
    w, checked = data.world, 0
    for name in SETS:
        for p in data.problems[name]:
            prompt, worked = nat.problem_pair(w, p, "worked")
            _, direct = nat.problem_pair(w, p, "direct")
            stated = read_facts(prompt)
            recalled = {(ATTRIBUTES[a], nat.name(w, e)): int(w.values[e, a]) for e in p.entities
                        for a in range(w.config.n_attributes) if w.values[e, a] >= 0}
            assert bool(stated) == (name not in ("composed", "control"))  # composed questions state nothing
            gold = sympy_answer(w, p, stated or recalled)
            assert nat.final_answer(worked) == nat.final_answer(direct) == gold
            assert direct == f" The answer is {gold}."
            for a, op, b, r in re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)\.", worked):  # every step line
                assert sympy.sympify(f"{a} {op} {b}") == int(r)
            assert read_facts(worked).items() <= (stated or recalled).items()  # lookup lines hold true facts
            checked += 1
    assert checked > 60


def test_the_worked_template_is_shared_only_by_the_same_facts_data():
    cfg = pm.quick()
    data = pm.draw_data(cfg, 0)
    composed_lines = set().union(*(read_facts(nat.problem_pair(data.world, p, "worked")[1]).items()
                                   for p in data.problems["composed"]))
    same, different = (pm.expert_pairs(data, cfg, t) for t in ("same", "different"))
    assert same["procedure"] == different["procedure"] and list(same) == list(different) == ["facts", "procedure"]
    taught_same = set().union(*(read_facts(a).items() for _, a in same["facts"]))
    assert composed_lines and composed_lines <= taught_same  # every lookup line a composed solution needs
    assert not any(read_facts(a) for _, a in different["facts"])  # no fact sentence: another template
    w = data.world
    facts = {(ATTRIBUTES[a], nat.name(w, e)): int(w.values[e, a]) for e in data.entities["facts"] for a in range(3)}
    assert len(different["facts"]) == len(facts) * cfg.per_fact
    for q, a in different["facts"]:
        attr = next(k for k, ph in nat.PHRASES.items() if q.startswith("What is " + ph.split("{e}")[0]))
        ent = next(n for (at, n) in facts if at == attr and f" {n}" in q)
        assert a == f" {facts[(attr, ent)]}."
    # no expert's rows name a control subject; the control asks the composed question about them
    control_names = {nat.name(w, int(e)) for e in data.entities["control"]}
    assert not any(n in q + a for rows in same.values() for q, a in rows for n in control_names)
    for p, c, new in zip(data.problems["composed"], data.problems["control"], data.new_answers):
        assert (c.qtype, c.consts) == (p.qtype, p.consts) and set(c.entities) <= set(data.entities["control"].tolist())
        assert p.answer in new and c.answer not in new


def test_final_answer_reads_the_first_final_line():
    assert nat.final_answer(" 3 + 4 = 7. The answer is 7. The answer is 9.") == 7
    assert nat.final_answer("The answer is") is None and nat.final_answer("no number") is None
    assert nat.FINAL_DONE_RE.search("The answer is 12") is None and nat.FINAL_DONE_RE.search("The answer is 12.")


@pytest.mark.parametrize("change, match", [
    pytest.param({"fmt": "essay"}, "protocol.fmt='essay'", id="fmt"),
    pytest.param({"templates": ("same", "same")}, "protocol.templates", id="templates"),
    pytest.param({"methods": ("nope",)}, "protocol.methods", id="methods"),
    pytest.param({"n_fact_entities": 9}, "protocol.n_fact_entities=9", id="entities"),
    pytest.param({"n_composed": 0}, "protocol.n_composed=0", id="composed"),
])
def test_bad_configs_name_the_field(change, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        pm.PretrainedMathConfig(**change)


def test_too_many_entities_for_the_names_is_one_line():
    cfg = pm.PretrainedMathConfig(world=MathWorldConfig(n_entities=20, n_context=12))
    with pytest.raises(ValueError, match="world.n_entities \\+ n_context = 32: at most 24"):
        pm.draw_data(cfg, 0)


# --- the model: greedy decoding and the run end to end --------------------------------------

def word_tokenizer(cfg, seeds=(0, 1, 2)):
    """A word-level tokenizer over every word the runs of ``cfg`` for ``seeds`` write."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = set()
    for s in seeds:
        d = pm.draw_data(cfg, s)
        for ps in list(d.problems.values()) + list(d.facts_problems.values()):
            words |= {w for p in ps for fmt in ("worked", "direct") for w in "".join(nat.problem_pair(d.world, p, fmt)).split()}
        words |= {w for t in ("same", "different") for rows in pm.expert_pairs(d, cfg, t).values()
                  for q, a in rows for w in (q + a).split()}
    vocab = {w: i for i, w in enumerate(["[UNK]", *sorted(words)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]"), len(vocab)


def tiny_model(vocab: int, seed: int = 0):
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                      tie_word_embeddings=False)
    return tiny_causal_lm(config, torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "m"
    tok, vocab = word_tokenizer(TINY)
    tiny_model(vocab).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_greedy_texts_equal_an_independent_loop(tiny_folder):
    """Batched, left-padded, cached ``generate`` against a plain argmax loop, one row at a time."""
    model, tok = load_causal_lm(tiny_folder, "unused")
    lm = LogitsLM(model)
    data = pm.draw_data(TINY, 0)
    prompts = [nat.question(data.world, p) for p in data.problems["procedure"] + data.problems["composed"]]
    got = greedy_texts(lm, prompts, tok, max_new=6, batch_size=3, stop=nat.FINAL_DONE_RE)
    for prompt, text in zip(prompts, got):
        ids = tok.encode(prompt, add_special_tokens=False)
        for _ in range(6):
            with torch.no_grad():
                ids.append(int(lm(torch.tensor([ids]))[0, -1].argmax()))
        words = tok.decode(ids[len(tok.encode(prompt, add_special_tokens=False)):], skip_special_tokens=True).split()
        cut = next((i + 1 for i in range(len(words)) if nat.FINAL_DONE_RE.search(" ".join(words[:i + 1]))), len(words))
        assert text.split() == words[:cut]  # generation stops once the final line is complete


def test_run_scores_against_its_own_answers(tiny_folder):
    model, tok = load_causal_lm(tiny_folder, "unused")
    out = pm.run_pretrained_math(TINY, model, tok, seed=0)
    data = pm.draw_data(TINY, 0)
    assert out["gate"]["golds"] == [p.answer for p in data.problems["in_context"][:2]]
    assert out["gate"]["exact"] == np.mean([a == g for a, g in zip(out["gate"]["answers"], out["gate"]["golds"])])
    for template in ("same", "different"):
        t = out["templates"][template]
        assert list(t["models"]) == ["base", "single/facts", "single/procedure", "joint/skills", "average/skills",
                                     "arrow/skills"]
        for s in t["models"].values():
            golds = [p.answer for p in data.problems["composed"]]
            assert s["composed"] == pytest.approx(np.mean([a == g for a, g in zip(s["answers"], golds)]))
            assert s["composed_logprob"] < 0 and set(s["facts"]) == {"facts", "procedure"}
    # the base is the same model in both templates; the facts LoRA is not (other data)
    same, diff = out["templates"]["same"]["models"], out["templates"]["different"]["models"]
    assert all(same["base"][k] == diff["base"][k] for k in ("composed", "composed_logprob", "answers", "broadcast"))
    assert same["single/facts"]["composed_logprob"] != diff["single/facts"]["composed_logprob"]


def planted(seed: int, gate: float, same: dict, different: dict, n: int = 10) -> Result:
    """``same`` / ``different``: model -> (composed, control); each method's composed + 0.01 * seed
    (seeds must differ, or the verdict is underpowered)."""
    def models(spec):
        return {m: {"composed": c + 0.01 * seed * (m.endswith("/skills") and m != "joint/skills"), "broadcast": {"composed": k}, "composed_logprob": -5.0,
                    "probes": {"procedure_in_context": 0.5}, "facts": {"facts": 1.0, "procedure": 1.0}}
                for m, (c, k) in spec.items()}
    experts = {k: {"final": {"facts": 1.0}} for k in ("facts", "procedure", "joint/skills")}
    templates = {t: {"n_composed": n, "n_control": n, "experts": experts, "models": models(spec)}
                 for t, spec in (("same", same), ("different", different))}
    cfg = exp.MathPreRunConfig(seed=seed)
    return Result(f"k{seed}", cfg, {"model": "m", "seed": seed, "templates": templates,
                                    "protocol": {"gate": {"exact": gate, "problems": 24, "by_steps": {"2": gate}}}})


def spec(method: float, control: float, joint: float) -> dict:
    return {"base": (0.0, 0.0), "joint/skills": (joint, 0.0)} | {f"{m}/skills": (method, control)
                                                                 for m in ("average", "ties", "arrow")}


@pytest.mark.parametrize("gate, same, different, outcomes", [
    pytest.param(0.9, spec(0.8, 0.1, 0.9), spec(0.1, 0.1, 0.9), (SUPPORTED, SUPPORTED, SUPPORTED), id="composes"),
    pytest.param(0.9, spec(0.3, 0.1, 0.9), spec(0.6, 0.1, 0.9), (SUPPORTED, NOT_SUPPORTED, NOT_SUPPORTED),
                 id="far-from-ceiling"),
    pytest.param(0.9, spec(0.85, 0.8, 0.9), spec(0.1, 0.1, 0.2), (SUPPORTED, NOT_SUPPORTED, NOT_TESTABLE),
                 id="broadcast"),
    pytest.param(0.1, spec(0.8, 0.1, 0.9), spec(0.1, 0.1, 0.9), (NOT_SUPPORTED, NOT_TESTABLE, NOT_TESTABLE),
                 id="gate-fails"),
])
def test_claims_on_planted_results(gate, same, different, outcomes):
    results = [planted(s, gate + 0.01 * s, same, different) for s in range(3)]
    claims = {m.claim.id: m for m in registry.get("pretrained_math").claims}
    assert list(claims) == ["MATH-PRE-0", "TEMPLATE-1-pre-same", "TEMPLATE-1-pre-different"]
    for (cid, m), outcome in zip(claims.items(), outcomes):
        ceiling = None
        if m.ceiling is not None:
            from analysis.verdict import CeilingCheck
            ceiling = CeilingCheck(m.ceiling.name, tuple(m.ceiling.per_seed(results)), m.ceiling.threshold)
        verdict = judge(m.claim, m.per_seed(results), bounds=m.bounds, ceiling=ceiling)
        assert verdict.outcome == outcome, (cid, m.per_seed(results))
    assert claims["MATH-PRE-0"].per_seed(results) == pytest.approx([gate, gate + 0.01, gate + 0.02])
    c, k, j = same["average/skills"][0], same["average/skills"][1], same["joint/skills"][0]
    assert claims["TEMPLATE-1-pre-same"].per_seed(results) == pytest.approx(
        [min(c + 0.01 * s - k - 0.1, 0.2 - (j - c - 0.01 * s)) for s in range(3)])
    assert ("not testable" in claims["MATH-PRE-0"].detail(results)) == (gate < exp.GATE)
    assert "UNDERPOWERED" not in claims["TEMPLATE-1-pre-same"].detail(results)
    assert "UNDERPOWERED" in claims["TEMPLATE-1-pre-same"].detail([planted(0, gate, same, different, n=8)])


def test_registered_for_paper_reproduce_only():
    e = registry.get("pretrained_math")
    assert e.reproduce_profiles == ("paper",)
    assert [c.seed for c in e.configs("quick")] == [0, 1, 2]
    quick = e.configs("quick")[0].run
    assert (quick.world.max_fact, quick.world.min_steps, quick.world.max_steps, quick.n_shots) == (9, 1, 2, 2)


def test_cli_run_prints_table_and_figure(tiny_folder, tmp_path, capsys):
    sets = {"model": str(tiny_folder), "run.world.n_entities": 2, "run.world.n_context": 4, "run.world.n_new": 6,
            "run.world.n_qtypes": 3, "run.world.n_new_qtypes": 2, "run.n_fact_entities": 2, "run.n_procedure": 4,
            "run.n_composed": 3, "run.n_probe": 2, "run.n_gate": 2, "run.n_shots": 1, "run.decode_extra": 2,
            "run.lora.rank": 2, "run.lora.targets": "q,v", "run.finetune.steps": 4, "run.finetune.batch_size": 4,
            "run.finetune.eval_every": 2, "run.methods": "average,arrow", "seed": 0, "reuse_below_gate": "true"}
    argv = ["run", "pretrained_math", "--quiet", "--results", str(tmp_path / "r"), "--figures", str(tmp_path / "fig")]
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "template same" in text and "template different" in text and "arrow/skills" in text
    sidecar = json.loads((tmp_path / "fig" / "pretrained_math.json").read_text())
    assert sidecar["data"]["threshold"] == exp.GATE and set(sidecar["data"]) >= {"same", "different", "gate"}
    assert (tmp_path / "fig" / "pretrained_math.png").stat().st_size > 0


def test_a_base_under_the_gate_trains_no_lora(tiny_folder, monkeypatch):
    """The random tiny model answers no stated-facts problem: the gate stops the protocol."""
    monkeypatch.setattr(pm, "run_protocol", lambda *a, **k: pytest.fail("the protocol ran below the gate"))
    model, tok = load_causal_lm(tiny_folder, "unused")
    out = pm.run_pretrained_math(TINY, model, tok, seed=0, skip_below=out_gate_plus(model, tok))
    assert out["templates"] == {} and "not run" in out["skipped"]


def out_gate_plus(model, tok) -> float:
    """A threshold just above this model's gate score (so the test does not depend on it being 0)."""
    return pm.run_gate(pm.draw_data(TINY, 0), TINY, LogitsLM(model), tok, max_new=4)["exact"] + 0.01


def test_claims_where_the_gate_stopped_the_protocol():
    """No seed ran: the TEMPLATE claims are not measured and say why; one seed ran: they read it alone."""
    claims = {m.claim.id: m for m in registry.get("pretrained_math").claims}
    stopped = [r._replace(result={**r.result, "templates": {}}) for r in
               (planted(s, 0.1 + 0.01 * s, spec(0.8, 0.1, 0.9), spec(0.1, 0.1, 0.9)) for s in range(3))]
    for cid in ("TEMPLATE-1-pre-same", "TEMPLATE-1-pre-different"):
        why = claims[cid].needs(stopped)
        assert "failed MATH-PRE-0's gate" in why and "reuse_below_gate=true" in why
        assert "no seed ran" in claims[cid].detail(stopped)
    assert claims["MATH-PRE-0"].needs is None
    from analysis.figures.pretrained_math import math_pre_figure

    _, data = math_pre_figure(stopped)  # the gate panel alone
    assert data["gate"] == pytest.approx([0.1, 0.11, 0.12]) and not {"same", "different"} & set(data)
    mixed = stopped[:2] + [planted(2, 0.9, spec(0.8, 0.1, 0.9), spec(0.1, 0.1, 0.9))]
    for cid in ("TEMPLATE-1-pre-same", "TEMPLATE-1-pre-different"):
        assert claims[cid].needs(mixed) is None
        assert len(claims[cid].per_seed(mixed)) == 1 == len(claims[cid].ceiling.per_seed(mixed))
    assert claims["TEMPLATE-1-pre-different"].per_seed(mixed) == pytest.approx([0.02])  # seed 2 alone: + 0.01 * 2


@pytest.mark.parametrize("setting, match", [
    pytest.param("model=/nonexistent/nope.gguf", "no such file or folder", id="missing-model"),
    pytest.param("run.fmt=essay", "protocol.fmt='essay'", id="fmt"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, setting, match):
    assert main(["run", "pretrained_math", "--results", str(tmp_path), "--set", setting]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err
    assert not any(tmp_path.iterdir())
