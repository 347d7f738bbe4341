"""Running an experiment's tiny grid through the result cache, as the experiment tests do."""
from __future__ import annotations

from pathlib import Path

from analysis.cache import ResultCache, load_results
from analysis.registry import Experiment, Result
from analysis.sweep import SweepSummary, run_sweep


def sweep_tiny(experiment: Experiment, configs: list, root: Path) -> tuple[SweepSummary, list[Result]]:
    """Sweep ``configs`` into the cache under ``root`` (no progress output); a failed config
    fails the test with its error. Returns the summary and the loaded results."""
    summary = run_sweep(experiment, configs, ResultCache(root, experiment.name), progress=False)
    assert not summary.failures, summary.failures[0].error
    return summary, load_results(experiment.name, configs, root, "quick")
