"""Smoke-test the built .deb the way a user gets it: unpacked into a clean root, run with a bare environment.

Proves the frozen app carries everything it needs (torch, bitsandbytes' native library, PEFT, the Gemma 3
processor, pydicom's and pylibjpeg's plugins, Qt's platform plugins): every bundled shared library resolves
(`ldd`), `--version`, `doctor` (the whole tiny-checkpoint pipeline), `ask` on compressed DICOM files, then the
window under Xvfb with a screenshot. Any stderr line not on the allowlist fails the test, as in qutebrowser's
build_release smoke test. For the CUDA package (medgemma-desktop-cuda) it also reads the GPU code in every bundled
library (`cuobjdump`) and requires code for each supported GPU architecture; on a machine without an NVIDIA GPU,
`doctor` must say so and pass on the CPU (on one with a GPU, it runs the pipeline there).

    python packaging/smoke_test.py packaging/dist/cpu/medgemma-desktop_0.1.0_amd64.deb
    python packaging/smoke_test.py packaging/dist/cuda/medgemma-desktop-cuda_0.1.0_amd64.deb
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

NAME = "medgemma-desktop"

# Known harmless stderr lines. Anything else is a finding.
STDERR_ALLOWLIST = [
    # bitsandbytes >= 0.49 tries the optional `kernels` package first, then uses its own CPU kernels.
    r"Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'\..*",
    # transformers: no torchvision is bundled, so the Gemma 3 processor uses its PIL backend (the tested path).
    r"\[transformers\] `Gemma3ImageProcessor` requires torchvision \(not installed\); falling back to .*",
    # A CUDA package built --without-triton: torch's CUDA build notes the missing Triton once, at import of its flop
    # counter.
    r"W\d{4} [\d:.]+ \d+ \S+/torch/utils/flop_counter\.py:\d+\] triton not found; flop counting will not work for "
    r"triton kernels",
    # tqdm progress bars (carriage-return separated) written by the checkpoint writer and the weight loader.
    r"(Writing model shards|Loading weights):.*",
    # `ask` reports load progress and the closing statistics on stderr by design.
    r"\[\s*\d+%\] .*",
    r"-- \d+ prompt \+ \d+ new tokens; .*",
    r"-- kept as conversation \d+ \(medgemma-desktop history show \d+\)",  # `ask` keeps it in the history
    r"-- [A-Za-z -]+: .*",  # the task `ask` chose for a series, with its label
    # Xvfb has no GL: Qt falls back to software rendering and says so.
    r"qt\.glx: qglx_findConfig: Failed to finding matching FBConfig.*",
    r"Could not initialize GLX",
]

# Compressed DICOM files shipped with pydicom, one per decoder plugin the frozen app must carry.
DICOM_SAMPLES = {
    "MR_small_jp2klossless.dcm": "JPEG 2000 (pylibjpeg-openjpeg)",
    "MR_small_jpeg_ls_lossless.dcm": "JPEG-LS (pyjpegls)",
    "MR_small_RLE.dcm": "RLE (pylibjpeg-rle)",
    "SC_rgb_jpeg_gdcm.dcm": "lossless JPEG (pylibjpeg-libjpeg)",
    "JPGExtended.dcm": "12-bit extended JPEG (pylibjpeg-libjpeg)",
}


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


class SmokeFailure(Exception):
    """One failed check; the message says what and shows the output."""


def unexpected_stderr(stderr: str) -> list[str]:
    lines = [part.strip() for line in stderr.splitlines() for part in line.split("\r")]
    return [line for line in lines if line and not any(re.fullmatch(p, line) for p in STDERR_ALLOWLIST)]


def clean_env(home: Path) -> dict[str, str]:
    """Nothing from the developer's environment: no venv, no PYTHONPATH, a fresh home and config dirs."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "XDG_RUNTIME_DIR": str(home / "runtime"),
    }
    (home / "runtime").mkdir(parents=True, mode=0o700, exist_ok=True)
    return env


def run(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float) -> Run:
    start = time.monotonic()
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return Run(done.returncode, done.stdout, done.stderr, time.monotonic() - start)


