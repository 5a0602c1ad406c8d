"""dciodvfy (dicom3tools), the validator PACS vendors use: the errors it reports for a file, warnings ignored."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def dciodvfy_errors(path: Path) -> list[str]:
    """The 'Error' lines dciodvfy prints for `path` (an empty list: the file conforms to its IOD)."""
    program = shutil.which("dciodvfy")
    assert program is not None, "dciodvfy is missing: apt-get install dicom3tools (.ci/run does)"
    result = subprocess.run([program, str(path)], capture_output=True, text=True, timeout=60, check=False)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]
