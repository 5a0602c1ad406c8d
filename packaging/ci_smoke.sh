#!/usr/bin/env bash
# Optional CI job: build the frozen app and the .deb, then smoke-test the .deb (doctor inside the frozen app,
# compressed DICOM through `ask`, the window on Xvfb). Needs the repository's .venv (run .ci/run first) and
# root for apt-get. Measured on 2 cores: see packaging/README.md for how long each part takes.
set -euo pipefail
cd "$(dirname "$0")/.."

# Xvfb and ImageMagick for the window test; desktop-file-utils validates the menu entry.
if ! command -v Xvfb >/dev/null || ! command -v import >/dev/null || ! command -v desktop-file-validate >/dev/null; then
    apt-get update -qq && apt-get install -y -qq xvfb imagemagick desktop-file-utils >/dev/null
fi
.venv/bin/pip install -q pyinstaller==6.22.3 pyinstaller-hooks-contrib==2026.9  # the versions the spec was checked with
.venv/bin/python packaging/build.py --no-tarball
.venv/bin/python packaging/smoke_test.py --install-depends packaging/dist/medgemma-desktop_*_"$(dpkg --print-architecture)".deb
