"""What the task families with multi-token answers (:mod:`math_experts`, :mod:`code_experts`)
share: the shape of their expert sets, their broadcast control, and config checks.

Broadcast control (T2, PAPER.md): an adapter that learned new answers may give them to every
question of its template; compare the true questions with control questions about other subjects.

:class:`toymodels.tasks.experts.Control` compares one final token; here a row's final answer is
the span of answer tokens after the row's last ``sep`` token (if any) up to EOS, e.g. the number
after ``ANS`` in a worked math solution, or the whole program of a code answer. Each control row
carries its own set of "new" spans: the answers the expert would give if it broadcast.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from toymodels.tasks import Examples
from toymodels.tasks.knowledge import EOS

Span = tuple[int, ...]


@dataclass(frozen=True)
class SpanControl:
    """``questions`` (gold answers included) whose gold final spans are NOT in ``new_answers[i]``."""

    questions: Examples
    new_answers: tuple[frozenset[Span], ...]
    sep: int | None = None

    def __post_init__(self):
        if len(self.new_answers) != len(self.questions):
            raise ValueError(f"SpanControl: {len(self.new_answers)} answer sets for "
                             f"{len(self.questions)} questions: need one per question")


def final_span(tokens: Tensor, answer_mask: Tensor, sep: int | None = None) -> Span | None:
    """One row (``(T,)`` each): the answer tokens up to the first EOS, after the last ``sep``
    before it; None when the answer positions hold no EOS (an unfinished answer)."""
    answer = tokens[answer_mask].tolist()
    if EOS not in answer:
        return None
    answer = answer[:answer.index(EOS)]
    if sep is not None and sep in answer:
        answer = answer[len(answer) - answer[::-1].index(sep):]
    return tuple(answer)


def final_spans(tokens: Tensor, examples: Examples, sep: int | None = None) -> list[Span | None]:
    """``tokens: (N, T)`` (e.g. :func:`toymodels.train.greedy_decode`) read at ``examples``'
    answer positions."""
    return [final_span(tokens[i], examples.answer_mask[i], sep) for i in range(len(examples))]


def span_broadcast_rate(decoded: Tensor, control: SpanControl) -> float:
    """Share of control questions whose decoded final span is one of that row's new answers."""
    if not len(control.questions):
        return float("nan")
    spans = final_spans(decoded, control.questions, control.sep)
    return sum(s in new for s, new in zip(spans, control.new_answers)) / len(spans)


@dataclass(frozen=True)
class SpanExpertSet:
    """One expert set of a span-answer family. ``train[name]``: each expert's data (``composed``:
    the target-task expert, trained on the composed questions themselves); ``facts_eval[name]``:
    the same rows (what each expert taught, for retention); ``composed``: the test;
    ``controls[name]``: broadcast controls; ``retention``: the base's own skills (pretraining eval
    sets); ``probes``: one skill at a time, for conditional composition."""

    train: dict[str, Examples]
    facts_eval: dict[str, Examples]
    composed: Examples
    controls: dict[str, SpanControl]
    retention: dict[str, Examples]
    probes: dict[str, Examples]

    @property
    def experts(self) -> list[str]:
        return list(self.train)
