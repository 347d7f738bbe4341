"""A tiny list-program DSL with two surface syntaxes (issue 10 item 4; PAPER.md, TMLR task
families: cross-lingual code).

A program maps an int list ``x`` through list ops, then optionally reduces it to an int::

    add k   map v -> v + k        even / odd   keep the even / odd values    rev    reverse
    mul k   map v -> v * k        gt k         keep values > k               sort   ascending
    take k  first k values        drop k       all but the first k
    sum / max / min / len   reducers (max and min of an empty list are 0)

A *helper* is a named two-op snippet (``h0``, ``h1``, ...): a call runs its ops in place.
The two syntaxes share digits, ``x`` and helper names, and nothing else:

    A (nested prefix)   sum ( map ( add 2 ) ( filter ( even ) ( x ) ) )
    B (pipe)            x | evens | plus 2 | total

Each is parsed into one :class:`Program` and run by one evaluator (:func:`execute`), so two
programs agree iff they parse to the same semantics; :func:`translate` renders a parsed program in
the other syntax. Parsing is strict: a word sequence that is not a well-formed program raises
``ValueError`` (used by the execution metric to score a malformed answer as wrong).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Syntax = Literal["A", "B"]
SYNTAXES: tuple[str, ...] = ("A", "B")
ARG_RANGES = {"add": (1, 9), "mul": (2, 3), "gt": (0, 9), "take": (1, 4), "drop": (1, 4)}
LIST_OPS = ("add", "mul", "even", "odd", "gt", "rev", "sort", "take", "drop")
REDUCERS = ("sum", "max", "min", "len")
K = "<k>"  # the place of an op's digit argument in a syntax form
A_FORMS = {"add": ("map", "(", "add", K, ")"), "mul": ("map", "(", "mul", K, ")"),
           "even": ("filter", "(", "even", ")"), "odd": ("filter", "(", "odd", ")"),
           "gt": ("filter", "(", "gt", K, ")"), "rev": ("reverse",), "sort": ("sort",),
           "take": ("take", K), "drop": ("drop", K)}
B_FORMS = {"add": ("plus", K), "mul": ("times", K), "even": ("evens",), "odd": ("odds",), "gt": ("above", K),
           "rev": ("flip",), "sort": ("order",), "take": ("first", K), "drop": ("skip", K)}
A_REDUCERS = {"sum": "sum", "max": "max", "min": "min", "len": "len"}
B_REDUCERS = {"sum": "total", "max": "top", "min": "bottom", "len": "count"}
A_WORDS = tuple(dict.fromkeys([w for form in A_FORMS.values() for w in form if w != K] + list(A_REDUCERS.values())))
B_WORDS = tuple(dict.fromkeys([w for form in B_FORMS.values() for w in form if w != K] + list(B_REDUCERS.values())
                              + ["|"]))
DIGITS = tuple("0123456789")
Step = tuple[str, int]  # (op, argument; 0 if none) or ("call", helper index)


@dataclass(frozen=True)
class Program:
    steps: tuple[Step, ...]
    reducer: str | None = None

    def __post_init__(self):
        for op, arg in self.steps:
            if op not in LIST_OPS and op != "call":
                raise ValueError(f"program step {op!r}: must be one of {', '.join(LIST_OPS)} or call")
            lo, hi = ARG_RANGES.get(op, (0, 9 if op == "call" else 0))
            if not lo <= arg <= hi:
                raise ValueError(f"program step ({op}, {arg}): argument must be in [{lo}, {hi}]")
        if self.reducer is not None and self.reducer not in REDUCERS:
            raise ValueError(f"program reducer {self.reducer!r}: must be one of {', '.join(REDUCERS)} or None")

    def inline(self, helpers) -> "Program":
        """The same program with every helper call replaced by the helper's ops."""
        steps = tuple(s for op, arg in self.steps for s in (helpers[arg] if op == "call" else ((op, arg),)))
        return Program(steps, self.reducer)


