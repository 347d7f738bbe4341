"""Figures of an experiment and ``figures/report.md``, both drawn from the result cache only.

``draw_figures`` saves each of an experiment's figures with
:func:`analysis.plotstyle.save_figure` (PNG + PDF + JSON sidecar with the plotted numbers
and the config keys). ``write_report`` writes a run header (commit, dates, versions,
device, compute time and sizes, read from the cached records by
:func:`analysis.provenance.header_lines`), a summary table of every claim's verdict, the
theory checks, then one section per claim: the claim, its metric and range, what was
measured (per-seed values, mean, bootstrap 95% CI over seeds and how many are independent),
the questions per split, the ceiling, the verdict per fine-tune recipe where the grid varies
it, why its margin is what it is, the verdict and the figures that plot the measure. The output is a function of the cache alone (dates and timings are the records'
own, never "now"), so rerunning it on the same cache changes nothing. Missing results or
figures raise :class:`MissingResultsError` naming the command that makes them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from analysis.atomic import atomic_write_bytes
from analysis.cache import MissingResultsError, ResultCache, load_results, run_command
from analysis.provenance import header_lines, sizes
from analysis.registry import ClaimMeasure, Experiment, Result
from analysis.stats import UNBOUNDED, Summary
from analysis.verdict import MIN_UNITS, SUPPORTED, CeilingCheck, Verdict, claim_rng, judge, robust

NO_FIGURE = "no figure plots this measure"
NOT_MEASURED = "not measured"  # the results lack what the claim reads (ClaimMeasure.needs); no verdict


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


def independent_units(results: list[Result], n_values: int) -> int:
    """How many of ``n_values`` per-seed values are independent: seeds that share one base
    model (``config.base_seed``) are one unit, so at most the number of distinct base seeds."""
    base_seeds = {getattr(r.config, "base_seed", None) for r in results}
    return n_values if not base_seeds or None in base_seeds else min(n_values, len(base_seeds))


def judge_measure(measure: ClaimMeasure, results: list[Result], *rng_path: str) -> tuple[Verdict, list[float]]:
    """``(verdict, per-seed values)`` of one claim on ``results``: bootstrap CI within the
    measure's bounds (draws from :func:`analysis.verdict.claim_rng` of the claim and ``rng_path``),
    independent units, and the ceiling if the measure has one."""
    values = [float(v) for v in measure.per_seed(results)]
    ceiling = None
    if measure.ceiling is not None:
        c = measure.ceiling
        ceiling = CeilingCheck(c.name, tuple(float(v) for v in c.per_seed(results)), c.threshold)
    rng = claim_rng(measure.claim.id, *rng_path)
    units = independent_units(results, len(values))
    return judge(measure.claim, values, rng, measure.bounds, units, ceiling), values


def missing(measure: ClaimMeasure, results: list[Result]) -> str | None:
    """Why ``results`` cannot measure the claim (``measure.needs``), or None when they can."""
    return None if measure.needs is None else measure.needs(results)


def claim_verdicts(experiment: Experiment, results: list[Result]) -> list[tuple[Verdict, list[float]]]:
    """``(verdict, per-seed values)`` for every claim the results measure (see :func:`missing`)."""
    return [judge_measure(measure, results) for measure in experiment.claims if missing(measure, results) is None]


def recipe_verdicts(measure: ClaimMeasure, results: list[Result]) -> dict[str, Verdict]:
    """The claim's verdict within each fine-tune recipe of the grid (``{}``: no recipe axis, the
    claim has none or the results hold one recipe only, whose verdict is the claim's own)."""
    if measure.recipe is None:
        return {}
    groups: dict[str, list[Result]] = {}
    for r in results:
        groups.setdefault(measure.recipe(r), []).append(r)
    if len(groups) < 2:
        return {}
    return {name: judge_measure(measure, rs, "recipe", name)[0] for name, rs in sorted(groups.items())}


def questions_per_split(measure: ClaimMeasure, results: list[Result]) -> str | None:
    """The composed questions per split behind a claim, e.g. "F 8, H 8, R 8" (a range where
    results differ), from ``measure.questions``, else the results; None when neither says."""
    if measure.questions is not None:
        counts = {split: [n] for split, n in measure.questions(results).items()}
    else:
        counts = {}
        for r in results:
            for split, scores in (r.result.get("splits") or {}).items():
                if isinstance(scores, Mapping) and "n_composed" in scores:
                    counts.setdefault(split, []).append(scores["n_composed"])
    if not counts:
        return None
    span = {s: (min(ns), max(ns)) for s, ns in counts.items()}
    return ", ".join(f"{s} {lo}" if lo == hi else f"{s} {lo}-{hi}" for s, (lo, hi) in span.items())


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


def _interval(s: Summary) -> str:
    return f"[{s.low:.3f}, {s.high:.3f}]"


def _range(bounds: tuple[float, float]) -> str:
    return "unbounded" if bounds == UNBOUNDED else f"[{bounds[0]:g}, {bounds[1]:g}]"


def _ceiling(verdict: Verdict) -> str:
    c = verdict.ceiling
    if c is None:
        return "none stated"
    return f"{c} {'reached' if c.reached else '**not reached**'}"


def _recipes(per_recipe: Mapping[str, Verdict]) -> str:
    if not per_recipe:
        return "one recipe"
    held = sum(v.outcome == SUPPORTED for v in per_recipe.values())
    return "robust" if robust(per_recipe) else f"not robust ({held} of {len(per_recipe)} recipes supported)"


