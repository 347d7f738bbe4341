"""Base models trained once per (config key, seed) and shared by every experiment.

Pretraining is the expensive step of the toy experiments (minutes on a CPU), and several
experiments (two_hop_reuse, mechanism, rank_depth) need the same base model. A base model
is stored as ``<results>/models/<key>-s<seed>.safetensors`` plus a ``.json`` with its
training record; the corpus is regenerated from the seed (it is deterministic), so only
weights are stored (``pipeline.base_corpus``: the stream ``("base", "corpus")`` of the seed,
``toymodels/seeds.py``). An exclusive file lock makes parallel workers (``--jobs N``) train each
base model once: the second worker waits for the first and then loads.

Experiment ``run(config, device, results)`` functions call it through
:func:`analysis.experiments.base_model` with the results folder the sweep hands them
(``--results`` of ``run``/``reproduce``; the sweep's cache root).
"""
from __future__ import annotations

import fcntl
import json
from contextlib import contextmanager
from pathlib import Path

from safetensors.torch import load_file, save_file

from analysis.atomic import atomic_write_bytes, atomic_write_json
from toymodels.model import GPT
from toymodels.pipeline import BaseConfig, BaseRun, base_corpus, train_base
from toymodels.progress import Progress, open_bar
from toymodels.train import TrainResult, resolve_device


@contextmanager
def _exclusive(lock_path: Path):
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def base_paths(cfg: BaseConfig, seed: int, results_dir: Path | str) -> tuple[Path, Path]:
    stem = Path(results_dir) / "models" / f"{cfg.key()}-s{seed}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def _record(run: BaseRun) -> dict:
    r = run.result
    return {"eval_steps": r.eval_steps, "curves": r.curves, "losses": r.losses, "steps": r.steps,
            "seconds": r.seconds, "reached_target": r.reached_target}


def _load(cfg: BaseConfig, seed: int, weights: Path, record: Path, device: str) -> BaseRun:
    pre = base_corpus(cfg, seed)  # the corpus train_base trained on
    model = GPT(cfg.model)
    model.load_state_dict(load_file(str(weights)))
    model = model.to(resolve_device(device)).requires_grad_(False).eval()
    result = TrainResult(model=model, **json.loads(record.read_text()))
    return BaseRun(model, pre, result)


def cached_base(cfg: BaseConfig, seed: int, device: str, results_dir: Path | str,
                progress: Progress | None = None) -> BaseRun:
    """The base model for ``(cfg, seed)``: loaded from ``<results_dir>/models/`` if cached, else
    trained and cached there.
    ``progress`` (toymodels/progress.py) shows the wait for another worker and the training."""
    weights, record = base_paths(cfg, seed, results_dir)
    waiting = open_bar(progress, "base model (loading, or waiting for the worker that trains it)", 1)
    with _exclusive(weights.with_suffix(".lock")):
        waiting.close()
        if weights.exists() and record.exists():
            return _load(cfg, seed, weights, record, device)
        run = train_base(cfg, seed, device, progress)
        state = {k: v.detach().cpu().contiguous() for k, v in run.model.state_dict().items()}
        tmp = weights.with_suffix(".safetensors.tmp")
        save_file(state, str(tmp))
        atomic_write_bytes(weights, tmp.read_bytes())
        tmp.unlink()
        atomic_write_json(record, _record(run))  # written last: its presence marks completion
        return run