def apply_op(op: str, arg: int, xs: list[int]) -> list[int]:
    if op == "add":
        return [v + arg for v in xs]
    if op == "mul":
        return [v * arg for v in xs]
    if op in ("even", "odd"):
        return [v for v in xs if v % 2 == (op == "odd")]
    if op == "gt":
        return [v for v in xs if v > arg]
    if op == "rev":
        return xs[::-1]
    if op == "sort":
        return sorted(xs)
    if op == "take":
        return xs[:arg]
    if op == "drop":
        return xs[arg:]
    raise ValueError(f"op {op!r}: must be one of {', '.join(LIST_OPS)}")


def reduce_list(reducer: str, xs: list[int]) -> int:
    return {"sum": sum, "max": lambda v: max(v, default=0), "min": lambda v: min(v, default=0),
            "len": len}[reducer](xs)


def execute(program: Program, xs: list[int], helpers) -> list[int] | int:
    for op, arg in program.inline(helpers).steps:
        xs = apply_op(op, arg, xs)
    return xs if program.reducer is None else reduce_list(program.reducer, xs)


def _form(op: str, arg: int, forms: dict) -> list[str]:
    return [str(arg) if w == K else w for w in forms[op]]


def render(program: Program, syntax: Syntax) -> list[str]:
    """The program's words in ``syntax``."""
    if syntax == "A":
        words = ["x"]
        for op, arg in program.steps:
            head = [f"h{arg}"] if op == "call" else _form(op, arg, A_FORMS)
            words = head + ["("] + words + [")"]
        return words if program.reducer is None else [A_REDUCERS[program.reducer], "("] + words + [")"]
    if syntax == "B":
        words = ["x"]
        for op, arg in program.steps:
            words += ["|"] + ([f"h{arg}"] if op == "call" else _form(op, arg, B_FORMS))
        return words + (["|", B_REDUCERS[program.reducer]] if program.reducer else [])
    raise ValueError(f"syntax={syntax!r}: must be one of {', '.join(SYNTAXES)}")


def _match(words: list[str], forms: dict) -> Step | None:
    """The step whose form is exactly ``words`` (a helper name, or an op with a digit argument)."""
    if len(words) == 1 and words[0][:1] == "h" and words[0][1:].isdigit():
        return "call", int(words[0][1:])
    for op, form in forms.items():
        if len(form) == len(words) and all(f == w or (f == K and w in DIGITS) for f, w in zip(form, words)):
            return op, next((int(w) for f, w in zip(form, words) if f == K), 0)
    return None


def parse(words: list[str], syntax: Syntax) -> Program:
    """The inverse of :func:`render`; raises ``ValueError`` on anything else."""
    text = " ".join(words)
    bad = ValueError(f"not a syntax-{syntax} program: {text!r}")
    if syntax == "B":
        parts = text.split(" | ")
        if parts[0] != "x":
            raise bad
        reducer = {v: k for k, v in B_REDUCERS.items()}.get(parts[-1]) if len(parts) > 1 else None
        steps = [_match(p.split(" "), B_FORMS) for p in parts[1:len(parts) - (reducer is not None)]]
    elif syntax == "A":
        reducer = {v: k for k, v in A_REDUCERS.items()}.get(words[0]) if words else None
        if reducer is not None:
            if words[1:2] != ["("] or words[-1:] != [")"]:
                raise bad
            words = words[2:-1]
        steps, i = [], 0
        while i < len(words) and words[i] != "x":  # outermost step first: a head, then "("
            cut = next((n for n in range(1, 6) if words[i + n:i + n + 1] == ["("] and _match(words[i:i + n], A_FORMS)),
                       None)
            if cut is None:
                raise bad
            steps.insert(0, _match(words[i:i + cut], A_FORMS))
            i += cut + 1
        if words[i:] != ["x"] + [")"] * len(steps):
            raise bad
    else:
        raise ValueError(f"syntax={syntax!r}: must be one of {', '.join(SYNTAXES)}")
    if any(s is None for s in steps):
        raise bad
    try:
        return Program(tuple(steps), reducer)
    except ValueError:
        raise bad from None


def translate(words: list[str], source: Syntax, target: Syntax) -> list[str]:
    return render(parse(words, source), target)
