"""Figures of an experiment and ``figures/report.md``, both drawn from the result cache only.

``draw_figures`` saves each of an experiment's figures with
:func:`analysis.plotstyle.save_figure` (PNG + PDF + JSON sidecar with the plotted numbers
and the config keys). ``write_report`` writes a run header (commit, dates, versions,
device, compute time and sizes, read from the cached records by
:func:`analysis.provenance.header_lines`), a summary table of every claim's verdict, the
theory checks, then one section per claim: the claim, what was measured (per-seed values,
mean and 95% CI), why its margin is what it is, the verdict and the figures that plot the
measure. The output is a function of the cache alone (dates and timings are the records'
own, never "now"), so rerunning it on the same cache changes nothing. Missing results or
figures raise :class:`MissingResultsError` naming the command that makes them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from analysis.atomic import atomic_write_bytes
from analysis.cache import MissingResultsError, ResultCache, load_results, run_command
from analysis.provenance import header_lines
from analysis.registry import ClaimMeasure, Experiment, Result
from analysis.verdict import Verdict, judge

NO_FIGURE = "no figure plots this measure"


def draw_figures(experiment: Experiment, results: list[Result], figures_dir: Path | str,
                 profile: str) -> list[Path]:
    """Draw and save every figure of ``experiment``; returns the files written."""
    from analysis.plotstyle import save_figure

    written: list[Path] = []
    for name, figure_fn in experiment.figures.items():
        fig, data = figure_fn(results)
        config = {"experiment": experiment.name, "profile": profile, "keys": [r.key for r in results]}
        written += save_figure(fig, figures_dir, name, data, config)
    return written


def claim_verdicts(experiment: Experiment, results: list[Result]) -> list[tuple[Verdict, list[float]]]:
    """``(verdict, per-seed values)`` for every claim the experiment measures."""
    rows = []
    for measure in experiment.claims:
        values = [float(v) for v in measure.per_seed(results)]
        rows.append((judge(measure.claim, values), values))
    return rows


def _num(x: Any) -> str:
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def _row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def anchor(claim_id: str) -> str:
    """The id of a claim's section (``<a id=...>`` before its heading; the summary links it)."""
    return "claim-" + claim_id.lower()


def _theory_section(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not rows:  # reproduce --only
        return ["## Theory checks", "", "Not run for this report (`reproduce --only`); `lora-limits theory` runs them.", ""]
    lines = ["## Theory checks", "", "| ID | statement | predicted | measured | tolerance | status |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        cells = [r["id"], r["statement"], _num(r["predicted"]), _num(r["measured"]), _num(r["tolerance"]),
                 r["status"]]
        lines.append(_row(cells))
    failed = sum(r["status"] != "PASS" for r in rows)
    return lines + ["", f"{len(rows) - failed} of {len(rows)} checks pass.", ""]


def _figure_links(experiment: Experiment, names: Sequence[str], profile: str, figures_dir: Path,
                  report_dir: Path, results_dir: Path | str) -> str:
    links = []
    for name in names:
        png = figures_dir / f"{name}.png"
        if not png.is_file():
            command = run_command(experiment.name, profile, results_dir)
            if figures_dir != Path("figures"):
                command += f" --figures {figures_dir}"
            raise MissingResultsError(f"figure {png} is missing: run `{command}`")
        links.append(f"[{name}]({Path(os.path.relpath(png, report_dir)).as_posix()})")
    return ", ".join(links) or NO_FIGURE


def _claim_section(experiment: Experiment, measure: ClaimMeasure, verdict: Verdict, values: list[float],
                   results: list[Result], figures: str, profile: str) -> list[str]:
    c, s = verdict.claim, verdict.summary
    detail = [f"- Behind it: {measure.detail(results)}"] if measure.detail is not None else []
    return [
        f'<a id="{anchor(c.id)}"></a>', "",
        f"## {c.id}: {c.statement}", "",
        f"- Experiment: `{experiment.name}` ({profile} profile): {experiment.description}",
        f"- Measured per seed: {c.quantity} = {', '.join(f'{v:.3f}' for v in values)}",
        *detail,
        f"- Mean {s.mean:.3f}, {100 * s.confidence:g}% CI [{s.low:.3f}, {s.high:.3f}] "
        f"over n = {s.n} seeds ({s.method}-interval)",
        f"- Claim: the quantity lies {c.direction} {c.margin:g}",
        f"- Why {c.margin:g}: {c.margin_reason}",
        f"- Verdict: **{verdict.outcome}**: {verdict.reason}",
        f"- Figures: {figures}", "",
    ]


def _summary_table(verdicts: Sequence[Verdict]) -> list[str]:
    lines = ["## Verdicts", "",
             "| claim | statement | claimed | verdict | effect (mean) | 95% CI | n seeds | section |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for v in verdicts:
        c, s = v.claim, v.summary
        ci = f"[{s.low:.3f}, {s.high:.3f}]" + (" (all seeds equal)" if s.std == 0 else "")
        lines.append(_row([c.id, c.statement, f"{c.direction} {c.margin:g}", f"**{v.outcome}**", f"{s.mean:.3f}", ci,
                           s.n, f"[{c.id}](#{anchor(c.id)})"]))
    return lines + ["", "Effect: the claim's measured quantity (its section says what it is and why the margin is "
                    "what it is), mean over seeds; the claim is that it lies below or above the margin.", ""]


def build_report(experiments: Mapping[str, Experiment], profile: str, results_dir: Path | str,
                 figures_dir: Path | str, report_dir: Path | str,
                 theory_rows: Sequence[Mapping[str, Any]] | None) -> str:
    """The report's Markdown text. ``theory_rows`` are ``Check.as_json()`` dicts (as printed
    by ``lora-limits theory --json``)."""
    if theory_rows is None:
        raise MissingResultsError("the report needs the theory check results: run `lora-limits reproduce`")
    figures_dir, report_dir = Path(figures_dir), Path(report_dir)
    records, configs, verdicts, sections = {}, {}, [], []
    for experiment in experiments.values():
        results = load_results(experiment.name, experiment.configs(profile), results_dir, profile)
        cache = ResultCache(results_dir, experiment.name)
        records[experiment.name] = [cache.load(r.key) for r in results]
        configs[experiment.name] = [r.config for r in results]
        for measure, (verdict, values) in zip(experiment.claims, claim_verdicts(experiment, results)):
            figures = _figure_links(experiment, measure.figures, profile, figures_dir, report_dir, results_dir)
            verdicts.append(verdict)
            sections += _claim_section(experiment, measure, verdict, values, results, figures, profile)
    lines = ["# lora-limits report", "",
             f"Generated from the result cache (`{Path(results_dir).as_posix()}/`, {profile} profile) "
             "by `lora-limits reproduce`. Each claim is judged from per-seed measurements: "
             "supported when the 95% CI lies on the claimed side of the margin, not supported when it "
             "lies on the other side, inconclusive when it contains the margin.", ""]
    lines += header_lines(records, configs, profile, len(theory_rows))
    lines += _summary_table(verdicts) + _theory_section(theory_rows) + sections
    return "\n".join(lines).rstrip() + "\n"


def write_report(path: Path | str, experiments: Mapping[str, Experiment], profile: str,
                 results_dir: Path | str, figures_dir: Path | str,
                 theory_rows: Sequence[Mapping[str, Any]] | None) -> Path:
    """Write :func:`build_report` to ``path`` (e.g. ``figures/report.md``) atomically."""
    path = Path(path)
    text = build_report(experiments, profile, results_dir, figures_dir, path.parent, theory_rows)
    atomic_write_bytes(path, text.encode())
    return path
