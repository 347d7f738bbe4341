"""figures/report.md: a run header read from the cached records, a verdict summary table that
agrees with the sections, margins with reasons, figure links that exist, and byte-identical
rebuilds. Built from the tiny `_selftest` experiment (no toy models)."""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from analysis import provenance, registry
from analysis.cache import ResultCache, load_results, make_record
from analysis.experiments.rank_depth import recall_by_rank
from analysis.registry import Ceiling, ClaimMeasure, Result
from analysis.report import (NO_FIGURE, NOT_MEASURED, anchor, build_report, claim_verdicts, draw_figures,
                             independent_units, questions_per_split, write_report)
from analysis.stats import DIFFERENCE
from analysis.sweep import run_sweep
from analysis.verdict import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Claim

SELFTEST = registry.get("_selftest")
THEORY = [{"id": "P1.exact", "statement": "rank-one edit", "predicted": 0.0, "measured": 1e-12,
           "tolerance": 1e-9, "status": "PASS"}]
# The claims whose measure no figure plots (issue 8: REUSE-0/0L linked two_hop_methods, whose
# "base" bar is the NEW composed questions; MATH-0 / CODE-0 are the bases' own held-out problems /
# cross_test, which the methods figures do not plot).
WITHOUT_FIGURE = {"REUSE-0", "REUSE-0L", "MATH-0", "CODE-0"}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    results, figures = root / "results", root / "figures"
    run_sweep(SELFTEST, SELFTEST.configs("quick"), ResultCache(results, SELFTEST.name), progress=False)
    draw_figures(SELFTEST, load_results(SELFTEST.name, SELFTEST.configs("quick"), results, "quick"), figures, "quick")
    return root


@pytest.fixture
def filled(cache_dir, tmp_path):
    """A private copy of the filled cache and figures (some tests edit records)."""
    shutil.copytree(cache_dir, tmp_path / "run")
    return tmp_path / "run" / "results", tmp_path / "run" / "figures"


def _three_verdicts(figures=("selftest_measured",), detail=None):
    """The self-test claim at three margins: the measured gap is ~0.50 with CI ~[0.46, 0.54]."""
    measure = SELFTEST.claims[0]
    claims = [ClaimMeasure(dataclasses.replace(measure.claim, id=f"SELFTEST-{name}", margin=margin),
                           measure.per_seed, figures, detail)
              for name, margin in (("LOW", 0.25), ("HIGH", 0.75), ("EDGE", 0.5))]
    return {"_selftest": dataclasses.replace(SELFTEST, claims=tuple(claims))}


def _records(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results / "_selftest").glob("*.json"))]


def _edit_records(results: Path, edit) -> None:
    for i, path in enumerate(sorted((results / "_selftest").glob("*.json"))):
        record = json.loads(path.read_text())
        edit(i, record)
        path.write_text(json.dumps(record))


def _header(text: str) -> str:
    return text.split("## Run", 1)[1].split("## Verdicts", 1)[0]


