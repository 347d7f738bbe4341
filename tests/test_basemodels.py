"""Base-model cache: trained once, loaded bit-identically, corpus regenerated exactly."""
import torch

from analysis.basemodels import base_paths, cached_base
from toymodels.presets import tiny_base


def test_cached_base_trains_once_and_reloads_identically(tmp_path):
    cfg = tiny_base("latent")
    first = cached_base(cfg, seed=3, device="cpu", results_dir=tmp_path)
    weights, record = base_paths(cfg, 3, tmp_path)
    assert weights.exists() and record.exists()
    mtime = weights.stat().st_mtime_ns
    second = cached_base(cfg, seed=3, device="cpu", results_dir=tmp_path)
    assert weights.stat().st_mtime_ns == mtime, "a cached base model was retrained"
    idx = first.pretraining.train.tokens[:8, :-1]
    assert torch.equal(first.model(idx), second.model(idx))
    assert torch.equal(first.pretraining.train.tokens, second.pretraining.train.tokens)
    assert second.result.curves == first.result.curves and second.result.steps == first.result.steps


def test_other_seed_is_another_model(tmp_path):
    cfg = tiny_base("latent")
    a = cached_base(cfg, seed=0, device="cpu", results_dir=tmp_path)
    b = cached_base(cfg, seed=1, device="cpu", results_dir=tmp_path)
    idx = a.pretraining.train.tokens[:4, :-1]
    assert not torch.equal(a.model(idx), b.model(idx))
