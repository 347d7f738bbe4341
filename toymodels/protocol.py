"""The reuse protocol (PAPER.md section 2), written once for any task family on any model.

:func:`run_protocol` trains one LoRA per expert, scores the base model and every single
expert, then per library trains a joint LoRA on the union of its experts' data (what data
access would buy; optional) and builds and scores every reuse method of ``setting.methods``
(``toymodels.reuse.METHODS``, options from :func:`toymodels.reuse_options.method_options`)
on the library's adapters. With ``joint_full_lr`` each library also gets a joint-data FULL
fine-tune (every base weight trainable; same data, recipe and step budget as the joint LoRA,
learning rate ``joint_full_lr``, e.g. ``presets.full_finetune().lr``): the ceiling of what
data access buys without LoRA's rank limit. ``oracle`` (task-level selection) is scored once per adapter
with one-hot routing weights; the family picks the best.

What varies plugs in, the way a tuner plugs into a PEFT model:
- a :class:`TaskFamily`: the experts' training data, the libraries, LoraHub's few-shot rows
  and the scoring of one model (composed evaluation, retention, broadcast controls);
- a :class:`Backend`: the frozen base model, its role map (where LoRA goes) and the device.
Toy two-hop: ``toymodels/pipeline.py``; natural-language two-hop on a pretrained causal LM:
``toymodels/pretrained_two_hop.py``.

Seeds (``toymodels/seeds.py``): every random consumer has its own stream under the run seed
and the caller's ``scope`` (e.g. the split: ``("F",)``). Each LoRA, expert or joint, draws its
init and batch order from ``torch_gen(seed, "lora", *scope, name)`` (``name``: the expert, or
``joint/<library>``), a joint full fine-tune from ``torch_gen(seed, "full", *scope, library)``; each reuse method on each library its DARE masks and LoraHub's simplex
from ``generators(seed, "merge", *scope, library, method)``. No draw depends on what ran
before it, so K LoRAs trained side by side draw what K sequential runs draw: with ``stacked``
every LoRA of the run (experts and joint) trains in one :func:`toymodels.stacked_lora.train_stacked_loras`
call, and the outputs equal the sequential ones up to float rounding (``tests/test_protocol_seeds.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Protocol, Sequence

import copy

import torch
from torch import nn

from toymodels.adapters import Adapter, extract_adapter
from toymodels.lora import LoRAConfig, inject_lora
from toymodels.progress import Progress, labelled, open_bar
from toymodels.reuse import METHODS
from toymodels.reuse_options import ReuseOptions, method_options
from toymodels.routing import set_oracle_weights
from toymodels.seeds import Word, generators, torch_gen
from toymodels.stacked_lora import train_stacked_loras
from toymodels.tasks import Examples
from toymodels.train import TrainConfig, TrainResult, answer_loss, train

# The two libraries reused (a task family may add members, e.g. the toy's distractors):
# can disjoint one-hop adapters compose, and does the target-task expert make it work?
LIBRARIES: dict[str, tuple[str, ...]] = {"hops": ("AB", "BC"), "with_AC": ("AB", "BC", "AC")}


class Setting(Protocol):
    """What the protocol reads of an experiment's config."""

    lora: LoRAConfig
    finetune: TrainConfig
    reuse: ReuseOptions
    methods: tuple[str, ...]


@dataclass(frozen=True)
class Backend:
    """The frozen base model (scored as ``base``), where LoRA goes in it, and the device."""

    model: nn.Module
    roles: Mapping[str, Any]  # role map for :func:`toymodels.lora.inject_lora`
    device: str = "auto"
    # how one LoRA is trained, with train_lora's signature: None is train_lora (our
    # LoRALinear); toymodels.peft_backend.train_lora_peft trains it with PEFT instead
    trainer: Callable[..., tuple[Adapter, TrainResult]] | None = None
    # toymodels.train.train's probe_misses for every LoRA (0: score every row at every eval);
    # only for callers whose training summaries keep no curves (their points may be NaN)
    probe_misses: int = 0


