"""The opt-in grid of two_hop_reuse (issue 12): opt-in config fields that keep the cached
quick configs' keys, the recipe axis, the 32-question graph, the joint full fine-tune
ceiling and new-entity rows in the pipeline."""
import dataclasses

import pytest

from analysis.experiments import two_hop_reuse as thr
from toymodels.config import apply_overrides
from toymodels.pipeline import base_corpus, rows_trainer, run_two_hop
from toymodels.presets import (LARGE_FACTS, TWO_HOP_RECIPES, careful_finetune, large_base, quick_two_hop,
                               tiny_two_hop, with_recipe)
from toymodels.protocol import Backend
from toymodels.model import GPT, role_modules
from toymodels.seeds import numpy_rng, torch_gen
from toymodels.tasks.experts import SPLITS, ExpertConfig, make_expert_set

# two_hop_reuse's quick grid as cached in results/ (CACHE_VERSION 2, main at 71c8b3a): the
# committed report reads these keys, so no opt-in knob may change them.
QUICK_KEYS = ["79c7d3d1bf7544f9", "751eca92b5e6e4f5", "fe2cee5cd5811494", "7ac8f4d548e048df", "ebf1515e0b2676e3",
              "498d3998786b1620", "2999d2c5689c6b0a", "fbc10ff0c75e0ba4", "164883f265f29768", "aa5b5619dcc214e7",
              "a9756091ede2cbcd", "3c5cb11b85d2a8a9"]


def test_opt_in_fields_keep_the_cached_quick_keys_until_set():
    quick = thr.grid("quick")
    assert [c.key() for c in quick] == QUICK_KEYS
    assert {c.recipe for c in quick} == {"memorised"}
    c = quick[0]
    assert "joint_full_lr" not in c.to_dict()["pipeline"] and "recipe" not in c.to_dict()
    with pytest.raises(ValueError, match="recipe='attn': pipeline.finetune / pipeline.lora are not"):
        apply_overrides(c, ["recipe=attn"])  # a label without its knobs
    attn = thr.make_grid(thr.quick_pipeline, thr.CONDITIONS, [0], thr.QUICK_METHODS, ("cot",), ("attn",))[0]
    assert attn.key() != thr.grid("quick")[6].key() and attn.recipe == "attn"
    for item in ("pipeline.joint_full_lr=1e-4", "pipeline.new_entity_rows=true"):
        changed = apply_overrides(c, [item])
        assert changed.key() != c.key(), item
        assert item.split("=")[0].split(".")[-1] in str(changed.to_dict())
    with pytest.raises(ValueError, match="joint_full_lr=-1.0: must be > 0"):
        apply_overrides(c, ["pipeline.joint_full_lr=-1"])


def test_recipes_change_what_they_name_and_memorised_is_todays_recipe():
    p = quick_two_hop("cot")
    assert with_recipe(p, "memorised") == p and p.finetune == careful_finetune()
    fixed = with_recipe(p, "fixed300_r8")
    assert fixed.finetune.steps == 300 and fixed.finetune.target_acc is None
    assert (fixed.lora.rank, fixed.lora.scale) == (8, p.lora.scale)
    assert with_recipe(p, "lr3e-3").finetune.lr == 3e-3
    assert with_recipe(p, "attn").lora.targets == ("q", "k", "v", "o")
    assert with_recipe(p, "mlp").lora.targets == ("mlp_in", "mlp_out")
    with pytest.raises(ValueError, match="recipe 'magic': must be one of memorised"):
        with_recipe(p, "magic")


def test_quick_large_grid_crosses_recipes_on_main_with_32_questions():
    g = thr.grid("quick_large")
    assert len(g) == len(thr.FORMATS) * (len(TWO_HOP_RECIPES) + 1) * 3 == len({c.key() for c in g})
    assert {(c.recipe, c.condition) for c in g} == {(r, "main") for r in TWO_HOP_RECIPES} | {("memorised", "shared")}
    assert all(c.base_seed == c.seed and c.pipeline.experts.n_facts == LARGE_FACTS == 32 for c in g)
    assert all(c.pipeline.familiarities == SPLITS and c.pipeline.joint_full_lr for c in g)
    for c in g:  # the label is the recipe the knobs hold
        assert with_recipe(c.pipeline, c.recipe) == c.pipeline


def test_large_graph_asks_32_composed_questions_in_every_split():
    pre = base_corpus(large_base("cot"), 0)
    cfg = ExpertConfig(n_facts=LARGE_FACTS, n_distractors=2, n_control=32, shared_template=4)
    for fam in SPLITS:
        es = make_expert_set(pre, cfg, fam, numpy_rng(0, "experts", fam))
        assert len(es.composed) == 32 and all(len(c.questions) == 32 for c in es.controls.values()), fam
    with pytest.raises(ValueError, match="allowed n_facts <= 32"):  # the graph is sized for 32, no more
        make_expert_set(pre, dataclasses.replace(cfg, n_facts=33), "F", numpy_rng(0, "experts", "F"))


def test_joint_full_ceiling_and_entity_rows_reach_the_scores():
    cfg = dataclasses.replace(tiny_two_hop("cot"), familiarities=("F",), methods=("average",),
                              joint_full_lr=1e-3, new_entity_rows=True)
    out = run_two_hop(cfg, seed=0, device="cpu")
    split = out["splits"]["F"]
    assert {"joint_full/hops", "joint_full/with_AC"} <= set(split["models"]) & set(split["experts"])
    assert out["config"]["new_entity_rows"] is True and out["config"]["joint_full_lr"] == 1e-3
    with pytest.raises(ValueError, match="new_entity_rows=True: the stacked engine"):
        run_two_hop(cfg, seed=0, device="cpu", stacked=True)


def test_rows_trainer_trains_the_rows_of_the_new_tokens_in_the_data_only():
    cfg = tiny_two_hop("cot")
    pre = base_corpus(cfg.base, 0)
    model = GPT(cfg.base.model, generator=torch_gen(0, "base", "init")).requires_grad_(False)
    backend = Backend(model, role_modules(model), "cpu")
    trainer = rows_trainer(pre.graph.tokenizer.new_tokens)
    for fam, expect_rows in (("F", True), ("R", False)):
        es = make_expert_set(pre, cfg.experts, fam, numpy_rng(0, "experts", fam))
        adapter, _ = trainer(backend, es.train["AB"], cfg.lora, cfg.finetune, torch_gen(0, "t", fam))
        if expect_rows:
            want = sorted({int(t) for t in es.facts["AB"][:, [0, 2]].flatten()})  # A_i and B_i: new in F
            assert adapter.rows.tokens.tolist() == want and adapter.rows.embed.abs().sum() > 0
        else:
            assert adapter.rows is None


def test_large_latent_base_is_the_recipe_the_bench_measured():
    """presets.large_base("latent") is the config bench.latent_recipe ran as ``large_wsd20
    --budget 4`` (its docstring quotes those runs): every logged run of it, seeds 0-2."""
    import json
    from pathlib import Path

    from bench.latent_recipe import LOG, VARIANTS, variant
    runs = [json.loads(line) for line in Path(LOG).read_text().splitlines()]
    measured = [r for r in runs if r["name"] == "large_wsd20" and r["flops_vs_today"] > 3]
    assert sorted(r["seed"] for r in measured) == [0, 1, 2]
    assert all(r["config"] == large_base("latent").to_dict() for r in measured)
    assert variant(VARIANTS["large_wsd20"], 4.0)[0] == large_base("latent")
    assert large_base("cot").train.schedule != "wsd"  # CoT composes with quick_base's schedule
