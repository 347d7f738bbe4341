"""``rank_depth``: registration and grids, a tiny grid through analysis.sweep into a temp dir,
its figures, and claim verdicts computed from the data."""
import dataclasses
import json

import pytest

from analysis import registry
from analysis.cache import MissingResultsError
from analysis.experiments import rank_depth as rd
from analysis.figures.rank_depth import accuracy_figure, capacity_figure
from analysis.report import claim_verdicts, draw_figures
from analysis.verdict import NOT_TESTABLE, UNDERPOWERED
from toymodels.capacity import CapacityConfig
from toymodels.presets import tiny_base
from toymodels.train import TrainConfig
from sweep_helpers import sweep_tiny

EXPERIMENT = registry.get("rank_depth")
FINETUNE = TrainConfig(steps=12, batch_size=16, lr=1e-2, weight_decay=0.0, warmup_steps=2, eval_every=6,
                       target_acc=1.0, target_set="facts")


def tiny_point(depth: int, rank: int, seed: int) -> rd.RankDepthConfig:
    base = tiny_base("cot")
    base = dataclasses.replace(base, model=dataclasses.replace(base.model, n_layers=depth))
    cfg = rd.point(base, rank, seed, "quick")
    pipeline = dataclasses.replace(cfg.pipeline, finetune=FINETUNE, experts=dataclasses.replace(
        cfg.pipeline.experts, n_facts=2, n_control=4))
    capacity = CapacityConfig(n_facts=8, solve_steps=50, finetune=dataclasses.replace(FINETUNE, steps=30, batch_size=8))
    return dataclasses.replace(cfg, pipeline=pipeline, capacity=capacity)


TINY = [tiny_point(L, r, s) for L in (1, 2) for r in (1, 2) for s in (0, 1)]


def test_registered_with_quick_and_paper_grids():
    assert "rank_depth" in registry.experiments()
    assert set(EXPERIMENT.figures) == {"rank_depth_capacity", "rank_depth_accuracy"}
    assert [m.claim.id for m in EXPERIMENT.claims] == ["RD-0", "RD-1", "RD-2", "RD-3", "RD-4", "RD-5"]
    for profile, depths, seeds in (("quick", (1, 2, 4), 2), ("paper", (1, 2, 4, 8), 5)):
        grid = EXPERIMENT.configs(profile)
        assert {(c.depth, c.rank) for c in grid} == {(L, r) for L in depths for r in rd.RANKS}
        assert len(grid) == len(depths) * len(rd.RANKS) * seeds == len({c.key() for c in grid})
        assert all(c.rank <= c.pipeline.base.model.d_model for c in grid)
    quick = EXPERIMENT.configs("quick")
    assert {c.pipeline.base.task.fmt for c in quick} == {"cot"}
    assert all(c.pipeline.lora.scale == pytest.approx(4.0 / c.rank ** 0.5) for c in quick)  # rsLoRA


def test_config_validation_names_the_field():
    cfg = tiny_point(1, 2, 0)
    with pytest.raises(ValueError, match=r"pipeline.lora.rank=64: must be <= model.d_model=32"):
        dataclasses.replace(cfg, pipeline=dataclasses.replace(
            cfg.pipeline, lora=dataclasses.replace(cfg.pipeline.lora, rank=64)))
    with pytest.raises(ValueError, match=r"capacity.n_facts=65: must be <= model.d_mlp=64"):
        dataclasses.replace(cfg, capacity=CapacityConfig(n_facts=65))


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("rank_depth")  # the sweep passes it to run: base models go there too
    summary, results = sweep_tiny(EXPERIMENT, TINY, root)
    assert summary.computed == len(TINY)
    return root, results


def test_tiny_grid_runs_and_trains_each_base_once(swept):
    root, results = swept
    assert len(list((root / "models").glob("*.safetensors"))) == 4  # one per (depth, seed)
    for r in results:
        cap, out = r.result["capacity"], r.result
        assert (out["rank"], out["depth"]) == (r.config.rank, r.config.depth)
        assert cap["bound"] == min(out["rank"], 8) and 0 <= cap["recalled_trained"] <= 8
        assert set(out["reuse"]) == {"F", "R"} and 0.0 <= out["base"]["test_id"] <= 1.0
        models = out["reuse"]["F"]["models"]
        assert {"base", "joint/hops", "average/hops", "arrow/with_AC"} <= set(models)


def test_figures_draw_with_json_sidecars(swept, tmp_path):
    _, results = swept
    paths = draw_figures(EXPERIMENT, results, tmp_path, "quick")
    assert {p.name for p in paths} >= {"rank_depth_capacity.png", "rank_depth_accuracy.png"}
    sidecar = json.loads((tmp_path / "rank_depth_capacity.json").read_text())
    assert sidecar["data"]["ranks"] == [1, 2] and sidecar["data"]["bound"] == [1, 2]
    assert set(sidecar["data"]["recalled_trained"]) == {"1", "2"}  # depths


def test_figures_without_results_name_the_command():
    for figure in (capacity_figure, accuracy_figure):
        with pytest.raises(MissingResultsError, match="lora-limits run rank_depth"):
            figure([])


def test_claims_give_verdicts_computed_from_the_data(swept):
    _, results = swept
    rows = claim_verdicts(EXPERIMENT, results)
    assert len(rows) == 6
    for verdict, values in rows:  # two seeds: underpowered (not testable where a ceiling fails)
        expected = NOT_TESTABLE if verdict.ceiling is not None and not verdict.ceiling.reached else UNDERPOWERED
        assert verdict.outcome == expected and len(values) == 2, verdict.claim.id  # one per seed
    growth = rd.capacity_growth(results)
    by_seed = {s: [r.result for r in results if r.result["seed"] == s] for s in (0, 1)}
    for seed, value in zip((0, 1), growth):  # recompute RD-1 by hand from the records
        gains = []
        for depth in (1, 2):
            cap = {r["rank"]: r["capacity"]["recalled_trained"] for r in by_seed[seed] if r["depth"] == depth}
            gains.append((cap[2] - cap[1]) / 8)
        assert value == pytest.approx(sum(gains) / 2)
    detail = rd.recall_by_rank(results)  # RD-2's "behind it" line, recomputed by hand
    for rank in (1, 2):
        cells = [[r.result["capacity"]["recalled_trained"] for r in results
                  if r.result["rank"] == rank and r.result["depth"] == depth] for depth in (1, 2)]
        means = [sum(cell) / len(cell) for cell in cells]  # mean over the 2 seeds, per depth
        span = f"{min(means):g}" if min(means) == max(means) else f"{min(means):g}-{max(means):g}"
        assert f"r = {rank}: {span} (min(r, N) = {rank})" in detail