def _recipe_lines(per_recipe: Mapping[str, Verdict]) -> list[str]:
    if not per_recipe:
        return ["- Recipes: one fine-tune recipe in this grid (no recipe axis), so robustness across recipes "
                "is not assessed"]
    lines = ["- Recipes (the claim is robust only if supported under every one): "
             f"{_recipes(per_recipe)}", "", "  | recipe | effect (mean) | 95% CI | units | verdict |",
             "  | --- | --- | --- | --- | --- |"]
    lines += ["  " + _row([name, f"{v.summary.mean:.3f}", _interval(v.summary), v.units, f"**{v.outcome}**"])
              for name, v in per_recipe.items()]
    return lines + [""]


def _claim_section(experiment: Experiment, measure: ClaimMeasure, verdict: Verdict, values: list[float],
                   results: list[Result], figures: str, profile: str, per_recipe: Mapping[str, Verdict]) -> list[str]:
    c, s = verdict.claim, verdict.summary
    detail = [f"- Behind it: {measure.detail(results)}"] if measure.detail is not None else []
    questions, grid = questions_per_split(measure, results), sizes([r.config for r in results])
    return [
        f'<a id="{anchor(c.id)}"></a>', "",
        f"## {c.id}: {c.statement}", "",
        f"- Experiment: `{experiment.name}` ({profile} profile): {experiment.description}",
        f"- Metric: {c.quantity}; range {_range(measure.bounds)}",
        f"- Measured per seed: {', '.join(f'{v:.3f}' for v in values)}",
        *detail,
        f"- Effect: mean {s.mean:.3f}, {100 * s.confidence:g}% bootstrap CI {_interval(s)} over n = {s.n} seeds, "
        f"{verdict.units} independent (seeds sharing a base model count once)",
        f"- Questions per split: {questions or 'not recorded per split in the results; the grid: ' + grid}",
        f"- Ceiling: {_ceiling(verdict)}",
        *_recipe_lines(per_recipe),
        f"- Claim: the quantity lies {c.direction} {c.margin:g}",
        f"- Why {c.margin:g}: {c.margin_reason}",
        f"- Verdict: **{verdict.outcome}**: {verdict.reason}",
        f"- Figures: {figures}", "",
    ]


def _unmeasured_section(experiment: Experiment, measure: ClaimMeasure, why: str, profile: str) -> list[str]:
    c = measure.claim
    return [f'<a id="{anchor(c.id)}"></a>', "", f"## {c.id}: {c.statement}", "",
            f"- Experiment: `{experiment.name}` ({profile} profile): {experiment.description}",
            f"- Metric: {c.quantity}; range {_range(measure.bounds)}",
            f"- Claim: the quantity lies {c.direction} {c.margin:g}",
            f"- Why {c.margin:g}: {c.margin_reason}",
            f"- Verdict: **{NOT_MEASURED}**: {why}", ""]


def _unmeasured_row(measure: ClaimMeasure) -> str:
    c = measure.claim
    return _row([c.id, c.statement, f"{c.direction} {c.margin:g}", f"**{NOT_MEASURED}**", "-", "-", "0", "-",
                 "-", "-", f"[{c.id}](#{anchor(c.id)})"])


def _summary_table(rows: Sequence[tuple[Verdict, str, Mapping[str, Verdict]] | str]) -> list[str]:
    lines = ["## Verdicts", "",
             "| claim | statement | claimed | verdict | effect (mean) | 95% CI | units (seeds) | questions per split "
             "| ceiling | recipes | section |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        if isinstance(row, str):  # a claim these results do not measure: its row, already written
            lines.append(row)
            continue
        v, questions, per_recipe = row
        c, s = v.claim, v.summary
        ci = _interval(s) + (" (all seeds equal)" if s.low == s.high else "")
        lines.append(_row([c.id, c.statement, f"{c.direction} {c.margin:g}", f"**{v.outcome}**", f"{s.mean:.3f}", ci,
                           f"{v.units} ({s.n})", questions or "see section", _ceiling(v), _recipes(per_recipe),
                           f"[{c.id}](#{anchor(c.id)})"]))
    return lines + ["", "Effect: the claim's measured quantity (its section says what it is and why the margin is "
                    "what it is), mean over seeds; the claim is that it lies below or above the margin. Units: "
                    "independent seeds (own base model) behind the CI, of all seeds measured.", ""]


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
        for measure in experiment.claims:
            if (why := missing(measure, results)) is not None:
                verdicts.append(_unmeasured_row(measure))
                sections += _unmeasured_section(experiment, measure, why, profile)
                continue
            verdict, values = judge_measure(measure, results)
            figures = _figure_links(experiment, measure.figures, profile, figures_dir, report_dir, results_dir)
            per_recipe = recipe_verdicts(measure, results)
            verdicts.append((verdict, questions_per_split(measure, results), per_recipe))
            sections += _claim_section(experiment, measure, verdict, values, results, figures, profile, per_recipe)
    lines = ["# lora-limits report", "",
             f"Generated from the result cache (`{Path(results_dir).as_posix()}/`, {profile} profile) "
             "by `lora-limits reproduce`. Each claim is judged from per-seed measurements by a percentile "
             "bootstrap 95% CI over seeds, within the metric's range: **not testable** when the claim's "
             "ceiling model stays under its threshold; **underpowered** with fewer than "
             f"{MIN_UNITS} independent seeds (own base model) or a zero-width CI; else **supported** when the "
             "CI lies on the claimed side of the margin, **not supported** when it lies on the other side, "
             "**inconclusive** when it contains the margin; **not measured** when the results lack what the "
             "claim reads (its section says what and how to get it). A claim is robust only if supported under "
             "every fine-tune recipe of the grid.", ""]
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