def check(run_: Run, what: str, expect_stdout: str | None = None) -> None:
    problems = []
    if run_.returncode != 0:
        problems.append(f"exit status {run_.returncode}")
    if expect_stdout is not None and expect_stdout not in run_.stdout:
        problems.append(f"stdout lacks {expect_stdout!r}")
    if unexpected := unexpected_stderr(run_.stderr):
        problems.append("unexpected stderr lines:\n    " + "\n    ".join(unexpected))
    if problems:
        raise SmokeFailure(f"{what}: " + "; ".join(problems) + f"\n--- stdout ---\n{run_.stdout}"
                           f"\n--- stderr ---\n{run_.stderr}")
    print(f"ok   {what} ({run_.seconds:.1f} s)")


def check_layout(root: Path) -> Path:
    """The package installs what the README promises; returns the frozen executable."""
    exe = root / "opt" / NAME / NAME
    expected = [
        exe,
        root / "usr" / "share" / "applications" / f"{NAME}.desktop",
        root / "usr" / "share" / "icons" / "hicolor" / "scalable" / "apps" / f"{NAME}.svg",
        root / "usr" / "share" / "icons" / "hicolor" / "256x256" / "apps" / f"{NAME}.png",
        root / "usr" / "share" / "doc" / NAME / "copyright",
        root / "opt" / NAME / "_internal" / "notices" / "HAI-DEF-NOTICE.txt",
    ]
    missing = [str(p.relative_to(root)) for p in expected if not p.is_file()]
    link = root / "usr" / "bin" / NAME
    if not link.is_symlink() or link.resolve() != exe.resolve():
        missing.append(f"usr/bin/{NAME} -> /opt/{NAME}/{NAME}")
    weights = [*root.rglob("*.safetensors"), *root.rglob("*.gguf"), *root.rglob("*.bin")]
    if weights:
        raise SmokeFailure(f"model weights must never be bundled, found {weights[:3]}")
    if missing:
        raise SmokeFailure(f"the package lacks {missing}")
    if shutil.which("desktop-file-validate"):
        subprocess.run(["desktop-file-validate", str(expected[1])], check=True)
    print("ok   package layout (/opt app, /usr/bin link, .desktop, icons, notices, no weights)")
    return exe


# Libraries the app may lack without harm: bitsandbytes' GPU kernels (CUDA comes with the CUDA build), Qt's
# Wayland, EGLFS/KMS and GTK-theme plugins (used only on such desktops, pulled in by the .deb's Recommends).
OPTIONAL_ELF = [
    "bitsandbytes/libbitsandbytes_cuda*",
    "PySide6/Qt/plugins/platforms/libqwayland*",
    "PySide6/Qt/plugins/platforms/libqeglfs*",
    "PySide6/Qt/plugins/platforms/libqminimalegl*",
    "PySide6/Qt/plugins/platforms/libqvkkhrdisplay*",
    "PySide6/Qt/plugins/wayland-*/*",
    "PySide6/Qt/plugins/egldeviceintegrations/*",
    "PySide6/Qt/plugins/platformthemes/libqgtk3*",
    "PySide6/Qt/lib/libQt6Wayland*",
    "PySide6/Qt/lib/libQt6WlShellIntegration*",
    "PySide6/Qt/lib/libQt6EglFs*",
    "PySide6/Qt/lib/libQt6EglFSDeviceIntegration*",
]


# What the NVIDIA driver installs: never bundled (they must match the kernel module), absent without the driver.
DRIVER_LIBRARIES = {"libcuda.so.1", "libnvidia-ml.so.1"}


def check_libraries_resolve(exe: Path) -> None:
    """`ldd` on the executable and every bundled shared library finds everything it links, by the loader's own rules
    (each library's RPATH, and _internal on LD_LIBRARY_PATH as PyInstaller's bootloader sets it), except the
    driver's libraries. Catches a library left out, or one collected to a folder its users do not search."""
    internal = exe.parent / "_internal"
    env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(internal)}
    missing: dict[str, list[str]] = {}
    checked = 0
    for path in [exe, *sorted(internal.rglob("*.so*"))]:
        relative = str(path.relative_to(internal)) if path != exe else exe.name
        if (path.is_symlink() or not path.is_file() or any(fnmatch.fnmatch(relative, p) for p in OPTIONAL_ELF)
                or not _is_elf(path)):
            continue
        checked += 1
        listing = subprocess.run(["ldd", str(path)], env=env, capture_output=True, text=True).stdout
        for library in re.findall(r"^\s*(\S+) => not found", listing, re.MULTILINE):
            if library not in DRIVER_LIBRARIES:
                missing.setdefault(library, []).append(relative)
    if missing:
        details = "\n    ".join(f"{lib} needed by {', '.join(users[:3])}" for lib, users in missing.items())
        raise SmokeFailure(f"ldd: bundled libraries link libraries that are not found:\n    {details}")
    print(f"ok   ldd: all {checked} bundled ELF files resolve every library they link (the driver's aside)")


