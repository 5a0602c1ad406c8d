"""Demo mode: the whole app on the tiny random-weight checkpoint, a real sample study and a small synthetic CT
series, before the 8.6 GB weights arrive. The answers mean nothing; the UI says so in a banner that cannot be
missed, and demo answers stop early (`DEMO_MAX_NEW_TOKENS`): a thousand random tokens take minutes on a CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from medgemma_desktop.core.app_dirs import cache_dir
from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.imaging import ImageInput, load_any
from medgemma_desktop.core.model_folder import check_adapter_folder, check_model_folder
from medgemma_desktop.core.tiny_checkpoint import TinyCheckpoint, write_tiny_checkpoint

BANNER = ("DEMO MODE: a tiny model with random weights is answering. Its answers are random characters and mean "
          "nothing. Use the button on the right to choose the real MedGemma folders and leave the demo.")
DEMO_MAX_NEW_TOKENS = 48  # answers of random characters need not be long
# A real CT slice and a real MR image from pydicom's bundled test files, read through the app's own DICOM path.
SAMPLE_STUDY = ("CT_small.dcm", "MR_small.dcm")
SERIES_DESCRIPTION = "SYNTHETIC CT phantom"  # the thumbnail's label: nobody takes it for a patient
SERIES_SLICES = 20
SLICE_MM = 5.0


def demo_checkpoint(root: Path | None = None) -> TinyCheckpoint:
    """The demo model, written once into the cache folder and rewritten if anything in it is damaged."""
    root = root or cache_dir() / "demo-model"
    checkpoint = TinyCheckpoint(model_dir=root / "medgemma-tiny", adapter_dir=root / "lora-r8-tiny")
    try:
        check_adapter_folder(checkpoint.adapter_dir, check_model_folder(checkpoint.model_dir))
        return checkpoint
    except UserFacingError:
        return write_tiny_checkpoint(root)


def sample_study() -> list[ImageInput]:
    from pydicom.data import get_testdata_file

    return [load_any(get_testdata_file(name)) for name in SAMPLE_STUDY]


def phantom_slice(number: int, size: int = 128) -> npt.NDArray[np.int16]:
    """Hounsfield units of one axial slice of a drawn chest: air, a body ellipse of soft tissue, two lungs that
    grow from the ends of the series to its middle, a heart, and a spine of bone."""
    y, x = np.mgrid[0:size, 0:size] / (size / 2) - 1.0
    middle = 1.0 - abs(number - (SERIES_SLICES - 1) / 2) / SERIES_SLICES  # 0.5 at the ends, ~1 in the middle
    hu = np.full((size, size), -1000.0)
    hu[(x / 0.85) ** 2 + (y / 0.62) ** 2 <= 1] = 40
    for side in (-1, 1):
        hu[((x - side * 0.4) / (0.3 * middle)) ** 2 + ((y + 0.05) / (0.45 * middle)) ** 2 <= 1] = -850
    hu[((x + 0.1) / 0.22) ** 2 + ((y - 0.05) / 0.2) ** 2 <= 1] = 45 if number % 2 else 55
    hu[(x / 0.11) ** 2 + ((y - 0.45) / 0.11) ** 2 <= 1] = 700
    return hu.astype(np.int16)


def demo_series(root: Path | None = None) -> Path:
    """A 20-slice CT series of `phantom_slice`s (valid DICOM: pydicom's CT_small as the template, every
    identifying tag replaced by SYNTHETIC), written once into the cache folder; returns its folder."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    folder = root or cache_dir() / "demo-series"
    if len(list(folder.glob("slice*.dcm"))) == SERIES_SLICES:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    for number in range(SERIES_SLICES):
        dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        dataset.remove_private_tags()
        del dataset.ContrastBolusAgent, dataset.ContrastBolusRoute
        dataset.InstitutionName, dataset.StationName = "SYNTHETIC", ""
        dataset.Manufacturer, dataset.ManufacturerModelName = "MedGemma Desktop demo", "synthetic phantom"
        dataset.PatientName, dataset.PatientID = "SYNTHETIC^PHANTOM", "SYNTHETIC"
        dataset.PatientBirthDate, dataset.PatientSex, dataset.AccessionNumber = "", "O", ""
        dataset.StudyDescription = "SYNTHETIC demo study (drawn, not a patient)"
        dataset.SeriesDescription = SERIES_DESCRIPTION
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dataset.InstanceNumber, dataset.SeriesNumber = number + 1, 1
        dataset.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        dataset.ImagePositionPatient = [-42.0, -42.0, SLICE_MM * number]
        dataset.SliceLocation, dataset.SliceThickness = SLICE_MM * number, SLICE_MM
        dataset.PixelSpacing = [0.66, 0.66]
        dataset.PixelData = (phantom_slice(number) + 1024).astype(np.int16).tobytes()  # RescaleIntercept -1024
        dataset.save_as(folder / f"slice{number:03d}.dcm")
    return folder
