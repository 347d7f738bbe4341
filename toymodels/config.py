"""Config machinery shared by every experiment: frozen nested dataclasses with a content
key and typed ``a.b=v`` overrides.

Subclass :class:`Config` with ``@dataclass(frozen=True)``; validate in ``__post_init__``
by raising ``ValueError`` that names the field, the bad value and what is allowed.

A field added after results were cached is declared with :func:`opt_in`: while it holds its
default it is left out of :meth:`Config.to_dict` and so of :meth:`Config.key`, so every config
that does not use it keeps the key (and the cached record) it had before the field existed.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import field
from typing import Any

CACHE_VERSION = 2  # bump when a change to the code invalidates cached results


OPT_IN = "opt_in"  # field metadata flag, see opt_in()


def opt_in(default: Any) -> Any:
    """A dataclass field with an immutable ``default`` that :meth:`Config.to_dict` omits while
    it holds that default (module docstring): for knobs added after results were cached."""
    return field(default=default, metadata={OPT_IN: True})


def _plain(obj: Any) -> Any:
    """``dataclasses.asdict`` without the :func:`opt_in` fields that hold their default."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get(OPT_IN) and getattr(obj, f.name) == f.default)}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return copy.deepcopy(obj)


class Config:
    """Mixin for frozen dataclass configs."""

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    def key(self) -> str:
        """Short sha256 of the canonical JSON of the config plus :data:`CACHE_VERSION`."""
        blob = json.dumps({"v": CACHE_VERSION, "cfg": self.to_dict(), "type": type(self).__name__},
                          sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_fields(section: str, cfg: Any, checks: dict[str, tuple[bool, str]]) -> None:
    """Raise ``ValueError("section.name=value: must be allowed")`` for the first failed check."""
    for name, (ok, allowed) in checks.items():
        if not ok:
            raise ValueError(f"{section}.{name}={getattr(cfg, name)!r}: must be {allowed}")


def counts(cfg: Any, lows: dict[str, int]) -> dict[str, tuple[bool, str]]:
    """Checks for :func:`check_fields`: each named field is an integer >= its low bound."""
    return {name: (isinstance(getattr(cfg, name), int) and getattr(cfg, name) >= low, f"an integer >= {low}")
            for name, low in lows.items()}


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(text: str, typ: Any, path: str) -> Any:
    """Parse the override string ``text`` as ``typ`` (bool, int, float, str, tuples, Optional, Literal)."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if text.lower() == "none" and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(text, arg, path)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0])
    if origin is typing.Literal:
        for choice in args:
            if str(choice) == text:
                return choice
        raise ValueError(f"{path}={text!r}: must be one of {', '.join(map(str, args))}")
    if origin in (tuple, list):
        items = [t for t in text.strip("()[]").split(",") if t.strip()]
        inner = args[0] if args else str
        return tuple(_coerce(t.strip(), inner, path) for t in items)
    if typ is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{path}={text!r}: must be a boolean (true/false)")
    if typ in (int, float):
        try:
            value = typ(text)
        except ValueError:
            raise ValueError(f"{path}={text!r}: must be {'an integer' if typ is int else 'a number'}") from None
        if typ is float and not math.isfinite(value):
            raise ValueError(f"{path}={text!r}: must be a finite number")
        return value
    if typ is str:
        return text
    raise ValueError(f"{path}: cannot be set from the command line (type {typ})")


def replace_path(cfg: Any, path: str, text: str, _prefix: str = "") -> Any:
    """Return ``cfg`` with the dotted field ``path`` set from the string ``text``."""
    head, _, rest = path.partition(".")
    full = _prefix + head
    if not dataclasses.is_dataclass(cfg):
        raise ValueError(f"{path}: not a config field")
    names = [f.name for f in dataclasses.fields(cfg)]
    if head not in names:
        raise ValueError(f"unknown config key {full!r}; valid here: {', '.join(_prefix + n for n in names)}")
    current = getattr(cfg, head)
    if rest:
        if not dataclasses.is_dataclass(current):
            raise ValueError(f"{full} is a value, not a section: use --set {full}=VALUE")
        return dataclasses.replace(cfg, **{head: replace_path(current, rest, text, full + ".")})
    if dataclasses.is_dataclass(current):
        sub = [f.name for f in dataclasses.fields(current)]
        raise ValueError(f"{full} is a section: set one of its keys ({', '.join(f'{full}.{s}' for s in sub)})")
    return dataclasses.replace(cfg, **{head: _coerce(text, _field_types(type(cfg))[head], full)})


def apply_overrides(cfg: Any, assignments: list[str]) -> Any:
    """Apply ``["seed=1", "pipeline.finetune.steps=50", ...]``; unknown keys and wrong types raise ValueError."""
    for item in assignments:
        path, sep, text = item.partition("=")
        if not sep or not path:
            raise ValueError(f"override {item!r}: write KEY=VALUE, e.g. seed=1")
        cfg = replace_path(cfg, path.strip(), text.strip())
    return cfg
