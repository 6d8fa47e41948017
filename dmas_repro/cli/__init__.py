"""The `dmas-repro` command line: one parser, each stage's commands registered explicitly, in the
order the data flows. Nothing imports this package; it imports the stages (lazily, inside each
command, so `dmas-repro --help` stays fast).

Every command takes `-q/--quiet` (warnings and errors only) and `-v/--verbose` (debug). A user
error (`UserError`) ends in one line on stderr and exit status 2, printed once (by rank 0 under
torchrun); Ctrl-C in 130.
"""

from __future__ import annotations

import argparse
import errno
import sys

from ..core import logs
from ..core.errors import UserError
from . import data_commands, eval_commands, model_commands, speed_commands, train_commands

# The command groups, in the order the data flows.
GROUPS = (model_commands, data_commands, train_commands, eval_commands, speed_commands)


def _verbosity_flags(default) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=-1, default=default,
                   help="warnings and errors only")
    g.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=1, default=default,
                   help="debug output")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _verbosity_flags(argparse.SUPPRESS)  # on every command; given before it, the top level's stays
    parser = argparse.ArgumentParser(
        prog="dmas-repro", parents=[_verbosity_flags(0)],
        description="Reproduce and analyse DMaS-LLaMa-Lite (1.7B LLaMa on FineWeb-Edu).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.register(sub, common)
    return parser


def _say(command: str, msg: str) -> None:
    if logs.rank() == 0:
        print(f"dmas-repro {command}: {msg}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.setup(args.verbosity)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        _say(args.command, f"error: {e}")
        return 2
    except KeyboardInterrupt:
        _say(args.command, "interrupted")
        return 130
    except OSError as e:
        if e.errno == errno.ENOSPC:
            _say(args.command, f"error: no space left on device ({e.filename or e})")
            return 1
        if e.errno in (errno.ENOENT, errno.EACCES, errno.EISDIR, errno.ENOTDIR):
            _say(args.command, f"error: {e.strerror}: {e.filename}")
            return 2
        raise
