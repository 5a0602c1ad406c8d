"""Help > About: versions (what a bug report needs), licence notices and the research-use disclaimer."""

from __future__ import annotations

import platform
from html import escape
from importlib import metadata

from PySide6 import __version__ as pyside_version
from PySide6.QtCore import qVersion
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QTextBrowser, QVBoxLayout, QWidget

from medgemma_desktop.core.export import DISCLAIMER

PACKAGES = ("medgemma-desktop", "torch", "transformers", "peft", "bitsandbytes", "accelerate", "pillow", "pydicom")

NOTICES = """<p><b>MedGemma Desktop</b> is licensed under the Apache License 2.0.</p>
<p><b>MedGemma</b> is provided by Google LLC under and subject to the Health AI Developer Foundations Terms of
Use (developers.google.com/health-ai-developer-foundations/terms). This app ships no model weights; you bring
your own copy and are bound by those terms, including their restrictions on clinical use.</p>
<p><b>Qt for Python (PySide6)</b> and <b>Qt</b> are used under the GNU LGPL v3. <b>PyTorch</b> (BSD-3-Clause),
<b>Transformers</b>, <b>PEFT</b>, <b>Accelerate</b> (Apache-2.0), <b>bitsandbytes</b> (MIT), <b>Pillow</b>
(MIT-CMU) and <b>pydicom</b> (MIT) are used under their licences.</p>"""


def versions() -> dict[str, str]:
    found = {"Python": platform.python_version(), "PySide6": pyside_version, "Qt": qVersion()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def about_html() -> str:
    rows = "".join(f"<tr><td>{escape(name)}</td><td>&nbsp;{escape(version)}</td></tr>"
                   for name, version in versions().items())
    return (f"<h2>MedGemma Desktop</h2><p><b>{escape(DISCLAIMER)}</b></p>"
            f"<h3>Versions</h3><table>{rows}</table><h3>Licences</h3>{NOTICES}")


class AboutDialog(QDialog):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("About MedGemma Desktop")
        self.setAccessibleName("About MedGemma Desktop")
        self.text = QTextBrowser()
        self.text.setAccessibleName("About text")
        self.text.setOpenExternalLinks(False)
        self.text.setHtml(about_html())
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.text)
        layout.addWidget(buttons)
        self.resize(560, 560)
