"""Distances on a DICOM image in millimetres, with the calibration said out loud (DICOM PS3.3 10.7.1.3).

Pixel Spacing is the spacing in the patient (CT, MR, or a calibrated projection image). Projection X-rays often
carry only Imager Pixel Spacing: the spacing at the detector, which overstates sizes in the patient by the
geometric magnification (typically 5-20%), so the distance says so. Without either the calibration is unknown and
the distance stays in pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

AT_DETECTOR = "at the detector (Imager Pixel Spacing), not corrected for magnification"
UNKNOWN = "no pixel spacing in the file: calibration unknown"


@dataclass(frozen=True)
class Calibration:
    row_mm: float  # between the centres of adjacent rows (vertical)
    column_mm: float  # between the centres of adjacent columns (horizontal)
    note: str = ""  # "" when the spacing is in the patient


def _pair(text: str | None) -> tuple[float, float] | None:
    try:
        values = [float(item) for item in (text or "").replace("\\", ",").split(",") if item.strip()]
    except ValueError:
        return None
    return (values[0], values[1]) if len(values) == 2 and all(v > 0 and math.isfinite(v) for v in values) else None


def calibration(metadata: Mapping[str, str]) -> Calibration | None:
    """The image's spacing from its descriptive tags ("0.66, 0.66"), or None when it has none."""
    if (spacing := _pair(metadata.get("PixelSpacing"))) is not None:
        return Calibration(*spacing)
    if (spacing := _pair(metadata.get("ImagerPixelSpacing"))) is not None:
        return Calibration(*spacing, note=AT_DETECTOR)
    return None


def distance_text(start: tuple[float, float], end: tuple[float, float], spacing: Calibration | None) -> str:
    """The distance between two (x, y) pixel positions as a reader wants it: "33.1 mm", or pixels and why."""
    dx, dy = end[0] - start[0], end[1] - start[1]
    if spacing is None:
        return f"{math.hypot(dx, dy):.1f} px ({UNKNOWN})"
    millimetres = math.hypot(dx * spacing.column_mm, dy * spacing.row_mm)
    return f"{millimetres:.1f} mm" + (f" ({spacing.note})" if spacing.note else "")
