"""Where the quick reproduction's time went, read from the result cache (issue 11's first target).

Every cached record carries its config's wall time (``timing``: seconds, started and finished
UTC) and its training summaries; every cached base model (``<results>/models/<key>-s<seed>.json``)
its own training seconds. :func:`from_records` sums them per experiment of the quick profile:

- ``span_s``: first start to last finish of the experiment's records (what the reproduction's
  wall clock saw; ``reproduce`` runs the experiments one after another, configs in parallel);
- ``worker_s``: the sum of the records' seconds (one worker per config; includes the time a
  worker waited for another worker's base model, so it over-counts compute when bases are shared);
- ``base_s``: training seconds of the base models whose first user (the earliest-starting
  record that needs it) belongs to this experiment: each base is trained once, inside the
  record of the first config that needs it;
- ``lora_runs``, ``lora_steps``: the fine-tuning runs the records summarise (a dict with
  ``steps`` and ``reached_target`` anywhere below the result, other than the base's).

The numbers are what the committed quick report's run measured, on whatever load the machine
had then; the phases inside one config are measured live by :mod:`bench.phases`.
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator


def training_summaries(result: Any, path: str = "") -> Iterator[tuple[str, dict]]:
    """``(path, summary)`` for every training summary below ``result`` (the base's excluded)."""
    if isinstance(result, dict):
        if "steps" in result and "reached_target" in result:
            if path.rsplit("/", 1)[-1] != "base":
                yield path, result
            return
        for key, value in result.items():
            yield from training_summaries(value, f"{path}/{key}")
    elif isinstance(result, list):
        for i, value in enumerate(result):
            yield from training_summaries(value, f"{path}/{i}")


def _base_of(config: Any) -> tuple[str, int] | None:
    """The cached base model ``(key, seed)`` a toy config trains on, or None (own base / none)."""
    pipeline = getattr(config, "pipeline", None)
    base = getattr(pipeline, "base", None)
    if base is None or not hasattr(base, "key"):
        return None
    return base.key(), getattr(config, "base_seed", getattr(config, "seed", 0))


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text)


def from_records(results_dir: Path | str, profile: str = "quick") -> dict:
    """``{"experiments": {name: {...}}, "total": {...}}`` (module docstring); raises
    FileNotFoundError when ``results_dir`` holds no record of the profile."""
    from analysis import registry
    from analysis.cache import ResultCache

    root = Path(results_dir)
    out: dict[str, dict] = {}
    first_user: dict[tuple[str, int], tuple[datetime, str]] = {}  # base -> (start, experiment) of its trainer
    for name, experiment in registry.experiments().items():
        if profile not in experiment.reproduce_profiles:
            continue
        configs = experiment.configs(profile)
        cache = ResultCache(root, name)
        found = [(c, r) for c, r in ((c, cache.load(c.key(), c)) for c in configs) if r is not None]
        row = {"configs": len(configs), "cached": len(found), "span_s": 0.0, "worker_s": 0.0, "base_s": 0.0,
               "bases": 0, "lora_runs": 0, "lora_steps": 0}
        if found:
            timings = [r["timing"] for _, r in found]
            row["span_s"] = (max(_utc(t["finished_utc"]) for t in timings)
                             - min(_utc(t["started_utc"]) for t in timings)).total_seconds()
            row["worker_s"] = sum(t["seconds"] for t in timings)
        for config, record in found:
            runs = [s for _, s in training_summaries(record["result"])]
            row["lora_runs"] += len(runs)
            row["lora_steps"] += sum(s["steps"] for s in runs)
            if (base := _base_of(config)) is not None:
                first_user[base] = min(first_user.get(base, (datetime.max.replace(tzinfo=None), "")),
                                       (_utc(record["timing"]["started_utc"]).replace(tzinfo=None), name))
        out[name] = row
    for (key, seed), (_, name) in first_user.items():  # trained inside the first record that needed it
        summary = root / "models" / f"{key}-s{seed}.json"
        if summary.exists():
            out[name]["base_s"] += json.loads(summary.read_text())["seconds"]
            out[name]["bases"] += 1
    if not any(r["cached"] for r in out.values()):
        raise FileNotFoundError(f"{root}: no cached record of the {profile} profile (run `lora-limits reproduce`)")
    keys = ("configs", "cached", "span_s", "worker_s", "base_s", "bases", "lora_runs", "lora_steps")
    total = {k: sum(r[k] for r in out.values()) for k in keys}
    return {"results_dir": str(root), "profile": profile, "experiments": out, "total": total}


def record_table(breakdown: dict) -> tuple[tuple[str, ...], list[tuple]]:
    """Header and rows of the per-experiment table (shares of the summed spans); LoRA runs
    are "-" where the records keep no training summaries (the runs happen, uncounted)."""
    head = ("experiment", "configs", "span s", "share", "worker s", "base train s", "bases", "LoRA runs",
            "LoRA steps")
    span = breakdown["total"]["span_s"] or 1.0
    body = []
    for name, r in [*breakdown["experiments"].items(), ("total", breakdown["total"])]:
        body.append((name, f"{r['cached']}/{r['configs']}", int(round(r["span_s"])), f"{r['span_s'] / span:.0%}",
                     int(round(r["worker_s"])), int(round(r["base_s"])), r["bases"], r["lora_runs"] or "-",
                     r["lora_steps"] or "-"))
    return head, body
