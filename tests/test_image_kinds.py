"""Magnitude anatomy only: which MR images preprocessing (and so enhance.py) skips, with which counted reason.

Every case is a real header edited the way a scanner labels that kind of image: pydicom's bundled MR_small.dcm
(classic MR, itself DERIVED\\SECONDARY\\OTHER) and the complete Enhanced MR object of dicom_fixtures, with their
ImageType / FrameType / ComplexImageComponent / VolumeBasedCalculationTechnique or a vendor's private image type
changed. enhance.py's side (its own output, the run's series_filter) is in tests/test_enhance.py.
"""

import pydicom
import pytest
from dicom_fixtures import bundled, enhanced_mr_jpegls_file, uid, write_mr_series
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from breastmri.config import ConfigError, load_config
from breastmri.data import preprocess
from breastmri.dicom import kinds
from breastmri.dicom.index import MIXED_PLANES_REASON, index_tree
from breastmri.dicom.kinds import ENHANCE_OUTPUT_REASON, KIND_REASONS
from breastmri.dicom.scan import scan_file


def classic(path, image_type=None, edit=None):
    """MR_small.dcm as its own series, with ImageType replaced and `edit(ds)` applied; returns the path."""
    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    ds.SOPInstanceUID = uid(path.name, "sop")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = uid(path.name, "series")
    ds.PatientID = "KINDS"
    if image_type is not None:
        ds.ImageType = image_type.split("\\")
    if edit is not None:
        edit(ds)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def ge_complex(code):
    def edit(ds):
        ds.Manufacturer = "GE MEDICAL SYSTEMS"
        ds.private_block(0x0043, "GEMS_PARM_01", create=True).add_new(0x2F, "SS", code)
    return edit


def philips_code(code):
    def edit(ds):
        ds.Manufacturer = "Philips Medical Systems"
        ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True).add_new(0x11, "CS", code)
    return edit


def philips(ds):
    ds.Manufacturer = "Philips Medical Systems"


PHASE, REAL, IMAGINARY = KIND_REASONS["phase"], KIND_REASONS["real"], KIND_REASONS["imaginary"]
MAP, LOCALIZER = KIND_REASONS["parametric_map"], KIND_REASONS["localizer"]
SUBTRACTION, PROJECTION = KIND_REASONS["subtraction"], KIND_REASONS["projection"]

