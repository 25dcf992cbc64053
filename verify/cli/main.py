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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clarke", description="Clarke: neural-network verification, local Lipschitz constants, "
        "robust training and hard-constrained PDE layers on one bound-propagation engine.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"clarke {verify.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    bounds_cmd.add_parser(sub)
    for module in ("verify.cli.verify_cmd", "physics.cli"):
        try:
            mod = __import__(module, fromlist=["add_parser"])
        except ImportError:
            continue
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
