"""De-identification walks PS3.15 Table E.1-1 over pydicom's bundled test files: no attribute the Basic Profile
removes or replaces keeps its original value, private tags are gone, the profile is recorded, UIDs are replaced
consistently, and the dataset handed in is untouched."""

from __future__ import annotations

import copy
from pathlib import Path

import pydicom
import pytest
from dicom_validation import dciodvfy_errors
from dicomanonymizer.dicomfields_selector import ANONYMIZATION_CATEGORIES, dicom_anonymization_database_selector
from dicomanonymizer.simpledicomanonymizer import keep
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from medgemma_desktop.core.deidentify import ANNEX_E_TABLE, basic_profile_actions, deidentify

TEST_FILES = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtplan.dcm", "rtstruct.dcm", "test-SR.dcm",
              "examples_overlay.dcm", "liver_1frame.dcm"]
PATIENT_KEYWORDS = ("PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthDate",
                    "AccessionNumber", "ReferringPhysicianName", "OperatorsName", "PerformingPhysicianName",
                    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
EMPTY_VALUES = (None, "", b"", [], 0, "0", "00010101", "19000101", "19000101000000.000000+0000", "000000.00",
                "ANONYMIZED", "000Y")


def annex_e_tags() -> dict[tuple[int, int], str]:
    """Every single-tag row of Table E.1-1 with its action category (D_TAGS, X_TAGS, U_TAGS, ...)."""
    table = dicom_anonymization_database_selector(ANNEX_E_TABLE)
    return {tag: category for category in ANONYMIZATION_CATEGORIES for tag in table[category] if len(tag) == 2}


def table_rows_in(dataset: Dataset) -> list[tuple[Tag, str]]:
    rows = annex_e_tags()
    return [(element.tag, rows[(element.tag.group, element.tag.element)]) for element in dataset
            if (element.tag.group, element.tag.element) in rows and element.value not in EMPTY_VALUES]


def test_the_table_is_the_standards_and_keeps_nothing() -> None:
    rows = annex_e_tags()
    assert len(rows) > 500  # Table E.1-1 lists some 600 attributes
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "SOPInstanceUID",
                    "InstitutionName", "AccessionNumber", "ReferringPhysicianName", "StudyDate"):
        tag = Tag(keyword)
        assert (tag.group, tag.element) in rows, keyword
    assert all(action is not keep for action in basic_profile_actions().values())


@pytest.mark.parametrize("name", TEST_FILES)
def test_no_basic_profile_attribute_keeps_its_value(name: str) -> None:
    original = pydicom.dcmread(get_testdata_file(name), force=True)  # type: ignore[arg-type]
    untouched = copy.deepcopy(original)
    result = deidentify(original)
    assert original == untouched  # the dataset handed in is not changed

    rows = table_rows_in(original)
    assert rows, f"{name} has no identifying attributes to test with"
    for tag, category in rows:
        if category == "X_TAGS":
            assert tag not in result, f"{name}: {tag} ({category}) should be removed"
        elif tag in result:
            kept = result[tag].value
            assert kept in EMPTY_VALUES or kept != original[tag].value, f"{name}: {tag} ({category}) kept"
    assert not [element.tag for element in result if element.tag.is_private]
    assert result.PatientIdentityRemoved == "YES"
    [method] = result.DeidentificationMethodCodeSequence
    assert (method.CodeValue, method.CodingSchemeDesignator) == ("113100", "DCM")
    written = result.to_json()
    for keyword in PATIENT_KEYWORDS:  # names and IDs must not survive anywhere, nested sequences included
        value = str(original.get(keyword) or "")
        if len(value) >= 4:
            assert value not in written, f"{name}: the value of {keyword} survives somewhere"


def test_uids_are_replaced_the_same_way_across_instances() -> None:
    folder = Path(get_testdata_file("DICOMDIR")).parent / "77654033" / "CT2"  # type: ignore[arg-type]
    copies = [deidentify(pydicom.dcmread(path)) for path in sorted(folder.iterdir())]
    originals = [pydicom.dcmread(path) for path in sorted(folder.iterdir())]
    assert len({item.SeriesInstanceUID for item in copies}) == 1
    assert len({item.StudyInstanceUID for item in copies}) == 1
    assert copies[0].SeriesInstanceUID != originals[0].SeriesInstanceUID
    assert len({item.SOPInstanceUID for item in copies}) == len(copies)
    if "FrameOfReferenceUID" in originals[0]:
        assert copies[0].FrameOfReferenceUID != originals[0].FrameOfReferenceUID
    again = deidentify(originals[0])
    assert again.SOPInstanceUID == copies[0].SOPInstanceUID  # consistent within a run


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "examples_overlay.dcm",
                                  "liver_1frame.dcm", "SC_rgb_rle.dcm"])
def test_the_copy_is_as_valid_as_the_original(tmp_path: Path, name: str) -> None:
    """No new dciodvfy error: sequences holding references keep valid items with new UIDs, emptied sequences
    have no items, an overlay whose data the profile removes goes whole."""
    original = Path(get_testdata_file(name))  # type: ignore[arg-type]
    copy_path = tmp_path / name
    deidentify(pydicom.dcmread(original)).save_as(copy_path, enforce_file_format=True)
    assert set(dciodvfy_errors(copy_path)) <= set(dciodvfy_errors(original))


def test_references_inside_sequences_get_the_same_new_uids() -> None:
    original = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))  # type: ignore[arg-type]
    source = original.SourceImageSequence[0]
    result = deidentify(original)
    [kept] = result.SourceImageSequence
    assert kept.ReferencedSOPClassUID == source.ReferencedSOPClassUID
    assert kept.ReferencedSOPInstanceUID not in ("", source.ReferencedSOPInstanceUID)
    again = deidentify(pydicom.dcmread(get_testdata_file("JPEG2000.dcm")))  # type: ignore[arg-type]
    assert again.SourceImageSequence[0].ReferencedSOPInstanceUID == kept.ReferencedSOPInstanceUID