# (case, ImageType, edit, expected skip reason or None = kept)
CLASSIC_CASES = [
    ("siemens phase", "ORIGINAL\\PRIMARY\\P\\ND", None, PHASE),
    ("siemens field map phase", "ORIGINAL\\PRIMARY\\P\\ND\\PHASE", None, PHASE),
    ("standard phase map", "DERIVED\\PRIMARY\\PHASE MAP", None, PHASE),
    ("philips phase", "ORIGINAL\\PRIMARY\\PHASE MAP\\P\\FFE", philips, PHASE),
    ("real", "ORIGINAL\\PRIMARY\\REAL", None, REAL),
    ("philips real", "ORIGINAL\\PRIMARY\\R_FFE\\R\\FFE", philips, REAL),
    ("siemens real value", "ORIGINAL\\PRIMARY\\R\\ND", None, REAL),
    ("imaginary", "ORIGINAL\\PRIMARY\\IMAGINARY", None, IMAGINARY),
    ("imaginary letter", "ORIGINAL\\PRIMARY\\I\\ND", None, IMAGINARY),
    ("ge phase (private)", "ORIGINAL\\PRIMARY\\OTHER", ge_complex(1), PHASE),
    ("ge real (private)", "ORIGINAL\\PRIMARY\\OTHER", ge_complex(2), REAL),
    ("ge imaginary (private)", "ORIGINAL\\PRIMARY\\OTHER", ge_complex(3), IMAGINARY),
    ("siemens adc", "DERIVED\\PRIMARY\\DIFFUSION\\ADC\\ND\\NORM", None, MAP),
    ("siemens adc stored as original", "ORIGINAL\\PRIMARY\\DIFFUSION\\ADC\\ND", None, MAP),
    ("siemens exponential adc", "DERIVED\\PRIMARY\\DIFFUSION\\EADC\\ND", None, MAP),
    ("siemens fa", "DERIVED\\PRIMARY\\DIFFUSION\\FA\\ND", None, MAP),
    ("t1 map", "DERIVED\\PRIMARY\\T1 MAP", None, MAP),
    ("t2 map", "DERIVED\\PRIMARY\\T2 MAP", None, MAP),
    ("t2* map", "DERIVED\\PRIMARY\\T2_STAR_MAP", None, MAP),
    ("siemens asl ttest", "DERIVED\\PRIMARY\\ASL\\ND\\TTEST", None, MAP),
    ("philips breve max relative enhancement (private)", "DERIVED\\PRIMARY\\OTHER", philips_code("MAXRELENH"), MAP),
    ("ge localizer", "ORIGINAL\\PRIMARY\\LOCALIZER", None, LOCALIZER),
    ("survey", "ORIGINAL\\PRIMARY\\SURVEY", None, LOCALIZER),
    ("siemens subtraction", "DERIVED\\PRIMARY\\M\\ND\\SUB", None, SUBTRACTION),
    ("modulus subtract", "DERIVED\\PRIMARY\\MODULUS SUBTRACT", None, SUBTRACTION),
    ("projection image", "DERIVED\\SECONDARY\\PROJECTION IMAGE", None, PROJECTION),
    ("siemens mip", "DERIVED\\PRIMARY\\MIP_SAG\\ND", None, PROJECTION),
    # magnitude images, ORIGINAL or DERIVED: kept
    ("derived primary magnitude", "DERIVED\\PRIMARY\\M", None, None),
    ("siemens normalized magnitude", "DERIVED\\PRIMARY\\M\\ND\\NORM", None, None),
    ("siemens mpr reformat", "DERIVED\\PRIMARY\\MPR\\ND\\NORM", None, None),
    ("bundled derived secondary other", None, None, None),
    ("siemens trace-weighted dwi", "DERIVED\\PRIMARY\\DIFFUSION\\TRACEW\\ND", None, None),
    ("siemens diffusion mosaic", "ORIGINAL\\PRIMARY\\DIFFUSION\\NONE\\ND\\MOSAIC", None, KIND_REASONS["mosaic"]),
    ("philips magnitude", "ORIGINAL\\PRIMARY\\M_FFE\\M\\FFE", philips, None),
    ("enhanced-style t1 flavor", "ORIGINAL\\PRIMARY\\T1\\NONE", None, None),
    ("perfusion flavor (a DCE frame)", "ORIGINAL\\PRIMARY\\PERFUSION\\NONE", None, None),
    ("ge magnitude (private 0)", "ORIGINAL\\PRIMARY\\OTHER", ge_complex(0), None),
    ("philips water (private)", "DERIVED\\PRIMARY\\OTHER", philips_code("W"), None),
    ("philips asl perfusion (private)", "ORIGINAL\\PRIMARY\\PERFUSION_FFE\\PERFUSION\\FFE", philips_code("PERFUSION"),
     MAP),
]


@pytest.mark.parametrize("case, image_type, edit, reason", CLASSIC_CASES, ids=[c[0] for c in CLASSIC_CASES])
def test_classic_mr_kind(case, image_type, edit, reason, tmp_path):
    result = scan_file(classic(tmp_path / "image.dcm", image_type, edit))
    if reason is None:
        assert isinstance(result, dict), f"{case}: skipped as {result!r}, must be kept"
    else:
        assert result == reason


def _frame_type(ds):
    return ds.SharedFunctionalGroupsSequence[0].MRImageFrameTypeSequence[0]


