"""History/geography QA reuse on a pretrained causal LM: :mod:`toymodels.tasks.history_qa`
on :func:`toymodels.protocol.run_protocol` (issue 10 item 3).

:func:`run_qa_reuse` measures the base model's one-hop knowledge of the real facts
(``history_qa.known_fact_pairs``), draws the chains (R, OOD and H from known facts when
``r_known_only``), trains AB, BC, AC and the joint LoRAs, and scores every model with
:func:`score_model` on every split F / H / R / OOD, all on ONE batch of rows (one forward
pass per model) plus the broadcast controls:

- ``composed``: exact match (teacher-forced argmax = greedy decoding of the answer span) on
  the split's composed questions (two-hop questions no expert trained);
- ``composed_logprob``: their mean gold-answer log-probability (the primary continuous metric);
- ``specificity``: over the questions with another composed answer of their relation in the
  split, ``right`` mean P(gold answer), ``wrong`` mean over questions of the mean P(another
  answer) on the same prompt, ``margin``, and their log-space and exact-match forms
  (:func:`toymodels.pretrained_metrics.composed_metrics`, the two-hop family's own); None where
  no question has another answer;
- ``conditional``: composed accuracy over the questions whose two one-hop facts (the
  person's birthplace, the city's r2) the same model answers; ``n`` of them;
- ``facts[name]``: exact match on what member expert ``name`` taught of the split;
- ``broadcast[expert]``: the share of control questions of the expert's template about
  other real subjects answered with an answer that expert learned for the split (T2);
- ``retention``: what is left of the base's own knowledge: WORLD capitals (a relation no
  expert trains) and the OOD people's one-hop facts (never trained).

Randomness: ``seeds.numpy_rng(seed, "qa", "chains" | "controls")`` draws the data,
``seeds.generators(seed, "qa", "protocol")`` the LoRAs and randomized merges.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from toymodels import presets
from toymodels.config import Config, check_fields, counts
from toymodels.hf_roles import role_map
from toymodels.lora import LoRAConfig
from toymodels.pretrained import LogitsLM
from toymodels.pretrained_metrics import answer_rows, composed_metrics, mean_or_none
from toymodels.pretrained_two_hop import broadcast, encode_controls
from toymodels.progress import Progress, open_bar
from toymodels.protocol import LIBRARIES, Backend, TaskFamily, run_protocol, train_summary
from toymodels.reuse import DEFAULT_METHODS, METHODS
from toymodels.reuse_options import ReuseOptions
from toymodels.seeds import numpy_rng
from toymodels.tasks.history_qa import (SPLITS, TRAINED, Chain, QAConfig, broadcast_controls, composed_chains,
                                        expert_pairs, known_fact_pairs, make_chains)
from toymodels.tasks.natural import TEMPLATES as NATURAL_TEMPLATES
from toymodels.tasks.natural import WORLD, encode_pairs
from toymodels.train import MISS_PROBE_ROWS, TrainConfig

Pair = tuple[str, str]


@dataclass(frozen=True)
class QAReuseConfig(Config):
    task: QAConfig = field(default_factory=QAConfig)
    lora: LoRAConfig = field(default_factory=lambda: LoRAConfig(rank=4, alpha=8.0, targets=("q", "v", "up", "down")))
    finetune: TrainConfig = field(default_factory=presets.pretrained_finetune)
    methods: tuple[str, ...] = DEFAULT_METHODS
    reuse: ReuseOptions = field(default_factory=lambda: ReuseOptions(lorahub_budget=12))
    joint: bool = True  # also train a joint LoRA per library
    r_known_only: bool = False  # R, OOD and H from facts the base answers (quick() and paper() turn it on)
    n_control: int = 8  # broadcast-control questions per split, relation and expert (0: none)
    n_wrong: int = 3  # other answers per composed question for specificity

    def __post_init__(self):
        if bad := [m for m in self.methods if m not in METHODS]:
            raise ValueError(f"methods contains {bad}: must be among {', '.join(METHODS)}")
        check_fields("protocol", self, counts(self, {"n_control": 0, "n_wrong": 1}))
        if self.finetune.target_set not in (None, "facts"):
            raise ValueError(f"finetune.target_set={self.finetune.target_set!r}: must be None or 'facts'")


def quick() -> QAReuseConfig:
    """CPU-sized, 3 seeds. Sized by measurement (SmolLM2-135M-Instruct, 2026-12-02): the
    base answers both hops of only 19 of the 182 PEOPLE (16 distinct birth cities), so R and
    OOD hold what that allows: n_real 10 (ac_frac 1/3: 7 composed) and n_ood 9 (6-7 composed
    on seeds 0-2; fewer than asked when its people's cities are R's), one question moving
    accuracy by 0.14-0.17: their claims read UNDERPOWERED by construction. F and H: 6 countries x 3
    cities (12 composed each). Country only, 25 steps per LoRA, 2 wrong answers per question,
    methods average and Arrow (10 scored models). CPU cost, measured at 1 thread on a 2-core
    machine at load ~7 (2026-12-02): ~900 CPU-s (24 min wall) per seed, 5 LoRAs of 25 steps
    ~170-230 s wall each of it; so 3 seeds take ~45 CPU-minutes, not the ~20 it was cut for (a first
    try with F/H 12 x 3, 3 wrong answers and TIES scored ~455 rows, ~50 CPU-s per model). At 25
    steps the joint LoRAs memorise only about half their facts (joint/hops 0.48 of 47+47 rows on
    seed 0), so the joint-data ceiling is weak here."""
    return QAReuseConfig(task=QAConfig(n_countries=6, cities_per_country=3, n_real=10, n_ood=9, ac_frac=1 / 3),
                         finetune=presets.pretrained_finetune(steps=25),
                         methods=("average", "arrow"), n_control=3, n_wrong=2, r_known_only=True)


def paper() -> QAReuseConfig:
    """For a GPU: 4 countries x 4 cities, 12 real and 12 OOD people, country and continent,
    every method, 300 steps, rank 8 on every role."""
    return QAReuseConfig(
        task=QAConfig(n_countries=4, cities_per_country=4, n_real=12, n_ood=12, relations2=("country", "continent")),
        lora=LoRAConfig(rank=8, alpha=16.0, targets=("q", "k", "v", "o", "gate", "up", "down")),
        finetune=presets.pretrained_finetune(steps=300, batch_size=32, eval_every=10),
        reuse=ReuseOptions(lorahub_budget=40), r_known_only=True)


class Sheet:
    """Named lists of ``(prompt, answer)`` rows encoded as ONE batch of distinct rows (a row
    several lists name, e.g. a test question's one-hop fact and the expert fact it is, is
    scored once); :meth:`score` runs it once and returns ``{name: (exact (n,), logprob (n,))}``."""

    def __init__(self, parts: dict[str, list[Pair]], tokenizer):
        unique = {pair: None for rows in parts.values() for pair in rows}
        position = {pair: i for i, pair in enumerate(unique)}
        self.index = {name: torch.tensor([position[p] for p in rows], dtype=torch.long) for name, rows in parts.items()}
        self.rows = encode_pairs(list(unique), tokenizer)

    def score(self, model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        exact, logprob = answer_rows(model, self.rows)
        return {name: (exact[i], logprob[i]) for name, i in self.index.items()}


def wrong_answers(tests: list[Chain], n_wrong: int) -> list[list[str]]:
    """Per test chain, up to ``n_wrong`` answers of the split's other test chains of its
    relation that differ from its own (in first-seen order)."""
    out = []
    for c in tests:
        others = dict.fromkeys(o.answer for o in tests if o.relation == c.relation and o.answer != c.answer)
        out.append(list(others)[:n_wrong])
    return out


def sheet_parts(chains: list[Chain], n_wrong: int) -> dict[str, list[Pair]]:
    """Every row :func:`score_model` reads, by name: per split its composed questions, their
    wrong-answer rows, their one-hop facts, what each expert taught of it; the retention sets."""
    parts: dict[str, list[Pair]] = {}
    for split in SPLITS:
        tests, mine = composed_chains(chains, split), [c for c in chains if c.split == split]
        if not tests:
            continue
        parts[f"{split}/composed"] = [c.two_hop() for c in tests]
        parts[f"{split}/wrong"] = [(c.two_hop()[0], " " + a) for c, w in zip(tests, wrong_answers(tests, n_wrong))
                                   for a in w]
        parts[f"{split}/hop1"], parts[f"{split}/hop2"] = [c.hop1() for c in tests], [c.hop2() for c in tests]
        if split in TRAINED:
            for name, pairs in expert_pairs(mine).items():
                parts[f"{split}/facts/{name}"] = pairs
    parts["retention/world_capital"] = [(NATURAL_TEMPLATES["capital"].format(B=row[0]), " " + row[1]) for row in WORLD]
    ood = [c for c in chains if c.split == "OOD"]
    parts["retention/ood_one_hop"] = list(dict.fromkeys([c.hop1() for c in ood] + [c.hop2() for c in ood]))
    return parts


def split_scores(s: dict, split: str, tests: list[Chain], n_wrong: int, members: Sequence[str],
                 casts: dict[str, float]) -> dict:
    """One split's metrics (module docstring; :func:`toymodels.pretrained_metrics.composed_metrics`,
    the two-hop family's own) from the sheet's scores ``s``."""
    exact, logprob = s[f"{split}/composed"]
    owner = torch.tensor([i for i, w in enumerate(wrong_answers(tests, n_wrong)) for _ in w], dtype=torch.long)
    knows = s[f"{split}/hop1"][0] & s[f"{split}/hop2"][0]
    out = composed_metrics(exact, logprob, knows, owner, s[f"{split}/wrong"] if len(owner) else None)
    if split in TRAINED:
        out["facts"] = {m: mean_or_none(s[f"{split}/facts/{m}"][0]) for m in members if f"{split}/facts/{m}" in s}
        out["broadcast"] = {e: _broadcast_mean(casts, split, e) for e in ("BC", "AC")}
    return out


def _broadcast_mean(casts: dict[str, float], split: str, expert: str) -> float | None:
    values = [v for k, v in casts.items() if k.startswith(f"{split}/{expert}/")]
    return float(np.mean(values)) if values else None


def score_model(model: nn.Module, sheet: Sheet, chains: list[Chain], n_wrong: int, members: Sequence[str],
                controls: list, control_rows) -> dict:
    """``{"splits": {split: split_scores}, "retention": {set: exact match}}`` of one model."""
    s = sheet.score(model)
    casts = broadcast(model, controls, control_rows)
    splits = {split: split_scores(s, split, composed_chains(chains, split), n_wrong, members, casts)
              for split in SPLITS if f"{split}/composed" in s}
    return {"splits": splits, "retention": {k.split("/", 1)[1]: mean_or_none(v[0]) for k, v in s.items()
                                            if k.startswith("retention/") and len(v[0])}}


def oracle(per: list[dict], members: Sequence[str]) -> dict:
    """Task-level oracle selection: per split the adapter with the best composed exact match
    (then log-prob), all of that split's scores from it; retention from the adapter best on
    average over splits."""
    def key(i: int, split: str) -> tuple:
        sc = per[i]["splits"][split]
        return sc["composed"], sc["composed_logprob"]

    splits = {}
    for split in per[0]["splits"]:
        best = max(range(len(per)), key=lambda i: key(i, split))
        splits[split] = dict(per[best]["splits"][split], adapter=members[best])
    overall = max(range(len(per)), key=lambda i: np.mean([per[i]["splits"][sp]["composed"] for sp in splits]))
    return {"splits": splits, "retention": per[overall]["retention"]}


def run_qa_reuse(cfg: QAReuseConfig, hf_model: nn.Module, tokenizer, seed: int = 0, device: str = "cpu",
                 progress: Progress | None = None) -> dict:
    """The whole protocol on ``hf_model`` (weights unchanged; moved to ``device``). Returns
    ``{"config", "key", "seed", "chains", "familiarity": {"facts", "exact", "known"},
    "splits": {split: {"people", "composed"}}, "controls", "experts", "models": {model: score}}``."""
    lm, roles = LogitsLM(hf_model).to(device), role_map(hf_model, cfg.lora.targets)
    fact_pairs = known_fact_pairs(cfg.task.relations2)
    bar = open_bar(progress, "base model familiarity", 1)
    fact_exact = answer_rows(lm, encode_pairs(fact_pairs, tokenizer))[0]
    bar.close()
    known = {pair for pair, ok in zip(fact_pairs, fact_exact.tolist()) if ok}
    chains = make_chains(cfg.task, numpy_rng(seed, "qa", "chains"), known if cfg.r_known_only else None)
    controls = broadcast_controls(chains, cfg.n_control, numpy_rng(seed, "qa", "controls")) if cfg.n_control else []
    control_rows = encode_controls(controls, tokenizer)
    sheet = Sheet(sheet_parts(chains, cfg.n_wrong), tokenizer)
    train_sets = {name: encode_pairs(pairs, tokenizer) for name, pairs in expert_pairs(chains).items()}
    family = TaskFamily(
        experts=train_sets, libraries=LIBRARIES, shots=train_sets["AC"][:cfg.reuse.lorahub_shots],
        score=lambda model, members, method: score_model(model, sheet, chains, cfg.n_wrong, members,
                                                         controls, control_rows),
        oracle=oracle)
    backend = Backend(lm, roles, device, probe_misses=MISS_PROBE_ROWS)
    done = run_protocol(family, backend, cfg, seed, ("qa",), joint=cfg.joint,
                        summary=functools.partial(train_summary, curves=False, digits=2), progress=progress)
    return {"config": cfg.to_dict(), "key": cfg.key(), "seed": seed, "chains": [dataclasses.asdict(c) for c in chains],
            "familiarity": {"facts": len(fact_pairs), "exact": fact_exact.float().mean().item(), "known": len(known)},
            "splits": {sp: {"people": len({c.person for c in chains if c.split == sp}),
                            "composed": len(composed_chains(chains, sp))} for sp in SPLITS},
            "controls": {c.name: {"questions": len(c.questions), "new_answers": list(c.new_answers),
                                  "chance": c.chance} for c in controls},
            "experts": done["experts"], "models": done["models"]}
