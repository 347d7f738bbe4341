"""`lora-limits inspect`: each measure against a dense oracle, and the one-line errors."""
from __future__ import annotations

import json
import math

import pytest
import torch

from analysis.cli import main
from analysis.errors import UsageError
from analysis.inspect_adapters import (check_base, delta_cosine, effective_rank, group_stats, pair_stats,
                                       principal_cosines, read_adapter, spectrum)
from theory.merge import Factors, factor_average, weighted_delta_sum
from toymodels.adapters import Adapter
from toymodels.peft_checkpoint import save_adapter
from toymodels.lora import LoRAConfig


def rand_factors(gen, r=3, d_out=12, d_in=10, scale=0.7) -> Factors:
    return Factors(A=torch.randn(r, d_in, generator=gen), B=torch.randn(d_out, r, generator=gen), scale=scale)


def write(tmp_path, name, factors: dict, **cfg) -> str:
    config = LoRAConfig(rank=next(iter(factors.values())).rank, targets=("q",), **cfg)
    return str(save_adapter(Adapter(config, factors), tmp_path / name))


PATHS = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]


def test_factor_measures_match_dense_oracle():
    gen = torch.Generator().manual_seed(0)
    f, g = rand_factors(gen), rand_factors(gen, r=2)
    torch.testing.assert_close(spectrum(f), torch.linalg.svdvals(f.delta)[:3], rtol=1e-4, atol=1e-5)
    dense = (f.delta * g.delta).sum() / (f.delta.norm() * g.delta.norm())
    assert delta_cosine(f, g) == pytest.approx(float(dense), abs=1e-5)
    from theory.routing import arrow_prototype  # the dense oracle of the factored prototypes
    dense_proto = float((arrow_prototype(f.delta) @ arrow_prototype(g.delta)).abs())
    assert pair_stats(f, g)["arrow_abs_cos"] == pytest.approx(dense_proto, abs=1e-5) and 0.05 < dense_proto < 0.95
    same = pair_stats(f, Factors(f.A, 2.0 * f.B, f.scale))  # same delta direction
    assert same["cosine"] == pytest.approx(1.0, abs=1e-5) and same["arrow_abs_cos"] == pytest.approx(1.0, abs=1e-5)
    assert same["col_overlap"] == pytest.approx(1.0, abs=1e-5) and same["row_overlap"] == pytest.approx(1.0, abs=1e-5)


def test_principal_angles_orthogonal_and_partial():
    E = torch.eye(6)
    assert principal_cosines(E[:, :2], E[:, 2:4]).max() == pytest.approx(0.0, abs=1e-6)
    cos = principal_cosines(E[:, :2], torch.stack([E[:, 0], (E[:, 1] + E[:, 2]) / math.sqrt(2)], 1))
    torch.testing.assert_close(cos, torch.tensor([1.0, 1 / math.sqrt(2)]))


@pytest.mark.parametrize("sigma,want", [pytest.param([2.0, 2.0, 2.0], 3.0, id="flat=r"),
                                        pytest.param([5.0, 0.0], 1.0, id="rank1=1")])
def test_effective_rank(sigma, want):
    assert effective_rank(torch.tensor(sigma)) == pytest.approx(want)


def test_ties_conflicts_and_cross_terms():
    gen = torch.Generator().manual_seed(1)
    f = rand_factors(gen)
    negated = Factors(f.A, -f.B, f.scale)
    assert group_stats([f, negated], 0.5)["ties_conflict"] == 1.0
    assert group_stats([f, f], 0.5)["ties_conflict"] == 0.0
    g = rand_factors(gen)
    want = (factor_average([f, g]).delta - weighted_delta_sum([f, g])).norm() / weighted_delta_sum([f, g]).norm()
    assert group_stats([f, g], 0.2)["cross_rel"] == pytest.approx(float(want), rel=1e-4)


def test_reader_recovers_scales_and_checks_base(tmp_path):
    """rsLoRA and per-module scales (written as alpha_pattern) come back exactly; the base
    check accepts the model the adapter was made for and rejects another one."""
    gen = torch.Generator().manual_seed(2)
    factors = {PATHS[0]: rand_factors(gen, scale=4 / math.sqrt(3)), PATHS[1]: rand_factors(gen, r=2, scale=1.5)}
    ours = read_adapter(write(tmp_path, "a", factors, alpha=4.0, rslora=True))
    for p, f in factors.items():
        assert ours.factors[p].scale == pytest.approx(f.scale)
        torch.testing.assert_close(ours.factors[p].delta, f.delta)
    check_base([ours], _base(d_in=10))
    with pytest.raises(UsageError, match="shapes do not fit"):
        check_base([ours], _base(d_in=16))
    with pytest.raises(UsageError, match="another architecture"):
        check_base([ours], torch.nn.Linear(10, 12))