def _set_frame_type(values):
    def edit(ds):
        ds.ImageType = values
        _frame_type(ds).FrameType = values
    return edit


def _complex(value):
    def edit(ds):
        ds.ComplexImageComponent = value
        _frame_type(ds).ComplexImageComponent = value
    return edit


def _one_frame_real(ds):
    """Frames of different components: MIXED at the top, REAL in the second frame's own frame type item."""
    ds.ComplexImageComponent = "MIXED"
    item = Dataset()
    item.FrameType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    item.ComplexImageComponent = "REAL"
    ds.PerFrameFunctionalGroupsSequence[1].MRImageFrameTypeSequence = Sequence([item])


def _max_ip(ds):
    ds.ImageType = ["DERIVED", "PRIMARY", "VOLUME", "MAXIMUM"]
    ds.VolumeBasedCalculationTechnique = "MAX_IP"
    _frame_type(ds).VolumeBasedCalculationTechnique = "MAX_IP"


def _mpr(ds):
    ds.ImageType = ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]
    ds.VolumeBasedCalculationTechnique = "MPR"
    _frame_type(ds).FrameType = ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]
    _frame_type(ds).VolumeBasedCalculationTechnique = "MPR"


ENHANCED_CASES = [
    ("phase", _complex("PHASE"), PHASE),
    ("imaginary", _complex("IMAGINARY"), IMAGINARY),
    ("one real frame of a mixed object", _one_frame_real, REAL),
    ("adc", _set_frame_type(["DERIVED", "PRIMARY", "DIFFUSION", "ADC"]), MAP),
    ("t1 map", _set_frame_type(["DERIVED", "PRIMARY", "T1", "T1_MAP"]), MAP),
    ("localizer", _set_frame_type(["ORIGINAL", "PRIMARY", "LOCALIZER", "NONE"]), LOCALIZER),
    ("subtraction", _set_frame_type(["DERIVED", "PRIMARY", "VOLUME", "SUBTRACTION"]), SUBTRACTION),
    ("max ip", _max_ip, PROJECTION),
    ("magnitude as written", None, None),
    ("mpr of a magnitude volume", _mpr, None),
]


@pytest.mark.parametrize("case, edit, reason", ENHANCED_CASES, ids=[c[0] for c in ENHANCED_CASES])
def test_enhanced_mr_kind(case, edit, reason, tmp_path):
    path = enhanced_mr_jpegls_file(tmp_path / "enhanced.dcm")
    if edit is not None:
        ds = pydicom.dcmread(path)
        edit(ds)
        ds.save_as(path, enforce_file_format=True)
    result = scan_file(path)
    if reason is None:
        assert isinstance(result, dict), f"{case}: skipped as {result!r}, must be kept"
        assert len(result["frames"]) == 3
    else:
        assert result == reason


def test_include_kinds_brings_a_kind_back(tmp_path):
    path = classic(tmp_path / "loc.dcm", "ORIGINAL\\PRIMARY\\LOCALIZER")
    assert scan_file(path) == LOCALIZER
    assert isinstance(scan_file(path, include_kinds=("localizer",)), dict)
    # a file of two kinds comes back only when both are included
    both = classic(tmp_path / "asl.dcm", "DERIVED\\PRIMARY\\ASL\\ND\\SUB\\TTEST")
    assert scan_file(both, include_kinds=("subtraction",)) == MAP
    assert isinstance(scan_file(both, include_kinds=("subtraction", "parametric_map")), dict)


def test_include_kinds_is_checked():
    assert load_config(overrides=["preprocess.include_kinds=[localizer]"])["preprocess"]["include_kinds"] == \
        ["localizer"]
    with pytest.raises(ConfigError, match="include_kinds.*phase, real"):
        preprocess.check_config(load_config(overrides=["preprocess.include_kinds=[localiser]"]))
    with pytest.raises(ConfigError, match="include_kinds"):
        index_tree(".", include_kinds=["own output"])