def test_header_has_every_metadata_field_from_the_records(filled):
    results, figures = filled
    text = build_report(_three_verdicts(), "quick", results, figures, figures, THEORY)
    header, record = _header(text), _records(results)[0]
    commit = subprocess.run(["git", "-C", str(provenance.ROOT), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    assert record["provenance"]["commit"] == commit  # an independent oracle: git itself
    assert f"- Commit: `{commit}` (" in header
    for package in ("python", "torch", "numpy", "lora-limits", "cache_version"):
        assert f"{package} {record['versions'][package]}" in header
    for package in ("transformers", "peft"):
        assert f"{package} {record['provenance']['packages'][package]}" in header
    assert f"- Device: cpu ({record['provenance']['machine']})" in header
    assert "- Computed (UTC): " in header and "- Compute time: " in header
    assert "`_selftest`: 8 configs, 4 seeds (0, 1, 2, 3)" in header
    assert text.index("## Run") < text.index("## Verdicts") < text.index("## Theory checks") < text.index("## SELFTEST")


def test_header_reports_what_the_records_hold(filled):
    """Dates, compute time, mixed commits and records without provenance come from the records."""
    results, figures = filled

    def edit(i, record):
        record["timing"].update(started_utc=f"2031-02-0{1 + i % 2}T10:00:00.000+00:00",
                                finished_utc=f"2031-02-0{1 + i % 2}T10:{i:02d}:00.000+00:00", seconds=75.0)
        if i < 2:
            record["provenance"]["commit"], record["provenance"]["dirty"] = "a" * 40, False
        elif i == 2:
            del record["provenance"]
        record["versions"]["torch"] = "9.9.9" if i == 3 else record["versions"]["torch"]

    _edit_records(results, edit)
    header = _header(build_report(_three_verdicts(), "quick", results, figures, figures, THEORY))
    assert "- Computed (UTC): 2031-02-01 10:00 to 2031-02-02 10:07 (first start to last finish: 1447.0 min" in header
    assert "- Compute time: 10.0 min, the sum of the per-config run times" in header  # 8 x 75 s
    assert f"`{'a' * 40}` (clean) (2 records)" in header
    assert "no commit recorded (record predates provenance) (1 record)" in header
    assert re.search(r"torch [^,]+ \(7 records\); 9\.9\.9 \(1 record\)", header)


def test_summary_table_lists_every_claim_with_its_sections_verdict(filled):
    results, figures = filled
    text = build_report(_three_verdicts(), "quick", results, figures, figures, THEORY)
    table = text.split("## Verdicts", 1)[1].split("## Theory checks", 1)[0]
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")]
                                          for line in table.splitlines() if line.startswith("| SELFTEST"))}
    sections = dict(re.findall(r"^## (SELFTEST-\w+): .*?^- Verdict: \*\*([a-z ]+)\*\*", text, re.S | re.M))
    assert set(rows) == set(sections) == {"SELFTEST-LOW", "SELFTEST-HIGH", "SELFTEST-EDGE"}
    for claim_id, cells in rows.items():
        assert cells[3] == f"**{sections[claim_id]}**"
        assert cells[10] == f"[{claim_id}](#{anchor(claim_id)})" and f'<a id="{anchor(claim_id)}"></a>' in text
        assert cells[6:10] == ["4 (4)", "see section", "none stated", "one recipe"]
    assert [sections[k] for k in ("SELFTEST-LOW", "SELFTEST-HIGH", "SELFTEST-EDGE")] == \
        [SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE]
    claimed, mean, ci = rows["SELFTEST-LOW"][2], *rows["SELFTEST-LOW"][4:6]
    assert claimed == "above 0.25"
    assert f"- Effect: mean {mean}, 95% bootstrap CI {ci} over n = 4 seeds, 4 independent" in text
    assert "- Questions per split: not recorded per split in the results; the grid: 8 configs, 4 seeds" in text
    assert text.count("- Ceiling: none stated") == 3 and text.count("- Metric: measured(top effect) - measured(effect "
                                                                     "0); range unbounded") == 3


def test_rebuilding_on_the_same_cache_is_byte_identical(filled, monkeypatch):
    """The header reads the records, never the clock or the checkout: moving both changes nothing."""
    results, figures = filled
    path = write_report(figures / "report.md", _three_verdicts(), "quick", results, figures, THEORY)
    first = path.read_bytes()

    class Later(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2099, 1, 1, tzinfo=tz)

    monkeypatch.setattr(provenance, "datetime", Later)
    monkeypatch.setattr(provenance, "git_state", lambda: ("f" * 40, True))
    monkeypatch.setattr(provenance, "machine", lambda device: "another machine")
    write_report(path, _three_verdicts(), "quick", results, figures, THEORY)
    assert path.read_bytes() == first


def test_margins_carry_their_reason():
    with pytest.raises(ValueError, match="SELFTEST-X: margin_reason=''; give one sentence"):
        Claim("SELFTEST-X", "s", "q", "below", 0.1)
    with pytest.raises(ValueError, match="margin_reason='  '"):
        Claim("SELFTEST-X", "s", "q", "below", 0.1, "  ")
    for experiment in registry.experiments(include_hidden=True).values():
        for measure in experiment.claims:
            assert len(measure.claim.margin_reason.split()) >= 5, measure.claim.id


def test_each_section_prints_its_margin_reason_and_detail(filled):
    results, figures = filled
    text = build_report(_three_verdicts(detail=lambda rs: f"{len(rs)} results"), "quick", results, figures,
                        figures, THEORY)
    reason = SELFTEST.claims[0].claim.margin_reason
    assert text.count(f"- Why 0.25: {reason}") == 1 and text.count(f"- Why 0.75: {reason}") == 1
    assert text.count("- Behind it: 8 results") == 3


def test_linked_figures_exist_and_unplotted_measures_say_so(filled):
    results, figures = filled
    text = build_report(_three_verdicts(), "quick", results, figures, figures, THEORY)
    links = re.findall(r"^- Figures: \[\w+\]\(([^)]+)\)", text, re.M)
    assert len(links) == 3 and all((figures / link).is_file() for link in links)
    bare = build_report(_three_verdicts(figures=()), "quick", results, figures, figures, THEORY)
    assert bare.count(f"- Figures: {NO_FIGURE}") == 3 and "selftest_measured.png" not in bare


