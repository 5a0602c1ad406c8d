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
        compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            raise SystemExit("no C compiler found (install gcc): the helper is built here, not on users' machines")
        subprocess.run([compiler, "-shared", "-fPIC", "-x", "c", os.devnull, "-Wl,-soname,libcuda.so.1",
                        "-o", str(stub / "libcuda.so")], check=True)
        os.environ["TRITON_LIBCUDA_PATH"] = str(stub)
        os.environ["TRITON_CACHE_DIR"] = str(Path(scratch, "cache"))
        from triton import knobs

        def capture(name: str, src: str, srcdir: str, *rest: object) -> str:
            knobs.build.impl = None
            try:
                module = Path(triton_build(name, src, srcdir, *rest))
            finally:
                knobs.build.impl = capture
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
    return built


if __name__ == "__main__":
    for path in build_helpers(Path(sys.argv[1])):
        print(path)