@dataclass(frozen=True)
class TaskFamily:
    """``experts``: each expert's training data, in training order; ``libraries``: library ->
    its experts; ``shots``: the rows LoraHub's weight search sees; ``score(model, members,
    method)``: the scores of one model (``method`` None for the base, single experts, joint
    LoRAs and each of the oracle's adapters); ``oracle(per_adapter, members)``: the oracle's
    scores from the scores of each adapter alone."""

    experts: Mapping[str, Examples]
    libraries: Mapping[str, Sequence[str]]
    shots: Examples
    score: Callable[[nn.Module, Sequence[str], str | None], Any]
    oracle: Callable[[list, Sequence[str]], Any]


def train_summary(result: TrainResult, curves: bool = True, digits: int = 3) -> dict:
    """A training run as JSON: steps, wall seconds, target reached, final eval scores and the
    loss per eval; with ``curves`` also every eval score."""
    out = {"steps": result.steps, "seconds": round(result.seconds, digits), "reached_target": result.reached_target,
           "final": result.final(), "losses": result.losses}
    return {**out, "eval_steps": result.eval_steps, "curves": result.curves} if curves else out


def train_lora(backend: Backend, data: Examples, lora: LoRAConfig, finetune: TrainConfig, gen: torch.Generator,
               progress: Progress | None = None) -> tuple[Adapter, TrainResult]:
    """Fine-tune a fresh LoRA on ``data``; its eval set ``facts`` is ``data`` itself."""
    model = inject_lora(backend.model, lora, backend.roles, gen)
    result = train(model, data, finetune, gen, {"facts": data}, backend.device, progress, backend.probe_misses)
    return extract_adapter(model, lora), result


def train_full(backend: Backend, data: Examples, finetune: TrainConfig, gen: torch.Generator,
               progress: Progress | None = None) -> TrainResult:
    """Fine-tune a COPY of the base with every weight trainable on ``data`` (eval set ``facts``
    as :func:`train_lora`); ``backend.model`` is left untouched."""
    model = copy.deepcopy(backend.model).requires_grad_(True)
    return train(model, data, finetune, gen, {"facts": data}, backend.device, progress)


def few_shot_loss(shots: Examples) -> Callable[[nn.Module], float]:
    """LoraHub's objective: the answer loss of a model on ``shots``, on the model's device."""
    def loss(model: nn.Module) -> float:
        return answer_loss(model, shots.to(next(model.parameters()).device)).item()
    return loss


def oracle_scores(model: nn.Module, family: TaskFamily, members: Sequence[str]) -> list:
    """The routed ``model``'s scores with all weight on each adapter in turn (one-hot)."""
    per = []
    for i in range(len(members)):
        set_oracle_weights(model, nn.functional.one_hot(torch.tensor(i), len(members)).float())
        per.append(family.score(model, members, None))
    return per


def lora_gen(seed: int, scope: Sequence[Word], name: str) -> torch.Generator:
    """The stream of LoRA ``name``: its init, then its batch order (module docstring)."""
    return torch_gen(seed, "lora", *scope, name)


def stacked_loras(backend: Backend, runs: Mapping[str, Examples], setting: Setting, seed: int,
                  scope: Sequence[Word]) -> dict[str, tuple[Adapter, TrainResult]]:
    """Every LoRA of ``runs`` (name -> data) trained in one stacked run, each on its own stream."""
    adapters, results = train_stacked_loras(backend.model, [(data, lora_gen(seed, scope, name))
                                                            for name, data in runs.items()],
                                            setting.lora, setting.finetune, backend.roles, backend.device)
    return dict(zip(runs, zip(adapters, results)))


def lora_data(family: TaskFamily, joint: bool) -> dict[str, Examples]:
    """Every LoRA the protocol trains and its data: each expert, then ``joint/<library>``."""
    joints = {f"joint/{lib}": Examples.cat([family.experts[m] for m in members])
              for lib, members in family.libraries.items()} if joint else {}
    return {**family.experts, **joints}


