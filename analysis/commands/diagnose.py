"""Readiness of a LoRA expert for composed questions, from the base model, the adapter and
unlabelled prompt pairs (PAPER.md, "A mechanism that predicts reuse"; T2).

For each pair (a composed prompt, and the prompt the expert trained on for that prompt's
bridge), at every adapted module, the T2 coefficient <delta k, delta e>/||delta e||^2 of the
expert prompt e on the composed prompt's key k (P1's <v2, v'>/||v2||^2 at any rank): "paired"
with its own bridge, "unpaired" with the group's other bridges (the control: a question that
reaches every bridge's edit alike is broadcast, not composition). gap = paired - unpaired, with
a bootstrap interval over pairs, against the expert gap (the positive control: the same gap
for the expert's own prompts, what a composed key equal to its bridge's would get); and the
share of the keys' energy inside the adapter's input subspace against r/d_in (a random
direction's). Per group a table row; per layer a figure.

A candidate score, not a validated predictor: it counts only once it predicts measured reuse
outcomes on held-out seeds and tasks better than the mechanism-free baselines (delta cosine,
principal angles, norms), which are printed beside it when the folder holds other experts.

ADAPTER_DIR is either one PEFT adapter folder (then --pairs is needed, unless the folder's
parent holds prompt_pairs.json), or a folder of experts saved by `lora-limits run
pretrained_two_hop` (results/pretrained/adapters/KEY/, KEY the config's key, which the report
names): it holds prompt_pairs.json,
which names the expert to diagnose (BC, the hop-2 expert), the pairs (two-hop question,
its bridge's hop-2 sentence) per split and relation, and control prompts (the hop-1
sentences, which BC should not act on).

A prompt-pairs file is JSON:
  {"adapter": "BC", "pairs": [{"group": "F/capital",
     "prompt": "The capital of the country where the city of Zorar is located is",
     "expert_prompt": "The capital of Drovia is"}, ...],
   "controls": ["The city of Zorar is located in the country of", ...]}    (optional)

examples:
  lora-limits diagnose results/pretrained/adapters/KEY
  lora-limits diagnose results/pretrained/adapters/KEY --keys-with results/pretrained/adapters/KEY/AB
  lora-limits diagnose runs/BC --pairs pairs.json --base path/to/model.gguf --json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from analysis.commands import BUNDLED_BASE, load_base
from analysis.errors import UsageError
from analysis.tables import cell, print_table

HELP = "readiness of a LoRA expert for composed questions (T2 key overlap against controls), for any HF model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapter", metavar="ADAPTER_DIR",
                        help="a PEFT adapter folder, or a folder of experts holding prompt_pairs.json")
    parser.add_argument("--pairs", metavar="FILE", help="prompt pairs (JSON, see above; default: the "
                        "prompt_pairs.json of ADAPTER_DIR or of its parent)")
    parser.add_argument("--base", default=BUNDLED_BASE, metavar="SOURCE",
                        help="the base model: a .gguf file, a local HF folder, or 'smollm2' (the bundled one, default)")
    parser.add_argument("--keys-with", action="append", default=[], metavar="ADAPTER_DIR",
                        help="read the keys from the base plus this adapter's delta (e.g. the hop-1 expert); "
                             "repeatable")
    parser.add_argument("--cache", default="results/pretrained", metavar="DIR",
                        help="where converted GGUF models are cached (default results/pretrained)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where to run the base model (default auto: CUDA when present)")
    parser.add_argument("--out", default="figures/diagnose", metavar="DIR", help="figures (default figures/diagnose)")
    parser.add_argument("--no-figures", action="store_true", help="skip the figure")
    parser.add_argument("--json", action="store_true", help="print every number as JSON instead of tables")


def locate(folder: Path, pairs: str | None) -> tuple[Path, Path, list[Path]]:
    """``(adapter folder, pairs file, sibling expert folders)`` from the command line."""
    from analysis.diagnose_adapters import PAIRS_FILE, read_pairs

    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder")
    expert_folder = folder if (folder / "adapter_config.json").exists() else None
    home = folder if expert_folder is None else folder.parent
    pairs_file = Path(pairs) if pairs else home / PAIRS_FILE
    if not pairs and not pairs_file.exists():
        raise UsageError(f"{folder}: neither it nor its parent holds {PAIRS_FILE}: give the prompt pairs "
                         "with --pairs FILE (see --help)")
    if expert_folder is None:
        name = read_pairs(pairs_file).adapter
        if not name:
            raise UsageError(f"{pairs_file}: names no \"adapter\": pass the expert's own folder instead")
        expert_folder = folder / name
        if not expert_folder.is_dir():
            raise UsageError(f"{pairs_file} names adapter {name!r}, but {expert_folder} does not exist")
    siblings = sorted(p for p in home.iterdir() if p.is_dir() and p != expert_folder
                      and (p / "adapter_config.json").exists())
    return expert_folder, pairs_file, siblings


def _baselines(adapter, siblings: list) -> dict:
    """``lora-limits inspect``'s pair measures of the adapter with each sibling expert."""
    from analysis.inspect_adapters import check_compatible, pair_modules, pair_summary

    check_compatible([adapter, *siblings])
    return {f"{adapter.name}|{s.name}": pair_summary(pair_modules(adapter, s)) for s in siblings}


