"""The result cache: ``<results>/<experiment>/<config key>.json``, one file per config.

Each file is a *record*: ``{"experiment", "key", "config", "config_type", "result",
"timing", "versions", "device", "provenance"}``, written atomically (:mod:`analysis.atomic`), so a
file either holds a finished record or does not exist. A file that nonetheless fails to
parse, names another key, or holds another config (hand edits, a full disk, a copy from
elsewhere) is *invalid*: it counts as missing, and the next sweep recomputes and replaces
it. Temp files left by a killed writer are ignored.

A sweep *claims* a key before computing it (:meth:`ResultCache.claim`): an exclusive
``flock`` on ``.<key>.lock`` beside the record. The kernel drops the lock when its holder
dies (SIGKILL included), so there are no stale locks to detect by pid, and a lock file left
behind is simply claimed again. POSIX only (``fcntl``), like the base-model lock.
"""
from __future__ import annotations

import fcntl
import json
import os
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from analysis.atomic import TEMP_SUFFIX, atomic_write_json, is_temp_file
from analysis.registry import Result

RECORD_FIELDS = ("experiment", "key", "config", "result", "timing", "versions")


@lru_cache(maxsize=1)
def versions() -> dict[str, str | int]:
    """Versions that can change a result; read from package metadata (no heavy imports)."""
    from toymodels.config import CACHE_VERSION

    found: dict[str, str | int] = {"python": sys.version.split()[0], "cache_version": CACHE_VERSION}
    for package in ("lora-limits", "torch", "numpy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def config_json(config: Any) -> dict[str, Any]:
    """The config as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(config.to_dict()))


class ResultCache:
    """The cached records of one experiment under ``root/<experiment>/``; ``root`` is the
    results folder (the sweep also hands it to run functions for the shared model caches)."""

    def __init__(self, root: Path | str, experiment: str):
        self.experiment = experiment
        self.root = Path(root)
        self.folder = Path(root) / experiment
        self._claims: dict[str, int] = {}  # key -> file descriptor holding its lock

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def load(self, key: str, config: Any | None = None) -> dict[str, Any] | None:
        """The valid record for ``key`` (and, if given, exactly this ``config``), else None."""
        try:
            record = json.loads(self.path(key).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(record, dict) or any(f not in record for f in RECORD_FIELDS):
            return None
        if record["key"] != key or record["experiment"] != self.experiment:
            return None
        if config is not None and record["config"] != config_json(config):
            return None
        return record

    def has(self, key: str, config: Any | None = None) -> bool:
        return self.load(key, config) is not None

    def store(self, record: dict[str, Any]) -> Path:
        """Write a record made by :func:`make_record` atomically; returns its path."""
        if record.get("experiment") != self.experiment:
            raise ValueError(f"record of {record.get('experiment')!r} stored in the cache of {self.experiment!r}")
        path = self.path(record["key"])
        atomic_write_json(path, record)
        return path

    def _lock_path(self, key: str) -> Path:
        return self.folder / f".{key}.lock"

    def claim(self, key: str) -> bool:
        """Take ``key``'s lock without waiting; False when another process (or another
        :class:`ResultCache` object) holds it. Hold it while computing and storing the record,
        then :meth:`release` it. The holder deletes the lock file on release, so a lock taken
        on a file that is no longer at the path is retried on the new file."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._lock_path(key)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            except (BlockingIOError, FileNotFoundError) as exc:
                os.close(fd)
                if isinstance(exc, BlockingIOError):
                    return False
                continue  # released and deleted between our open and our lock
            if current:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())  # for a human looking at the folder
                self._claims[key] = fd
                return True
            os.close(fd)

    def release(self, key: str) -> None:
        """Give back a claim of this object (no-op if it holds none): delete the file, then unlock."""
        fd = self._claims.pop(key, None)
        if fd is not None:
            self._lock_path(key).unlink(missing_ok=True)
            os.close(fd)

    def release_all(self) -> None:
        for key in list(self._claims):
            self.release(key)

    def remove_stale_temp_files(self, older_than_s: float = 600.0) -> int:
        """Delete temp files of writers killed mid-write; fresh ones may belong to a live sweep."""
        import time

        stale = [p for p in self.folder.glob(".*" + TEMP_SUFFIX)
                 if is_temp_file(p) and time.time() - p.stat().st_mtime > older_than_s] if self.folder.is_dir() else []
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    def stored_keys(self) -> list[str]:
        """Keys of all files that look like records (valid or not), sorted; temp files skipped."""
        if not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.glob("*.json") if not is_temp_file(p))


def make_record(experiment: str, config: Any, result: dict[str, Any], timing: dict[str, Any],
                device: str) -> dict[str, Any]:
    """The record stored for one finished config (``result`` must already be JSON-native);
    ``provenance`` (:mod:`analysis.provenance`: commit, dirty flag, optional packages, machine)
    is what the report's run header reads."""
    from analysis.provenance import provenance

    return {
        "experiment": experiment,
        "key": config.key(),
        "config": config_json(config),
        "config_type": f"{type(config).__module__}.{type(config).__qualname__}",
        "result": result,
        "timing": timing,
        "versions": versions(),
        "device": device,
        "provenance": provenance(device),
    }


def unique_configs(configs: Iterable[Any]) -> list[Any]:
    """Configs in grid order with duplicate keys dropped (overrides can merge grid points)."""
    seen: dict[str, Any] = {}
    for config in configs:
        seen.setdefault(config.key(), config)
    return list(seen.values())


class MissingResultsError(FileNotFoundError):
    """Results a figure or report needs are not cached; the message names the command that makes them."""


def run_command(experiment: str, profile: str, results_dir: Path | str = "results",
                overrides: list[str] | tuple[str, ...] = ()) -> str:
    """The exact ``lora-limits run`` command that fills the cache for this grid."""
    import shlex

    words = ["lora-limits", "run", experiment, "--profile", profile]
    if Path(results_dir) != Path("results"):
        words += ["--results", str(results_dir)]
    for item in overrides:
        words += ["--set", item]
    return shlex.join(words)


def load_results(experiment: str, configs: list[Any], results_dir: Path | str, profile: str,
                 overrides: list[str] | tuple[str, ...] = ()) -> list[Result]:
    """The cached :class:`analysis.registry.Result` of every config, in grid order; raises
    :class:`MissingResultsError` naming the command to run if any is missing."""
    cache = ResultCache(results_dir, experiment)
    configs = unique_configs(configs)
    results, missing = [], 0
    for config in configs:
        record = cache.load(config.key(), config)
        if record is None:
            missing += 1
        else:
            results.append(Result(record["key"], config, record["result"]))
    if missing:
        raise MissingResultsError(
            f"{missing} of {len(configs)} results of {experiment!r} ({profile} profile) are not in "
            f"{cache.folder}/: run `{run_command(experiment, profile, results_dir, overrides)}`")
    return results
