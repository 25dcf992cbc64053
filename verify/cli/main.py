"""Entry point of the ``clarke`` command: dispatches to subcommands, turns errors into one line."""

from __future__ import annotations

import argparse
import sys

import verify
from verify.cli import bounds_cmd
from verify.cli.common import fail
from verify.errors import ClarkeError

EPILOG = """examples:
  clarke bounds model.onnx --center x.npy --eps 0.01 --method crown --json
  clarke bounds model.onnx prop.vnnlib --method alpha-crown
Run 'clarke COMMAND --help' for the options of each command."""


SUBCOMMAND_MODULES = {"verify": "verify.cli.verify_cmd", "pde": "physics.cli",
                      "lipschitz": "verify.cli.lipschitz_cmd", "monotonicity": "verify.cli.lipschitz_cmd"}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``only``, just the module serving that subcommand is imported (fast start)."""
    parser = argparse.ArgumentParser(
        prog="clarke", description="Clarke: neural-network verification, local Lipschitz constants, "
        "robust training and hard-constrained PDE layers on one bound-propagation engine.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"clarke {verify.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    bounds_cmd.add_parser(sub)
    modules = dict.fromkeys(SUBCOMMAND_MODULES.values())
    if only in SUBCOMMAND_MODULES:
        modules = {SUBCOMMAND_MODULES[only]: None}
    elif only == "bounds":
        modules = {}
    for module in modules:
        try:
            mod = __import__(module, fromlist=["add_parser"])
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):
                continue  # that part of Clarke is not installed
            raise
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv[0] if argv and not argv[0].startswith("-") else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ClarkeError as e:
        return fail(str(e))
    except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
        return fail(f"{e.filename}: {e.strerror}")
    except KeyboardInterrupt:
        return fail("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
