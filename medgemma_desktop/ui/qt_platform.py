"""Before Qt starts on X11: are the system libraries its xcb platform plugin needs installed, and is there a display?

Without them Qt aborts with "Reinstalling the application may fix this problem", which sends a user the wrong
way (a fresh Debian or Ubuntu lacks libxcb-cursor0 and friends). `ldd` on the plugin names exactly what is
missing; the message names the packages to install.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from medgemma_desktop.core.errors import UserFacingError

# Library (without ".so.N") -> (Debian/Ubuntu package, Fedora package): what Qt's xcb plugin links against
# (ldd on libqxcb.so and libQt6XcbQpa.so; Qt's "Qt for X11 Requirements").
PACKAGES = {
    "libxcb": ("libxcb1", "libxcb"),
    "libxcb-cursor": ("libxcb-cursor0", "xcb-util-cursor"),
    "libxcb-icccm": ("libxcb-icccm4", "xcb-util-wm"),
    "libxcb-image": ("libxcb-image0", "xcb-util-image"),
    "libxcb-keysyms": ("libxcb-keysyms1", "xcb-util-keysyms"),
    "libxcb-randr": ("libxcb-randr0", "libxcb"),
    "libxcb-render": ("libxcb-render0", "libxcb"),
    "libxcb-render-util": ("libxcb-render-util0", "xcb-util-renderutil"),
    "libxcb-shape": ("libxcb-shape0", "libxcb"),
    "libxcb-shm": ("libxcb-shm0", "libxcb"),
    "libxcb-sync": ("libxcb-sync1", "libxcb"),
    "libxcb-util": ("libxcb-util1", "xcb-util"),
    "libxcb-xfixes": ("libxcb-xfixes0", "libxcb"),
    "libxcb-xkb": ("libxcb-xkb1", "libxcb"),
    "libxkbcommon": ("libxkbcommon0", "libxkbcommon"),
    "libxkbcommon-x11": ("libxkbcommon-x11-0", "libxkbcommon-x11"),
    "libX11": ("libx11-6", "libX11"),
    "libX11-xcb": ("libx11-xcb1", "libX11-xcb"),
    "libEGL": ("libegl1", "libglvnd-egl"),
    "libGL": ("libgl1", "libglvnd-glx"),
    "libfontconfig": ("libfontconfig1", "fontconfig"),
    "libdbus-1": ("libdbus-1-3", "dbus-libs"),
}
_BUNDLED = ("libQt6", "libpyside6", "libshiboken6")
_NOT_FOUND = re.compile(r"^\s*(\S+)\s+=>\s+not found", re.MULTILINE)


def uses_xcb(env: Mapping[str, str] = os.environ) -> bool:
    """Whether Qt will start its X11 (xcb) platform: asked for first in QT_QPA_PLATFORM, or Qt's choice on a Linux
    desktop that is not a Wayland session."""
    if not sys.platform.startswith("linux"):
        return False
    platform = env.get("QT_QPA_PLATFORM", "")
    if platform:
        return re.split(r"[;:]", platform, maxsplit=1)[0] == "xcb"
    return not env.get("WAYLAND_DISPLAY")


def xcb_plugin(env: Mapping[str, str] = os.environ) -> Path:
    folder = env.get("QT_QPA_PLATFORM_PLUGIN_PATH")
    if not folder:
        from PySide6.QtCore import QLibraryInfo

        folder = str(Path(QLibraryInfo.path(QLibraryInfo.LibraryPath.PluginsPath)) / "platforms")
    return Path(folder) / "libqxcb.so"


def missing_libraries(plugin: Path) -> list[str]:
    """The system libraries `plugin` needs that the dynamic linker cannot find (empty if ldd is unavailable).
    Qt's own libraries are left out: the app brings them, and a frozen app finds them its own way."""
    try:
        result = subprocess.run(["ldd", str(plugin)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted({name for name in _NOT_FOUND.findall(result.stdout) if not name.startswith(_BUNDLED)})


def install_hint(libraries: list[str]) -> str:
    """"sudo apt-get install -y ..." (and the Fedora line) for `libraries`, by their names without ".so.N"."""
    known = [PACKAGES[name.split(".so")[0]] for name in libraries if name.split(".so")[0] in PACKAGES]
    debian = sorted({deb for deb, _ in known})
    fedora = sorted({rpm for _, rpm in known})
    if not debian:
        return "Install the packages that provide them."
    return (f"On Debian/Ubuntu: sudo apt-get install -y {' '.join(debian)}; "
            f"on Fedora: sudo dnf install -y {' '.join(fedora)}.")


def check_platform_libraries(env: Mapping[str, str] = os.environ) -> None:
    """Raise a one-line `UserFacingError` if the window cannot start on X11: no display, or libraries missing."""
    if not uses_xcb(env):
        return
    if not env.get("DISPLAY"):
        raise UserFacingError("the window has no display to open on (DISPLAY is not set)",
                              fix="Start it from a desktop session, or use the terminal commands "
                                  "(`medgemma-desktop ask`, `doctor`).")
    plugin = xcb_plugin(env)
    if not plugin.is_file():
        return  # a Qt build without xcb: Qt itself names the platforms it has
    missing = missing_libraries(plugin)
    if missing:
        raise UserFacingError(f"the window cannot start: Qt's X11 platform plugin needs system libraries that are "
                              f"not installed ({', '.join(missing)})", fix=install_hint(missing))
