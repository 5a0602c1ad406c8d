"""Command line: the window by default (`--demo`: on the demo model); one module per subcommand for terminals and
scripts (each adds its parser and sets `run`).

Bad input exits with status 2 and one line naming the file and the fix; it never prints a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

from medgemma_desktop import __version__
from medgemma_desktop.core import collection
from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.logging_setup import setup_logging

log = logging.getLogger(__name__)
EXIT_USER_ERROR = 2
COMMANDS = ("ask", "history", "batch", "doctor", "models", "bench", "serve")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medgemma-desktop",
                                     description="MedGemma 1.5 4B on your own GPU, offline. Research use only.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="log in detail (the log file and the terminal), for a bug report; put it before a "
                             "command: medgemma-desktop --debug ask ...")
    parser.add_argument("--demo", action="store_true",
                        help="open the window on a tiny demo model and a sample CT + MR study (answers mean nothing)")
    parser.add_argument("--open", nargs="*", type=Path, default=[], metavar="FILE",
                        help="images, DICOM files or folders to open in the window")
    parser.add_argument("--quit-after", type=float, metavar="SECONDS",
                        help="close the window after SECONDS, as the close button does (for smoke tests)")
    commands = parser.add_subparsers(dest="command")
    with collection.deferred():  # the commands' modules import torch and transformers
        for name in COMMANDS:
            importlib.import_module(f"{__name__}.{name}").add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    termination = None
    if args.command is None:  # the window: SIGTERM and Ctrl+C are taken over before anything slow (Qt, torch)
        from medgemma_desktop.ui.termination import TerminationRequest

        termination = TerminationRequest()
        uninstall_termination = termination.install()
    setup_logging(debug=args.debug)
    log.info("medgemma-desktop %s: %s", __version__, args.command or "window")  # never argv: it holds questions
    log.debug("Python %s on %s", platform.python_version(), platform.platform())
    try:
        if termination is None:
            status = args.run(args)
        else:
            from medgemma_desktop.ui.app import run_app

            status = run_app(sys.argv[:1], demo=args.demo, files=args.open, quit_after_s=args.quit_after,
                             termination=termination, debug=args.debug)
    except UserFacingError as exc:
        log.info("refused (%s)", exc.kind)
        print(f"medgemma-desktop: {exc}", file=sys.stderr)
        status = EXIT_USER_ERROR
    finally:
        if termination is not None:
            uninstall_termination()
    log.info("exit status %d", status)
    return status

if __name__ == "__main__":
    sys.exit(main())
