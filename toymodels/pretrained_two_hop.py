"""The two-hop reuse protocol on a pretrained causal LM, in natural language (PAPER.md
section 2, "Full-scale runs"; data from :mod:`toymodels.tasks.natural`).

:func:`run_pretrained_two_hop` takes a loaded HF causal LM of a family with a role map
(``toymodels.hf_roles``; other families name their modules in ``lora.targets``) and its tokenizer
(``toymodels.pretrained.load_causal_lm``), then
1. measures the base model's familiarity: exact match on the one-hop facts of
   ``natural.WORLD`` (what R assumes the model knows; with an O split or retention sets also
   ``OOD_WORLD``'s); with ``r_known_only`` the R and O splits are drawn from the facts it
   answers correctly only (``r_split`` / ``o_split`` say how many remain);
2. trains one LoRA per expert (AB, BC, AC) with :func:`toymodels.train.train`, and one joint
   LoRA per library on the union of its experts' sentences (what data access would buy);
3. scores every model (base, single experts, joint LoRAs, each ``reuse.METHODS`` entry on
   each library ``hops`` = {AB, BC} and ``with_AC`` = {AB, BC, AC}) on every eval set of
   every split F / H / R (and O, ``task.ood_countries``): exact match and mean answer
   log-probability; with ``n_retain`` also the retention sets (``natural_probes.retention_pairs``:
   the base's own facts and two-hop chains that no expert trains);
4. the broadcast control (T2 in natural language, ``natural_probes.broadcast_controls``): per
   familiarity, how often each model answers the BC / AC experts' answers C to questions
   of the same template about other real subjects, beside a chance reference;
5. per familiarity, the shared metrics of :mod:`toymodels.pretrained_metrics` (composed,
   composed_logprob, specificity on the same prompts, conditional composition).

Randomness (``toymodels.seeds``): the chains, the controls and the wrong answers of the
specificity metric each draw from their own stream under the run seed; the protocol's LoRA
inits, batch orders and LoraHub from another, so a seed is an independent draw of all of them.

``oracle`` is task-level oracle selection: per eval set, the best single adapter of the
library (one-hot routing); its broadcast rates use the adapter it picks for that
familiarity's composed set (``two_hop_unseen``). The result is JSON-able.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import torch
from torch import nn

from toymodels.config import Config, opt_in
from toymodels.hf_roles import role_map
from toymodels.lora import LoRAConfig
from toymodels import presets
from toymodels.peft_backend import train_lora_peft
from toymodels.pretrained import LogitsLM
from toymodels.pretrained_metrics import answer_rows, encode_wrong, score_rows, split_metrics, split_probes
from toymodels.progress import Progress, open_bar
from toymodels.protocol import LIBRARIES, Backend, TaskFamily, run_protocol, train_lora, train_summary
from toymodels.reuse import DEFAULT_METHODS, METHODS
from toymodels.reuse_options import ReuseOptions
from toymodels.seeds import numpy_rng
from toymodels.tasks import Examples
from toymodels.tasks.natural import (WORLD, NaturalConfig, encode_pairs, eval_pairs, expert_pairs,
                                     known_fact_pairs, make_chains)
from toymodels.tasks.natural_probes import Control, broadcast_controls, retention_pairs
from toymodels.train import MISS_PROBE_ROWS, TrainConfig, recipe

__all__ = ["LIBRARIES", "LORA_BACKENDS", "PretrainedTwoHopConfig", "draw_chains", "paper", "quick", "run_pretrained_two_hop"]


@dataclass(frozen=True)
class PretrainedTwoHopConfig(Config):
    task: NaturalConfig = field(default_factory=NaturalConfig)
    lora: LoRAConfig = field(default_factory=lambda: LoRAConfig(rank=4, alpha=8.0, targets=("q", "v", "up", "down")))
    finetune: TrainConfig = field(default_factory=lambda: recipe("pretrained_finetune"))  # presets
    methods: tuple[str, ...] = DEFAULT_METHODS
    reuse: ReuseOptions = field(default_factory=lambda: ReuseOptions(lorahub_budget=12))
    joint: bool = True  # also train a joint LoRA per library
    familiarity_facts: int | None = None  # countries of WORLD for the base familiarity (None: all)
    # R only from facts the base answers (make_chains(known=...)). False by default so that a
    # bare config keeps its chains whatever the model; quick() and paper() turn it on.
    r_known_only: bool = False
    n_control: int = 8  # broadcast-control questions per familiarity, relation and expert (0: none)
    n_wrong: int = 2  # wrong answers per composed question for the specificity metric
    n_retain: int = opt_in(0)  # rows per retention set (natural_probes.retention_pairs; 0: none)

    def __post_init__(self):
        if not isinstance(self.n_retain, int) or self.n_retain < 0:
            raise ValueError(f"n_retain={self.n_retain!r}: must be an integer >= 0")
        if not isinstance(self.n_control, int) or self.n_control < 0:
            raise ValueError(f"n_control={self.n_control!r}: must be an integer >= 0")
        if not isinstance(self.n_wrong, int) or self.n_wrong < 1:
            raise ValueError(f"n_wrong={self.n_wrong!r}: must be an integer >= 1")
        if self.familiarity_facts is not None and not 1 <= self.familiarity_facts <= len(WORLD):
            raise ValueError(f"familiarity_facts={self.familiarity_facts!r}: must be None or in [1, {len(WORLD)}]")
        if bad := [m for m in self.methods if m not in METHODS]:
            raise ValueError(f"methods contains {bad}: must be among {', '.join(METHODS)}")
        if self.finetune.target_set not in (None, "facts"):
            raise ValueError(f"finetune.target_set={self.finetune.target_set!r}: must be None or 'facts'")


def quick() -> PretrainedTwoHopConfig:
    """SmolLM2-135M on 2 CPU cores, one config per core: 6 countries x 3 cities per
    familiarity, capital and language, one city per country in AC, so 24 held-out composed
    questions per split (R: fewer where the base knows fewer facts; the report says how many);
    an O split of 4 OOD_WORLD countries x 3 cities, none in AC (24 composed questions), and
    retention sets of 24 rows each (the base's own facts and chains no expert trains);
    each LoRA trains until it answers all its own rows exactly (checked every 5 steps) or
    60 steps at batch 16 (``presets.pretrained_finetune``), and the report prints how well
    each learned; average and Arrow; no other-subject controls (specificity measures
    broadcast on the true prompts, one wrong answer per question). Cost: see
    ``analysis/experiments/pretrained_two_hop.py``."""
    return PretrainedTwoHopConfig(
        task=NaturalConfig(n_countries=6, cities_per_country=3, ac_frac=0.34, ood_countries=4),
        finetune=presets.pretrained_finetune(),
        methods=("average", "arrow"), r_known_only=True, n_control=0, n_wrong=1, n_retain=24)


def paper() -> PretrainedTwoHopConfig:
    """8 countries x 3 cities, capital and language, plus the O split (4 OOD_WORLD countries x 3
    cities) and retention sets of 24 rows, every method, at most 300 steps (early stopping at
    1.00 on a LoRA's own rows, checked every 10). Measured on SmolLM2 on 2 CPU cores of the
    slower machine class (2026-12-02, one worker per seed, 1 torch thread each, two seeds side
    by side then the third alone): per config 3,832 / 3,857 / 3,068 s wall, 179 min in all,
    115.5 min wall. Every LoRA reached 1.00 on its own rows, in 20-80 steps. 16 composed
    questions per split and seed (R: 14, the facts the base answers; O: 24). Report:
    ``figures/paper/pretrained/report.md``. Before the O split and the miss probe the profile
    took 2,019 / 2,392 / 2,808 s per config (6,643 CPU-s, 80.5 min wall)."""
    return PretrainedTwoHopConfig(
        task=NaturalConfig(n_countries=8, cities_per_country=3, ood_countries=4),
        lora=LoRAConfig(rank=8, alpha=16.0, targets=("q", "k", "v", "o", "gate", "up", "down")),
        finetune=presets.pretrained_finetune(steps=300, batch_size=32, eval_every=10),
        reuse=ReuseOptions(lorahub_budget=40), r_known_only=True, n_retain=24)


def score(model: nn.Module, sets: dict[str, Examples]) -> dict[str, dict[str, float]]:
    """``{set: {"exact": share exactly right, "logprob": mean answer log-probability}}``."""
    return means(score_rows(model, sets))


def means(rows: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, dict[str, float]]:
    """:func:`score` from per-row ``(exact, logprob)``."""
    return {name: {"exact": exact.float().mean().item(), "logprob": logprob.mean().item()}
            for name, (exact, logprob) in rows.items()}


def draw_chains(task: NaturalConfig, seed: int, known: set | None = None) -> list:
    """The run's chains (:func:`toymodels.tasks.natural.make_chains`) on the seed's chain stream."""
    return make_chains(task, numpy_rng(seed, "pretrained", "chains"), known)


def encode_controls(controls: list[Control], tokenizer) -> Examples | None:
    """All controls' (question, new answer) rows in one batch, in ``controls`` order."""
    pairs = [p for c in controls for p in c.pairs()]
    return encode_pairs(pairs, tokenizer) if pairs else None


def broadcast(model: nn.Module, controls: list[Control], rows: Examples | None) -> dict[str, float]:
    """``{control name: share of its questions answered (exact match) with a new answer}``."""
    if rows is None:
        return {}
    model.eval()
    exact, out, start = answer_rows(model, rows)[0], {}, 0
    for c in controls:
        n = len(c.questions) * len(c.new_answers)
        hit = exact[start:start + n].reshape(len(c.questions), len(c.new_answers)).any(1)  # (questions,)
        out[c.name], start = hit.float().mean().item(), start + n
    return out


def _composed_set(sets: dict, fam: str) -> str | None:
    for name in (f"{fam}/two_hop_unseen", f"{fam}/two_hop_seen"):
        if name in sets:
            return name
    return None


def _oracle(per: list[tuple[dict, dict, dict]], sets: dict, controls: list[Control]) -> tuple[dict, dict, dict]:
    """From ``per[i]`` = (scores, broadcast, metrics) with all weight on adapter ``i``: per
    eval set the best adapter; each control's rate and each familiarity's metrics under the
    adapter picked for its composed set."""
    best = {name: max(range(len(per)), key=lambda i: per[i][0][name]["exact"]) for name in sets}
    picked = {c.name: best.get(_composed_set(sets, c.familiarity), 0) for c in controls}
    metrics = {fam: dict(per[best[f"{fam}/two_hop_unseen"]][2][fam], adapter=best[f"{fam}/two_hop_unseen"])
               for fam in per[0][2]}
    return ({name: dict(per[best[name]][0][name], adapter=best[name]) for name in sets},
            {name: per[i][1][name] for name, i in picked.items()}, metrics)


def _keep_experts(trainer, experts: dict, kept: dict, backend, data, *args, **kw):
    """``trainer(...)``, keeping the adapter in ``kept`` when ``data`` is an expert's own set."""
    adapter, result = trainer(backend, data, *args, **kw)
    kept.update({name: adapter for name, ex in experts.items() if ex is data})
    return adapter, result


_WRONG = "\0wrong"  # the specificity's wrong-answer rows, scored with the eval sets
LORA_BACKENDS = ("ours", "peft")  # who trains the LoRAs: our LoRALinear, or PEFT (toymodels.peft_backend)


def run_pretrained_two_hop(cfg: PretrainedTwoHopConfig, hf_model: nn.Module, tokenizer, seed: int = 0,
                           device: str = "cpu", progress: Progress | None = None, lora_backend: str = "ours",
                           adapters: dict | None = None) -> dict:
    """The whole protocol on ``hf_model`` (its weights are left unchanged; it is moved to
    ``device``); see the module docstring. Returns ``{"config", "key", "seed", "chains",
    "familiarity": {"facts", "exact", "known"}, "r_split": {"known_only", "countries",
    "requested", "chains"}, "controls": {name: {"questions", "new_answers", "chance"}},
    "experts": {name: training summary}, "models": {model: {eval set: {"exact", "logprob"}}},
    "broadcast": {model: {control name: rate}}, "metrics": {model: {familiarity: metrics}}}``
    (:mod:`toymodels.pretrained_metrics`). ``progress`` (toymodels/progress.py) gets a bar
    over the LoRAs trained and models scored, and one per LoRA over its steps. ``lora_backend``
    (:data:`LORA_BACKENDS`): ``"peft"`` trains every LoRA with PEFT's ``get_peft_model`` on the
    same data, seeds and inits, then reuses them as our adapters. ``adapters``, if given, is
    filled with each expert's trained :class:`toymodels.adapters.Adapter` by name (AB, BC, AC),
    for the caller to save."""
    if lora_backend not in LORA_BACKENDS:
        raise ValueError(f"lora_backend={lora_backend!r}: must be one of {', '.join(LORA_BACKENDS)}")
    lm, roles = LogitsLM(hf_model).to(device), role_map(hf_model, cfg.lora.targets)
    fact_pairs = known_fact_pairs(cfg.familiarity_facts, ood=bool(cfg.task.ood_countries or cfg.n_retain))
    bar = open_bar(progress, "base model familiarity", 1)
    fact_exact = answer_rows(lm, encode_pairs(fact_pairs, tokenizer))[0]
    bar.close()
    known = {pair for pair, ok in zip(fact_pairs, fact_exact.tolist()) if ok}
    chains = draw_chains(cfg.task, seed, known if cfg.r_known_only else None)
    controls = broadcast_controls(chains, cfg.n_control, numpy_rng(seed, "pretrained", "controls")) \
        if cfg.n_control else []
    control_rows = encode_controls(controls, tokenizer)
    pairs = eval_pairs(chains)
    retain = retention_pairs(chains, known, cfg.task.relations2, cfg.n_retain,
                             numpy_rng(seed, "pretrained", "retention")) if cfg.n_retain else {}
    sets = {name: encode_pairs(p, tokenizer) for name, p in {**pairs, **retain}.items()}
    probes = split_probes(chains, pairs, cfg.n_wrong, numpy_rng(seed, "pretrained", "specificity"))
    wrong_rows = encode_wrong(probes, tokenizer)
    train_sets = {name: encode_pairs(pairs, tokenizer) for name, pairs in expert_pairs(chains).items()}
    r_chains, o_chains = ([c for c in chains if c.familiarity == f] for f in ("R", "O"))
    out = {"config": cfg.to_dict(), "key": cfg.key(), "seed": seed, "lora_backend": lora_backend,
           "chains": [dataclasses.asdict(c) for c in chains],
           "familiarity": {"facts": len(fact_pairs), "exact": fact_exact.float().mean().item(), "known": len(known)},
           "r_split": {"known_only": cfg.r_known_only, "requested": cfg.task.n_countries,
                       "countries": len({c.country for c in r_chains}), "chains": len(r_chains)},
           "o_split": {"requested": cfg.task.ood_countries, "countries": len({c.country for c in o_chains}),
                       "chains": len(o_chains)},
           "retention": {name: len(rows) for name, rows in retain.items()},
           "controls": {c.name: {"questions": len(c.questions), "new_answers": list(c.new_answers),
                                 "chance": c.chance} for c in controls},
           "questions": {p.familiarity: {"composed": len(p.composed), "wrong": len(p.wrong)} for p in probes}}

    def score_one(model, members, method):
        rows = score_rows(model, {**sets, _WRONG: wrong_rows})  # one pass over every row
        wrong = rows.pop(_WRONG, None)
        return means(rows), broadcast(model, controls, control_rows), split_metrics(rows, probes, wrong)

    family = TaskFamily(experts=train_sets, libraries=LIBRARIES, shots=train_sets["AC"][:cfg.reuse.lorahub_shots],
                        score=score_one, oracle=lambda per, members: _oracle(per, sets, controls))
    trainer = train_lora_peft if lora_backend == "peft" else train_lora
    if adapters is not None:
        trainer = functools.partial(_keep_experts, trainer, train_sets, adapters)
    backend = Backend(lm, roles, device, trainer, probe_misses=MISS_PROBE_ROWS)
    done = run_protocol(family, backend, cfg, seed, ("pretrained",), joint=cfg.joint,
                        summary=functools.partial(train_summary, curves=False, digits=2), progress=progress)
    models = done["models"]
    return {**out, "experts": done["experts"], "models": {name: s[0] for name, s in models.items()},
            "broadcast": {name: s[1] for name, s in models.items()},
            "metrics": {name: s[2] for name, s in models.items()}}
