"""Frozen-app entry point: PyInstaller needs a script outside the package so the package is imported normally."""

import multiprocessing
import sys

from medgemma_desktop.cli import main

if __name__ == "__main__":
    # Spawned children (the default start method on Windows and macOS) must not re-run the app in a frozen build.
    multiprocessing.freeze_support()
    sys.exit(main())
