"""How long library calls (training, scoring) report how far they are, without printing.

The library never talks to the terminal (STYLE.md), so a long call takes a ``progress``
argument instead: a callable ``progress(desc=..., total=...)`` that opens a *bar* with
``update(n=1)``, ``set_postfix_str(text)`` and ``close()``. That is ``tqdm``'s own
interface, so ``functools.partial(tqdm, leave=False)`` works as is; the CLI passes its own
(``analysis/progress.py``, drawn by ``analysis/display.py`` on stderr, one line per
running config, off with ``--quiet``). ``None``, the default everywhere, reports nothing.
The function that opens a bar closes it; a bar left open by an exception is the caller's
to tidy (the CLI clears a config's bars when the config ends).
"""
from __future__ import annotations

from typing import Callable, Protocol


class Bar(Protocol):
    def update(self, n: int = 1) -> object: ...

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> object: ...

    def close(self) -> object: ...


Progress = Callable[..., Bar]  # progress(desc=str, total=int) -> Bar


class _Silent:
    def update(self, n: int = 1) -> None:
        return None

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        return None

    def close(self) -> None:
        return None


def open_bar(progress: Progress | None, desc: str, total: int) -> Bar:
    """A new bar of ``progress``; a silent one for ``None`` (or ``False``)."""
    return progress(desc=desc, total=total) if progress else _Silent()


def labelled(progress: Progress | None, prefix: str) -> Progress | None:
    """``progress`` with ``prefix`` before every bar's description (e.g. the LoRA's name)."""
    if not progress:
        return None

    def opened(desc: str = "", total: int | None = None) -> Bar:
        return progress(desc=f"{prefix} {desc}".strip(), total=total)
    return opened
