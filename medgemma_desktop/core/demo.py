"""Demo mode: the whole app on the tiny random-weight checkpoint and a real sample study, before the 8.6 GB
weights arrive. The answers mean nothing; the UI says so in a banner that cannot be missed."""

from __future__ import annotations

from pathlib import Path

from medgemma_desktop.core.app_dirs import cache_dir
from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.imaging import ImageInput, load_any
from medgemma_desktop.core.model_folder import check_adapter_folder, check_model_folder
from medgemma_desktop.core.tiny_checkpoint import TinyCheckpoint, write_tiny_checkpoint

BANNER = ("DEMO MODE: a tiny model with random weights is answering. Its answers are random characters and mean "
          "nothing. Pick the real MedGemma folders in Settings to leave the demo.")
# A real CT slice and a real MR image from pydicom's bundled test files, read through the app's own DICOM path.
SAMPLE_STUDY = ("CT_small.dcm", "MR_small.dcm")


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