def run_protocol(family: TaskFamily, backend: Backend, setting: Setting, seed: int, scope: Sequence[Word] = (),
                 joint: bool = True, summary: Callable[[TrainResult], dict] = train_summary,
                 title: str = "LoRAs and scores", progress: Progress | None = None, stacked: bool = False,
                 joint_full_lr: float | None = None) -> dict:
    """``{"experts": {name | "joint/<library>" | "joint_full/<library>": summary(training)},
    "models": {"base" | "single/<expert>" | "joint/<library>" | "joint_full/<library>" |
    "<method>/<library>": family.score(...)}}``; ``joint_full/*`` only with ``joint_full_lr``
    (see the top). ``seed`` and ``scope`` name every random stream (module docstring). ``stacked``:
    train every LoRA at once first (toy backends; every trained model is then held until scored).
    ``progress`` gets a bar ``title`` over the LoRAs trained and models scored, and one per
    sequential LoRA over its steps."""
    if joint_full_lr is not None and not joint_full_lr > 0:
        raise ValueError(f"joint_full_lr={joint_full_lr!r}: must be > 0 (or None: no full fine-tune)")
    if stacked and backend.trainer is not None:
        raise ValueError("stacked=True trains with the toy stacked engine: not with a backend trainer (e.g. PEFT)")
    full = joint_full_lr is not None
    units = 1 + 2 * len(family.experts) + len(family.libraries) * (2 * joint + 2 * full + len(setting.methods))
    bar = open_bar(progress, title, units)
    out: dict = {"experts": {}, "models": {}}

    def record(name: str, model: nn.Module, members: Sequence[str], method: str | None = None) -> None:
        bar.set_postfix_str(f"scoring {name}")
        out["models"][name] = family.score(model, members, method)
        bar.update()

    runs = lora_data(family, joint)
    done = stacked_loras(backend, runs, setting, seed, scope) if stacked else {}

    def fine_tune(name: str, data: Examples, label: str) -> tuple[Adapter, TrainResult]:
        if name in done:
            adapter, result = done.pop(name)
        else:
            trainer = backend.trainer or train_lora
            adapter, result = trainer(backend, data, setting.lora, setting.finetune, lora_gen(seed, scope, name),
                                      labelled(progress, label))
        out["experts"][name] = summary(result)
        bar.update()
        return adapter, result

    record("base", backend.model, list(family.experts))
    adapters = {}
    for name, data in family.experts.items():
        adapters[name], result = fine_tune(name, data, f"LoRA {name}")
        record(f"single/{name}", result.model, list(family.experts))
        del result
    for lib, members in family.libraries.items():
        members = list(members)
        if joint:
            _, result = fine_tune(f"joint/{lib}", runs[f"joint/{lib}"], f"joint LoRA {lib}")
            record(f"joint/{lib}", result.model, members)
            del result
        if full:
            finetune = replace(setting.finetune, lr=joint_full_lr)
            result = train_full(backend, Examples.cat([family.experts[m] for m in members]), finetune,
                                torch_gen(seed, "full", *scope, lib),
                                labelled(progress, f"joint full fine-tune {lib}"))
            out["experts"][f"joint_full/{lib}"] = summary(result)
            bar.update()
            record(f"joint_full/{lib}", result.model, members)
            del result
        bank = [adapters[m] for m in members]
        loss_fn = few_shot_loss(family.shots)
        for method in setting.methods:
            rng, gen = generators(seed, "merge", *scope, lib, method)
            options = method_options(method, setting, len(bank), gen=gen, rng=rng, loss_fn=loss_fn)
            with torch.no_grad():
                model = METHODS[method](backend.model, bank, **options)
            if method == "oracle":
                bar.set_postfix_str(f"scoring {method}/{lib}")
                out["models"][f"{method}/{lib}"] = family.oracle(oracle_scores(model, family, members), members)
                bar.update()
            else:
                record(f"{method}/{lib}", model, members, method)
            del model
    bar.close()
    return out