def _base(d_in: int) -> torch.nn.Module:
    """A module tree with ``model.layers.{0,1}.self_attn.q_proj: Linear(d_in, 12)``."""
    layer = lambda: torch.nn.ModuleDict({"self_attn": torch.nn.ModuleDict(  # noqa: E731
        {"q_proj": torch.nn.Linear(d_in, 12, bias=False)})})
    return torch.nn.ModuleDict({"model": torch.nn.ModuleDict({"layers": torch.nn.ModuleList([layer(), layer()])})})


def test_cli_table_json_and_figures(tmp_path, capsys):
    gen = torch.Generator().manual_seed(3)
    dirs = [write(tmp_path, n, {p: rand_factors(gen) for p in PATHS}) for n in ("AB", "BC")]
    out = tmp_path / "figs"
    assert main(["inspect", *dirs, "--out", str(out), "--per-module"]) == 0
    text = capsys.readouterr().out
    assert "AB|BC" in text and "TIES sign conflicts" in text and PATHS[1] in text
    sidecar = json.loads((out / "inspect_spectra.json").read_text())
    assert set(sidecar["data"]["report"]["modules"]) == {"AB", "BC"}
    assert (out / "inspect_similarity.png").stat().st_size > 0
    assert main(["inspect", *dirs, "--json", "--no-figures"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pairs"]["AB|BC"][PATHS[0]]["cosine"] == pytest.approx(
        delta_cosine(read_adapter(dirs[0]).factors[PATHS[0]], read_adapter(dirs[1]).factors[PATHS[0]]))


def _one_line_error(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err


def test_errors_are_one_line(tmp_path, capsys):
    gen = torch.Generator().manual_seed(4)
    good = write(tmp_path, "good", {PATHS[0]: rand_factors(gen)})
    _one_line_error(capsys, ["inspect", str(tmp_path / "missing")], "no such adapter folder")
    (tmp_path / "empty").mkdir()
    _one_line_error(capsys, ["inspect", str(tmp_path / "empty")], "adapter_config.json")
    wide = write(tmp_path, "wide", {PATHS[0]: rand_factors(gen, d_in=16)})
    _one_line_error(capsys, ["inspect", good, wide, "--no-figures"], "shapes do not fit")
    gpt2 = write(tmp_path, "gpt2", {"transformer.h.0.attn.c_attn": rand_factors(gen)})
    _one_line_error(capsys, ["inspect", good, gpt2, "--no-figures"], "another architecture")
    _one_line_error(capsys, ["inspect", good, "--density", "2", "--no-figures"], "--density")


def test_allow_nonfinite_reads_nan_adapters_and_reports_nan_measures(tmp_path, capsys):
    """Refused by default (one line naming the flag); with --allow-nonfinite the NaN module's
    measures are NaN and every finite module's are still computed (tables, JSON, figures)."""
    gen = torch.Generator().manual_seed(5)
    spoiled = rand_factors(gen)
    spoiled.B[0, 0] = float("nan")
    clean = rand_factors(gen)
    bad = write(tmp_path, "bad", {PATHS[0]: spoiled, PATHS[1]: clean})
    good = write(tmp_path, "good", {p: rand_factors(gen) for p in PATHS})
    _one_line_error(capsys, ["inspect", bad, "--no-figures"], "holds 1 NaN and 0 Inf of 36 entries")
    _one_line_error(capsys, ["inspect", bad, "--no-figures"], "--allow-nonfinite")
    assert main(["inspect", bad, good, "--allow-nonfinite", "--per-module", "--out", str(tmp_path / "figs")]) == 0
    assert "nan" in capsys.readouterr().out
    assert main(["inspect", bad, good, "--allow-nonfinite", "--json", "--no-figures"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert math.isnan(report["modules"]["bad"][PATHS[0]]["fro"])
    assert report["modules"]["bad"][PATHS[1]]["fro"] == pytest.approx(float(clean.delta.norm()), rel=1e-5)
    pair = report["pairs"]["bad|good"]
    assert math.isnan(pair[PATHS[0]]["cosine"]) and not math.isnan(pair[PATHS[1]]["cosine"])
    assert math.isnan(report["groups"][PATHS[0]]["ties_conflict"])
    assert (tmp_path / "figs" / "inspect_spectra.png").stat().st_size > 0
