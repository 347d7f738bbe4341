"""Where and with what a cached result was computed, and the report's run header.

:func:`provenance` is stored in every cache record when its config finishes
(:func:`analysis.cache.make_record`): the git commit of the code that computed it, whether
that code had uncommitted changes, the versions of the optional packages (the record's
``versions`` holds python, torch, numpy and lora-limits) and a description of the machine.
:func:`header_lines` summarises the records a report is built from. It reads the records
only, never the clock or the current checkout, so a report rebuilt on the same cache is
byte-identical; records written before provenance existed are counted as such.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections import Counter
from datetime import datetime
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

ROOT = Path(__file__).resolve().parent.parent  # the checkout (or install) holding analysis/
CODE_PATHS = ("theory", "toymodels", "analysis", "pyproject.toml")  # what computes a result
OPTIONAL_PACKAGES = ("transformers", "peft")
NOT_RECORDED = "not recorded"


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@lru_cache(maxsize=1)
def git_state() -> tuple[str, bool | None]:
    """``(commit, dirty)`` of the code: ``("unknown", None)`` outside a git checkout of this
    project. Dirty means uncommitted changes (untracked files included) under
    :data:`CODE_PATHS`; figures and the ignored cache do not count, since a reproduction
    rewrites them while it runs."""
    top = _git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != ROOT:  # e.g. installed into a venv inside another repo
        return "unknown", None
    commit, status = _git("rev-parse", "HEAD"), _git("status", "--porcelain", "--", *CODE_PATHS)
    return (commit or "unknown"), (None if status is None else bool(status))


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine(device: str) -> str:
    """One line: the CPU and the cores this process may use, and the GPU when ``device`` is CUDA."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = f"{platform.system()} {platform.machine()}, {cpu_name()}, {cores} CPU cores"
    torch = sys.modules.get("torch")  # only if the run imported it: no import cost for the self-test
    if device.startswith("cuda") and torch is not None and torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text


@lru_cache(maxsize=1)
def _packages() -> tuple[tuple[str, str], ...]:
    found = []
    for name in OPTIONAL_PACKAGES:
        try:
            found.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            found.append((name, "not installed"))
    return tuple(found)


def provenance(device: str) -> dict[str, Any]:
    """The ``provenance`` block of a record computed on ``device`` by this process (the git
    state and package versions are read once per process)."""
    commit, dirty = git_state()
    return {"commit": commit, "dirty": dirty, "packages": dict(_packages()), "machine": machine(device)}


# --- the report header ----------------------------------------------------------------------

def _counted(values: Iterable[str]) -> str:
    """``a`` when every record agrees, else ``a (3 records); b (1 record)`` (most common first)."""
    counts = Counter(values)
    if len(counts) == 1:
        return next(iter(counts))
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return "; ".join(f"{value} ({_plural(n, 'record')})" for value, n in ordered)


def _commit(record: Mapping[str, Any]) -> str:
    p = record.get("provenance")
    if not isinstance(p, dict):
        return "no commit recorded (record predates provenance)"
    dirty = {True: "uncommitted changes", False: "clean", None: "state unknown"}[p.get("dirty")]
    return f"`{p.get('commit', 'unknown')}` ({dirty})"


def _version(record: Mapping[str, Any], package: str) -> str:
    found = dict(record.get("versions") or {})
    found.update((record.get("provenance") or {}).get("packages") or {})
    return str(found.get(package, NOT_RECORDED))


def _device(record: Mapping[str, Any]) -> str:
    described = (record.get("provenance") or {}).get("machine")
    return f"{record.get('device', '?')}" + (f" ({described})" if described else "")


def _utc(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _attr(obj: Any, dotted: str) -> Any:
    for name in dotted.split("."):
        obj = getattr(obj, name, None)
    return obj


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _join(values: Iterable[Any]) -> str:
    return ", ".join(str(v) for v in values)


def sizes(configs: Sequence[Any]) -> str:
    """What one experiment's grid holds: configs, seeds and, where the config has them, the
    composed questions per familiarity split and the splits."""
    parts = [_plural(len(configs), "config")]
    seeds = sorted({s for s in (_attr(c, "seed") for c in configs) if s is not None})
    if seeds:
        parts.append(f"{_plural(len(seeds), 'seed')} ({_join(seeds)})")
    base_seeds = sorted({s for s in (_attr(c, "base_seed") for c in configs) if s is not None})
    if base_seeds:
        parts.append(f"base-model seeds {_join(base_seeds)}")
    questions = sorted({q for q in (_attr(c, "pipeline.experts.n_facts") for c in configs) if q is not None})
    if questions:
        parts.append(f"{_join(questions)} composed questions per familiarity split")
    splits = []
    for c in configs:
        found = _attr(c, "familiarity") or _attr(c, "pipeline.familiarities") or ()
        splits += [f for f in ((found,) if isinstance(found, str) else found) if f not in splits]
    if splits:
        parts.append(f"splits {_join(splits)}")
    return ", ".join(parts)


def header_lines(records: Mapping[str, Sequence[Mapping[str, Any]]], configs: Mapping[str, Sequence[Any]],
                 profile: str, n_theory_checks: int) -> list[str]:
    """The report's run header from the cached ``records`` of each experiment (``configs``:
    the same experiments' grids, for the profile sizes)."""
    every = [r for rs in records.values() for r in rs]
    if not every:
        return ["## Run", "", "- No cached experiment records: the report holds the theory checks only.", ""]
    timing = [r["timing"] for r in every]
    started = min(_utc(t["started_utc"]) for t in timing)
    finished = max(_utc(t["finished_utc"]) for t in timing)
    seconds = sum(float(t["seconds"]) for t in timing)
    packages = ("python", "torch", "numpy") + OPTIONAL_PACKAGES + ("lora-limits", "cache_version")
    lines = ["## Run", "",
             f"Read from the {len(every)} cached records this report is built from (each record stores "
             "them when its config finishes), so rebuilding on the same cache gives the same text.", "",
             f"- Commit: {_counted(_commit(r) for r in every)}",
             f"- Computed (UTC): {started:%Y-%m-%d %H:%M} to {finished:%Y-%m-%d %H:%M} "
             f"(first start to last finish: {_duration((finished - started).total_seconds())}; the wall time when "
             "the records come from one uninterrupted run)",
             f"- Compute time: {_duration(seconds)}, the sum of the per-config run times (base-model training "
             "included where a config trained one; configs run in parallel overlap). Not included: the theory "
             f"checks ({n_theory_checks}), which every `reproduce` reruns without caching them",
             "- Versions: " + ", ".join(f"{p} {_counted(_version(r, p) for r in every)}" for p in packages),
             f"- Device: {_counted(_device(r) for r in every)}",
             f"- Sizes ({profile} profile):"]
    lines += [f"  - `{name}`: {sizes(cs)}" for name, cs in configs.items()]
    return lines + [""]
