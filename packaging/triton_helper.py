"""Build Triton's C driver helper for the CUDA installer, so the installed app compiles its decode step without
a C compiler (see medgemma_desktop/core/triton_helpers.py).

Runs Triton's own build of the helper (its flags, its headers, this Python's) with the C compiler of the build
machine, which has no NVIDIA driver: the link against libcuda goes to an empty stand-in library with the driver's
name (libcuda.so.1), so the module records that it needs the driver and finds the real one on the user's machine.
Writes each module and the SHA-256 of the C source it was built from into OUT.

Usage: python packaging/triton_helper.py OUT   (in the environment that is frozen: build/venv-cuda)
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medgemma_desktop.core.triton_helpers import DIGEST_SUFFIX, source_digest, triton_build


def build_helpers(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    built: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="triton-helper-") as scratch:
        stub = Path(scratch, "stub")
        stub.mkdir()
        compiler = shlex.split(os.environ.get("CC", "")) or [shutil.which("gcc") or shutil.which("cc") or ""]
        if not compiler[0]:
            raise SystemExit("no C compiler found (install gcc): the helper is built here, not on users' machines")
        # Triton 3.7 links `-l:libcuda.so.1` (the file name), earlier releases `-lcuda`: the stand-in answers both.
        subprocess.run([*compiler, "-shared", "-fPIC", "-x", "c", os.devnull, "-Wl,-soname,libcuda.so.1",
                        "-o", str(stub / "libcuda.so.1")], check=True)
        (stub / "libcuda.so").symlink_to("libcuda.so.1")
        # The stand-in defines none of the cu* functions the helper calls, so a compiler that links `--as-needed` by
        # default (Debian 12's and Ubuntu's gcc do) would drop it, and with it the helper's need of the driver: the
        # helper would then fail to load ("undefined symbol: cuGetErrorString"). Triton runs $CC: this wrapper keeps
        # every library named on the command line.
        wrapper = Path(scratch, "cc")
        wrapper.write_text(f'#!/bin/sh\nexec {shlex.join(compiler)} -Wl,--no-as-needed "$@"\n')
        wrapper.chmod(0o755)
        os.environ["CC"] = str(wrapper)
        os.environ["TRITON_LIBCUDA_PATH"] = str(stub)
        os.environ["TRITON_CACHE_DIR"] = str(Path(scratch, "cache"))
        from triton import knobs

        def capture(name: str, src: str, srcdir: str, *rest: object) -> str:
            module = Path(triton_build(name, src, srcdir, *rest))
            shutil.copy2(module, out / module.name)
            (out / (module.name + DIGEST_SUFFIX)).write_text(source_digest(Path(src)) + "\n")
            built.append(out / module.name)
            return str(module)

        knobs.build.impl = capture
        from triton.backends.nvidia.driver import CudaUtils

        try:
            CudaUtils()
        except (ImportError, OSError, RuntimeError):  # loading needs the real driver, which only users have
            pass
        finally:
            knobs.build.impl = None
    if not built:
        raise SystemExit("Triton built no helper module (has its driver changed?)")
    for module in built:
        check_links_driver(module)
    return built


def check_links_driver(module: Path) -> None:
    """The module must name the driver (NEEDED libcuda.so.1), found by the user's loader: no RPATH or RUNPATH,
    which would point into this build machine."""
    dynamic = subprocess.run(["readelf", "-d", str(module)], check=True, capture_output=True, text=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dynamic)
    if "libcuda.so.1" not in needed or re.search(r"\((RPATH|RUNPATH)\)", dynamic):
        raise SystemExit(f"{module.name} must need libcuda.so.1 and have no RPATH/RUNPATH; it needs {needed}"
                         + (" and has an RPATH/RUNPATH" if "PATH)" in dynamic else ""))


if __name__ == "__main__":
    for path in build_helpers(Path(sys.argv[1])):
        print(path)
