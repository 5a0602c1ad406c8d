"""Localization boxes as a Grayscale Softcopy Presentation State, so that PACS viewers draw them on the image.

A GSPS is the DICOM object viewers (Weasis, OHIF, Horos, most PACS) load with an image to show annotations on
it: here one closed polyline per box and its label, in a graphic layer of their own, in the image's pixel
coordinates (origin at the top-left corner of the top-left pixel, as `core.boxes.PixelBox` counts). Only
grayscale images have one; the structured report carries the boxes for colour images too.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medgemma_desktop import __version__
from medgemma_desktop.core.boxes import PixelBox

MANUFACTURER = "MedGemma Desktop"
LAYER = "MEDGEMMA BOXES"
CONTENT_LABEL = "MEDGEMMA_BOXES"  # CS: capitals, digits, underscores
GSPS_SERIES_NUMBER = 9902


def rectangle(box: PixelBox) -> np.ndarray:
    """The box as a closed polyline of (column, row) points, the order DICOM graphic data uses."""
    return np.array([[box.left, box.top], [box.right, box.top], [box.right, box.bottom], [box.left, box.bottom],
                     [box.left, box.top]], dtype=float)


def boxes_presentation_state(image: Dataset, boxes: Sequence[PixelBox], *, description: str,
                             series_instance_uid: str | None = None) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """A GSPS that draws `boxes` on `image` (a header is enough), in `image`'s study."""
    layer = hd.pr.GraphicLayer(layer_name=LAYER, order=1, description="MedGemma localization, research use only")
    units = hd.pr.AnnotationUnitsValues.PIXEL
    graphics = [hd.pr.GraphicObject(graphic_type=hd.pr.GraphicTypeValues.POLYLINE, graphic_data=rectangle(box),
                                    units=units) for box in boxes]
    labels = [hd.pr.TextObject(text_value=box.label[:64], units=units, anchor_point=(box.left, box.top),
                               anchor_point_visible=False)
              for box in boxes if box.label]
    frames = int(image.get("NumberOfFrames") or 1)
    annotation = hd.pr.GraphicAnnotation(referenced_images=[image], graphic_layer=layer,
                                         referenced_frame_number=1 if frames > 1 else None,
                                         graphic_objects=graphics, text_objects=labels or None)
    state = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[image],
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=GSPS_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MANUFACTURER,
        software_versions=__version__,
        device_serial_number="",
        content_label=CONTENT_LABEL,
        content_description=description[:64],
        graphic_annotations=[annotation],
        graphic_layers=[layer],
    )
    # General Series' Laterality (type 2C): the image's own, or empty (unknown) where the image has none
    state.Laterality = image.get("Laterality", "")
    return state
