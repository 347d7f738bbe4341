"""``mechanism``: WHY merged or routed experts fail (or succeed) on two-hop questions
(PAPER.md section 1, T2; section 2; issue 5).

For one familiarity split it trains the experts AB, BC and AC on a cached base model, builds
the merged (``average``, ``sum``, ``ties``) and routed (``arrow``) models of both libraries,
``hops`` = {AB, BC} and ``with_AC`` = {AB, BC, AC} (no distractors, to keep the picture
clean), and measures per model and layer on the composed prompts "A r1 r2":

- bridge decodability: the logit-lens rank of the NEW bridge B at the last prompt token
  (``probes.target_rank`` over every entity token), and for familiar bridges (H, R) a
  linear probe fit on the BASE model's residual stream over familiar chains "e r1 r ->
  r1(e)" (subjects A excluded) and applied to each model's residual on "A r1 r2"; in R the
  OLD bridge r1(A) the base knew is decoded too;
- the T2 key overlap ``<v2, v'>/||v2||^2`` at every ``mlp_out`` between the BC expert's key
  v2 (its prompt "B r2") and the key v' where the final answer is produced, on the true
  two-hop prompts (paired with their own B), on the one-hop prompts "B r2" and on control
  prompts "X r1 r2" about other subjects. T2: an output of C on the true prompt that does not
  come with a larger overlap there than on the controls is broadcast, not composition;
- the Arrow router's weights per token and layer, and each model's composed accuracy and
  broadcast-control rate (``scoring.score_model``).

The claims, each bridge claim read against its positive control (the instrument finding the
base model's own bridge): :mod:`analysis.experiments.mechanism_claims`.

Seeds: quick 3, paper 5, each an independent replication with its own base model (base seed
= seed, shared with ``two_hop_reuse``'s configs of that seed). The expert data and each LoRA
draw the streams ``two_hop_reuse`` uses for the split (``("experts", fam)``, ``("lora", fam,
name)``, ``toymodels/seeds.py``), so mechanism and reuse agree on what a seed means.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from analysis.progress import current
from analysis.experiments.mechanism_claims import claims
from analysis.registry import Experiment, register
from toymodels.config import Config
from toymodels.pipeline import LIBRARIES, PipelineConfig, train_lora
from toymodels.presets import quick_two_hop
from toymodels.progress import labelled, open_bar
from toymodels.probes import (fit_probe, logit_lens, prompt_end, residual_stream, router_heatmap,
                              t2_key_overlap, target_rank)
from toymodels.reuse import METHODS
from toymodels.scoring import method_options, score_model
from toymodels.protocol import lora_gen
from toymodels.seeds import numpy_rng
from toymodels.tasks.experts import FAMILIARITIES, make_expert_set
from toymodels.tasks.twohop import chain_examples

MERGES = ("average", "sum", "ties")
ROUTES = ("arrow",)


@dataclass(frozen=True)
class MechanismConfig(Config):
    pipeline: PipelineConfig = field(default_factory=lambda: _pipeline(quick_two_hop("latent")))
    familiarity: str = "R"
    methods: tuple[str, ...] = MERGES + ROUTES
    seed: int = 0
    base_seed: int = 0

    def __post_init__(self):
        if self.familiarity not in FAMILIARITIES:
            raise ValueError(f"familiarity={self.familiarity!r}: must be one of {', '.join(FAMILIARITIES)}")
        if bad := [m for m in self.methods if m not in MERGES + ROUTES]:
            raise ValueError(f"methods contains {bad}: must be among {', '.join(MERGES + ROUTES)}")

    @property
    def fmt(self) -> str:
        return self.pipeline.base.task.fmt


def _pipeline(p: PipelineConfig) -> PipelineConfig:
    return dataclasses.replace(p, experts=dataclasses.replace(p.experts, n_distractors=0))


def grid(profile: str) -> list[MechanismConfig]:
    seeds, fams = (range(3), ("F", "R")) if profile == "quick" else (range(5), FAMILIARITIES)
    return [MechanismConfig(_pipeline(quick_two_hop(fmt)), fam, seed=s, base_seed=s)
            for fmt in ("latent", "cot") for fam in fams for s in seeds]


def _models(base, es, cfg: MechanismConfig, device: str) -> dict:
    adapters, models = {}, {"base": base.model}
    for name in LIBRARIES["with_AC"]:
        gen = lora_gen(cfg.seed, (cfg.familiarity,), name)  # the stream run_protocol gives this LoRA
        adapters[name], result = train_lora(base.model, es.train[name], cfg.pipeline, gen, device,
                                            labelled(current(), f"LoRA {name}"))
        models[f"single/{name}"] = result.model.eval()
    for lib, names in LIBRARIES.items():
        for m in cfg.methods:
            with torch.no_grad():
                models[f"{m}/{lib}"] = METHODS[m](base.model, [adapters[n] for n in names],
                                                  **method_options(m, cfg.pipeline, len(names))).eval()
    return models


def _bridge_probes(base, es, fmt: str) -> tuple[list, torch.Tensor, float] | None:
    """Per-layer probes for "the bridge of e r1 r" fit on the base model (module docstring)."""
    pre, tok = base.pretraining, base.pretraining.graph.tokenizer
    if es.familiarity == "F":
        return None  # new bridges never occur as a label of familiar chains
    used = set(es.chains[:, 0].tolist())
    subjects = [e for e in pre.id_entities if tok.entity(e) not in used]
    chains = np.array([(e, es.r1, r) for e in subjects for r in range(pre.graph.n_relations)])  # (n, 3)
    data = chain_examples(pre.graph, chains, fmt)
    labels = torch.tensor([tok.entity(pre.graph.objects[e, es.r1]) for e, _, _ in chains])
    classes, y = torch.unique(labels, return_inverse=True)
    X = residual_stream(base.model, data.tokens, prompt_end(data))  # (L + 1, n, d_model)
    probes = [fit_probe(x, y, len(classes), steps=100) for x in X]
    return probes, classes, float((y == torch.bincount(y).argmax()).double().mean())


def _decode(model, es, probes, old_bridge: torch.Tensor | None, candidates: torch.Tensor) -> dict:
    idx, sep = es.composed.tokens, prompt_end(es.composed)
    bridge, answer = torch.as_tensor(es.chains[:, 3]), torch.as_tensor(es.chains[:, 4])
    lens = logit_lens(model, idx, sep)  # (L + 1, N, d_vocab)
    out = {"lens_bridge_top1": target_rank(lens, bridge, candidates)["top1"].tolist(),
           "lens_answer_top1": target_rank(logit_lens(model, idx, es.composed.final_answer_pos - 1), answer,
                                           candidates)["top1"].tolist()}
    if old_bridge is not None:
        out["lens_old_bridge_top1"] = target_rank(lens, old_bridge, candidates)["top1"].tolist()
    if probes is not None:
        fits, classes, _ = probes
        X = residual_stream(model, idx, sep).double()  # (L + 1, N, d_model)
        pred = torch.stack([classes[p(x).argmax(-1)] for p, x in zip(fits, X)])  # (L + 1, N) tokens
        out["probe_bridge_acc"] = (pred == bridge).double().mean(1).tolist()
        if old_bridge is not None:
            out["probe_old_bridge_acc"] = (pred == old_bridge).double().mean(1).tolist()
    return out


def _keys(model, expert_model, es, n_layers: int) -> dict:
    bc = es.facts_eval["BC"]
    ctrl = es.controls["AC"].questions
    sets = {"two_hop": (es.composed.tokens, es.composed.final_answer_pos - 1),
            "one_hop": (bc.tokens, prompt_end(bc)), "control": (ctrl.tokens, ctrl.final_answer_pos - 1)}
    out = {k: [] for k in ("two_hop", "two_hop_unpaired", "one_hop", "control")}
    for layer in range(n_layers):
        o = t2_key_overlap(model, f"blocks.{layer}.mlp.W_out", (bc.tokens, prompt_end(bc)), sets,
                           paired=("two_hop", "one_hop"), expert_model=expert_model)
        out["two_hop"].append(o["two_hop"]["coef_paired"].mean().item())
        out["two_hop_unpaired"].append(float(o["two_hop"]["coef_unpaired"]))
        out["one_hop"].append(o["one_hop"]["coef_paired"].mean().item())
        out["control"].append(o["control"]["coef"].mean().item())
    return out


def run(config: MechanismConfig, device: str, results: Path | str) -> dict:
    from analysis.experiments import base_model

    base = base_model(config.pipeline.base, config.base_seed, device, results)
    rng = numpy_rng(config.seed, "experts", config.familiarity)
    es = make_expert_set(base.pretraining, config.pipeline.experts, config.familiarity, rng)
    models = {k: m.cpu() for k, m in _models(base, es, config, device).items()}
    tok, n_layers = base.pretraining.graph.tokenizer, config.pipeline.base.model.n_layers
    first = tok.entity(0)
    candidates = torch.arange(first, tok.d_vocab)  # every entity token, familiar and new
    old = None if config.familiarity != "R" else torch.as_tensor(
        [tok.entity(base.pretraining.graph.objects[a - first, es.r1]) for a in es.chains[:, 0]])
    bar = open_bar(current(), "probes, then per model: scores, logit lens, keys", 1 + len(models))
    probes = _bridge_probes(base, es, config.fmt)
    bar.update()
    members = list(LIBRARIES["with_AC"])
    out = {"fmt": config.fmt, "familiarity": config.familiarity, "seed": config.seed, "n_layers": n_layers,
           "probe_chance": None if probes is None else probes[2], "models": {}, "router": {},
           "tokens": ["BOS", "A", "r1", "r2", "SEP"] + (["B"] if config.fmt == "cot" else [])}
    for name, model in models.items():
        scores = score_model(model, base, es, members)
        out["models"][name] = {"composed": scores["composed"], "broadcast": scores["broadcast"]["composed"],
                               **_decode(model, es, probes, old, candidates),
                               "keys": _keys(model, models["single/BC"], es, n_layers)}
        if name.startswith("arrow/"):
            idx = es.composed.tokens[:, :len(out["tokens"])]  # equal-length prompts up to the answer position
            heat = router_heatmap(model, idx)
            out["router"][name] = {"roles": heat["roles"], "layers": heat["layers"], "mean": heat["mean"].tolist(),
                                   "adapters": list(LIBRARIES[name.split("/")[1]])}
        bar.update()
    bar.close()
    return out


def _figures() -> dict:
    from analysis.figures import mechanism as f

    return {"mechanism_bridge": f.bridge_figure, "mechanism_keys": f.keys_figure,
            "mechanism_router": f.router_figure}


EXPERIMENT = register(Experiment(
    name="mechanism",
    description="per-layer bridge decodability, T2 key overlaps and Arrow routing on two-hop prompts",
    grid=grid, run=run, figures=_figures(), claims=claims(),
))
