"""Build the frozen one-folder app, then a Debian package and a .tar.gz of the same folder, in one of two flavours.

The frozen app bundles whatever torch its build environment holds, so the flavour is the environment:
- `cpu` (default): the environment running this script, which must hold the CPU torch wheel (the repository's
  .venv here and in CI);
- `cuda`: a separate environment, build/venv-cuda, that this script makes (or updates) and then re-runs itself in:
  PyPI's torch wheel for Linux x86-64, which is the CUDA build with the nvidia-* wheels it depends on. It keeps
  Triton and first builds Triton's C driver helper there (packaging/triton_helper.py), which the bundle carries so
  that the installed app compiles its decode step without a C compiler; `--without-triton` leaves both out.
Artifacts go to packaging/dist/<flavour>/ (git-ignored); each step prints its duration so the build time can be
tracked.

    python packaging/build.py                   # CPU: freeze + .deb + .tar.gz
    python packaging/build.py --flavour cuda    # NVIDIA: the same, from build/venv-cuda, with Triton and its helper
    python packaging/build.py --skip-freeze     # repackage an existing frozen folder
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

PACKAGING = Path(__file__).resolve().parent
ROOT = PACKAGING.parent
NAME = "medgemma-desktop"
INSTALL_DIR = Path("opt") / NAME
FLAVOURS = ("cpu", "cuda")

# The CUDA build environment: the torch release the app is tested with, from PyPI (whose Linux x86-64 wheel is the
# CUDA build), and the PyInstaller versions the spec was checked with.
CUDA_ENV = ROOT / "build" / "venv-cuda"
TORCH_REQUIREMENT = "torch==2.13.0"
PYPI = "https://pypi.org/simple"
BUILD_TOOLS = ["pyinstaller==6.22.3", "pyinstaller-hooks-contrib==2026.9"]
CUDA_TEST_TOOLS = ["nvidia-cuda-cuobjdump==13.5.37"]  # the smoke test lists the bundle's GPU code with it

# System libraries the bundled ELF files link against directly and the build does not bundle (found with
# readelf; the smoke test fails if one is missing here). Alternatives name Debian 13 / Ubuntu 24.04's t64 renames.
DEB_DEPENDS = [
    "libstdc++6", "libgcc-s1", "zlib1g", "libzstd1", "liblzma5", "libbz2-1.0", "libbrotli1", "libffi8",
    "libuuid1", "libsqlite3-0", "libssl3t64 | libssl3", "libreadline8t64 | libreadline8", "libgssapi-krb5-2",
    "libglib2.0-0t64 | libglib2.0-0", "libdbus-1-3", "libfontconfig1", "libfreetype6",
    "libegl1", "libgl1", "libdrm2", "libwayland-client0",
    "libx11-6", "libx11-xcb1", "libxkbcommon0", "libxkbcommon-x11-0",
    "libxcb1", "libxcb-cursor0", "libxcb-glx0", "libxcb-icccm4", "libxcb-image0", "libxcb-keysyms1",
    "libxcb-randr0", "libxcb-render0", "libxcb-render-util0", "libxcb-shape0", "libxcb-shm0", "libxcb-sync1",
    "libxcb-util1", "libxcb-xfixes0", "libxcb-xkb1",
]
DEB_RECOMMENDS = ["libwayland-cursor0", "libwayland-egl1"]  # Qt's Wayland platform plugin


@contextmanager
def timed(step: str) -> Iterator[None]:
    """Print how long a step took: the build time decides whether CI can afford it."""
    start = time.monotonic()
    print(f"== {step}", flush=True)
    yield
    print(f"== {step}: {time.monotonic() - start:.0f} s", flush=True)


def package_name(flavour: str) -> str:
    """The Debian package's name: the two flavours install the same files, so they are two packages that replace
    each other."""
    return NAME if flavour == "cpu" else f"{NAME}-{flavour}"


def make_cuda_env(venv: Path, index_url: str) -> Path:
    """Create or update the CUDA build environment; returns its Python.

    pip's own configuration is ignored (PIP_CONFIG_FILE=/dev/null, no PIP_* variables): a local mirror or a
    find-links folder holding torch's `+cpu` wheel would otherwise win, since `2.13.0+cpu` satisfies `==2.13.0` and
    sorts above plain `2.13.0`.
    """
    python = venv / "Scripts" / "python.exe" if os.name == "nt" else venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    # No cache: the wheels (3 GB) would stay on disk twice.
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-cache-dir",
                    "--index-url", index_url, TORCH_REQUIREMENT, "-e", f"{ROOT}[server]", *BUILD_TOOLS,
                    *CUDA_TEST_TOOLS], check=True, env=env)
    return python


def build_triton_helper(folder: Path) -> Path:
    """Triton's C driver helper, built here (packaging/triton_helper.py, with this environment's Triton and Python)
    so the installed app compiles its decode step without a C compiler; the spec bundles `folder` as
    triton_helpers/. Fails the build in one line if the helper cannot be made."""
    if folder.exists():
        shutil.rmtree(folder)
    done = subprocess.run([sys.executable, str(PACKAGING / "triton_helper.py"), str(folder)], cwd=ROOT,
                          capture_output=True, text=True)
    modules = sorted(folder.glob("cuda_utils*.so")) if folder.is_dir() else []
    if done.returncode != 0 or not modules or not all(m.with_name(m.name + ".src.sha256").is_file() for m in modules):
        reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}, no cuda_utils module"])[-1]
        raise SystemExit(f"could not build Triton's C helper (packaging/triton_helper.py): {reason} "
                         "(needs a C compiler and Triton here; or build --without-triton)")
    for module in modules:
        print(f"   {module.relative_to(ROOT) if module.is_relative_to(ROOT) else module}", flush=True)
    return folder


def freeze(out: Path, flavour: str, triton_helpers: Path | None) -> Path:
    """Run PyInstaller on the spec (which checks that torch matches the flavour); returns the frozen folder.
    `triton_helpers`: the CUDA flavour keeps Triton and bundles this folder; None leaves Triton out."""
    subprocess.run([sys.executable, "-m", "PyInstaller", "--noconfirm", "--clean", "--log-level", "WARN",
                    "--distpath", str(out / "pyinstaller"), "--workpath", str(out / "work"),
                    str(PACKAGING / "medgemma-desktop.spec"), "--", "--flavour", flavour,
                    *(["--triton-helpers", str(triton_helpers)] if triton_helpers else
                      ["--without-triton"] if flavour == "cuda" else [])], check=True, cwd=ROOT)
    return out / "pyinstaller" / NAME


def app_icon_svg() -> Path:
    """The app's own icon when the package has one, else the packaging fallback."""
    own = ROOT / "medgemma_desktop" / "resources" / "icon.svg"
    return own if own.is_file() else PACKAGING / "linux" / "medgemma-desktop.svg"


