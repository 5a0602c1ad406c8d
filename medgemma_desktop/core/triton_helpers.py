"""Triton's C helper, built ahead of time, so that compiling the decode step needs no C compiler.

torch.compile's GPU kernels are compiled by Triton with the ptxas it bundles and launched by inductor's own
launcher; the one piece of C that Triton still compiles at run time is its driver helper (`cuda_utils`: host code,
the same for every GPU). An installed app has no C compiler, so without it the compiled step cannot be built and
the app keeps the uncompiled CUDA graph (about a third of the speed). The CUDA installer builds the helper once
(packaging/triton_helper.py) and ships it in `triton_helpers/`; `serve_prebuilt` hands it to Triton in place of a
compiler run, but only for the exact C source it was built from (a SHA-256 beside each module).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

FOLDER = "triton_helpers"  # in the frozen app's bundle
DIGEST_SUFFIX = ".src.sha256"


def bundled_folder() -> Path | None:
    """The installer's prebuilt helpers, when running from the installer's bundle and it has them."""
    bundle = getattr(sys, "_MEIPASS", None)
    folder = Path(bundle, FOLDER) if bundle else None
    return folder if folder is not None and folder.is_dir() else None


def source_digest(source: Path) -> str:
    return hashlib.sha256(source.read_bytes()).hexdigest()


def triton_build(name: str, src: str, srcdir: str, *rest: object) -> str:
    """Triton's own C build, from the arguments its build hook receives, with the hook lifted while it runs (the
    build would otherwise call the hook again). Triton 3.6's `_build` takes one argument more than its hook is
    given, the extra compiler flags: none."""
    from triton import knobs
    from triton.runtime import build

    hook, knobs.build.impl = knobs.build.impl, None
    try:
        missing = len(inspect.signature(build._build).parameters) - 3 - len(rest)
        return build._build(name, src, srcdir, *rest, *([] for _ in range(missing)))
    finally:
        knobs.build.impl = hook


def serve_prebuilt(folder: Path) -> bool:
    """Make Triton take its helper modules from `folder` instead of compiling them (other modules, and any whose
    source differs, are compiled as before). False when `folder` has none or this Triton cannot be told."""
    modules = {path.name: path for path in folder.iterdir() if path.suffix == ".so"}
    if not modules:
        return False
    try:
        from triton import knobs
    except ImportError:  # no Triton (the CPU app)
        return False
    if not hasattr(knobs, "build") or not hasattr(knobs.build, "impl"):  # a Triton without build hooks
        return False
    previous = knobs.build.impl

    def build_or_serve(name: str, src: str, srcdir: str, *rest: object) -> str:
        wanted = source_digest(Path(src))
        for filename, path in modules.items():
            digest = path.with_name(filename + DIGEST_SUFFIX)
            if filename.startswith(f"{name}.") and digest.is_file() and digest.read_text().strip() == wanted:
                log.info("Triton's %s helper: prebuilt (%s)", name, path)
                return str(path)
        if previous is not None:
            return previous(name, src, srcdir, *rest)
        return triton_build(name, src, srcdir, *rest)

    knobs.build.impl = build_or_serve
    return True
