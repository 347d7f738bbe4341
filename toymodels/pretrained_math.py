"""Math word problems in English on a pretrained causal LM: the toy math world
(:mod:`toymodels.tasks.math_problems`) rendered by :mod:`toymodels.tasks.math_natural`, on
:func:`toymodels.protocol.run_protocol` (issue 10 item 2, the pretrained half).

Experts, as in the toy (:mod:`toymodels.tasks.math_experts`): ``facts`` (every attribute of
``n_fact_entities`` made-up entities; ``same`` template: familiar-type worked problems about them,
whose solutions hold the lookup line ``A zorble costs 7 dollars.``; ``different``: ``What is the
price of a zorble in dollars?`` -> `` 7.``), ``procedure`` (the new question types about real
objects, values stated in the text), distractors ``D*`` (other made-up entities' facts, written
like ``facts``). Library ``skills`` = {facts, procedure, D*}. The composed problem asks a new
question type about the facts entities without stating their values.

:func:`run_pretrained_math` first measures the gate (forward passes only): the base's greedy
few-shot answers to held-out new-type problems whose facts are stated (``n_shots`` solved
familiar-type problems first). Then per template it runs the protocol and scores every model:

- ``composed``: share of composed problems whose greedy decoding (zero-shot, ``max_new``
  tokens) says ``The answer is N`` with N the gold answer (:func:`math_natural.final_answer`);
- ``composed_logprob``: mean teacher-forced log-probability of the gold answer text (direct:
  the final line; worked: the whole solution) (:func:`toymodels.pretrained_metrics.score_rows`);
- ``broadcast["composed"]``: the control: each composed question asked again, constants kept,
  about held-out made-up entities no expert saw; the share answered with one of the answers the
  same question has about the facts entities (a model that ignores the subject), gold excluded;
- ``probes["procedure_in_context"]``: greedy final-answer accuracy on held-out new-type problems
  with the values stated (the procedure skill alone, zero-shot);
- ``facts[name]``: teacher-forced exact match on member ``name``'s own training rows.

Randomness: ``seeds.numpy_rng(seed, "math_pre", "world" | "data")``; the LoRAs and merges
under scope ``("math_pre",)``, shared by both templates (paired, as in the toy).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from itertools import permutations

import numpy as np
import torch
from torch import nn

from toymodels import presets
from toymodels.config import Config, check_fields, counts
from toymodels.hf_roles import role_map
from toymodels.lora import LoRAConfig
from toymodels.pretrained import LogitsLM
from toymodels.pretrained_metrics import greedy_texts, score_rows
from toymodels.progress import Progress, open_bar
from toymodels.protocol import Backend, TaskFamily, run_protocol, train_summary
from toymodels.reuse import DATA_FREE, METHODS
from toymodels.reuse_options import ReuseOptions
from toymodels.seeds import numpy_rng
from toymodels.tasks import math_natural as nat
from toymodels.tasks.math_corpus import combos, draw_problems
from toymodels.tasks.math_experts import TEMPLATES, distinct_problems, facts_problems_of
from toymodels.tasks.math_problems import FORMATS, MathWorld, MathWorldConfig, Problem, make_problem, make_world, solve
from toymodels.tasks.natural import encode_pairs
from toymodels.train import MISS_PROBE_ROWS, TrainConfig

Pair = tuple[str, str]


@dataclass(frozen=True)
class PretrainedMathConfig(Config):
    """The world (facts and constants 1-``max_fact``, results 0-``max_value``, ``min_steps``-
    ``max_steps`` steps), the answer format, the expert data sizes, the gate's size and shots,
    greedy decoding's ``decode_extra`` tokens past the longest gold answer, the LoRA recipe and
    the reuse methods."""

    world: MathWorldConfig = field(default_factory=lambda: MathWorldConfig(n_entities=2, n_context=12, n_new=16,
                                                                           n_qtypes=3, n_new_qtypes=3))
    fmt: str = "worked"
    templates: tuple[str, ...] = TEMPLATES
    n_fact_entities: int = 3
    per_fact: int = 2
    n_distractor_experts: int = 0
    n_procedure: int = 24
    n_composed: int = 10
    n_probe: int = 6
    n_gate: int = 24
    n_shots: int = 2
    decode_extra: int = 8
    lora: LoRAConfig = field(default_factory=lambda: LoRAConfig(rank=4, alpha=8.0, targets=("q", "v", "up", "down")))
    finetune: TrainConfig = field(default_factory=lambda: presets.pretrained_finetune(steps=15, batch_size=8))
    methods: tuple[str, ...] = ("average", "ties", "arrow")
    reuse: ReuseOptions = field(default_factory=lambda: ReuseOptions(lorahub_budget=12))
    joint: bool = True

    def __post_init__(self):
        check_fields("protocol", self, counts(self, {"n_fact_entities": 2, "per_fact": 1, "n_distractor_experts": 0,
                                                     "n_procedure": 1, "n_composed": 1, "n_probe": 1, "n_gate": 1,
                                                     "n_shots": 0, "decode_extra": 0}))
        need = self.n_fact_entities * (2 + self.n_distractor_experts)
        check_fields("protocol", self, {
            "fmt": (self.fmt in FORMATS, f"one of {', '.join(FORMATS)}"),
            "templates": (bool(self.templates) and all(t in TEMPLATES for t in self.templates)
                          and len(set(self.templates)) == len(self.templates), f"distinct names of {TEMPLATES}"),
            "methods": (bool(self.methods) and all(m in METHODS for m in self.methods),
                        f"a non-empty tuple of {', '.join(METHODS)}"),
            "n_fact_entities": (need <= self.world.n_new, f"<= world.n_new / (2 + n_distractor_experts) (facts, "
                                                          f"distractors and control subjects: {need} > {self.world.n_new})")})


def quick() -> PretrainedMathConfig:
    """CPU-sized (defaults): 3 fact entities (18 facts rows), 24 procedure problems, 10 composed
    and 10 control questions, 6 in-context probes, a 24-problem gate with 2 shots; 1-2 steps, numbers
    1-9, results <= 99; <= 15 LoRA steps at batch 8; average, TIES, Arrow; no distractor expert."""
    return PretrainedMathConfig()


def paper() -> PretrainedMathConfig:
    """For a GPU: one distractor expert, 64 procedure and 32 composed problems, every data-free
    method, 300 LoRA steps, rank 8 on every role."""
    return PretrainedMathConfig(
        n_distractor_experts=1, n_procedure=64, n_composed=32, n_probe=32, n_gate=48, methods=DATA_FREE,
        lora=LoRAConfig(rank=8, alpha=16.0, targets=("q", "k", "v", "o", "gate", "up", "down")),
        finetune=presets.pretrained_finetune(steps=300, batch_size=32, eval_every=10))


@dataclass(frozen=True)
class MathData:
    """Everything a run draws: the world, the entities per role, the problems per set
    (``procedure``, ``composed``, ``control``, ``in_context``, ``shots``) and, per composed
    question, ``new_answers``: its answers about the facts entities (the control's targets)."""

    world: MathWorld
    entities: dict[str, np.ndarray]
    problems: dict[str, list[Problem]]
    new_answers: list[frozenset[int]]
    facts_problems: dict[str, list[Problem]]  # the same-template facts data per facts/D* expert


def answers_about(world: MathWorld, p: Problem, ents) -> frozenset[int]:
    """The final answers of ``p``'s question type and constants about any distinct ``ents``."""
    qt, out = world.qtypes[p.qtype], set()
    for perm in permutations(ents, qt.n_slots):
        steps = solve(qt, {(a, s): int(world.values[perm[s], a]) for a, s in qt.facts}, p.consts,
                      world.config.max_value)
        if steps is not None:
            out.add(steps[-1][3])
    return frozenset(out)


def _controls(world: MathWorld, composed: list[Problem], facts: np.ndarray, subjects: np.ndarray,
              rng: np.random.Generator) -> tuple[list[Problem], list[frozenset[int]]]:
    """Per composed question, the same question about ``subjects`` whose gold is not one of its
    answers about ``facts`` (up to 20 draws; a question with none is left out)."""
    out, new = [], []
    for p in composed:
        mine = answers_about(world, p, facts)
        for _ in range(20):
            ents = tuple(int(e) for e in rng.choice(subjects, len(p.entities), replace=False))
            q = make_problem(world, p.qtype, ents, rng, False, consts=p.consts)
            if q is not None and q.answer not in mine:
                out.append(q)
                new.append(mine)
                break
    return out, new


def draw_data(cfg: PretrainedMathConfig, seed: int) -> MathData:
    world = make_world(cfg.world, numpy_rng(seed, "math_pre", "world"))
    nat.check_names(world)
    g_ent, g_facts, g_proc, g_comp, g_ctrl, g_ctx, g_shots = numpy_rng(seed, "math_pre", "data").spawn(7)
    new, n_f = g_ent.permutation(world.new), cfg.n_fact_entities
    entities = {"facts": new[:n_f]} | {f"D{j}": new[(j + 1) * n_f:(j + 2) * n_f]
                                       for j in range(cfg.n_distractor_experts)}
    entities["control"] = new[(1 + cfg.n_distractor_experts) * n_f:(2 + cfg.n_distractor_experts) * n_f]
    facts_problems = {k: facts_problems_of(world, v, cfg.per_fact, g_facts)
                      for k, v in entities.items() if k != "control"}
    procedure = draw_problems(world, combos(world, world.new_qtypes, world.context), cfg.n_procedure, True, 0, g_proc)
    pool = draw_problems(world, combos(world, world.new_qtypes, entities["facts"]), 4 * cfg.n_composed, False, 0, g_comp)
    composed = distinct_problems(pool)[:cfg.n_composed]
    if len(composed) < cfg.n_composed:
        raise ValueError(f"protocol.n_composed={cfg.n_composed}: only {len(composed)} distinct composed problems "
                         f"exist; lower it or raise world.n_new_qtypes / n_fact_entities")
    control, new_answers = _controls(world, composed, entities["facts"], entities["control"], g_ctrl)
    n_ctx = max(cfg.n_gate, cfg.n_probe)
    in_context = distinct_problems(draw_problems(world, combos(world, world.new_qtypes, world.context), 3 * n_ctx,
                                                 True, 0, g_ctx), procedure)[:n_ctx]
    shots = draw_problems(world, combos(world, world.familiar_qtypes, world.context), cfg.n_shots, True, 0, g_shots) \
        if cfg.n_shots else []
    problems = {"procedure": procedure, "composed": composed, "control": control, "in_context": in_context,
                "shots": shots}
    return MathData(world, entities, problems, new_answers, facts_problems)


def expert_pairs(data: MathData, cfg: PretrainedMathConfig, template: str) -> dict[str, list[Pair]]:
    """Each expert's ``(prompt, answer)`` rows under ``template`` (module docstring)."""
    w, out = data.world, {}
    for name, probs in data.facts_problems.items():
        out[name] = [nat.problem_pair(w, p, cfg.fmt) for p in probs] if template == "same" else \
            [nat.atomic_pair(w, int(e), a, int(w.values[e, a])) for e in data.entities[name]
             for a in range(w.config.n_attributes) for _ in range(cfg.per_fact)]
    out["procedure"] = [nat.problem_pair(w, p, cfg.fmt) for p in data.problems["procedure"]]
    return {k: out[k] for k in ["facts", "procedure"] + [k for k in out if k.startswith("D")]}


def finals(model: nn.Module, prompts: list[str], tokenizer, max_new: int) -> list[int | None]:
    """The number each greedy continuation gives as its final answer (None: no final line)."""
    return [nat.final_answer(t) for t in greedy_texts(model, prompts, tokenizer, max_new, stop=nat.FINAL_DONE_RE)]


_mean = lambda xs: float(np.mean(xs)) if len(xs) else None  # noqa: E731


def run_gate(data: MathData, cfg: PretrainedMathConfig, model: nn.Module, tokenizer, max_new: int) -> dict:
    """The base's greedy few-shot final answers to ``n_gate`` held-out new-type problems whose
    facts are stated: ``exact``, ``by_steps``, the answers and one prompt."""
    w, probs = data.world, data.problems["in_context"][:cfg.n_gate]
    shots = [nat.problem_pair(w, p, cfg.fmt) for p in data.problems["shots"]]
    prompts = [nat.few_shot(shots, nat.question(w, p)) for p in probs]
    got = finals(model, prompts, tokenizer, max_new)
    ok = np.array([g == p.answer for g, p in zip(got, probs)])
    steps = np.array([len(p.steps) for p in probs])
    return {"problems": len(probs), "exact": float(ok.mean()), "shots": cfg.n_shots,
            "by_steps": {str(k): float(ok[steps == k].mean()) for k in sorted(set(steps.tolist()))},
            "answers": got, "golds": [p.answer for p in probs], "prompt_example": prompts[0]}


def score_model(model: nn.Module, data: MathData, sheet: dict, tokenizer, max_new: int) -> dict:
    """One model's metrics (module docstring); ``sheet`` maps row-set names to encoded rows."""
    rows = score_rows(model, sheet)
    w, pr = data.world, data.problems
    names = ("composed", "control", "in_context")
    probs = [pr["composed"], pr["control"], pr["in_context"]]
    got = finals(model, [nat.question(w, p) for ps in probs for p in ps], tokenizer, max_new)
    got = dict(zip(names, np.split(np.array(got, dtype=object), np.cumsum([len(p) for p in probs])[:-1])))
    composed = [g == p.answer for g, p in zip(got["composed"], pr["composed"])]
    cast = [g in new for g, new in zip(got["control"], data.new_answers)]
    return {"n_composed": len(composed), "composed": _mean(composed),
            "composed_logprob": rows["composed"][1].mean().item(),
            "broadcast": {"composed": _mean(cast)},
            "probes": {"procedure_in_context": _mean([g == p.answer for g, p in zip(got["in_context"],
                                                                                     pr["in_context"])])},
            "facts": {k.split("/", 1)[1]: v[0].float().mean().item() for k, v in rows.items() if k.startswith("own/")},
            "answers": [None if g is None else int(g) for g in got["composed"]]}


def oracle(per: list[dict], members) -> dict:
    """Task-level oracle selection: the adapter with the best composed accuracy (then log-prob)."""
    best = max(range(len(per)), key=lambda i: (per[i]["composed"], per[i]["composed_logprob"]))
    return dict(per[best], adapter=members[best])


def run_pretrained_math(cfg: PretrainedMathConfig, hf_model: nn.Module, tokenizer, seed: int = 0,
                        device: str = "cpu", progress: Progress | None = None, skip_below: float | None = None) -> dict:
    """The gate, then the protocol once per template on ``hf_model`` (weights unchanged), unless the
    gate's exact match is under ``skip_below`` (then ``templates`` is empty and ``skipped`` says why).
    Returns ``{"config", "key", "seed", "max_new", "gate", "entities", "examples", "templates": {template:
    {"n_composed", "n_control", "experts": {name: training summary}, "models": {model: scores}}}}``."""
    lm, roles = LogitsLM(hf_model).to(device), role_map(hf_model, cfg.lora.targets)
    data = draw_data(cfg, seed)
    w, pr = data.world, data.problems
    golds = [nat.problem_pair(w, p, cfg.fmt)[1] for k in ("composed", "in_context") for p in pr[k]]
    max_new = max(len(tokenizer.encode(g, add_special_tokens=False)) for g in golds) + cfg.decode_extra
    bar = open_bar(progress, "gate: base on stated-facts problems", 1)
    gate = run_gate(data, cfg, lm, tokenizer, max_new)
    bar.close()
    out = {"config": cfg.to_dict(), "key": cfg.key(), "seed": seed, "max_new": max_new, "gate": gate,
           "entities": {k: [nat.name(w, int(e)) for e in v] for k, v in data.entities.items()},
           "examples": {k: "".join(nat.problem_pair(w, pr[k][0], cfg.fmt)) for k in ("composed", "procedure")},
           "templates": {}}
    if skip_below is not None and gate["exact"] < skip_below:
        out["skipped"] = f"gate {gate['exact']:.3f} < {skip_below:g}: the reuse protocol was not run"
        return out
    for template in cfg.templates:
        pairs = expert_pairs(data, cfg, template)
        train_sets = {k: encode_pairs(v, tokenizer) for k, v in pairs.items()}
        sheet = {"composed": encode_pairs([nat.problem_pair(w, p, cfg.fmt) for p in pr["composed"]], tokenizer)}
        sheet |= {f"own/{k}": v for k, v in train_sets.items()}
        family = TaskFamily(experts=train_sets, libraries={"skills": list(train_sets)},
                            shots=train_sets["procedure"][:cfg.reuse.lorahub_shots],
                            score=lambda model, members, method: score_model(model, data, sheet, tokenizer, max_new),
                            oracle=oracle)
        backend = Backend(lm, roles, device, probe_misses=MISS_PROBE_ROWS)
        done = run_protocol(family, backend, cfg, seed, ("math_pre",), joint=cfg.joint,
                            summary=functools.partial(train_summary, curves=False, digits=2),
                            title=f"math LoRAs and scores ({template} template)", progress=progress)
        out["templates"][template] = {"n_composed": len(pr["composed"]), "n_control": len(pr["control"]), **done}
    return out
