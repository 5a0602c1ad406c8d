"""Command line: the window by default (`--demo`: on the demo model); one module per subcommand for terminals and
scripts (each adds its parser and sets `run`).

Bad input exits with status 2 and one line naming the file and the fix; it never prints a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from medgemma_desktop import __version__
from medgemma_desktop.cli import ask, batch, bench, doctor, history, models, serve
from medgemma_desktop.core.errors import UserFacingError

EXIT_USER_ERROR = 2
COMMANDS = (ask, history, batch, doctor, models, bench, serve)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medgemma-desktop",
                                     description="MedGemma 1.5 4B on your own GPU, offline. Research use only.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--demo", action="store_true",
                        help="open the window on a tiny demo model and a sample CT + MR study (answers mean nothing)")
    parser.add_argument("--open", nargs="*", type=Path, default=[], metavar="FILE",
                        help="images, DICOM files or folders to open in the window")
    parser.add_argument("--quit-after", type=float, metavar="SECONDS",
                        help="close the window after SECONDS, as the close button does (for smoke tests)")
    commands = parser.add_subparsers(dest="command")
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command is not None:
            return args.run(args)
        from medgemma_desktop.ui.app import run_app

        return run_app(sys.argv[:1], demo=args.demo, files=args.open, quit_after_s=args.quit_after)
    except UserFacingError as exc:
        print(f"medgemma-desktop: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