def _progress():
    """A tqdm bar on stderr when it is a terminal (none in pipes and logs)."""
    import functools

    from tqdm import tqdm

    return functools.partial(tqdm, leave=False, file=sys.stderr, dynamic_ncols=True) if sys.stderr.isatty() else None


def run(args) -> int:
    import torch

    from analysis.diagnose_adapters import diagnose, read_pairs, with_adapters
    from analysis.inspect_adapters import check_base, read_adapter
    from toymodels.train import resolve_device

    expert_folder, pairs_file, siblings = locate(Path(args.adapter), args.pairs)
    prompts = read_pairs(pairs_file)
    adapter = read_adapter(expert_folder)
    keys_with = [read_adapter(p) for p in args.keys_with]
    model, tokenizer = load_base(args.base, args.cache)
    check_base([adapter, *keys_with], model)
    if keys_with:
        model = with_adapters(model, keys_with)
    model.to(resolve_device(args.device))
    with torch.no_grad():
        report = diagnose(model, tokenizer, adapter, prompts, progress=_progress())
    report.update(adapter=str(expert_folder), pairs_file=str(pairs_file), base=args.base,
                  keys_with=[str(p) for p in args.keys_with],
                  baselines=_baselines(adapter, [read_adapter(p) for p in siblings]))
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        print()
    else:
        _print(report)
    if not args.no_figures:
        from analysis.figures.diagnose import readiness_by_layer
        from analysis.plotstyle import save_figure

        fig, data = readiness_by_layer(report)
        config = {k: report[k] for k in ("adapter", "pairs_file", "base", "keys_with")}
        for p in save_figure(fig, args.out, "diagnose_readiness", {"plotted": data, "report": report}, config):
            if p.suffix == ".png" and not args.json:
                print(f"figure: {p}")
    return 0


def _gap(g: dict | None) -> str:
    return "-" if g is None else f"{cell(g['mean'])} [{cell(g['low'])}, {cell(g['high'])}]"


def _print(report: dict) -> None:
    keys = f" (keys read with {', '.join(report['keys_with'])} added)" if report["keys_with"] else ""
    print(f"readiness of {report['adapter']} ({report['modules']} modules) on {report['pairs_file']}{keys}")
    print_table(["group", "pairs", "bridges", "paired", "unpaired", "gap [95% CI]", "expert gap", "gap/expert",
                 "share prompt", "share expert", "share chance"],
                [[g, s["pairs"], s["bridges"], s["paired"], s["unpaired"], _gap(s["gap"]), _gap(s["expert_gap_ci"]),
                  s["relative"] if s["control_passes"] else "not testable", s["share_prompt"], s["share_expert"],
                  s["share_chance"]] for g, s in report["groups"].items()])
    if report["controls"]:
        print(f"control prompts ({report['controls']}, the expert should not act on them): share "
              f"{cell(report['share_control'])} of their key energy in the adapter's input subspace")
    print("gap = paired - unpaired (0: the question reaches every bridge's edit alike); expert gap: the same for the "
          "expert's own prompts, what a composed key equal to its bridge's would get; 'not testable' where its "
          "interval reaches 0 (the instrument does not tell the expert's own prompts apart)")
    if report["baselines"]:
        print("\nmechanism-free baselines (lora-limits inspect):")
        print_table(["pair", "cosine", "col_overlap", "row_overlap", "arrow_|cos|"],
                    [[k, s.get("cosine", math.nan), s.get("col_overlap", math.nan), s.get("row_overlap", math.nan),
                      s.get("arrow_abs_cos", math.nan)] for k, s in report["baselines"].items()])
    print("\na candidate readiness score (PAPER.md, 'A mechanism that predicts reuse'), not yet validated "
          "against measured reuse outcomes: read it beside them, not instead of them")
