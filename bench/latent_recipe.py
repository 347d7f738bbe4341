"""One run of the cheaper-latent-base search (issue 11 item 3; the sweep and its findings:
``bench/latent_recipe.md``), appended as one JSON line to
``bench/results/latent_recipe_sweep.jsonl``.

A variant is a change to ``presets.quick_base("latent")`` (graph, model, train fields); the
run is capped at ``--budget`` (default 1/3) of today's training FLOPs, counted as
steps x batch x 6 x params x 5 tokens (params in full, embeddings included), and stops early
once ``val_id`` reaches 95% (the preset's own stop). The count is the one the first sweep
and ``quick_base``'s docstring use (the issue's "steps x batch x model size"), kept so the runs
stay comparable; ``bench.toy_step.train_flops`` counts the matmuls instead, for MFU. Run it one at a time, one thread::

    OMP_NUM_THREADS=1 python -m bench.latent_recipe E60R16_d64_wsd20 --seed 0
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from analysis.provenance import machine
from toymodels import presets
from toymodels.model import GPT, ModelConfig
from toymodels.pipeline import BaseConfig, train_base

LOG = Path(__file__).parent / "results" / "latent_recipe_sweep.jsonl"
TOKENS_PER_ROW = 5
SMALL = {"graph": {"n_entities": 60, "n_relations": 16}, "model": {"d_model": 64, "d_mlp": 256}}
# name -> the change from quick_base("latent"), in the spec format of the earlier runs
VARIANTS = {
    "E60R16_d64": SMALL,
    "E60R16_d64_wsd20": {**SMALL, "train": {"schedule": "wsd", "decay_frac": 0.2}},
    "E60R16_d64_wsd40": {**SMALL, "train": {"schedule": "wsd", "decay_frac": 0.4}},
    "d64_wsd20": {"model": {"d_model": 64, "d_mlp": 256}, "train": {"schedule": "wsd", "decay_frac": 0.2}},
    "today_wsd20": {"train": {"schedule": "wsd", "decay_frac": 0.2}},
    # presets.large_base's graph (320 entities, 10% OOD, 224 new tokens), where today's latent
    # recipe does not compose at 3,000 steps (issue 12's blocker)
    "large_d64_wsd20": {"graph": {"n_entities": 320, "n_new": 224}, "task": {"ood_frac": 0.1},
                        "model": {"d_model": 64, "d_mlp": 256}, "train": {"schedule": "wsd", "decay_frac": 0.2}},
    "large_wsd20": {"graph": {"n_entities": 320, "n_new": 224}, "task": {"ood_frac": 0.1},
                    "train": {"schedule": "wsd", "decay_frac": 0.2}},
}


def flops(steps: int, batch: int, params: int) -> int:
    return steps * batch * 6 * params * TOKENS_PER_ROW


def n_params(model: ModelConfig) -> int:
    return sum(p.numel() for p in GPT(model).parameters())


def variant(spec: dict, budget: float) -> tuple[BaseConfig, int]:
    """The changed preset (its step cap at ``budget`` of today's FLOPs) and today's FLOPs."""
    today = presets.quick_base("latent")
    graph = dataclasses.replace(today.task.graph, **spec.get("graph", {}))
    task = dataclasses.replace(today.task, graph=graph, **spec.get("task", {}))
    model = dataclasses.replace(today.model, d_vocab=graph.d_vocab, **spec.get("model", {}))
    reference = flops(today.train.steps, today.train.batch_size, n_params(today.model))
    batch = spec.get("train", {}).get("batch_size", today.train.batch_size)
    cap = int(budget * reference // flops(1, batch, n_params(model)))
    train = dataclasses.replace(today.train, **{"eval_every": 50, **spec.get("train", {}), "steps": cap})
    return BaseConfig(task=task, model=model, train=train), reference


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=float, default=1 / 3, help="share of today's FLOPs (default 1/3)")
    parser.add_argument("--log", type=Path, default=LOG)
    args = parser.parse_args(argv)
    spec = VARIANTS[args.name]
    cfg, reference = variant(spec, args.budget)
    params = n_params(cfg.model)
    start = time.perf_counter()
    run = train_base(cfg, args.seed, device="cpu")
    wall = time.perf_counter() - start
    r = run.result
    spent = flops(r.steps, cfg.train.batch_size, params)
    row = {"name": args.name, "seed": args.seed, "spec": spec, "config": cfg.to_dict(), "params": params,
           "steps": r.steps, "step_cap": cfg.train.steps, "batch": cfg.train.batch_size, "wall_s": round(wall, 1),
           "threads": torch.get_num_threads(), "machine": machine("cpu"),
           "flops": spent, "flops_vs_today": round(spent / reference, 4),
           "reached": r.reached_target, "final": r.final(), "eval_steps": r.eval_steps, "curves": r.curves,
           "losses": r.losses}
    with args.log.open("a") as f:  # one line per run, appended whole
        f.write(json.dumps(row) + "\n")
    print(f"{args.name} seed {args.seed}: {r.steps}/{cfg.train.steps} steps, {wall:.0f} s, "
          f"FLOPs {row['flops_vs_today']:.3f} of today; " + ", ".join(f"{k} {v:.3f}" for k, v in r.final().items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
