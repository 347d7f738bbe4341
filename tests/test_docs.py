"""Doc-tests of the CLI: every `lora-limits` example in the README's fenced code blocks and
in every verb's `--help` "examples:" is checked here, so an example that names a
nonexistent experiment, config key, claim or flag fails the suite.

Every example is first *validated*: argparse accepts it, and what it names exists (the
experiment, every ``--set`` key and value on every config of its grid, the claim IDs, the
engine and job count, the experiment's own preflight). Then it is *executed* in-process
through ``analysis.cli.main``, with a temporary folder as the working directory so that
``results/`` and ``figures/`` land there, at tiny sizes:

- ``list``, ``run _selftest ...`` and ``inspect`` (on tiny PEFT adapters written at the
  paths the example names) run exactly as written;
- ``theory`` runs with ``--claim MERGE-1 --instances 10`` appended (all claims take a
  minute; the claims themselves are tested in tests/test_t2.py and friends);
- ``run <experiment>`` of a real experiment runs with the same flags on the tiny hidden
  ``_selftest`` experiment, its ``--set`` dropped (``--set`` was validated on the real grid,
  which takes minutes to hours);
- ``reproduce`` runs with the same flags on a registry holding only ``_selftest`` and a
  theory stage of MERGE-1 only.

Validated but not executed (the test is skipped with the reason): examples that need what
this machine may lack: CUDA, the SmolLM2 weights (``make install-pretrained``), a model
file for ``inspect --base``, a Dask cluster (``--scheduler ADDRESS``, or ``--engine dask``,
whose local cluster is exercised by tests/test_sweep.py). ``make TARGET VAR=...`` lines are
checked against the Makefile's targets and variables.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
from pathlib import Path

import pytest
import torch

from analysis import registry
from analysis.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SETUP = {".", "source"}  # shell set-up lines in the README, not examples
CHEAP_CLAIM = ["--claim", "MERGE-1", "--instances", "10"]


def shell_commands(text: str) -> list[tuple[int, list[str]]]:
    """``(line offset, words)`` per command of a shell snippet: comments dropped, ``\\``
    continuations joined, an output redirection or pipe and what follows it cut."""
    out, pending, start = [], "", 0
    for i, line in enumerate(text.splitlines()):
        if not pending:
            start = i
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        words = shlex.split(pending + line, comments=True)
        pending = ""
        cut = next((j for j, w in enumerate(words) if w in (">", ">>", "|")), len(words))
        if words[:cut]:
            out.append((start, words[:cut]))
    return out


def readme_examples() -> list[tuple[str, list[str]]]:
    text = README.read_text()
    found = []
    for block in re.finditer(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M):
        first = text[:block.start(1)].count("\n") + 1
        found += [(f"README.md:{first + i}", words) for i, words in shell_commands(block.group(1))]
    return found


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def help_examples() -> list[tuple[str, list[str]]]:
    """The ``examples:`` lines of every verb's ``--help`` (up to the next blank line)."""
    found = []
    for verb, sub in _subparsers(build_parser()).items():
        text = sub.format_help()
        assert "\nexamples:\n" in text, f"`lora-limits {verb} --help` has no examples"
        lines = text.split("\nexamples:\n", 1)[1].split("\n\n", 1)[0].splitlines()
        assert lines, f"`lora-limits {verb} --help`: empty examples"
        found += [(f"{verb} --help", words) for _, words in shell_commands("\n".join(lines))]
    return found


EXAMPLES = readme_examples() + help_examples()


def _argv(words: list[str]) -> list[str] | None:
    if words[0] == "lora-limits":
        return words[1:]
    if words[:3] == ["python", "-m", "analysis"]:
        return words[3:]
    return None


def _parse(argv: list[str]) -> argparse.Namespace:
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"argparse rejects `lora-limits {shlex.join(argv)}` (see the error above)")


def _without_set(argv: list[str]) -> list[str]:
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word == "--set":
            skip = True
        elif not word.startswith("--set="):
            out.append(word)
    return out


def _no_cuda(args) -> str | None:
    return "needs CUDA" if getattr(args, "device", None) == "cuda" and not torch.cuda.is_available() else None


def _validate_run(args) -> str | None:
    """Everything ``run`` checks before working; returns why it cannot execute here, if so."""
    from analysis.commands.run import grid_with_overrides, parse_jobs, preflight
    from analysis.errors import UsageError
    from analysis.sweep_engines import choose_engine

    experiment = registry.get(args.experiment)
    configs = grid_with_overrides(experiment, args.profile, args.overrides)
    assert configs, f"{args.experiment} has an empty {args.profile} grid"
    engine = choose_engine(args.engine, parse_jobs(args.jobs), args.scheduler)
    try:
        preflight(experiment, configs)
    except UsageError as exc:  # e.g. the SmolLM2 weights are not installed here
        return f"validated, not executed: {exc}"
    if engine == "dask":
        return "validated, not executed: needs a Dask cluster (the engine is tested in tests/test_sweep.py)"
    return _no_cuda(args)


def _validate_reproduce(args) -> str | None:
    from analysis.commands.run import parse_jobs, preflight

    parse_jobs(args.jobs)
    for name in args.only:
        registry.get(name)  # an unknown experiment fails here
    for experiment in registry.experiments().values():
        configs = experiment.configs(args.profile)
        if experiment.name in args.only if args.only else args.profile in experiment.reproduce_profiles:
            try:
                preflight(experiment, configs)
            except Exception as exc:  # noqa: BLE001  (a missing optional extra)
                return f"validated, not executed: {exc}"
    return _no_cuda(args)


def _validate_theory(args) -> str | None:
    from theory.claims import registry as claims

    unknown = [c for c in args.claim or [] if c not in claims()]
    assert not unknown, f"unknown claim ID(s) {unknown}"
    return None


