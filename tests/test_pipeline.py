"""The two-hop reuse pipeline end to end at tiny size, its configs, and (slow) the recipe."""
import dataclasses
import json
import math

import pytest

from toymodels.pipeline import LIBRARIES, BaseConfig, PipelineConfig, run_two_hop, train_base
from toymodels.presets import quick_base, tiny_two_hop
from toymodels.reuse import DEFAULT_METHODS


def test_run_two_hop_end_to_end_is_json_able_and_scores_every_model():
    cfg = tiny_two_hop("cot")
    out = json.loads(json.dumps(run_two_hop(cfg, seed=0, device="cpu")))  # JSON round trip
    assert out["key"] == cfg.key() and out["base"]["steps"] == cfg.base.train.steps
    assert set(out["splits"]) == {"F", "H", "R"}
    for split in out["splits"].values():
        experts = ["AB", "BC", "AC", "D0"]
        assert set(split["experts"]) == set(experts) | {f"joint/{lib}" for lib in LIBRARIES}
        expected = {"base"} | {f"single/{n}" for n in experts} | {f"joint/{lib}" for lib in LIBRARIES} | \
            {f"{m}/{lib}" for m in DEFAULT_METHODS for lib in LIBRARIES}
        assert set(split["models"]) == expected
        for name, scores in split["models"].items():
            values = [scores["composed"], scores["pretrain_atomic"], *scores["facts"].values(),
                      *scores["broadcast"].values()]
            assert all(0.0 <= v <= 1.0 for v in values), name
            assert "composed" in scores["broadcast"]
        assert set(split["models"]["average/with_AC"]["facts"]) == {"AB", "BC", "AC", "D0"}
        assert set(split["models"]["average/hops"]["facts"]) == {"AB", "BC", "D0"}
        assert split["models"]["lorahub/hops"]["composed_rows"] == split["n_composed"] - 1
        assert math.isclose(split["chance"]["composed"], 1 / (20 + 12))


def test_same_seed_reproduces_the_base_run():
    cfg = tiny_two_hop().base
    a, b = train_base(cfg, seed=5, device="cpu"), train_base(cfg, seed=5, device="cpu")
    assert a.result.losses == b.result.losses and a.result.curves == b.result.curves


def test_pipeline_config_validation_names_the_field():
    cfg = tiny_two_hop()
    with pytest.raises(ValueError, match=r"methods contains \['magic'\]"):
        dataclasses.replace(cfg, methods=("average", "magic"))
    with pytest.raises(ValueError, match=r"familiarities=\('X',\)"):
        dataclasses.replace(cfg, familiarities=("X",))
    with pytest.raises(ValueError, match="model.d_vocab=10: must be >= "):
        dataclasses.replace(cfg.base, model=dataclasses.replace(cfg.base.model, d_vocab=10))
    assert isinstance(cfg.base, BaseConfig) and isinstance(cfg, PipelineConfig)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["latent", "cot"])
def test_quick_base_recipe_composes_on_held_out_chains(fmt):
    """The recipe (``presets.quick_base``): >= 90% exact match on held-out two-hop chains of
    familiar entities. Minutes on 2 CPU cores."""
    run = train_base(quick_base(fmt), seed=0, device="auto")
    assert run.result.final()["test_id"] >= 0.9
