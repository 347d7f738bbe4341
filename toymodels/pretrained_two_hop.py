"""The two-hop reuse protocol on a pretrained causal LM, in natural language (PAPER.md
section 2, "Full-scale runs"; data from :mod:`toymodels.tasks.natural`).

:func:`run_pretrained_two_hop` takes a loaded HF causal LM of a family with a role map
(``toymodels.hf_roles``; other families name their modules in ``lora.targets``) and its tokenizer
(``toymodels.pretrained.load_causal_lm``), then
1. measures the base model's familiarity: exact match on the one-hop facts of
   ``natural.WORLD`` (what R assumes the model knows); with ``r_known_only`` the R split is
   drawn from the facts it answers correctly only (``r_split`` says how many remain);
2. trains one LoRA per expert (AB, BC, AC) with :func:`toymodels.train.train`, and one joint
   LoRA per library on the union of its experts' sentences (what data access would buy);
3. scores every model (base, single experts, joint LoRAs, each ``reuse.METHODS`` entry on
   each library ``hops`` = {AB, BC} and ``with_AC`` = {AB, BC, AC}) on every eval set of
   every familiarity F / H / R: exact match and mean answer log-probability;
4. the broadcast control (T2 in natural language, ``natural.broadcast_controls``): per
   familiarity, how often each model answers the BC / AC experts' answers C to questions
   of the same template about other real subjects, beside a chance reference.

``oracle`` is task-level oracle selection: per eval set, the best single adapter of the
library (one-hot routing); its broadcast rates use the adapter it picks for that
familiarity's composed set (``two_hop_unseen``). The result is JSON-able.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

from torch import nn

from toymodels.config import Config
from toymodels.hf_roles import role_map
from toymodels.lora import LoRAConfig
from toymodels import presets
from toymodels.pretrained import LogitsLM
from toymodels.progress import Progress, open_bar
from toymodels.protocol import LIBRARIES, Backend, TaskFamily, run_protocol, train_summary
from toymodels.reuse import DEFAULT_METHODS, METHODS
from toymodels.reuse_options import ReuseOptions
from toymodels.seeds import numpy_rng
from toymodels.tasks import Examples
from toymodels.tasks.natural import (WORLD, Control, NaturalConfig, answer_scores, broadcast_controls,
                                     encode_pairs, eval_pairs, expert_pairs, known_fact_pairs, make_chains)
from toymodels.train import TrainConfig, recipe

__all__ = ["LIBRARIES", "PretrainedTwoHopConfig", "paper", "quick", "run_pretrained_two_hop"]


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

    def __post_init__(self):
        if not isinstance(self.n_control, int) or self.n_control < 0:
            raise ValueError(f"n_control={self.n_control!r}: must be an integer >= 0")
        if self.familiarity_facts is not None and not 1 <= self.familiarity_facts <= len(WORLD):
            raise ValueError(f"familiarity_facts={self.familiarity_facts!r}: must be None or in [1, {len(WORLD)}]")
        if bad := [m for m in self.methods if m not in METHODS]:
            raise ValueError(f"methods contains {bad}: must be among {', '.join(METHODS)}")
        if self.finetune.target_set not in (None, "facts"):
            raise ValueError(f"finetune.target_set={self.finetune.target_set!r}: must be None or 'facts'")


def quick() -> PretrainedTwoHopConfig:
    """SmolLM2-135M on 2 CPU cores: an estimated 5-8 min (per-step timings: ~1.4 s per LoRA
    step at batch 16, ~10 s to score one model on its ~30 eval and ~100 control rows, x 5
    LoRAs x 25 steps and ~23 scored models; not yet a timed full run). 2 countries x 2
    cities per familiarity, capital only (AB 12, BC 6, AC 6 sentences), at most 25 steps per
    LoRA, 8 control questions per familiarity and expert; R from facts the base answers."""
    return PretrainedTwoHopConfig(
        task=NaturalConfig(n_countries=2, cities_per_country=2, relations2=("capital",)),
        finetune=presets.pretrained_finetune(steps=25),
        methods=("average", "sum", "ties", "svd", "factor_average", "arrow", "oracle"), r_known_only=True)


def paper() -> PretrainedTwoHopConfig:
    """For a GPU: 8 countries x 3 cities, capital and language, every method, 300 steps."""
    return PretrainedTwoHopConfig(
        task=NaturalConfig(n_countries=8, cities_per_country=3),
        lora=LoRAConfig(rank=8, alpha=16.0, targets=("q", "k", "v", "o", "gate", "up", "down")),
        finetune=presets.pretrained_finetune(steps=300, batch_size=32, eval_every=10),
        reuse=ReuseOptions(lorahub_budget=40), r_known_only=True)


def score(model: nn.Module, sets: dict[str, Examples]) -> dict[str, dict[str, float]]:
    """``{set: {"exact": share exactly right, "logprob": mean answer log-probability}}``."""
    model.eval()
    out = {}
    for name, ex in sets.items():
        exact, logprob = answer_scores(model, ex)
        out[name] = {"exact": exact.float().mean().item(), "logprob": logprob.mean().item()}
    return out


def encode_controls(controls: list[Control], tokenizer) -> Examples | None:
    """All controls' (question, new answer) rows in one batch, in ``controls`` order."""
    pairs = [p for c in controls for p in c.pairs()]
    return encode_pairs(pairs, tokenizer) if pairs else None