def _validate_bench(args) -> str:
    from bench import NAMES

    unknown = [n for n in args.only or [] if n not in NAMES]
    assert not unknown, f"unknown benchmark(s) {unknown}; known: {', '.join(NAMES)}"
    return "validated, not executed: the suite takes minutes (tests/test_bench.py runs a tiny benchmark)"


def _write_adapters(paths: list[str]) -> None:
    """Tiny nonzero PEFT LoRA adapters (two modules each) at ``paths``."""
    from theory.merge import Factors
    from toymodels.adapters import Adapter
    from toymodels.peft_checkpoint import save_adapter
    from toymodels.lora import LoRAConfig

    gen = torch.Generator().manual_seed(0)
    modules = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    for path in paths:
        factors = {m: Factors(torch.randn(2, 8, generator=gen), torch.randn(8, 2, generator=gen), 1.0)
                   for m in modules}
        save_adapter(Adapter(LoRAConfig(rank=2, alpha=2.0, targets=("q",)), factors), path)


def _makefile_check(words: list[str]) -> None:
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z][\w-]*)\s*:", makefile, re.M))
    variables = set(re.findall(r"^([A-Z_]+)\s*[?:]?=", makefile, re.M))
    for word in words[1:]:
        if "=" in word:
            assert word.split("=", 1)[0] in variables, f"`{shlex.join(words)}`: the Makefile has no variable {word}"
        else:
            assert word in targets, f"`{shlex.join(words)}`: the Makefile has no target {word!r}"


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """A temporary working directory (the examples' default ``--results results`` lands there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


_EXECUTED: dict[tuple[str, ...], str] = {}  # argv run -> the example that ran it


@pytest.mark.parametrize("where,words", [pytest.param(w, c, id=f"{w}: {shlex.join(c)}") for w, c in EXAMPLES])
def test_example(where, words, in_tmp, monkeypatch):
    if words[0] in SETUP:
        return
    if words[0] == "make":
        _makefile_check(words)
        return
    argv = _argv(words)
    assert argv is not None, f"{where}: `{shlex.join(words)}` is neither a lora-limits command nor make"
    args = _parse(argv)
    verb = args.verb
    assert verb is not None, f"{where}: no verb"
    blocked = {"run": _validate_run, "reproduce": _validate_reproduce, "theory": _validate_theory,
               "list": lambda a: None, "inspect": lambda a: None, "bench": _validate_bench,
               "diagnose": lambda a: "validated, not executed: needs a base model and its tokenizer"}[verb](args)
    if verb == "inspect":
        if args.base:
            blocked = "validated, not executed: needs a base model file"
        _write_adapters(args.adapters)
    if blocked:
        pytest.skip(blocked)
    if verb == "theory":
        argv = argv + CHEAP_CLAIM
    elif verb == "run" and not registry.get(args.experiment).hidden:
        argv = ["run", "_selftest", *_without_set(argv[2:])]
    elif verb == "reproduce":
        from analysis.commands import theory

        selftest = dataclasses.replace(registry.get("_selftest"), hidden=False)
        monkeypatch.setattr(registry, "experiments", lambda include_hidden=False: {"_selftest": selftest})
        real_check = theory.check_theory
        monkeypatch.setattr(theory, "check_theory", lambda ids, *rest: real_check(["MERGE-1"], *rest))
        argv = ["_selftest" if word in args.only else word for word in argv]  # --only NAME runs _selftest
    if verb != "reproduce" and tuple(argv) in _EXECUTED:  # e.g. two real experiments mapped to one _selftest run
        pytest.skip(f"validated; executes as `lora-limits {shlex.join(argv)}`, run for {_EXECUTED[tuple(argv)]}")
    _EXECUTED[tuple(argv)] = where
    assert main(argv) == 0, f"{where}: `lora-limits {shlex.join(argv)}` failed"
    if verb == "reproduce":
        assert (in_tmp / args.figures / "report.md").is_file()


def test_inline_readme_commands_are_valid():
    """Commands quoted in the README's prose (`lora-limits ...` spans without placeholders
    such as VERB or PATH) are validated like the examples, not executed."""
    text = re.sub(r"^```.*?^```", "", README.read_text(), flags=re.S | re.M)
    spans = [w for span in re.findall(r"`(lora-limits [^`]+)`", text) if not re.search(r"\b[A-Z]{2,}\b", span)
             for _, w in shell_commands(span)]
    assert spans, "no inline command found: the pattern is wrong"
    for words in spans:
        args = _parse(_argv(words))
        {"run": _validate_run, "reproduce": _validate_reproduce, "theory": _validate_theory}.get(
            args.verb, lambda a: None)(args)


def test_every_verb_has_examples_and_the_readme_has_commands():
    verbs = {_argv(w)[0] for _, w in EXAMPLES if _argv(w)}
    assert verbs == set(_subparsers(build_parser())), verbs
    assert any(w == "README.md" or w.startswith("README.md:") for w, _ in EXAMPLES)


@pytest.mark.parametrize("argv,message", [
    pytest.param(["run", "two_hop"], "unknown experiment 'two_hop'", id="experiment"),
    pytest.param(["run", "two_hop_reuse", "--set", "train.steps=200"], "unknown config key 'train'", id="key"),
    pytest.param(["run", "two_hop_reuse", "--steps", "200"], "unrecognized arguments", id="flag"),
])
def test_a_wrong_example_fails(argv, message, capsys):
    """The checks above go red on the README's former mistakes."""
    from analysis.errors import UsageError

    with pytest.raises((UsageError, SystemExit, pytest.fail.Exception)) as info:
        _validate_run(_parse(argv))
    assert message in str(info.value) + capsys.readouterr().err
