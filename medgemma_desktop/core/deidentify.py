"""De-identified copies of DICOM instances, per DICOM PS3.15 Annex E, Basic Application Level Confidentiality
Profile.

The table of Annex E (which attribute is removed, emptied, replaced by a dummy or given a new UID) is the one
dicom-anonymizer keeps up to date with the standard (`ANNEX_E_TABLE`, the 2026c edition); this module applies it
to a copy, its sequences' items included, removes private tags, and records what was done as the profile asks:
Patient Identity Removed "YES", the method in words and as code 113100 "Basic Application Confidentiality
Profile". UIDs get new values that stay the same for the same original UID within one run of the app, so the
instances of a series still form one series and a report built from the copies refers to the new UIDs. The
dataset handed in is never changed; neither is its file. Burned-in text in the pixels is not looked at (no pixel
cleaning): `burned_in_warning` says when a file declares some.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

from dicomanonymizer.dicomfields_selector import ANONYMIZATION_CATEGORIES, dicom_anonymization_database_selector
from dicomanonymizer.simpledicomanonymizer import (
    anonymize_dataset,
    delete_or_empty,
    delete_or_empty_or_replace_UID,
    empty,
    initialize_actions,
    replace_UID,
)
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

Action = Callable[[Dataset, tuple[int, int]], None]  # what the library's table maps each tag to
ANNEX_E_TABLE = "dicomfields_2026c"  # dicom-anonymizer's copy of PS3.15 Table E.1-1, 2026c edition
BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
METHOD_TEXT = "PS3.15 Annex E Basic Profile, table 2026c"  # LO: at most 64 characters
# dicom-anonymizer's dummy dates and times; year 1 is outside what validators accept for DA/DT (dciodvfy)
_LIBRARY_DUMMIES = {"DA": ("00010101", "19000101"),
                    "DT": ("00010101010101.000000+0000", "19000101000000.000000+0000")}


def _keep_items_replace_uids(dataset: Dataset, tag: tuple[int, int]) -> None:
    """X/Z/U* on a sequence: keep its items, whose instance UIDs the walk into them replaces (the profile's U
    choice, which keeps references valid); the library would empty every value in them, Type 1 ones included."""
    element = dataset.get(tag)
    if element is not None and element.VR != "SQ":
        replace_UID(dataset, tag)


def _empty_sequence_or(action: Action) -> Action:
    """Z on a sequence: zero items (a zero-length value), not items whose Type 1 values are emptied."""

    def apply(dataset: Dataset, tag: tuple[int, int]) -> None:
        element = dataset.get(tag)
        if element is not None and element.VR == "SQ":
            element.value = []
        else:
            action(dataset, tag)

    return apply


@functools.cache
def _table_actions() -> dict:
    actions = initialize_actions(ANNEX_E_TABLE)
    for tag, action in actions.items():
        if action is delete_or_empty_or_replace_UID:
            actions[tag] = _keep_items_replace_uids
        elif action in (empty, delete_or_empty):
            actions[tag] = _empty_sequence_or(action)
    return actions


def basic_profile_actions() -> dict:
    """Tag -> action for every attribute Table E.1-1 names (D, Z, X, U and their combinations)."""
    return dict(_table_actions())


@functools.cache
def _table_tags() -> frozenset[tuple[int, int]]:
    table = dicom_anonymization_database_selector(ANNEX_E_TABLE)
    return frozenset(tag for category in ANONYMIZATION_CATEGORIES for tag in table[category] if len(tag) == 2)


def is_identifying(tag: BaseTag) -> bool:
    """Whether the profile removes or replaces this attribute (or it is private): such values are patient data
    and stay hidden in the viewer's tag list until the user asks."""
    return tag.is_private or (tag.group, tag.element) in _table_tags() or 0x5000 <= tag.group <= 0x60FF


def _anonymize_tree(dataset: Dataset) -> None:
    """The library applies the table to the top level only; the profile covers the items of sequences too
    (a Referenced SOP Instance UID inside Referenced Image Sequence is as identifying as the image's own)."""
    anonymize_dataset(dataset, delete_private_tags=True, base_rules_gen=basic_profile_actions)
    for element in dataset:
        if element.VR == "SQ":
            for item in element.value:
                _anonymize_tree(item)


def deidentify(dataset: Dataset) -> Dataset:
    """A de-identified copy of `dataset` (pixel data untouched); `dataset` itself is not modified."""
    result = copy.deepcopy(dataset)
    _anonymize_tree(result)
    removed = dicom_anonymization_database_selector(ANNEX_E_TABLE)["X_TAGS"]
    result.walk(lambda dataset, element: _finish(dataset, element, removed))
    result.PatientIdentityRemoved = "YES"
    result.DeidentificationMethod = METHOD_TEXT
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = BASIC_PROFILE_CODE
    result.DeidentificationMethodCodeSequence = [code]
    if getattr(result, "file_meta", None) is not None:
        result.file_meta.MediaStorageSOPInstanceUID = result.SOPInstanceUID
    return result


def _is_overlay(tag: BaseTag) -> bool:
    return 0x6000 <= tag.group <= 0x60FF and tag.group % 2 == 0


def _finish(dataset: Dataset, element: DataElement, removed: list[tuple[int, int]]) -> None:
    """Corrections to the library's result: it replaces dates under the X (remove) action with its dummy date
    instead of removing them; its dummy date (year 1) is not a valid DA value; and with Overlay Data removed (X)
    the rest of an overlay plane is left incomplete, so the whole overlay goes."""
    if (element.tag.group, element.tag.element) in removed or _is_overlay(element.tag):
        del dataset[element.tag]
    elif element.VR in _LIBRARY_DUMMIES and element.value == _LIBRARY_DUMMIES[element.VR][0]:
        element.value = _LIBRARY_DUMMIES[element.VR][1]


def burned_in_warning(dataset: Dataset) -> str:
    """A line for the user when the file says its pixels carry burned-in text, which the profile leaves as is."""
    if str(dataset.get("BurnedInAnnotation", "")).upper() == "YES":
        return ("declares burned-in annotation (text in the pixels, possibly names): check the images before "
                "sharing them")
    return ""
