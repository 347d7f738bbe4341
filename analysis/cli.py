"""``lora-limits`` (also ``python -m analysis``): a thin dispatcher over verb modules.

Each verb lives in ``analysis/commands/<verb>.py`` and defines ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Add a verb by adding its module name to
:data:`VERBS`.

Endings: a usage error is one line and exit 2; Ctrl-C (SIGINT) and SIGTERM unwind through
the same cleanup (workers stopped, nothing half-written: every file is written atomically)
and exit 130 / 143 with one line; a closed stdout (``lora-limits theory --json | head``)
exits 141 (128 + SIGPIPE, as ``yes | head`` does) with no message.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading

from analysis.errors import UsageError, one_line

VERBS = ["theory", "reproduce", "run", "list", "inspect", "diagnose", "bench"]


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with one line (its default prints usage first)."""

    def error(self, message):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lora-limits",
        description="Test the theory of LoRA reuse: do merged or routed LoRA adapters compose "
        "what they learned? Verbs check theorems, run toy-model and pretrained-model "
        "experiments, and draw figures.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    for name in VERBS:
        module = importlib.import_module(f"analysis.commands.{name}")
        verb = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(verb)
        verb.set_defaults(_run=module.run)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it unwinds like Ctrl-C."""

    signum = signal.SIGTERM


def _raise_terminated(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 2
    in_main_thread = threading.current_thread() is threading.main_thread()  # where signals can be caught
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        code = int(args._run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows up here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        # stdout's reader is gone (`| head`): stop quietly; point stdout at /dev/null so that
        # the interpreter's final flush does not complain either
        with contextlib.suppress(OSError, ValueError, AttributeError):  # a stand-in stdout (tests)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except (UsageError, ValueError, FileNotFoundError) as exc:
        # ValueError is how configs report bad values (STYLE.md): it is the user's to fix.
        print(f"lora-limits {args.verb}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"lora-limits {args.verb}: {'terminated' if signum == signal.SIGTERM else 'interrupted'}; "
              "finished results are kept, rerun to resume", file=sys.stderr)
        return 128 + signum
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
