"""`--sr DIR` and `--deidentify`, shared by `ask`, `batch` and `history export --format dicom`: answers about DICOM
images also written as DICOM structured reports (`core.dicom_report`), optionally with de-identified copies.

An answer about pictures only gets no report: the command says why in one line and exits with the user-error
status, after the answer itself was printed or stored.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from medgemma_desktop.core.fingerprint import WeightsIdentity
from medgemma_desktop.core.imaging import ImageInput


class AnsweredBy(Protocol):
    """What the backend's identity says about the weights (`ModelIdentity` has both)."""

    model: WeightsIdentity
    adapter: WeightsIdentity | None


def add_dicom_report_arguments(parser: argparse.ArgumentParser, *, folder_option: bool = True) -> None:
    if folder_option:
        parser.add_argument("--sr", type=Path, metavar="DIR",
                            help="also write each answer about DICOM images as a DICOM structured report in DIR "
                                 "(boxes also as a presentation state)")
    parser.add_argument("--deidentify", action="store_true",
                        help="with the report, write de-identified copies of the DICOM images (PS3.15 Annex E "
                             "basic profile) and make the report refer to them")


def write_answer_report(out_dir: Path, question: str, text: str, task_mode: str, answered_by: AnsweredBy,
                        images: Sequence[ImageInput], *, deidentify: bool = False, stem: str = "report") -> str:
    """Write the report of one answer in hand (thinking trace included in `text`); returns the summary line.

    Raises `UserFacingError` (one line) when none of `images` is DICOM.
    """
    from medgemma_desktop.core.dicom_export import answer_to_report, image_inputs, written_summary
    from medgemma_desktop.core.dicom_report import write_dicom_report

    report = answer_to_report(question, text, task_mode, answered_by.model, answered_by.adapter)
    written = write_dicom_report(report, image_inputs(images), out_dir, deidentify=deidentify, stem=stem)
    return written_summary(out_dir, [written], [])
