"""``linattn`` / ``python -m linattn``: the command line.

Subcommands live one per module in ``linattn/cli/``; each module defines
``register(subparsers)`` (adds its parser, sets ``func``) and is listed in ``_COMMANDS``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

_COMMANDS = ("verify", "compare", "backends", "plot")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="linattn",
        description="Masked linear attention: backends and the verification harness.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        try:
            mod = importlib.import_module(f"linattn.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"linattn.cli.{name}":
                continue
            raise
        mod.register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
