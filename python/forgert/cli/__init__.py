"""`forgert` command line: a dispatcher over one module per subcommand.

Each module forgert/cli/<name>.py exposes add_parser(subparsers) and run(args) -> int.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ["run", "chat", "serve", "embed", "bench", "info", "quantize"]


def _command_modules() -> dict:
    modules = {}
    for name in COMMANDS:
        module_name = f"{__name__}.{name}"
        try:
            modules[name] = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:   # the command exists but something it needs is missing
                raise
    return modules


def build_parser(modules=None) -> argparse.ArgumentParser:
    from .. import __version__
    parser = argparse.ArgumentParser(prog="forgert", description="Run Llama-family LLMs locally.")
    parser.add_argument("--version", action="version", version=f"forgert {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (modules if modules is not None else _command_modules()).values():
        module.add_parser(sub)
    return parser


def main(argv=None) -> int:
    modules = _command_modules()
    parser = build_parser(modules)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    from .common import run_command
    return run_command(modules[args.command].run, args)