def test_three_plane_localizer_series_is_skipped_by_geometry(tmp_path):
    """A localizer that only says M (as Siemens and Philips survey scans do) and whose name does not say it either:
    its images lie in three planes."""
    write_mr_series(tmp_path / "loc", "P1", n_slices=3, rows=16, cols=16, description="fl2d three planes")
    planes = [[1, 0, 0, 0, 1, 0], [0, 1, 0, 0, 0, -1], [1, 0, 0, 0, 0, -1]]
    for path, plane in zip(sorted((tmp_path / "loc").glob("*.dcm")), planes):
        ds = pydicom.dcmread(path)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D"]
        ds.ImageOrientationPatient = plane
        ds.save_as(path, enforce_file_format=True)
    write_mr_series(tmp_path / "dce", "P1", n_slices=2, rows=16, cols=16, description="DCE", seed=1)
    series, skipped, _ = index_tree(tmp_path)
    assert [s.series_description for s in series] == ["DCE"]
    assert skipped == {MIXED_PLANES_REASON: 3}
    series, skipped, _ = index_tree(tmp_path, include_kinds=["localizer"])
    assert len(series) == 2 and not skipped


def test_written_by_enhance_recognizes_each_marker():
    def plain():
        ds = Dataset()
        ds.ImageType = ["DERIVED", "SECONDARY", "M"]
        ds.DerivationDescription = "Motion corrected by the scanner"
        return ds

    assert not kinds.written_by_enhance(plain())
    marked = plain()
    marked.private_block(kinds.ENHANCE_PRIVATE_GROUP, kinds.ENHANCE_PRIVATE_CREATOR,
                         create=True).add_new(0x01, "LO", "enhance.py output")
    assert kinds.written_by_enhance(marked)
    equipment = plain()
    item = Dataset()
    item.Manufacturer = kinds.ENHANCE_SOFTWARE_NAME
    equipment.ContributingEquipmentSequence = Sequence([item])
    assert kinds.written_by_enhance(equipment)
    classic_derivation = plain()
    classic_derivation.DerivationDescription = kinds.ENHANCE_DERIVATION_PREFIX + " (unet, ...)"
    assert kinds.written_by_enhance(classic_derivation)
    per_frame = plain()
    derivation = Dataset()
    derivation.DerivationDescription = kinds.ENHANCE_DERIVATION_PREFIX + " (unet, ...)"
    group = Dataset()
    group.DerivationImageSequence = Sequence([derivation])
    per_frame.PerFrameFunctionalGroupsSequence = Sequence([group])
    assert kinds.written_by_enhance(per_frame)


def test_preprocessing_counts_each_kind_and_include_kinds_uses_it(tmp_path):
    root = tmp_path / "tree"
    write_mr_series(root / "P1", "P1", n_slices=2, rows=24, cols=24)
    write_mr_series(root / "P2", "P2", n_slices=2, rows=24, cols=24, seed=1)
    kinds = root / "P3"
    classic(kinds / "phase.dcm", "ORIGINAL\\PRIMARY\\P\\ND")
    classic(kinds / "adc.dcm", "DERIVED\\PRIMARY\\DIFFUSION\\ADC\\ND")
    classic(kinds / "loc.dcm", "ORIGINAL\\PRIMARY\\LOCALIZER")
    classic(kinds / "sub.dcm", "DERIVED\\PRIMARY\\M\\ND\\SUB")
    classic(kinds / "mip.dcm", "DERIVED\\PRIMARY\\MIP_TRA\\ND")
    classic(kinds / "kept.dcm", "DERIVED\\PRIMARY\\M")
    cfg = load_config(overrides=["preprocess.image_size=32"])
    summary = preprocess.run(root, tmp_path / "out", cfg, progress=False)
    assert summary["series_used"] == 3  # P1, P2 and the DERIVED\PRIMARY\M file
    assert summary["files_skipped"] == {PHASE: 1, MAP: 1, LOCALIZER: 1, SUBTRACTION: 1, PROJECTION: 1}
    assert summary["files_used"] + sum(summary["files_skipped"].values()) == summary["files_seen"]

    cfg = load_config(overrides=["preprocess.image_size=32", "preprocess.include_kinds=[localizer, subtraction]"])
    summary = preprocess.run(root, tmp_path / "out2", cfg, progress=False)
    assert summary["series_used"] == 5
    assert summary["files_skipped"] == {PHASE: 1, MAP: 1, PROJECTION: 1}


