"""Benchmarks, each a ratio of two things measured side by side in the same run.

Our toy training step vs an nn.TransformerEncoderLayer model of the same shape (tokens/s)
and vs the dense fp32 matmul peak (MFU); K = 4, 8, 16 stacked LoRAs and S = 4, 8 stacked
base models vs sequential runs; our LoRA in a Hugging Face Llama vs PEFT (step time, peak
memory); the factored SVD of a merged delta vs a dense SVD; T2 instances per second. Each
row's target (issue 11) applies to its ratio. Results go to <out>/<machine>.json (with
--only: <machine>+<names>.json), with a description of the machine and its load average.

With --breakdown it runs no suite: it sums the quick reproduction's cached records per
experiment (wall span, worker seconds, base training, LoRA runs) and times base training,
LoRA training, merges and scoring of one quick two-hop config (chain-of-thought, main,
seed 0), every split sequential and stacked side by side; to <out>/<machine>+breakdown.json
and .txt.

examples:
  lora-limits bench --breakdown --results results --threads 1
  lora-limits bench --quick                  # the whole suite in minutes on 2 CPU cores
  lora-limits bench --quick --json           # [{"name", "value", "reference", "ratio", "target", "met"}]
  lora-limits bench --only stacked_adapters --device cuda
  lora-limits bench --quick --device cuda --tf32    # TF32 matmuls on the GPU
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

from analysis.errors import UsageError

HELP = "benchmark training speed, stacked training, LoRA vs PEFT and the factored SVD, side by side"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from bench import NAMES  # the light package root: building the parser imports no benchmark

    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (minutes on 2 CPU cores)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where to run (default auto: CUDA when present)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"run only these: {', '.join(NAMES)}")
    parser.add_argument("--threads", metavar="N", help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--out", default="bench/results", metavar="DIR", help="results folder (default bench/results)")
    parser.add_argument("--cache", default="results/pretrained", metavar="DIR",
                        help="where converted GGUF models are cached (default results/pretrained)")
    parser.add_argument("--note", default="", metavar="TEXT", help="a note stored with the results, e.g. on machine load")
    parser.add_argument("--check", action="store_true", help="exit 1 when a row misses its target")
    parser.add_argument("--tf32", action="store_true",
                        help="CUDA only: let float32 matmuls use TF32 tensor cores (faster, ~1e-3 relative rounding)")
    parser.add_argument("--breakdown", action="store_true",
                        help="instead of the suite: where the quick reproduction's time goes, from the cached "
                             "records in --results and live, phase by phase, on one quick two-hop config, "
                             "sequential vs stacked (minutes)")
    parser.add_argument("--results", default="results", metavar="DIR",
                        help="result cache that --breakdown reads (default results/; only read)")


def describe_machine(device) -> dict:
    import torch

    from analysis.provenance import cpu_name

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
            "platform": platform.platform(), "python": platform.python_version()}


def machine_name(machine: dict) -> str:
    """File-name slug: the accelerator's name, or the CPU's with its core count."""
    name = machine["device_name"] if machine["device"].startswith("cuda") else f"{machine['cpu']} {machine['cores']}c"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "machine"


def _threads(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"--threads {text!r}: must be an integer >= 1")
    return int(text)


def fast_matmul(tf32: bool, device) -> None:
    """``--tf32``: TF32 float32 matmuls on CUDA (a usage error elsewhere)."""
    if not tf32:
        return
    if device.type != "cuda":
        raise UsageError(f"--tf32: needs a CUDA device, got {device.type} (drop --tf32 or use --device cuda)")
    import torch

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


def print_rows(rows, out=None) -> None:
    from analysis.tables import print_table

    head = ("name", "value", "unit", "reference", "ratio", "target", "met")
    body = [(r.name, r.value, r.unit, "-" if r.reference is None else r.reference,
             "-" if r.ratio is None else r.ratio, r.as_json()["target"] or "-",
             {True: "yes", False: "NO", None: "-"}[r.met]) for r in rows]
    print_table(head, body, out, rule=True)


def run(args) -> int:
    import torch

    from analysis.atomic import atomic_write_json
    from analysis.commands.run import device_name
    from bench import NAMES
    from bench.suite import run_suite

    if args.breakdown:
        return breakdown(args)
    names = list(dict.fromkeys(args.only)) if args.only else list(NAMES)
    if unknown := [n for n in names if n not in NAMES]:
        raise UsageError(f"--only {' '.join(unknown)}: unknown benchmark; valid: {', '.join(NAMES)}")
    threads = _threads(args.threads)
    device = torch.device(device_name(args.device))
    fast_matmul(args.tf32, device)
    if threads is not None:
        torch.set_num_threads(threads)
    machine = describe_machine(device) | {"tf32": args.tf32}
    machine["loadavg_start"] = list(os.getloadavg())
    start = time.perf_counter()
    progress = (lambda line: print(f"bench: {line}", file=sys.stderr, flush=True))
    result = run_suite(names, device, args.quick, Path(args.cache), progress)
    machine["loadavg_end"] = list(os.getloadavg())
    rows = result["rows"]
    record = {"machine": machine, "profile": "quick" if args.quick else "full", "benchmarks": names,
              "seconds_total": round(time.perf_counter() - start, 1), "seconds": result["seconds"],
              "skipped": result["skipped"], "note": args.note, "rows": [r.as_json(full=True) for r in rows]}
    suffix = "" if names == list(NAMES) else "+" + "+".join(names)
    path = Path(args.out) / f"{machine_name(machine)}{suffix}.json"
    atomic_write_json(path, record)
    if args.json:
        json.dump([r.as_json() for r in rows], sys.stdout, indent=1)
        print()
    else:
        print_rows(rows)
        missed = [r.name for r in rows if r.met is False]
        print(f"\n{len(rows)} rows, {sum(r.met is True for r in rows)} targets met, {len(missed)} missed"
              f"{': ' + ', '.join(missed) if missed else ''}; {record['seconds_total']} s; "
              f"load average {machine['loadavg_start'][0]:.1f} -> {machine['loadavg_end'][0]:.1f} "
              f"on {machine['cores']} cores")
        for name, reason in result["skipped"].items():
            print(f"skipped {name}: {reason}")
        print(f"results: {path}")
    return 1 if args.check and any(r.met is False for r in rows) else 0


def breakdown(args) -> int:
    """``bench --breakdown`` (module docstring)."""
    import io

    import torch

    from analysis.atomic import atomic_write_bytes, atomic_write_json
    from analysis.commands.run import device_name
    from analysis.tables import print_table
    from bench import breakdown as records, phases

    if args.only or args.quick:
        raise UsageError("--breakdown runs on its own: drop --only/--quick")
    results = Path(args.results)
    if not results.is_dir():
        raise UsageError(f"--results {args.results}: no such folder (the result cache --breakdown reads)")
    threads = _threads(args.threads)
    device = torch.device(device_name(args.device))
    fast_matmul(args.tf32, device)
    try:
        cached = records.from_records(results)
    except FileNotFoundError as exc:
        raise UsageError(f"--results {args.results}: {exc}") from None
    if threads is not None:
        torch.set_num_threads(threads)
    machine = describe_machine(device) | {"tf32": args.tf32, "loadavg_start": list(os.getloadavg())}
    config = phases.quick_config()
    print(f"bench: timing {config.fmt} {config.condition} seed {config.seed} (key {config.key()}) ...",
          file=sys.stderr, flush=True)
    live = phases.measure(config.pipeline, config.seed, str(device))
    machine["loadavg_end"] = list(os.getloadavg())
    label = f"quick two_hop_reuse {config.fmt}/{config.condition}/seed {config.seed}"
    rows = phases.rows(live, label)
    text = io.StringIO()
    print(f"Cached quick records ({results}), per experiment:", file=text)
    print_table(*records.record_table(cached), text, rule=True)
    print("(span: first start to last finish; worker: sum of the configs' seconds; LoRA runs '-': the records "
          "keep no training summaries)", file=text)
    print(f"\nOne config live ({label}, {machine['threads']} thread(s), load average "
          f"{machine['loadavg_start'][0]:.1f} -> {machine['loadavg_end'][0]:.1f} on {machine['cores']} cores):",
          file=text)
    print_table(*phases.phase_table(live), text, rule=True)
    agree = live["agreement"]
    print(f"\nstacked vs sequential outputs: {agree['leaves']} numbers, max |diff| {agree['max_abs_diff']:.2g}, "
          f"{agree['leaves_differing_over_1e-4']} differ by > 1e-4, {agree['lora_runs_with_other_steps']} of "
          f"{agree['lora_runs']} LoRAs stopped at another step", file=text)
    record = {"machine": machine, "note": args.note, "config": {"key": config.key(), "label": label},
              "records": cached, "live": live, "rows": [r.as_json(full=True) for r in rows], "table": text.getvalue()}
    stem = Path(args.out) / f"{machine_name(machine)}+breakdown"
    atomic_write_json(stem.with_suffix(".json"), record)
    atomic_write_bytes(stem.with_suffix(".txt"), text.getvalue().encode())
    if args.json:
        json.dump([r.as_json() for r in rows], sys.stdout, indent=1)
        print()
    else:
        print(text.getvalue(), end="")
        print_rows(rows)
        print(f"results: {stem}.json")
    return 0
