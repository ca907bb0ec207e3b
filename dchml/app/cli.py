"""The `dchml` command line: train, eval, encode, search, demo, features, serve, compare, sweep.

A user's mistake (bad path, bad flag value, corrupt file, existing output) prints ONE line
`dchml <command>: error: ...` on stderr and exits with status 2, no traceback (set DCHML_DEBUG=1
to see the traceback). Ctrl-C exits with 130 and says how to resume. `compare` and `sweep` exit
with 1 when they ended but some of their runs failed (listed in their tables).
"""
from __future__ import annotations

import os
import shlex
import sys

from .arguments import UsageError, build_parser
from .compare import cmd_compare
from .demo import cmd_demo
from .model_commands import cmd_encode, cmd_eval, cmd_features, cmd_search
from .serve import cmd_serve
from .sweep import cmd_sweep
from .train_commands import cmd_train

EXIT_USAGE = 2


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "encode": cmd_encode, "search": cmd_search, "demo": cmd_demo,
            "features": cmd_features, "serve": cmd_serve, "compare": cmd_compare, "sweep": cmd_sweep}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    prog = f"dchml {argv[0]}" if argv and argv[0] in COMMANDS else "dchml"  # a flag's mistake names its command
    import torch

    threads = torch.get_num_threads()
    args = None
    try:
        args = parser.parse_args(argv)
        prog = f"dchml {args.command}"
        if getattr(args, "threads", None):
            torch.set_num_threads(args.threads)
        return COMMANDS[args.command](args, argv) or 0  # a command may return 1: it ended, some of its work failed
    except KeyboardInterrupt:
        print(f"{prog}: interrupted{_after_interrupt(args)}", file=sys.stderr)
        return 130
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except Exception as exc:
        if os.environ.get("DCHML_DEBUG") == "1" or not is_user_error(exc):
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        torch.set_num_threads(threads)  # main() may run in-process (tests, notebooks)


def _after_interrupt(args) -> str:
    """What the user can do after Ctrl-C: `train` resumes, `compare` and `sweep` continue."""
    if args is not None and args.command in ("compare", "sweep"):
        return "; rerun the same command to continue: finished runs are kept, interrupted ones resume"
    if args is None or args.command not in ("train", "demo"):
        return ""
    from ..io.run_dir import CHECKPOINT

    if args.command == "demo":
        return f"; the demo cannot resume: run `dchml demo --out {shlex.quote(args.out)} --force` to start it again"
    if os.path.isfile(os.path.join(args.out, CHECKPOINT)):
        threads = f" --threads {args.threads}" if getattr(args, "threads", None) else ""
        return (f"; the last completed epoch is in {os.path.join(args.out, CHECKPOINT)} "
                f"(continue with `dchml train --out {shlex.quote(args.out)} --resume{threads}`)")
    return "; no epoch was completed"


def is_user_error(exc) -> bool:
    from ..io.atomic import USER_ERRORS  # DataError, CheckpointError and JSONDecodeError are ValueErrors

    return isinstance(exc, (UsageError,) + USER_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