def test_every_claim_links_only_its_experiments_figures():
    """Every linked name is a figure of the claim's experiment; the claims without a figure are
    the known ones (a figure added for one of them should be linked, and this set shrunk)."""
    unplotted = set()
    for experiment in registry.experiments(include_hidden=True).values():
        for measure in experiment.claims:
            assert set(measure.figures) <= set(experiment.figures), measure.claim.id
            if not measure.figures:
                unplotted.add(measure.claim.id)
    assert unplotted == WITHOUT_FIGURE


def test_record_provenance_outside_git_is_unknown(monkeypatch, tmp_path):
    config = SELFTEST.configs("quick")[0]
    inside = make_record("_selftest", config, {}, {}, "cpu")["provenance"]
    assert len(inside["commit"]) == 40 and inside["dirty"] in (True, False)
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    provenance.git_state.cache_clear()
    try:
        outside = make_record("_selftest", config, {}, {}, "cpu")["provenance"]
    finally:
        provenance.git_state.cache_clear()
    assert (outside["commit"], outside["dirty"]) == ("unknown", None)


def test_rd2_detail_states_recall_per_rank():
    """RD-2's section states the recall behind its maximum (README: rank 4 recalls 29-45 of 64)."""
    def row(rank, depth, seed, recalled):
        return Result(f"{rank}{depth}{seed}", None, {"rank": rank, "depth": depth, "seed": seed,
                                                      "capacity": {"recalled_trained": recalled, "n_facts": 64}})

    recalled = {(4, 1): (51, 39), (4, 2): (29, 33), (4, 4): (32, 26), (1, 1): (1, 1), (1, 2): (1, 1), (1, 4): (1, 1)}
    results = [row(r, d, s, n) for (r, d), ns in recalled.items() for s, n in enumerate(ns)]
    text = recall_by_rank(results)
    assert "r = 1: 1 (min(r, N) = 1); r = 4: 29-45 (min(r, N) = 4)" in text and "N = 64" in text
    rd2 = next(m for m in registry.get("rank_depth").claims if m.claim.id == "RD-2")
    assert rd2.detail is recall_by_rank


def test_summary_flags_a_zero_width_interval(filled):
    results, figures = filled
    measure = SELFTEST.claims[0]
    same = ClaimMeasure(dataclasses.replace(measure.claim, id="SELFTEST-SAME"), lambda rs: [0.5, 0.5, 0.5])
    text = build_report({"_selftest": dataclasses.replace(SELFTEST, claims=(same,))}, "quick", results, figures,
                        figures, THEORY)
    assert "| **underpowered** | 0.500 | [0.500, 0.500] (all seeds equal) | 3 (3) |" in text
    assert "- Verdict: **underpowered**: all 3 seeds gave the same value: zero-width CI" in text


def _selftest_with(**fields) -> dict:
    """The self-test claim (gap ~0.50, CI ~[0.46, 0.54], 4 seeds) with extra ClaimMeasure fields."""
    return {"_selftest": dataclasses.replace(SELFTEST, claims=(dataclasses.replace(SELFTEST.claims[0], **fields),))}


def test_a_missed_ceiling_reads_not_testable_with_its_number(filled):
    results, figures = filled
    ceiling = Ceiling("the top effect's measured value", lambda rs: [r.result["measured"] for r in rs
                                                                     if r.config.effect == 0.5], 0.9)
    text = build_report(_selftest_with(ceiling=ceiling), "quick", results, figures, figures, THEORY)
    top = sum(r.result["measured"] for r in load_results(SELFTEST.name, SELFTEST.configs("quick"), results, "quick")
              if r.config.effect == 0.5) / 4
    assert top < 0.9
    shown = f"the top effect's measured value: {top:.3f} (threshold 0.9) **not reached**"
    assert "| **not testable** | " in text and f"| {shown} |" in text and f"- Ceiling: {shown}" in text
    reached = build_report(_selftest_with(ceiling=dataclasses.replace(ceiling, threshold=0.25)), "quick", results,
                           figures, figures, THEORY)
    assert "- Verdict: **supported**" in reached and f"{top:.3f} (threshold 0.25) reached" in reached