def broadcast(model: nn.Module, controls: list[Control], rows: Examples | None) -> dict[str, float]:
    """``{control name: share of its questions answered (exact match) with a new answer}``."""
    if rows is None:
        return {}
    model.eval()
    exact, out, start = answer_scores(model, rows)[0], {}, 0
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


def _oracle(per: list[tuple[dict, dict]], sets: dict, controls: list[Control]) -> tuple[dict, dict]:
    """From ``per[i]`` = (scores, broadcast) with all weight on adapter ``i``: per eval set the
    best adapter; each control's rate under the adapter picked for its composed set."""
    best = {name: max(range(len(per)), key=lambda i: per[i][0][name]["exact"]) for name in sets}
    picked = {c.name: best.get(_composed_set(sets, c.familiarity), 0) for c in controls}
    return ({name: dict(per[best[name]][0][name], adapter=best[name]) for name in sets},
            {name: per[i][1][name] for name, i in picked.items()})


def run_pretrained_two_hop(cfg: PretrainedTwoHopConfig, hf_model: nn.Module, tokenizer, seed: int = 0,
                           device: str = "cpu", progress: Progress | None = None) -> dict:
    """The whole protocol on ``hf_model`` (its weights are left unchanged; it is moved to
    ``device``); see the module docstring. Returns ``{"config", "key", "seed", "chains",
    "familiarity": {"facts", "exact", "known"}, "r_split": {"known_only", "countries",
    "requested", "chains"}, "controls": {name: {"questions", "new_answers", "chance"}},
    "experts": {name: training summary}, "models": {model: {eval set: {"exact", "logprob"}}},
    "broadcast": {model: {control name: rate}}}``. ``progress`` (toymodels/progress.py) gets a
    bar over the LoRAs trained and models scored, and one per LoRA over its steps."""
    rng = numpy_rng(seed, "chains")  # chains and controls; each LoRA and merge: run_protocol's streams
    lm, roles = LogitsLM(hf_model).to(device), role_map(hf_model, cfg.lora.targets)
    fact_pairs = known_fact_pairs(cfg.familiarity_facts)
    bar = open_bar(progress, "base model familiarity", 1)
    fact_exact = answer_scores(lm.eval(), encode_pairs(fact_pairs, tokenizer))[0]
    bar.close()
    known = {pair for pair, ok in zip(fact_pairs, fact_exact.tolist()) if ok}
    chains = make_chains(cfg.task, rng, known if cfg.r_known_only else None)
    controls = broadcast_controls(chains, cfg.n_control, rng) if cfg.n_control else []
    control_rows = encode_controls(controls, tokenizer)
    sets = {name: encode_pairs(pairs, tokenizer) for name, pairs in eval_pairs(chains).items()}
    train_sets = {name: encode_pairs(pairs, tokenizer) for name, pairs in expert_pairs(chains).items()}
    r_chains = [c for c in chains if c.familiarity == "R"]
    out = {"config": cfg.to_dict(), "key": cfg.key(), "seed": seed,
           "chains": [dataclasses.asdict(c) for c in chains],
           "familiarity": {"facts": len(fact_pairs), "exact": fact_exact.float().mean().item(), "known": len(known)},
           "r_split": {"known_only": cfg.r_known_only, "requested": cfg.task.n_countries,
                       "countries": len({c.country for c in r_chains}), "chains": len(r_chains)},
           "controls": {c.name: {"questions": len(c.questions), "new_answers": list(c.new_answers),
                                 "chance": c.chance} for c in controls}}
    family = TaskFamily(experts=train_sets, libraries=LIBRARIES, shots=train_sets["AC"][:cfg.reuse.lorahub_shots],
                        score=lambda model, members, method: (score(model, sets),
                                                              broadcast(model, controls, control_rows)),
                        oracle=lambda per, members: _oracle(per, sets, controls))
    done = run_protocol(family, Backend(lm, roles, device), cfg, seed, joint=cfg.joint,
                        summary=functools.partial(train_summary, curves=False, digits=2), progress=progress)
    return {**out, "experts": done["experts"], "models": {name: s for name, (s, _) in done["models"].items()},
            "broadcast": {name: b for name, (_, b) in done["models"].items()}}
