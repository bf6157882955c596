# SPDX-License-Identifier: MIT
"""The `ctmeter` command line: parses arguments, calls the API module of each job, prints.

Each job lives in its own module (`ctmeter.<name>_cmd` for the CLI glue) exposing
`register(subparsers)`, which adds a subparser and sets `func(args) -> int`.
Errors are raised as CommandError and printed here once, as `ctmeter: <message>`.
"""

import argparse
import importlib
import sys

from ctmeter import __version__
from ctmeter.errors import CommandError

# Subcommand modules, in the order `--help` lists them.
COMMANDS = [
    "flash",
    "deploy",
    "console",
    "diag",
    "scope",
    "calibrate",
    "sim",
    "replay",
    "serve",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctmeter", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"ctmeter {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"ctmeter.{name}_cmd")
        except ModuleNotFoundError as exc:
            if exc.name != f"ctmeter.{name}_cmd":
                raise
            continue  # not built yet
        module.register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        print(f"ctmeter: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ctmeter: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