def check_depends(deb: Path, exe: Path, install: bool) -> None:
    """The .deb's Depends are installed here and cover every system library the app's ELF files need.

    Each required bundled ELF file's NEEDED libraries are either bundled or resolved by ldconfig to a file of
    a package named in Depends (or libc6); so a library missing from Depends fails here, not on a user's PC.
    """
    depends = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], check=True, capture_output=True,
                             text=True).stdout
    groups = [[re.sub(r"\s*\(.*\)", "", alt).strip() for alt in group.split("|")] for group in depends.split(",")]
    missing = [names[0] for names in groups if not any(_installed(name) for name in names)]
    if missing and install:
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, stdout=subprocess.DEVNULL)
    elif missing:
        raise SmokeFailure(f"this machine lacks the package's Depends: apt-get install {' '.join(missing)} "
                           "(or pass --install-depends)")
    declared = {name for names in groups for name in names}
    internal = exe.parent / "_internal"
    bundled = {path.name for path in internal.rglob("*")}
    system = _ldconfig_cache()
    problems: dict[str, list[str]] = {}
    for path in [exe, *internal.rglob("*.so*")]:
        relative = str(path.relative_to(internal)) if path != exe else exe.name
        if path.is_symlink() or not path.is_file() or any(fnmatch.fnmatch(relative, p) for p in OPTIONAL_ELF):
            continue
        for needed in _needed(path) - bundled - DRIVER_LIBRARIES:
            package = _package_of(system[needed]) if needed in system else "not found"
            if package not in declared:
                problems.setdefault(f"{needed} ({package})", []).append(relative)
    if problems:
        details = "\n    ".join(f"{lib} needed by {', '.join(users[:3])}" for lib, users in problems.items())
        raise SmokeFailure(f"system libraries not covered by Depends:\n    {details}")
    print(f"ok   Depends installed and covering every system library the app links ({len(groups)} packages)")


def _is_elf(path: Path) -> bool:
    with path.open("rb") as file:
        return file.read(4) == b"\x7fELF"


def _installed(package: str) -> bool:
    status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True).stdout
    return status.endswith(" installed")


def _needed(elf: Path) -> set[str]:
    dynamic = subprocess.run(["readelf", "-d", str(elf)], capture_output=True, text=True).stdout
    return set(re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dynamic))


def _ldconfig_cache() -> dict[str, str]:
    """Library name -> path, for this machine's 64-bit libraries (x86-64 or arm64: what the loader uses)."""
    cache: dict[str, str] = {}
    for line in subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout.splitlines():
        match = re.match(r"\s*(\S+) \(libc6,(?:x86-64|AArch64)[^)]*\) => (\S+)", line)
        if match:
            cache.setdefault(match.group(1), match.group(2))
    return cache


@functools.cache
def _package_of(library: str) -> str:
    """The Debian package owning a library file (tries the merged-/usr spellings dpkg may have recorded)."""
    real = os.path.realpath(library)
    for candidate in (real, real.removeprefix("/usr"), library):
        owner = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
        if owner.returncode == 0:
            return owner.stdout.split(":")[0]
    return "no package"


# The NVIDIA GPUs the CUDA build must run on, by compute capability: Ampere (A100: 8.0; RTX 30xx: 8.6), Ada
# (RTX 40xx, L4: 8.9), Hopper (H100, H200: 9.0), Blackwell (RTX 50xx: 12.0).
SUPPORTED_ARCHS = (80, 86, 89, 90, 120)


