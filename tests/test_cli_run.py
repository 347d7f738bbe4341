"""``lora-limits run`` and ``lora-limits list``: cached runs, figures, one-line usage errors."""
from __future__ import annotations

import json
import re

import pytest

from analysis import cli
from analysis.cli import main


@pytest.fixture(autouse=True)
def only_these_verbs(monkeypatch):
    """Build the parser with just the verbs under test: importing another verb's module here,
    under ``capsys``, would bind its ``out=sys.stdout`` defaults to this test's stream."""
    monkeypatch.setattr(cli, "VERBS", ["run", "list"])


def _run(tmp_path, *extra: str) -> int:
    return main(["run", "_selftest", "--device", "cpu", "--quiet", "--results", str(tmp_path / "results"),
                 "--figures", str(tmp_path / "figures"), *extra])


@pytest.mark.parametrize("argv,message", [
    pytest.param(["run", "nope"], "unknown experiment 'nope'; valid experiments:", id="experiment"),
    pytest.param(["run", "_selftest", "--profile", "huge"], "unknown profile 'huge'; valid profiles: quick, paper",
                 id="profile"),
    pytest.param(["run", "_selftest", "--set", "bogus=1"], "--set: unknown config key 'bogus'; valid here: seed,",
                 id="set-unknown-key"),
    pytest.param(["run", "_selftest", "--set", "seed=abc"], "--set: seed='abc': must be an integer",
                 id="set-wrong-type"),
    pytest.param(["run", "_selftest", "--set", "seed"], "--set: override 'seed': write KEY=VALUE", id="set-no-value"),
    pytest.param(["run", "_selftest", "--set", "noise=-1"], "--set: noise=-1.0: must be >= 0", id="set-invalid"),
    pytest.param(["run", "_selftest", "--jobs", "0"], "--jobs 0: must be an integer >= 1", id="jobs"),
    pytest.param(["run", "_selftest", "--engine", "process", "--scheduler", "tcp://h:1"],
                 "--engine: a scheduler address needs the dask engine", id="engine"),
])
def test_usage_errors_are_one_line_exit_2(argv, message, capsys, tmp_path):
    assert main([*argv, "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "_selftest").exists()


def test_run_caches_then_draws_figures_and_reruns_nothing(tmp_path, capsys):
    assert _run(tmp_path) == 0
    out = capsys.readouterr().out
    assert "8 configs, 0 cached, 8 computed, 0 failed (serial" in out
    for ext in ("png", "pdf", "json"):
        assert (tmp_path / "figures" / f"selftest_measured.{ext}").is_file()
    sidecar = json.loads((tmp_path / "figures" / "selftest_measured.json").read_text())
    assert sidecar["config"]["profile"] == "quick" and len(sidecar["config"]["keys"]) == 8
    assert _run(tmp_path) == 0
    assert "8 configs, 8 cached, 0 computed" in capsys.readouterr().out
    assert _run(tmp_path, "--force", "--no-figures") == 0
    assert "8 configs, 0 cached, 8 computed" in capsys.readouterr().out


def test_set_applies_to_every_config(tmp_path, capsys):
    assert _run(tmp_path, "--set", "noise=0", "--no-figures") == 0
    records = [json.loads(p.read_text()) for p in (tmp_path / "results" / "_selftest").glob("*.json")]
    assert len(records) == 8 and all(r["config"]["noise"] == 0 for r in records)
    assert all(r["result"]["measured"] == pytest.approx(r["result"]["prediction"], abs=1e-2) for r in records)


def test_failures_exit_1_and_draw_no_figures(tmp_path, capsys):
    assert _run(tmp_path, "--set", "fail_seed=2") == 1
    captured = capsys.readouterr()
    assert "2 failed" in captured.out and "fails on purpose" in captured.err
    assert "2 config(s) failed; finished ones are cached" in captured.err
    assert not (tmp_path / "figures").exists()


def test_list_shows_grid_sizes_and_cached_counts(tmp_path, capsys):
    assert _run(tmp_path, "--no-figures") == 0
    capsys.readouterr()
    assert main(["list", "--results", str(tmp_path / "results")]) == 0
    assert "_selftest" not in capsys.readouterr().out  # hidden from the plain list
    assert main(["list", "--all", "--results", str(tmp_path / "results")]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("_selftest"))
    assert row.split()[1:3] == ["8/8", "8/30"]


def test_missing_cuda_is_a_usage_error(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    assert main(["run", "_selftest", "--device", "cuda", "--results", str(tmp_path)]) == 2
    assert "no CUDA device is available" in capsys.readouterr().err


def _module_level_run(config, device, results):
    return {}


@pytest.mark.parametrize("change,message", [
    pytest.param({"run": lambda c, d, r: {}}, "run must be a module-level function", id="lambda-run"),
    pytest.param({"name": "_other"}, "figure name(s) selftest_measured already used by '_selftest'",
                 id="figure-clash"),
    pytest.param({"name": "_other", "figures": {}}, "links unknown figure(s) selftest_measured",
                 id="claim-figure"),
])
def test_register_rejects_unusable_experiments(change, message):
    import dataclasses

    from analysis import registry

    bad = dataclasses.replace(registry.get("_selftest"), **change)
    with pytest.raises(ValueError, match=re.escape(message)):
        registry.register(bad)
    assert "_other" not in registry.experiments(include_hidden=True)


def test_progress_goes_to_stderr_and_quiet_silences_it(tmp_path, capsys):
    """Progress (the sweep's status lines when stderr is not a terminal) is on stderr only;
    stdout holds the results; ``--quiet`` leaves stderr empty."""
    argv = ["run", "_selftest", "--device", "cpu", "--no-figures", "--results", str(tmp_path)]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "_selftest 8/8" in err.splitlines()[-1] and "est." in err  # an estimate once a config finished
    assert out.startswith("_selftest: 8 configs") and "[" not in out
    assert main([*argv, "--force", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.startswith("_selftest: 8 configs, 0 cached, 8 computed")


def test_reproduce_numbers_its_stages(tmp_path, capsys, monkeypatch):
    """``reproduce`` prints ``== stage k/N: ... ==`` per stage (theory first) on stdout and
    its progress on stderr; here on a registry of only the self-test, theory MERGE-1 only."""
    import dataclasses

    from analysis import registry
    from analysis.commands import theory

    monkeypatch.setattr(cli, "VERBS", ["reproduce"])
    selftest = dataclasses.replace(registry.get("_selftest"), hidden=False)
    monkeypatch.setattr(registry, "experiments", lambda include_hidden=False: {"_selftest": selftest})
    real_check = theory.check_theory
    monkeypatch.setattr(theory, "check_theory", lambda ids, *rest: real_check(["MERGE-1"], *rest))
    assert main(["reproduce", "--jobs", "1", "--results", str(tmp_path / "r"), "--figures", str(tmp_path / "f")]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("== stage 1/2: theory ==\n") and "\n== stage 2/2: _selftest: " in out
    assert "theory 2/2" in err and "_selftest 8/8" in err  # MERGE-1, then drawing figures
