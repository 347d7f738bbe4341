"""Independent, restricted interpreters of the real-language renderings (tests of
:mod:`toymodels.tasks.code_langs`): never ``eval``/``exec`` of a rendered string.

- Python: ``ast.parse(text, mode="eval")``, then a walk that knows only the node types an
  expression over ``x`` needs (names, int constants, + * - %, == >, and, list comprehensions and
  generator expressions with one ``for``, slices, and calls of sum / max / min / len / sorted);
  anything else raises ``ValueError``.
- JavaScript: the text is split at top-level ``.method(...)`` calls (parentheses matched); each
  arrow body ``v => ...`` / ``(a, b) => ...`` is lowered to a Python expression by a fixed token
  table (``===`` -> ``==``, ``Math.max`` -> ``max``) and evaluated by the same walker; the
  methods are implemented here with JavaScript's own meanings (``sort`` with a comparator,
  ``slice(start[, end])``, ``reduce(fn, init)``, ``length``).
"""
from __future__ import annotations

import ast
import functools
import re

CALLS = {"sum": sum, "len": len, "sorted": sorted}
BINOPS = {ast.Add: lambda a, b: a + b, ast.Mult: lambda a, b: a * b, ast.Sub: lambda a, b: a - b,
          ast.Mod: lambda a, b: a % b}
COMPARE = {ast.Eq: lambda a, b: a == b, ast.Gt: lambda a, b: a > b}


def run_python(text: str, x: list[int]):
    return _walk(ast.parse(text, mode="eval").body, {"x": list(x)})


def _walk(node, env: dict):
    if isinstance(node, ast.Name) and node.id in env:
        return env[node.id]
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_walk(node.operand, env)
    if isinstance(node, ast.BinOp) and type(node.op) in BINOPS:
        return BINOPS[type(node.op)](_walk(node.left, env), _walk(node.right, env))
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in COMPARE:
        return COMPARE[type(node.ops[0])](_walk(node.left, env), _walk(node.comparators[0], env))
    if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And):
        return all(_walk(v, env) for v in node.values)
    if isinstance(node, (ast.ListComp, ast.GeneratorExp)) and len(node.generators) == 1:
        gen = node.generators[0]
        if not isinstance(gen.target, ast.Name) or gen.is_async:
            raise ValueError(f"unsupported comprehension target: {ast.dump(gen.target)}")
        out = []
        for v in _walk(gen.iter, env):
            inner = {**env, gen.target.id: v}
            if all(_walk(c, inner) for c in gen.ifs):
                out.append(_walk(node.elt, inner))
        return out
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Slice):
        s = node.slice
        lo, hi, step = (None if part is None else _walk(part, env) for part in (s.lower, s.upper, s.step))
        return _walk(node.value, env)[lo:hi:step]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        args = [_walk(a, env) for a in node.args]
        kw = {k.arg: _walk(k.value, env) for k in node.keywords}
        if node.func.id in ("max", "min"):
            if set(kw) - {"default"}:
                raise ValueError(f"unsupported keywords {sorted(kw)}")
            return (max if node.func.id == "max" else min)(*args, **kw)
        if node.func.id in CALLS and not kw and len(args) == 1:
            return CALLS[node.func.id](args[0])
    raise ValueError(f"unsupported Python node: {ast.dump(node)[:80]}")


JS_TOKENS = [("===", "=="), ("!==", "!="), ("Math.max", "max"), ("Math.min", "min")]


def _lower(body: str) -> str:
    for js, py in JS_TOKENS:
        body = body.replace(js, py)
    return body


def _arrow(text: str):
    """``v => body`` or ``(a, b) => body`` as a Python function of its parameters."""
    params, body = text.split("=>", 1)
    names = [p.strip() for p in params.strip().strip("()").split(",")]
    tree = ast.parse(_lower(body.strip()), mode="eval").body
    return lambda *values: _walk(tree, dict(zip(names, values)))


def _split_args(text: str) -> list[str]:
    """Top-level comma split (arrow parameter lists keep their commas)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch in "([") - (ch in ")]")
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [p.strip() for p in parts + [text[start:]] if p.strip()]


def _calls(text: str) -> list[tuple[str, list[str] | None]]:
    """``x.m1(args).m2(args).length`` -> ``[(m1, args), (m2, args), ("length", None)]``."""
    if not text.startswith("x"):
        raise ValueError(f"not a chain on x: {text!r}")
    out, i = [], 1
    while i < len(text):
        m = re.match(r"\.([A-Za-z]+)", text[i:])
        if not m:
            raise ValueError(f"unexpected text at {i}: {text[i:]!r}")
        name, i = m.group(1), i + m.end()
        if text[i:i + 1] != "(":
            out.append((name, None))
            continue
        depth, j = 0, i
        for j in range(i, len(text)):
            depth += {"(": 1, ")": -1}.get(text[j], 0)
            if depth == 0:
                break
        out.append((name, _split_args(text[i + 1:j])))
        i = j + 1
    return out


def run_javascript(text: str, x: list[int]):
    value = list(x)
    for name, args in _calls(text):
        if name == "length" and args is None:
            value = len(value)
        elif name == "map":
            fn = _arrow(args[0])
            value = [fn(v) for v in value]
        elif name == "filter":
            fn = _arrow(args[0])
            value = [v for v in value if fn(v)]
        elif name == "reverse" and not args:
            value = value[::-1]
        elif name == "sort" and len(args) == 1:
            fn = _arrow(args[0])
            value = sorted(value, key=functools.cmp_to_key(fn))
        elif name == "slice" and 1 <= len(args) <= 2:
            bounds = [int(a) for a in args]
            value = value[bounds[0]:bounds[1] if len(bounds) == 2 else None]
        elif name == "reduce" and len(args) == 2:
            fn, acc = _arrow(args[0]), int(args[1])
            for v in value:
                acc = fn(acc, v)
            value = acc
        else:
            raise ValueError(f"unsupported JavaScript call .{name}({args})")
    return value