def runs_on(arch: int, sass: set[str], ptx: set[str]) -> bool:
    """Whether a library's GPU code runs on `arch`: machine code (SASS) for the same major version and the same or a
    lower minor one (sm_86 code runs on 8.9; `a` variants only on their own), or PTX for the same or an older
    architecture, which the driver compiles when the library loads."""
    for code in sass:
        number, variant = int(re.sub(r"\D", "", code)), code[-1]
        if number == arch or (variant != "a" and number // 10 == arch // 10 and number <= arch):
            return True
    return any(int(re.sub(r"\D", "", code)) <= arch and not code.endswith("a") for code in ptx)


def gpu_code(library: Path, cuobjdump: str) -> tuple[set[str], set[str]]:
    """The architectures of a library's machine code (SASS) and of its PTX, as cuobjdump lists them."""
    def listing(kind: str) -> set[str]:
        output = subprocess.run([cuobjdump, f"--list-{kind}", str(library)], capture_output=True, text=True).stdout
        return set(re.findall(r"\.(sm_\d+[af]?)\." + ("cubin" if kind == "elf" else "ptx"), output))

    return listing("elf"), listing("ptx")


# The libraries whose GPU kernels the app launches (those the process had mapped while `doctor` and the vision
# tower's convolution ran on an H200, less those without GPU code): each must carry code for every supported
# architecture. torch links more NVIDIA libraries whose kernels the app never launches (cuFFT's, for one, list
# machine code for sm_75 alone); they are not checked.
GPU_CODE_REQUIRED = [
    "torch/lib/libtorch_cuda.so",
    "bitsandbytes/libbitsandbytes_cuda*.so",
    "nvidia/cu*/lib/libcublas.so.*",
    "nvidia/cu*/lib/libcublasLt.so.*",
    "nvidia/cudnn/lib/libcudnn_engines_precompiled.so.*",
    "nvidia/cudnn/lib/libcudnn_engines_runtime_compiled.so.*",
]


def check_gpu_code(exe: Path, cuobjdump: str) -> None:
    """Each library in GPU_CODE_REQUIRED is bundled and carries GPU code for each supported architecture."""
    internal = exe.parent / "_internal"
    report, lacking = [], []
    for pattern in GPU_CODE_REQUIRED:
        libraries = [path for path in sorted(internal.glob(pattern)) if path.is_file() and not path.is_symlink()]
        if not libraries:
            lacking.append(f"{pattern} (not bundled)")
        for path in libraries:
            sass, ptx = gpu_code(path, cuobjdump)
            relative = str(path.relative_to(internal))
            gaps = [f"sm_{arch}" for arch in SUPPORTED_ARCHS if not runs_on(arch, sass, ptx)]
            report.append(f"{relative}: SASS {' '.join(sorted(sass, key=_arch_key)) or '-'}; "
                          f"PTX {' '.join(sorted(ptx, key=_arch_key)) or '-'}"
                          + (f"; MISSING {' '.join(gaps)}" if gaps else ""))
            if gaps:
                lacking.append(f"{relative} ({' '.join(gaps)})")
    if lacking:
        raise SmokeFailure("GPU code missing for supported architectures:\n    " + "\n    ".join(lacking)
                           + "\n  " + "\n  ".join(report))
    print(f"ok   GPU code for {', '.join(f'sm_{a}' for a in SUPPORTED_ARCHS)} in the {len(report)} libraries whose "
          "kernels the app launches:\n       " + "\n       ".join(report))


def check_triton_helper(exe: Path) -> None:
    """The CUDA package's Triton C helper (see the spec): triton_helpers/cuda_utils*.so and its .src.sha256, needing
    the driver by name (NEEDED libcuda.so.1, no RPATH/RUNPATH), built from the bundled triton/backends/nvidia/driver.c:
    Triton 3.x writes that file's read_text() unchanged into the cuda_utils.c it compiles and the app hashes; for
    ASCII with LF line ends (driver.c is) those are the file's bytes, so the digest must be sha256(driver.c)."""
    internal = exe.parent / "_internal"
    driver_c = internal / "triton" / "backends" / "nvidia" / "driver.c"
    modules = sorted((internal / "triton_helpers").glob("cuda_utils*.so"))
    if not driver_c.is_file() and not modules:
        print("ok   no Triton and no Triton helper: a package built --without-triton")
        return
    if not driver_c.is_file() or not modules:
        raise SmokeFailure(f"Triton's driver.c {'is' if driver_c.is_file() else 'is not'} bundled, with "
                           f"{len(modules)} triton_helpers/cuda_utils*.so")
    source = hashlib.sha256(driver_c.read_bytes()).hexdigest()
    for module in modules:
        digest = module.with_name(module.name + ".src.sha256")
        dynamic = subprocess.run(["readelf", "-d", str(module)], capture_output=True, text=True).stdout
        problems = re.findall(r"\((?:RPATH|RUNPATH)\).*", dynamic) + \
            ([] if "libcuda.so.1" in _needed(module) else [f"NEEDED {sorted(_needed(module))} lacks libcuda.so.1"])
        if not digest.is_file() or digest.read_text().strip() != source:
            problems.append(f"{digest.name} missing or not sha256(triton/backends/nvidia/driver.c) = {source}")
        if problems:
            raise SmokeFailure(f"Triton helper {module.name}: " + "; ".join(problems))
        print(f"ok   Triton helper {module.name}: needs libcuda.so.1, no RPATH/RUNPATH, built from the bundled "
              f"driver.c (sha256 {source[:16]}...)")


def _arch_key(code: str) -> tuple[int, str]:
    return int(re.sub(r"\D", "", code)), code


def find_cuobjdump() -> str:
    """cuobjdump from PATH, else from the nvidia-cuda-cuobjdump wheel in this Python's environment."""
    import sysconfig

    found = shutil.which("cuobjdump") or next(
        (str(p) for p in Path(sysconfig.get_paths()["purelib"]).glob("nvidia/cu*/bin/cuobjdump")), None)
    if found is None:
        raise SmokeFailure("cuobjdump not found: pip install nvidia-cuda-cuobjdump, or pass --cuobjdump")
    return found


def check_dicom(exe: Path, env: dict[str, str], scratch: Path) -> None:
    """`ask` on one compressed DICOM file per decoder: pixel plugins are found through entry points."""
    import pydicom.data

    from medgemma_desktop.core.tiny_checkpoint import write_tiny_checkpoint

    checkpoint = write_tiny_checkpoint(scratch / "checkpoint")
    samples = Path(pydicom.data.__file__).parent / "test_files"
    for name, codec in DICOM_SAMPLES.items():
        result = run([str(exe), "ask", "--model", str(checkpoint.model_dir), "--adapter", str(checkpoint.adapter_dir),
                      "--image", str(samples / name), "--max-new-tokens", "2", "Describe this image."],
                     env, scratch, timeout=300)
        check(result, f"ask on {name}, {codec}")


WINDOW_TIMEOUT_S = 240  # a loaded 2-core machine took over 15 s to show the CUDA flavour's window


def wait_for_window(app: subprocess.Popen, env: dict[str, str]) -> float:
    """Seconds until the app's top-level window is on the X display (xwininfo lists it by title): a fixed wait
    would SIGTERM an app still importing torch on a loaded machine."""
    start = time.monotonic()
    while time.monotonic() - start < WINDOW_TIMEOUT_S:
        if app.poll() is not None:
            break
        tree = subprocess.run(["xwininfo", "-root", "-tree"], env=env, capture_output=True, text=True).stdout
        if '"MedGemma Desktop' in tree:
            return time.monotonic() - start
        time.sleep(0.5)
    raise SmokeFailure(f"no window within {WINDOW_TIMEOUT_S} s (app status {app.poll()})")


def check_gui(exe: Path, env: dict[str, str], scratch: Path, screenshot: Path, seconds: float) -> None:
    """Start the window in demo mode (the tiny model and the sample CT + MR study, loaded as a new user would see
    them) on Xvfb (offscreen if Xvfb is absent), wait for it to show, let it run `seconds`, screenshot it, then
    SIGTERM it: the app closes its window on SIGTERM, joins the model thread and must exit with status 0."""
    env = dict(env)
    xvfb = None
    if shutil.which("Xvfb"):
        display = ":73"
        xvfb = subprocess.Popen(["Xvfb", display, "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        env["DISPLAY"] = display
        env["QT_QPA_PLATFORM"] = "xcb"
        time.sleep(1.5)
    else:
        env["QT_QPA_PLATFORM"] = "offscreen"
    stderr_path = scratch / "gui-stderr.txt"
    try:
        with stderr_path.open("w") as stderr:
            app = subprocess.Popen([str(exe), "--demo"], env=env, cwd=scratch, stdout=subprocess.DEVNULL,
                                   stderr=stderr)
            shown = wait_for_window(app, env) if xvfb is not None and shutil.which("xwininfo") else 0.0
            time.sleep(seconds)
            if app.poll() is not None:
                raise SmokeFailure(f"the window exited early with status {app.returncode}:\n"
                                   f"{stderr_path.read_text()}")
            if xvfb is not None:
                subprocess.run(["import", "-window", "root", str(screenshot)], env=env, check=True, timeout=60)
            app.send_signal(signal.SIGTERM)
            status = app.wait(timeout=30)
    finally:
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(timeout=10)
    log = stderr_path.read_text()
    if status != 0:
        raise SmokeFailure(f"the window did not stop cleanly (status {status}):\n{log}")
    if unexpected := unexpected_stderr(log):
        raise SmokeFailure("window: unexpected stderr lines:\n    " + "\n    ".join(unexpected))
    shot = f", screenshot {screenshot}" if xvfb is not None else " (offscreen, no screenshot)"
    print(f"ok   demo window on {env['QT_QPA_PLATFORM']} (shown after {shown:.0f} s) for {seconds:.0f} s, closed "
          f"cleanly on SIGTERM{shot}")


def check_doctor_build(report: str, cuda: bool) -> None:
    """doctor names the torch build the package promises; without a usable GPU it says so and runs on the CPU."""
    build = re.search(r"torch: (\S+) \(CUDA build: ([^)]*)\)", report)
    if build is None or (not build.group(2)[0].isdigit()) == cuda:
        raise SmokeFailure(f"doctor reports torch {build.group(0) if build else '(no torch line)'}, but the package "
                           f"is the {'CUDA' if cuda else 'CPU'} one")
    gpu = re.search(r"GPU: (.+)", report)
    compute = re.search(r"Compute: (\w+)", report)
    if gpu and gpu.group(1).startswith("none") and compute and compute.group(1) != "cpu":
        raise SmokeFailure(f"doctor found no GPU but computes on {compute.group(1)}")
    where = f"on the GPU ({gpu.group(1)})" if gpu and not gpu.group(1).startswith("none") else "on the CPU, no GPU here"
    print(f"ok   doctor: torch {build.group(1)} (CUDA {build.group(2)}), passed {where}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("deb", type=Path)
    parser.add_argument("--screenshot", type=Path, default=Path(__file__).resolve().parent / "dist" / "window.png")
    parser.add_argument("--install-depends", action="store_true", help="apt-get install missing Depends first")
    parser.add_argument("--gui-seconds", type=float, default=15.0, help="how long the window runs before SIGTERM")
    parser.add_argument("--cuobjdump",
                        help="for the CUDA package (default: PATH, then the nvidia-cuda-cuobjdump wheel)")
    args = parser.parse_args()
    package = subprocess.run(["dpkg-deb", "-f", str(args.deb), "Package"], check=True, capture_output=True,
                             text=True).stdout.strip()
    cuda = package.endswith("-cuda")
    with tempfile.TemporaryDirectory(prefix="medgemma-smoke-") as temp:
        scratch = Path(temp)
        root = scratch / "root"
        subprocess.run(["dpkg-deb", "-x", str(args.deb), str(root)], check=True)
        try:
            exe = check_layout(root)
            check_depends(args.deb, exe, args.install_depends)
            check_libraries_resolve(exe)
            if cuda:
                check_gpu_code(exe, args.cuobjdump or find_cuobjdump())
                check_triton_helper(exe)
            env = clean_env(scratch / "home")
            expected_version = f"{NAME} {version('medgemma-desktop')}"
            check(run([str(exe), "--version"], env, scratch, 120), "--version", expected_version)
            doctor = run([str(exe), "doctor"], env, scratch, 600)
            check(doctor, "doctor (4-bit load, LoRA, image + text, streamed answer)", "All steps passed.")
            print("     " + doctor.stdout.strip().replace("\n", "\n     "))
            check_doctor_build(doctor.stdout, cuda)
            check_dicom(exe, env, scratch)
            args.screenshot.parent.mkdir(parents=True, exist_ok=True)
            check_gui(exe, env, scratch, args.screenshot.resolve(), args.gui_seconds)
        except SmokeFailure as failure:
            print(f"FAIL {failure}", file=sys.stderr)
            return 1
    print("smoke test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