def test_enhance_output_reason_is_distinct():
    assert ENHANCE_OUTPUT_REASON not in KIND_REASONS.values()
    assert "enhance" not in kinds.IMAGE_KINDS  # never includable


@pytest.mark.parametrize("name", ["localizer", "AAHead_Scout", "SURVEY", "3-Plane Loc", "t2_Localiser"])
def test_a_localizer_named_so_is_skipped_whatever_its_image_type(tmp_path, name):
    """ProstateX's "localizer" is one image, ImageType ORIGINAL\\PRIMARY\\M\\ND: only its name tells it."""
    write_mr_series(tmp_path / "loc", "P1", n_slices=1, rows=16, cols=16, description=name)
    write_mr_series(tmp_path / "dce", "P1", n_slices=2, rows=16, cols=16, description="DCE", seed=1)
    series, skipped, _ = index_tree(tmp_path)
    assert [s.series_description for s in series] == ["DCE"] and skipped == {"localizer": 1}


@pytest.mark.parametrize("name, derived, reason", [
    ("ax_vibe_dyn_SUB_2", True, SUBTRACTION), ("MIP SUB 2", True, None), ("Sub-1 t1_fl3d", True, SUBTRACTION),
    ("MIP_TRA", True, PROJECTION), ("t1 subject positioning", True, "kept"), ("NO SUB", True, "kept"),
    ("w/o sub t1 fs", True, "kept"), ("Sub Ax T1 FS", False, "kept"), ("Sag early-pre subtr.", True, SUBTRACTION),
    ("PE2(SER)", True, MAP), ("Analysis Mask", True, MAP), ("Ktrans map", True, MAP), ("T2 segmented", True, "kept"),
    ("Ax T1 no_sub", True, "kept"), ("NO-SUB", True, "kept"), ("Ax T2 PE-RL", True, "kept"), ("T2 TSE Seg", True, "kept"),
    ("DynaCAD Ax", True, MAP)])
def test_a_subtraction_mip_or_map_named_so_is_skipped_whatever_its_image_type(tmp_path, name, derived, reason):
    """A scanner's or workstation's subtractions, MIPs and kinetic maps of a DCE (I-SPY's PE2(SER), its analysis
    mask) are often written DERIVED\\PRIMARY\\M or DERIVED\\SECONDARY\\OTHER: only the name tells them, and they were
    trained on and enhanced as anatomy ("MIP SUB 2" is both: either reason). A word that merely begins so ("subject"), one denied ("NO SUB", "w/o sub") and an
    ORIGINAL image so named are kept."""
    write_mr_series(tmp_path / "derived", "P1", n_slices=1, rows=16, cols=16, description=name)
    for path in (tmp_path / "derived").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.ImageType = ["DERIVED" if derived else "ORIGINAL", "PRIMARY", "M", "ND"]
        ds.save_as(path, enforce_file_format=True)
    write_mr_series(tmp_path / "dce", "P1", n_slices=2, rows=16, cols=16, description="DCE", seed=1)
    series, skipped, _ = index_tree(tmp_path)
    if reason == "kept":
        assert len(series) == 2 and not skipped
    else:
        assert [s.series_description for s in series] == ["DCE"]
        assert set(skipped) == {reason} if reason else set(skipped) <= {SUBTRACTION, PROJECTION}