def render_png(svg: Path, png: Path, size: int) -> None:
    """Rasterise the SVG icon with Qt (already a build dependency) for desktops that want PNG icons."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    _app = QGuiApplication.instance() or QGuiApplication([])
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    QSvgRenderer(str(svg)).render(painter)
    painter.end()
    png.parent.mkdir(parents=True, exist_ok=True)
    if not image.save(str(png)):
        raise RuntimeError(f"could not write {png}")


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def deb_architecture() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], check=True, capture_output=True, text=True).stdout.strip()


def stage_deb(frozen: Path, staging: Path, app_version: str, flavour: str) -> None:
    """Lay out the Debian package tree: the app under /opt, a /usr/bin link, menu entry, icons, copyright."""
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(frozen, staging / INSTALL_DIR, symlinks=True, copy_function=os.link)  # no second copy of GBs
    bin_dir = staging / "usr" / "bin"
    bin_dir.mkdir(parents=True)
    # A relative link keeps the tree relocatable (dpkg-deb -x into a test root); the bootloader finds its
    # _internal folder through /proc/self/exe, so running through the link works.
    (bin_dir / NAME).symlink_to(Path("..", "..", INSTALL_DIR, NAME))
    share = staging / "usr" / "share"
    (share / "applications").mkdir(parents=True)
    shutil.copy2(PACKAGING / "linux" / f"{NAME}.desktop", share / "applications" / f"{NAME}.desktop")
    icons = share / "icons" / "hicolor"
    (icons / "scalable" / "apps").mkdir(parents=True)
    shutil.copy2(app_icon_svg(), icons / "scalable" / "apps" / f"{NAME}.svg")
    for size in (48, 128, 256):
        render_png(app_icon_svg(), icons / f"{size}x{size}" / "apps" / f"{NAME}.png", size)
    doc = share / "doc" / NAME
    doc.mkdir(parents=True)
    notices = sorted((PACKAGING / "notices").glob("*.txt"))
    (doc / "copyright").write_text("\n\n".join(n.read_text(encoding="utf-8") for n in notices), encoding="utf-8")
    other = package_name("cuda" if flavour == "cpu" else "cpu")
    control = {
        "Package": package_name(flavour),
        "Version": app_version,
        "Architecture": deb_architecture(),
        "Maintainer": "MedGemma Desktop maintainers <medgemma-desktop@localhost>",
        "Installed-Size": str(folder_size(staging) // 1024),
        # The bundled Python and extensions were linked against the build machine's glibc.
        "Depends": ", ".join([f"libc6 (>= {platform.libc_ver()[1]})", *DEB_DEPENDS]),
        "Recommends": ", ".join(DEB_RECOMMENDS),
        # Both flavours own /opt/medgemma-desktop and /usr/bin/medgemma-desktop: installing one removes the other.
        "Conflicts": other,
        "Replaces": other,
        "Section": "science",
        "Priority": "optional",
        "Description": "Offline MedGemma 1.5 4B for medical images (research use only)\n"
                       " Drop a medical image, a DICOM file or a CT/MRI series into the window, ask a question and\n"
                       " read the answer streamed from MedGemma 1.5 4B (4-bit NF4 + LoRA) on this machine.\n"
                       " The model weights are not included: they are governed by Google's Health AI Developer\n"
                       " Foundations terms and are downloaded separately.\n"
                       + (" This build runs on the CPU (slowly); medgemma-desktop-cuda uses an NVIDIA GPU."
                          if flavour == "cpu" else
                          " This build uses an NVIDIA GPU (driver R580 or newer, for CUDA 13.0), else the CPU."),
    }
    (staging / "DEBIAN").mkdir()
    (staging / "DEBIAN" / "control").write_text("".join(f"{k}: {v}\n" for k, v in control.items()),
                                                 encoding="utf-8")


def build_deb(staging: Path, deb: Path, compression: str) -> None:
    """zstd by default: xz -6 makes a 15 % smaller package (229 vs 268 MiB) but took 11.5 min, not 1.2, here.

    Every distribution new enough for the frozen app (glibc >= 2.36 on Debian's side, Ubuntu >= 22.04 with a
    build there) has a dpkg that reads zstd packages (Debian >= 1.21.18, Ubuntu >= 21.10).
    """
    level = {"zstd": "12", "xz": "6"}[compression]
    subprocess.run(["dpkg-deb", "--root-owner-group", f"-Z{compression}", f"-z{level}", "--build", str(staging),
                    str(deb)], check=True)


def build_tarball(frozen: Path, tarball: Path, top: str) -> None:
    """The same folder for any Linux: unpack anywhere and run ./medgemma-desktop."""
    with tarfile.open(tarball, "w:gz", compresslevel=6) as archive:
        archive.add(frozen, arcname=top)
        archive.add(PACKAGING / "linux" / f"{NAME}.desktop", arcname=f"{top}/share/{NAME}.desktop")
        archive.add(app_icon_svg(), arcname=f"{top}/share/{NAME}.svg")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavour", choices=FLAVOURS, default="cpu",
                        help="cpu: this environment's CPU torch; cuda: PyPI's CUDA torch in build/venv-cuda "
                             "(default: %(default)s)")
    parser.add_argument("--index-url", default=PYPI,
                        help="where the cuda flavour's environment gets its packages (default: %(default)s)")
    parser.add_argument("--without-triton", action="store_true",
                        help="cuda: leave out Triton (0.5 GB) and its prebuilt C helper, and with them the compiled "
                             "decode step (see the spec)")
    parser.add_argument("--out", type=Path, help="artifact folder (default: packaging/dist/<flavour>)")
    parser.add_argument("--skip-freeze", action="store_true", help="reuse the frozen folder from a previous run")
    parser.add_argument("--freeze-only", action="store_true",
                        help="only the frozen folder (Windows, macOS: their installers are made from it)")
    parser.add_argument("--deb-compression", choices=["zstd", "xz"], default="zstd",
                        help="xz for the smallest package, zstd for a fast build (default: %(default)s)")
    parser.add_argument("--no-tarball", action="store_true", help="only build the .deb (the smoke test needs no more)")
    args = parser.parse_args()
    start = time.monotonic()
    if args.flavour == "cuda" and Path(sys.prefix).resolve() != CUDA_ENV.resolve():
        with timed(f"CUDA build environment {CUDA_ENV.relative_to(ROOT)} ({TORCH_REQUIREMENT} from {args.index_url})"):
            python = make_cuda_env(CUDA_ENV, args.index_url)
        os.execv(python, [str(python), __file__, *sys.argv[1:]])  # the rest runs inside that environment
    out: Path = (args.out or PACKAGING / "dist" / args.flavour).resolve()
    out.mkdir(parents=True, exist_ok=True)
    app_version = version("medgemma-desktop")

    frozen = out / "pyinstaller" / NAME
    if not args.skip_freeze:
        helpers = None
        if args.flavour == "cuda" and not args.without_triton:
            if not sys.platform.startswith("linux"):
                raise SystemExit("Triton's prebuilt C helper is built for Linux only: pass --without-triton")
            with timed("Triton's C helper (packaging/triton_helper.py)"):
                helpers = build_triton_helper(out / "triton_helpers")
        without = ", without Triton" if args.flavour == "cuda" and helpers is None else ""
        with timed(f"PyInstaller one-folder build ({args.flavour}{without})"):
            frozen = freeze(out, args.flavour, helpers)
    if not any((frozen / exe).is_file() for exe in (NAME, f"{NAME}.exe")):
        raise SystemExit(f"no frozen app at {frozen}; run without --skip-freeze")
    if args.freeze_only:
        print(f"\nfrozen in {time.monotonic() - start:.0f} s: {frozen} ({folder_size(frozen) / 2**20:.0f} MiB)")
        return 0

    deb = out / f"{package_name(args.flavour)}_{app_version}_{deb_architecture()}.deb"
    with timed("Debian package"):
        stage_deb(frozen, out / "deb-root", app_version, args.flavour)
        build_deb(out / "deb-root", deb, args.deb_compression)
    shutil.rmtree(out / "deb-root")
    artifacts = [deb]
    if not args.no_tarball:
        suffix = "" if args.flavour == "cpu" else f"-{args.flavour}"
        tarball = out / f"{NAME}-{app_version}-linux-{platform.machine()}{suffix}.tar.gz"
        with timed(".tar.gz"):
            build_tarball(frozen, tarball, f"{NAME}-{app_version}")
        artifacts.append(tarball)

    print(f"\nbuilt in {time.monotonic() - start:.0f} s")
    print(f"  {folder_size(frozen) / 2**20:8.0f} MiB  {frozen} (unpacked folder)")
    for artifact in artifacts:
        print(f"  {artifact.stat().st_size / 2**20:8.0f} MiB  {artifact}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