def test_recipes_give_a_verdict_each_and_robust_only_if_all_hold(filled):
    results, figures = filled
    # one recipe in the results is no axis: its verdict is the claim's own, robustness is not claimed
    one = build_report(_selftest_with(recipe=lambda r: "fixed_300"), "quick", results, figures, figures, THEORY)
    assert "| one recipe |" in one and "| robust |" not in one and "  | fixed_300 |" not in one
    assert "- Recipes: one fine-tune recipe in this grid" in one
    # two recipes of 2 seeds each: each is underpowered, so the claim is not robust
    two = build_report(_selftest_with(recipe=lambda r: f"recipe_{r.config.seed % 2}"), "quick", results, figures,
                       figures, THEORY)
    assert "| not robust (0 of 2 recipes supported) |" in two
    assert two.count("| 2 | **underpowered** |") == 2 and "  | recipe_0 |" in two and "  | recipe_1 |" in two
    assert "- Verdict: **supported**" in two  # the pooled verdict over all 4 seeds stands beside it


def test_metric_range_bounds_the_interval_in_the_report(filled):
    results, figures = filled
    text = build_report(_selftest_with(bounds=DIFFERENCE), "quick", results, figures, figures, THEORY)
    assert "; range [-1, 1]" in text
    with pytest.raises(ValueError, match=r"^claim SELFTEST-1: margin 0.25 must lie strictly inside the measure's "
                                         r"bounds \(0.5, 1.0\), or the verdict is decided before any data$"):
        dataclasses.replace(SELFTEST.claims[0], bounds=(0.5, 1.0))


def _result(seed, base_seed=None, splits=None):
    config = SimpleNamespace(seed=seed) if base_seed is None else SimpleNamespace(seed=seed, base_seed=base_seed)
    return Result(str(seed), config, {"splits": splits} if splits is not None else {})


def test_independent_units_count_base_models_not_seeds():
    assert independent_units([_result(s) for s in range(4)], 4) == 4  # no base_seed: every seed its own
    assert independent_units([], 3) == 3
    assert independent_units([_result(s, 0) for s in range(4)], 4) == 1  # one shared base model
    assert independent_units([_result(s, s % 2) for s in range(4)], 4) == 2
    assert independent_units([_result(s, s) for s in range(4)], 3) == 3  # never more than the values


def test_questions_per_split_from_the_results_or_the_measure():
    measure = SELFTEST.claims[0]
    results = [_result(0, 0, {"F": {"n_composed": 32}, "R": {"n_composed": 32}}),
               _result(1, 1, {"F": {"n_composed": 30}, "R": {"n_composed": 32}})]
    assert questions_per_split(measure, results) == "F 30-32, R 32"
    assert questions_per_split(measure, [_result(0)]) is None
    given = dataclasses.replace(measure, questions=lambda rs: {"edits": 64})
    assert questions_per_split(given, results) == "edits 64"


def test_sizes_name_configs_seeds_questions_and_splits():
    from analysis.experiments.two_hop_reuse import grid

    assert provenance.sizes(grid("quick")) == ("12 configs, 3 seeds (0, 1, 2), base-model seeds 0, 1, 2, "
                                               "8 composed questions per familiarity split, splits F, H, R")
    assert provenance.sizes(SELFTEST.configs("quick")[:1]) == "1 config, 1 seed (0)"


def test_a_claim_the_results_cannot_measure_is_listed_as_not_measured_with_the_reason(filled):
    """``ClaimMeasure.needs``: no verdict, no per-seed values read; the row and section say why."""
    results, figures = filled
    experiments = _three_verdicts()
    low, high, edge = experiments["_selftest"].claims
    def broken(rs):
        raise AssertionError("a claim that is not measured must not be judged")
    absent = dataclasses.replace(high, per_seed=broken, needs=lambda rs: f"split O is not in these {len(rs)} results")
    experiments = {"_selftest": dataclasses.replace(SELFTEST, claims=(low, absent, edge))}
    text = build_report(experiments, "quick", results, figures, figures, THEORY)
    row = next(line for line in text.splitlines() if line.startswith("| SELFTEST-HIGH |"))
    assert f"**{NOT_MEASURED}**" in row and "[SELFTEST-HIGH](#claim-selftest-high)" in row
    n = len(load_results(SELFTEST.name, SELFTEST.configs("quick"), results, "quick"))
    assert f"- Verdict: **{NOT_MEASURED}**: split O is not in these {n} results" in text
    assert "- Verdict: **supported**" in text  # the other claims are judged as before
    rs = load_results(SELFTEST.name, SELFTEST.configs("quick"), results, "quick")
    assert [v.claim.id for v, _ in claim_verdicts(experiments["_selftest"], rs)] == ["SELFTEST-LOW", "SELFTEST-EDGE"]
