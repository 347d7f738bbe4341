"""Inspect LoRA adapters saved in PEFT format (ours or PEFT's, for any HF model).

Per adapter: modules, ranks, mean entropy effective rank, mean Frobenius and spectral norm
of the deltas. Per pair (common modules): delta cosine, principal-angle overlap of their
output (column) and input (row) spaces (mean cos^2: 1 = same space, ~r/d = random), |cos|
of their Arrow prototypes. Over all adapters: TIES sign-conflict rate and the relative size
of factor-space cross terms. Writes spectra and similarity figures (+ JSON with every
per-module number) to --out.

examples:
  lora-limits inspect runs/AB runs/BC runs/AC
  lora-limits inspect runs/AB runs/BC --per-module --out figures/inspect_ab_bc
  lora-limits inspect runs/AB --base path/to/model.gguf    # also check shapes against a base
  lora-limits inspect runs/AB runs/BC --json > inspect.json

Broken input (a truncated or pickled file, a DoRA/IA3 config, a rank that disagrees with
the config, NaN/Inf weights, ...) is refused in one line before anything is measured;
--allow-nonfinite reads NaN/Inf weights anyway (their measures are NaN).
"""
from __future__ import annotations

import argparse
import json
import math
import sys

from analysis.commands import load_base
from analysis.errors import UsageError
from analysis.tables import cell, print_table

HELP = "rank, spectra, similarity, TIES conflicts and cross terms of PEFT LoRA adapter folders"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapters", nargs="+", metavar="ADAPTER_DIR",
                        help="folders with adapter_config.json + adapter_model.safetensors")
    parser.add_argument("--out", default="figures/inspect", metavar="DIR", help="figures (default figures/inspect)")
    parser.add_argument("--no-figures", action="store_true", help="skip the figures")
    parser.add_argument("--per-module", action="store_true", help="also print one row per adapter and module")
    parser.add_argument("--json", action="store_true", help="print every number as JSON instead of tables")
    parser.add_argument("--density", default="0.2", metavar="D", help="TIES density for sign conflicts (default 0.2)")
    parser.add_argument("--base", metavar="SOURCE", help="check shapes against this base model: a .gguf "
                        "file, a local HF folder, or 'smollm2' (the bundled one)")
    parser.add_argument("--cache", default="results/pretrained", metavar="DIR",
                        help="where converted GGUF models are cached (default results/pretrained)")
    parser.add_argument("--allow-nonfinite", action="store_true",
                        help="read adapters holding NaN/Inf instead of refusing them (their measures "
                             "come out NaN)")


def _density(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise UsageError(f"--density {text!r}: must be a number in (0, 1]")
    return value


def run(args) -> int:
    from analysis.inspect_adapters import check_base, inspect, read_adapter

    density = _density(args.density)
    adapters = [read_adapter(p, check_finite=not args.allow_nonfinite) for p in args.adapters]
    names = [a.name for a in adapters]
    if len(set(names)) != len(names):  # two folders with one name: tell them apart by path
        adapters = [type(a)(str(a.path), a.path, a.meta, a.factors) for a in adapters]
    if args.base:
        check_base(adapters, load_base(args.base, args.cache, shapes_only=True)[0])
    report = inspect(adapters, density)
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        print()
    else:
        summary = report["summary"]
        print_table(["adapter", "modules", "rank", "eff_rank", "|dW|_F", "|dW|_2"],
              [[n, s["modules"], s["rank"], s["effective_rank"], s["fro"], s["spectral"]]
               for n, s in summary["adapters"].items()])
        if args.per_module:
            print()
            print_table(["adapter", "module", "rank", "num_rank", "eff_rank", "|dW|_F", "sigma_1..3"],
                  [[n, p, m["rank"], m["numerical_rank"], m["effective_rank"], m["fro"],
                    [f"{s:.3g}" for s in m["sigma"][:3]]] for n, mods in report["modules"].items()
                   for p, m in mods.items()])
        if summary["pairs"]:
            print()
            print_table(["pair", "common", "cosine", "col_overlap", "row_overlap", "arrow_|cos|"],
                  [[k, s["modules"], s.get("cosine", math.nan), s.get("col_overlap", math.nan),
                    s.get("row_overlap", math.nan), s.get("arrow_abs_cos", math.nan)]
                   for k, s in summary["pairs"].items()])
        if summary["groups"]:
            g = summary["groups"]
            print(f"\nall {len(adapters)} adapters, {len(report['groups'])} shared modules: "
                  f"TIES sign conflicts {cell(g['ties_conflict'])} (density {density}), "
                  f"factor-space cross terms |sum_(i!=j) B_i A_j| / |avg delta| = {cell(g['cross_rel'])}")
    if not args.no_figures:
        from analysis.figures.inspect import FIGURES
        from analysis.plotstyle import save_figure

        config = {"adapters": [str(a.path) for a in adapters], "ties_density": density}
        for name, fn in FIGURES:
            fig, data = fn(report)
            if name == "inspect_spectra":
                data = {"plotted": data, "report": report}  # every number, in one sidecar
            for p in save_figure(fig, args.out, name, data, config):
                if p.suffix == ".png" and not args.json:
                    print(f"figure: {p}")
    return 0
