"""The window on a system without Qt's X11 libraries (a fresh Debian): one line naming the packages to install,
not Qt's "Reinstalling the application may fix this problem"; and the README's apt-get line installs everything
the xcb plugin links against (CI runs that line as written: .ci/run reads it out of the README)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from medgemma_desktop.ui.qt_platform import PACKAGES, install_hint, uses_xcb, xcb_plugin

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / ".ci"))
from readme_commands import section_commands  # noqa: E402

REAL_PLUGIN = xcb_plugin({})
MISSING = "libxcb-cursor.so.0"


def run_window(env_changes: dict[str, str | None]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **{k: v for k, v in env_changes.items() if v is not None}}
    for name in (k for k, v in env_changes.items() if v is None):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "medgemma_desktop", "--demo", "--quit-after", "1"], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def plugin_without_a_library(tmp_path: Path) -> Path:
    """A copy of Qt's real xcb plugin whose libxcb-cursor is one the system does not have (as on a fresh Debian)."""
    data = REAL_PLUGIN.read_bytes()
    assert data.count(MISSING.encode()) == 1
    folder = tmp_path / "platforms"
    folder.mkdir()
    (folder / "libqxcb.so").write_bytes(data.replace(MISSING.encode(), b"libxcb-cursor.so.7"))
    return folder


def test_a_missing_xcb_library_gives_one_line_with_the_packages(plugin_without_a_library: Path) -> None:
    result = run_window({"QT_QPA_PLATFORM": "xcb", "DISPLAY": ":99", "QT_QPA_PLATFORM_PLUGIN_PATH":
                         str(plugin_without_a_library)})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "libxcb-cursor.so.7" in lines[0] and "sudo apt-get install -y libxcb-cursor0" in lines[0]
    assert "sudo dnf install -y xcb-util-cursor" in lines[0]
    assert "libQt6" not in lines[0]  # the copy cannot see Qt's own libraries either: those are the app's, not missing
    assert "Reinstalling" not in result.stderr and "Traceback" not in result.stderr


def test_no_display_gives_one_line() -> None:
    result = run_window({"QT_QPA_PLATFORM": None, "WAYLAND_DISPLAY": None, "DISPLAY": None})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "medgemma-desktop: the window has no display to open on (DISPLAY is not set). Start it from a desktop "
        "session, or use the terminal commands (`medgemma-desktop ask`, `doctor`)."]


@pytest.mark.parametrize(("env", "expected"), [
    ({}, True),
    ({"DISPLAY": ":0"}, True),
    ({"WAYLAND_DISPLAY": "wayland-0", "DISPLAY": ":0"}, False),  # Qt picks Wayland first in a Wayland session
    ({"QT_QPA_PLATFORM": "xcb", "WAYLAND_DISPLAY": "wayland-0"}, True),
    ({"QT_QPA_PLATFORM": "xcb;wayland"}, True),
    ({"QT_QPA_PLATFORM": "wayland;xcb"}, False),
    ({"QT_QPA_PLATFORM": "offscreen"}, False),
])
def test_which_platform_qt_will_use(env: dict[str, str], expected: bool) -> None:
    assert uses_xcb(env) is expected


def test_install_hint_names_each_package_once() -> None:
    hint = install_hint(["libxcb-icccm.so.4", "libxcb-randr.so.0", "libxcb-shape.so.0", "libfoo.so.1"])
    assert hint == ("On Debian/Ubuntu: sudo apt-get install -y libxcb-icccm4 libxcb-randr0 libxcb-shape0; "
                    "on Fedora: sudo dnf install -y libxcb xcb-util-wm.")


def test_the_readme_apt_line_installs_every_library_the_xcb_plugin_needs() -> None:
    ldd = subprocess.run(["ldd", str(REAL_PLUGIN)], capture_output=True, text=True, check=True).stdout
    needed = {line.split()[0].split(".so")[0] for line in ldd.splitlines() if "=>" in line}
    assert {"libxcb-cursor", "libxcb-icccm", "libxcb-keysyms", "libxkbcommon-x11"} <= needed  # read it right
    packages = {PACKAGES[name][0] for name in needed if name in PACKAGES}
    apt_line = section_commands("Install and run from source (developers)", (ROOT / "README.md").read_text())[0]
    assert apt_line.startswith("sudo apt-get update && sudo apt-get install -y python3-venv ")
    assert packages - set(apt_line.split()) == set()
