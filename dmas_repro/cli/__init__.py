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
from .errors import ERRORS

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
        epilog="A mistake a user can cause ends in one line on stderr and exit status 2 (`dmas-repro COMMAND "
               f"--help` lists each command's); for every command: {ERRORS['every command']}.",
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
    except Exception as e:
        # what a user's machine or paths cause below the checks of each command: one line, exit 2
        from ..core.files import is_no_space

        if is_no_space(e):
            where = getattr(e, "filename", None) or "a file"
            _say(args.command, f"error: no space left on the device writing {where}; free some space and rerun "
                 "(finished checkpoints, shards and results are kept; --resume or a rerun continues)")
            return 2
        if isinstance(e, OSError) and e.errno in _PATH_ERRNOS:
            _say(args.command, f"error: {e.filename}: {e.strerror}; check the path")
            return 2
        raise


_PATH_ERRNOS = (errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.EROFS,
                errno.ENAMETOOLONG)
