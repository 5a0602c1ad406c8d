#!/usr/bin/env bash
# Build one installer flavour's frozen app and .deb, then smoke-test the .deb (ldd over every bundled library, doctor
# inside the frozen app, compressed DICOM through `ask`, the window on Xvfb; for CUDA also the GPU code per
# architecture and Triton's prebuilt C helper: triton_helpers/cuda_utils*.so with its .src.sha256, NEEDED libcuda.so.1,
# no RPATH/RUNPATH, digest = sha256 of the bundled triton/backends/nvidia/driver.c). Needs root for apt-get. Measured on 2 cores: see packaging/README.md for how long each part takes.
#   bash packaging/ci_smoke.sh        # CPU flavour, from the repository's .venv (run .ci/run first): the CI job
#   bash packaging/ci_smoke.sh cuda   # NVIDIA flavour, from build/venv-cuda, which build.py makes from PyPI
set -euo pipefail
cd "$(dirname "$0")/.."
flavour="${1:-cpu}"

# Xvfb, xwininfo and ImageMagick for the window test; desktop-file-utils validates the menu entry.
if ! command -v Xvfb >/dev/null || ! command -v xwininfo >/dev/null || ! command -v import >/dev/null \
        || ! command -v desktop-file-validate >/dev/null; then
    apt-get update -qq && apt-get install -y -qq xvfb x11-utils imagemagick desktop-file-utils >/dev/null
fi
arch="$(dpkg --print-architecture)"
case "$flavour" in
cpu)
    .venv/bin/pip install -q pyinstaller==6.22.3 pyinstaller-hooks-contrib==2026.9  # the versions the spec was checked with
    .venv/bin/python packaging/build.py --no-tarball
    .venv/bin/python packaging/smoke_test.py --install-depends packaging/dist/cpu/medgemma-desktop_*_"$arch".deb
    ;;
cuda)
    # The environment (5.5 GB), the frozen folder (4.2 GB with Triton), the .deb (2.2 GB), the smoke test's copy.
    free_gb=$(df --output=avail -BG . | tail -1 | tr -dc 0-9)
    if [ "$free_gb" -lt 17 ]; then echo "the CUDA build needs about 17 GB of free disk, $free_gb GB here" >&2; exit 1; fi
    # Makes or updates build/venv-cuda, then builds there: Triton's C helper (needs gcc), the frozen app, the .deb.
    python3 packaging/build.py --flavour cuda --no-tarball
    build/venv-cuda/bin/python packaging/smoke_test.py --install-depends \
        packaging/dist/cuda/medgemma-desktop-cuda_*_"$arch".deb
    ;;
*)
    echo "usage: $0 [cpu|cuda]" >&2
    exit 2
    ;;
esac
