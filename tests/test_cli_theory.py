"""The `lora-limits theory` verb: exit codes, one-line errors, JSON schema."""
import json
import subprocess
import sys

import pytest

from analysis.cli import main
from theory.claims import registry


def test_unknown_claim_is_one_line_error_listing_valid_ids(capsys):
    assert main(["theory", "--claim", "NOPE", "--no-figures"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "NOPE" in err
    for claim_id in registry():
        assert claim_id in err


@pytest.mark.parametrize("value", ["abc", "5", "-3", "1.5"])
def test_bad_instances_is_one_line_error(capsys, value):
    assert main(["theory", "--instances", value, "--no-figures"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--instances" in err


def test_json_output_schema(capsys):
    first = next(iter(registry()))
    code = main(["theory", "--claim", first, "--json", "--no-figures", "--instances", "50"])
    out = json.loads(capsys.readouterr().out)
    assert out["claims"], "a claim produced no checks"
    for row in out["claims"]:
        assert set(row) == {"id", "statement", "predicted", "measured", "tolerance", "status"}
        assert row["status"] in ("PASS", "FAIL")
        assert row["id"].split(".")[0] == first
    assert code == (1 if any(r["status"] == "FAIL" for r in out["claims"]) else 0)


def test_console_script_error_has_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "analysis", "theory", "--claim", "NOPE"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_every_verb_has_help():
    from analysis.cli import VERBS

    for verb in VERBS:
        proc = subprocess.run([sys.executable, "-m", "analysis", verb, "--help"], capture_output=True, text=True)
        assert proc.returncode == 0, verb
        assert "usage: lora-limits " + verb in proc.stdout


def test_progress_on_stderr_unless_quiet(capsys):
    argv = ["theory", "--claim", "MERGE-1", "MERGE-2", "--no-figures"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "theory 2/2" in err and "theory" not in out.splitlines()[0]
    assert main([*argv, "--quiet"]) == 0
    assert capsys.readouterr().err == ""
