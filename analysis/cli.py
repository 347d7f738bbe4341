"""``lora-limits`` (also ``python -m analysis``): a thin dispatcher over verb modules.

Each verb lives in ``analysis/commands/<verb>.py`` and defines ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Add a verb by adding its module name to
:data:`VERBS`.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from analysis.errors import UsageError, one_line

VERBS = ["theory", "reproduce", "run", "list", "inspect", "bench"]


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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (UsageError, ValueError, FileNotFoundError) as exc:
        # ValueError is how configs report bad values (STYLE.md): it is the user's to fix.
        print(f"lora-limits {args.verb}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lora-limits {args.verb}: interrupted; finished results are kept, rerun to resume",
              file=sys.stderr)
        return 130
