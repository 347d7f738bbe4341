"""The toy cross-lingual code reuse experiment end to end (issue 10 items 4 and 5; PAPER.md, TMLR
task families), as one call on the one protocol (:func:`toymodels.protocol.run_protocol`).

:func:`run_code_reuse` pretrains a toy GPT on the code corpus (:mod:`toymodels.tasks.code_corpus`:
every familiar task in syntax A, most in syntax B, helpers and translations) or takes a given one,
draws the expert set (:mod:`toymodels.tasks.code_experts`: ``semantics`` = new tasks in A,
``syntax`` = other new tasks in B, ``composed`` = the semantics tasks in B, distractors ``D*``)
in the style ``experts.style`` (``call``: both datasets call shared helper snippets, the
"reusable code" condition; ``inline``: the helpers' ops written out), and scores with
:mod:`toymodels.span_family` the base, every single expert, a joint-data LoRA per library and every
reuse method on two libraries: ``skills`` = {semantics, syntax, D*} (data-free composition of
what a task computes with how to write B) and ``with_composed`` = ``skills`` + the composed expert.

Beside the span metrics, every scored model reports ``composed_exec``: the share of composed
questions whose greedily decoded program (decoded as for ``composed``) parses in syntax B and
computes what the gold program computes on ``n_inputs`` random lists
(:func:`toymodels.tasks.code_corpus.execution_accuracy`): a program written differently but
equivalently counts. Conditional composition (``needs``): a composed question counts when the
model still writes its task in A (probe ``semantics_taught``) and translates its program from A to
B (probe ``translate_semantics``).

Randomness (:mod:`toymodels.seeds`, one run seed, which is also the base's seed): the corpus
``("base", "corpus")``, the base's init and batches (:func:`toymodels.span_family.train_span_base`),
the expert set ``("experts",)``, the execution inputs ``("inputs",)`` and the protocol's LoRAs,
merges and search ``("protocol",)``. None of these depends on the style, so the two styles of one
seed share their tasks, base, inputs and LoRA inits (a paired comparison).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from torch import nn

from toymodels import seeds
from toymodels.config import Config, check_fields
from toymodels.lora import LoRAConfig
from toymodels.model import ModelConfig, role_modules
from toymodels.progress import Progress, labelled
from toymodels.protocol import Backend, TaskFamily, run_protocol, train_summary
from toymodels.reuse import METHODS
from toymodels.reuse_options import ReuseOptions
from toymodels.span_family import Needs, SpanBase, open_answers, span_family, train_span_base
from toymodels.tasks import Examples
from toymodels.tasks.code_corpus import CodePretraining, CodeTaskConfig, execution_accuracy, make_code_pretraining, \
    random_inputs
from toymodels.tasks.code_experts import CodeExpertConfig, CodeExpertSet, make_code_expert_set
from toymodels.tasks.code_world import CodeTokenizer
from toymodels.train import TrainConfig, TrainResult, greedy_decode, recipe, resolve_device

# The base's own skills, scored at the end of pretraining: familiar tasks in A and in B (trained),
# familiar tasks held out in B (known in A only: the base's version of the composed question),
# held-out translations and the helper definitions.
PRECONDITION_SETS = ("task_A", "task_B", "cross_test", "translate_test", "helpers")


@dataclass(frozen=True)
class CodeReuseConfig(Config):
    """Base (task, model, train), experts, LoRA, fine-tune recipe, reuse methods and options;
    ``decode_extra``: greedy decoding may run this many tokens past a gold answer's length;
    ``n_inputs``: random input lists on which a decoded program must match the gold one."""

    task: CodeTaskConfig = field(default_factory=CodeTaskConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(n_layers=2, d_model=64, n_heads=4, d_mlp=256,
                                                                   d_vocab=152, n_ctx=64))
    train: TrainConfig = field(default_factory=TrainConfig)
    experts: CodeExpertConfig = field(default_factory=CodeExpertConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    finetune: TrainConfig = field(default_factory=lambda: recipe("careful_finetune"))
    methods: tuple[str, ...] = ("average", "sum", "ties", "arrow")
    reuse: ReuseOptions = field(default_factory=ReuseOptions)
    decode_extra: int = 8
    n_inputs: int = 16

    @property
    def d_vocab(self) -> int:
        w = self.task.world
        return CodeTokenizer(w.n_helpers, w.n_base_tasks, w.n_new_tasks).d_vocab

    def __post_init__(self):
        if self.model.d_vocab < self.d_vocab:
            raise ValueError(f"model.d_vocab={self.model.d_vocab}: must be >= the task's vocabulary size {self.d_vocab}")
        if self.finetune.target_set not in (None, "facts"):
            raise ValueError(f"finetune.target_set={self.finetune.target_set!r}: must be None or 'facts'")
        check_fields("code_reuse", self, {
            "methods": (bool(self.methods) and all(m in METHODS for m in self.methods),
                        f"a non-empty tuple of {', '.join(METHODS)}"),
            "decode_extra": (isinstance(self.decode_extra, int) and self.decode_extra >= 0, "an integer >= 0"),
            "n_inputs": (isinstance(self.n_inputs, int) and self.n_inputs >= 1, "an integer >= 1")})


def make_corpus(cfg: CodeReuseConfig, seed: int) -> CodePretraining:
    return make_code_pretraining(cfg.task, seeds.numpy_rng(seed, "base", "corpus"))


def train_code_base(cfg: CodeReuseConfig, seed: int = 0, device: str = "auto",
                    progress: Progress | None = None) -> SpanBase:
    """The corpus of ``seed`` and a GPT pretrained on it (``seed`` is the base's seed)."""
    pre = make_corpus(cfg, seed)
    check_context(cfg, [pre.train, *pre.eval_sets.values()])
    return SpanBase(pre, train_span_base(pre, cfg.model, cfg.train, seed, device, labelled(progress, "base model")))


def check_context(cfg: CodeReuseConfig, sets: list[Examples]) -> None:
    """Every row, decoded ``decode_extra`` positions past its answer, fits ``model.n_ctx``."""
    longest = max((ex.tokens.shape[1] for ex in sets if len(ex)), default=0)
    need = longest - 1 + cfg.decode_extra  # the last token is never fed in
    if need > cfg.model.n_ctx:
        raise ValueError(f"model.n_ctx={cfg.model.n_ctx}: the longest row ({longest} tokens) decoded "
                         f"decode_extra={cfg.decode_extra} further needs n_ctx >= {need}")


def with_probes(es: CodeExpertSet) -> tuple[CodeExpertSet, Needs]:
    """``es`` with the probe ``semantics_taught`` (the semantics expert's own rows) added, and each
    composed question's needs: its task written in A, and its program translated A -> B (composed
    row ``i`` is semantics task ``i``, pinned by a test)."""
    probes = es.probes | {"semantics_taught": es.facts_eval["semantics"]}
    needs = [[("semantics_taught", i), ("translate_semantics", i)] for i in range(len(es.composed))]
    return dataclasses.replace(es, probes=probes), needs


def libraries(es: CodeExpertSet) -> dict[str, list[str]]:
    distractors = [n for n in es.experts if n.startswith("D")]
    return {"skills": ["semantics", "syntax"] + distractors,
            "with_composed": ["semantics", "syntax", "composed"] + distractors}


def chance_levels(pre: CodePretraining, es: CodeExpertSet) -> dict:
    """A guess of one of the world's task programs, uniformly: ``composed`` = 1 / #programs, and
    per control the expected share of rows whose guess is one of that row's new programs."""
    n = len(pre.world.programs)
    return {"composed": 1.0 / n,
            "broadcast": {name: sum(len(s) for s in c.new_answers) / max(1, len(c.new_answers)) / n
                          for name, c in es.controls.items()}}


def composed_execution(model: nn.Module, es: CodeExpertSet, pre: CodePretraining, inputs: list[list[int]],
                       extra: int, skip: int = 0) -> float:
    """Execution accuracy on the composed rows from ``skip``, decoded greedily up to ``extra``
    positions past the gold length (as :mod:`toymodels.span_family` decodes for ``composed``)."""
    wide = open_answers(es.composed[skip:], extra)
    return execution_accuracy(greedy_decode(model, wide), wide, pre.world, es.gold["composed"][skip:],
                              es.syntax["composed"], inputs)


def execution_scored(family: TaskFamily, es: CodeExpertSet, pre: CodePretraining, inputs: list[list[int]],
                     reuse: ReuseOptions, extra: int) -> TaskFamily:
    """``family`` whose scores also hold ``composed_exec`` on the same composed rows (LoraHub's
    shots left out, as for ``composed``) and the same greedy decoding."""
    def score(model, members, method):
        out = family.score(model, members, method)
        skip = reuse.lorahub_shots if method == "lorahub" else 0
        out["composed_exec"] = composed_execution(model, es, pre, inputs, extra, skip)
        return out

    return dataclasses.replace(family, score=score)


def precondition(result: TrainResult) -> dict:
    """The base's exact match on its own skills (:data:`PRECONDITION_SETS`), final eval."""
    final = result.final()
    return {k: final[k] for k in PRECONDITION_SETS if k in final}


def run_code_reuse(cfg: CodeReuseConfig, seed: int = 0, device: str = "auto", progress: Progress | None = None,
                   base: SpanBase | None = None) -> dict:
    """Pretrain (unless ``base``, trained on ``seed``, is given), draw the experts in
    ``cfg.experts.style`` and run the protocol. Returns (JSON-able)::

        {"config", "key", "seed", "style", "base": training summary (no curves),
         "precondition": {set: base exact match}, "chance": {"composed", "broadcast": {name}},
         "n_composed", "tasks": {expert: [task names]},
         "experts": {name | "joint/<library>": training summary},
         "models": {"base" | "single/<expert>" | "joint/<library>" | "<method>/<library>":
                    span_family metrics + "composed_exec"}}
    """
    resolve_device(device)  # fail early on a bad name
    base = base or train_code_base(cfg, seed, device, progress)
    pre = base.pretraining
    es, needs = with_probes(make_code_expert_set(pre, cfg.experts, seeds.numpy_rng(seed, "experts")))
    check_context(cfg, [*es.train.values(), *es.probes.values(), *(c.questions for c in es.controls.values())])
    sep = pre.world.tokenizer.id(";") if cfg.task.fmt == "via" else None
    inputs = random_inputs(seeds.numpy_rng(seed, "inputs"), cfg.n_inputs)
    family = execution_scored(span_family(es, libraries(es), cfg.reuse, sep, needs, cfg.decode_extra),
                              es, pre, inputs, cfg.reuse, cfg.decode_extra)
    # scope ("code",) for both styles: the two conditions share LoRA inits and merge draws (paired)
    done = run_protocol(family, Backend(base.model, role_modules(base.model), device), cfg, seed, ("code",),
                        summary=lambda r: train_summary(r, curves=False),
                        title=f"code reuse ({cfg.experts.style})", progress=progress)
    return {"config": cfg.to_dict(), "key": cfg.key(), "seed": seed, "style": cfg.experts.style,
            "base": train_summary(base.result, curves=False), "precondition": precondition(base.result),
            "chance": chance_levels(pre, es), "n_composed": len(es.composed),
            "tasks": {name: [pre.world.task_name(int(i)) for i in t] for name, t in es.tasks.items()}, **done}
