"""A series of several kinds of image at each slice position is split by the index (module docstring): a diffusion
series of several b-values into one single-time-point series per b-value, an arterial spin labelling source series
into its control and its label images, each a series of repeated acquisitions. Preprocessing and enhance.py then
treat each part as a series of its own. The real cases, ProstateX's 4-b-value series and Philips' pCASL source
series: tests/test_real_data.py."""

import numpy as np
import pydicom
import pytest
from dicom_fixtures import enhanced_mr_dataset, write_asl_series, write_dwi_series

from breastmri.config import load_config
from breastmri.data import preprocess
from breastmri.data.manifest import read_manifest
from breastmri.dicom.dynamics import assemble_dynamics
from breastmri.dicom.index import ASL_OBJECT_REASON, DIFFUSION_OBJECT_REASON, index
from breastmri.enhance import pipeline
from breastmri.enhance.enhancer import load_enhancer


@pytest.mark.parametrize("vendor", ["standard", "siemens"])
def test_a_series_of_two_b_values_is_two_series_of_one_time_point(tmp_path, vendor):
    uid = write_dwi_series(tmp_path, "P1", b_values=(800, 0), vendor=vendor)
    series, skips, _ = index(tmp_path)
    assert [s.volume for s in series] == ["b=0", "b=800"]  # in b order, whatever the acquisition order
    assert all(s.series_uid == uid and len(s.frames) == 3 and s.layout == [(0, 0), (0, 1), (0, 2)] for s in series)
    assert len({s.id for s in series}) == 2 and not set(series[0].sop_instance_uids) & set(series[1].sop_instance_uids)
    assert len(assemble_dynamics(series)) == 2  # two b-values are not two time points of a dynamic


def test_b_values_stored_as_separate_series_are_not_a_dynamic(tmp_path):
    """Two series of one protocol, one b-value each, acquired one after the other: everything a dynamic stored one
    series per time point shares, but the b-value."""
    write_dwi_series(tmp_path / "b0", "P1", b_values=(0,), series_uid="1.2.3.1")
    write_dwi_series(tmp_path / "b800", "P1", b_values=(800,), series_uid="1.2.3.2", acquired_s=120)
    series, _, _ = index(tmp_path)
    assert len(series) == 2 and all(s.volume is None for s in series)
    assert all(s.dynamic is None for s in assemble_dynamics(series))


@pytest.mark.parametrize("kind, volumes, time_points, description", [
    ("diffusion", ("b=0", "b=800"), 1, "ep2d_diff"), ("asl", ("control", "label"), 4, "SOURCE - pCASL")])
def test_each_volume_is_preprocessed_and_enhanced_on_its_own(tmp_path, identity_run, kind, volumes, time_points,
                                                             description):
    """Each b-value of a diffusion series (one time point each), each of an ASL series' control and label images
    (4 repeated time points each): its own arrays, and its own derived series with its own SeriesNumber."""
    uid = (write_dwi_series if kind == "diffusion" else write_asl_series)(tmp_path / "in", "P1")
    cfg = load_config(overrides=["preprocess.split=[1.0,0.0,0.0]"])
    preprocess.run(tmp_path / "in", tmp_path / "data", cfg, progress=False)
    rows = read_manifest(tmp_path / "data")
    assert {r["series_uid"] for r in rows} == {f"{uid}#{v}" for v in volumes}
    assert {r["n_times"] for r in rows} == {time_points}
    assert {r["source_series_uid"] for r in rows} == {uid}
    assert len({r["noisy_file"] for r in rows}) == 2

    summary = pipeline.run(load_enhancer(identity_run), tmp_path / "in", tmp_path / "out", progress=False)
    assert summary["series_done"] == 2
    assert sorted((r["volume"], r["time_points"]) for r in summary["series"]) == [(v, time_points) for v in volumes]
    written = [pydicom.dcmread(p) for p in sorted((tmp_path / "out").rglob("*.dcm"))]
    by_series = {}
    for ds in written:
        by_series.setdefault(ds.SeriesInstanceUID, set()).add((ds.SeriesDescription, int(ds.SeriesNumber)))
    assert len(by_series) == 2 and all(len(v) == 1 for v in by_series.values())
    (first,), (second,) = by_series.values()
    assert {first[0], second[0]} == {f"{description} {v} enhanced" for v in volumes}
    assert first[1] != second[1]  # a viewer shows them as two series


@pytest.mark.parametrize("case, make, expected", [
    ("standard", lambda ds: setattr(ds, "DiffusionBValue", 800.0), 800.0),
    ("siemens IS", lambda ds: ds.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0C, "IS", "800"),
     800.0),
    ("ge with its 10^9 offset, multi-valued", lambda ds: ds.private_block(0x0043, "GEMS_PARM_01", create=True)
     .add_new(0x39, "IS", ["1000000800", "8", "0", "0"]), 800.0),
    ("philips FL", lambda ds: ds.private_block(0x2001, "Philips Imaging DD 001", create=True)
     .add_new(0x03, "FL", 800.0), 800.0),
    ("negative", lambda ds: setattr(ds, "DiffusionBValue", -5.0), None),
    ("none", lambda ds: None, None),
])
def test_b_values_are_read_from_the_standard_and_the_vendors_elements(case, make, expected):
    from breastmri.dicom.headers import _b_value

    ds = pydicom.Dataset()
    ds.ScanningSequence = ["SE", "EP"]
    make(ds)
    assert _b_value(ds) == expected
    ds.ScanningSequence = "GR"  # a gradient-echo image (a DCE phase): GE's element is on every image, not a b-value
    assert _b_value(ds) == (expected if case in ("standard", "negative") else None)


def test_b_values_of_two_acquisitions_stay_apart(tmp_path):
    """Two acquisitions of one diffusion protocol, each a series of b = 0 and 800: four series, none a dynamic (a
    b-value part is never a time point, whatever else it shares)."""
    write_dwi_series(tmp_path / "first", "P1", series_uid="1.2.3.1")
    write_dwi_series(tmp_path / "second", "P1", series_uid="1.2.3.2", acquired_s=300)
    series, _, _ = index(tmp_path)
    assembled = assemble_dynamics(series)
    assert len(assembled) == 4 and all(s.dynamic is None for s in assembled)
    assert len({s.id for s in assembled}) == 4


def test_images_without_a_b_value_are_a_volume_of_their_own(tmp_path):
    uid = write_dwi_series(tmp_path, "P1", b_values=(None, 800))
    series, _, _ = index(tmp_path)
    assert [(s.series_uid, s.volume, len(s.frames)) for s in series] == [(uid, "b=unknown", 3), (uid, "b=800", 3)]


def _enhanced_dwi(path, b_values, series_uid):
    """An Enhanced MR object of 2 positions x len(b_values) frames, the b-value of each in its MRDiffusionSequence."""
    n = 2 * len(b_values)
    ds = enhanced_mr_dataset(np.full((n, 16, 16), 500, np.uint16), [2.5 * (i % 2) for i in range(n)], [1] * n,
                             [1.0] * n, [0.0] * n, series_uid=series_uid)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = series_uid + ".1"
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        content = item.FrameContentSequence[0]
        del content.TemporalPositionIndex
        diffusion = pydicom.Dataset()
        diffusion.DiffusionBValue = float(b_values[i // 2])
        item.MRDiffusionSequence = pydicom.Sequence([diffusion])
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def test_multi_frame_diffusion_objects(tmp_path):
    """One b-value per object, one series each: two series, not a dynamic. Several b-values in one object: it
    cannot be split (enhance.py writes objects back whole), so it is skipped with its reason."""
    _enhanced_dwi(tmp_path / "one" / "b0.dcm", (0,), "1.2.9.1")
    _enhanced_dwi(tmp_path / "one" / "b800.dcm", (800,), "1.2.9.2")
    series, _, _ = index(tmp_path / "one")
    assert len(series) == 2 and {s.acquisition["b_value"] for s in series} == {0.0, 800.0}
    assert all(s.dynamic is None for s in assemble_dynamics(series))
    _enhanced_dwi(tmp_path / "both" / "dwi.dcm", (0, 800), "1.2.9.3")
    series, skips, _ = index(tmp_path / "both")
    assert series == [] and skips.series[DIFFUSION_OBJECT_REASON] == 1


@pytest.mark.parametrize("vendor", ["philips", "philips implicit VR", "standard"])
def test_asl_control_and_label_images_are_two_series_of_repeated_acquisitions(tmp_path, vendor):
    """In an implicit-VR file Philips' Label Type is raw bytes (no dictionary entry): the same volumes."""
    uid = write_asl_series(tmp_path, "P1", vendor=vendor.split()[0])
    if vendor.endswith("implicit VR"):
        for path in tmp_path.glob("*.dcm"):
            ds = pydicom.dcmread(path)
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
            ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=True)
    series, skips, _ = index(tmp_path)
    assert [(s.series_uid, s.volume, s.id) for s in series] == [(uid, "control", f"{uid}#control"),
                                                               (uid, "label", f"{uid}#label")]
    for s in series:  # 4 time points x 2 positions each, one kind of image throughout
        assert sorted(s.layout) == [(t, k) for t in range(4) for k in range(2)]
        assert {s.acquisition["asl"]} == {s.volume}
    assert not set(series[0].sop_instance_uids) & set(series[1].sop_instance_uids) and not skips.series
    assert len(assemble_dynamics(series)) == 2


def test_asl_images_stored_one_series_each_make_a_control_and_a_label_dynamic(tmp_path):
    """Every (time point, label) its own series of one protocol: the control series are one dynamic and the label
    series another, never one dynamic whose time points alternate between the two."""
    write_asl_series(tmp_path, "P1", one_series_per_image=True)
    series, _, _ = index(tmp_path)
    assert len(series) == 8 and all(s.volume is None for s in series)
    dynamics = assemble_dynamics(series)
    assert sorted((s.acquisition["asl"], len({t for t, _ in s.layout})) for s in dynamics) == [("control", 4),
                                                                                              ("label", 4)]


def test_multi_frame_asl_objects(tmp_path):
    """ASLContext per frame (MR Arterial Spin Labeling functional group) or shared by all frames: a control object
    and a label object of one series are its two volumes, of two series two series that never make one dynamic;
    one object of both cannot be split and is skipped with its reason."""
    def write(path, contexts, series_uid, shared=False):
        n = 2 * len(contexts)
        ds = enhanced_mr_dataset(np.full((n, 16, 16), 500, np.uint16), [2.5 * (i % 2) for i in range(n)],
                                 [1 + i // 2 for i in range(n)], [1.0] * n, [0.0] * n, series_uid=series_uid)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{series_uid}.{len(path.stem)}"
        items = ds.SharedFunctionalGroupsSequence[:1] if shared else ds.PerFrameFunctionalGroupsSequence
        for i, item in enumerate(items):
            asl = pydicom.Dataset()
            asl.ASLContext = contexts[i // 2]
            item.MRArterialSpinLabelingSequence = pydicom.Sequence([asl])
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)

    write(tmp_path / "one" / "control.dcm", ("CONTROL", "CONTROL"), "1.2.8.1")
    write(tmp_path / "one" / "lab.dcm", ("LABEL", "LABEL"), "1.2.8.1", shared=True)
    series, _, _ = index(tmp_path / "one")
    assert [(s.series_uid, s.volume, len(s.frames)) for s in series] == [("1.2.8.1", "control", 4),
                                                                         ("1.2.8.1", "label", 4)]
    write(tmp_path / "apart" / "control.dcm", ("CONTROL", "CONTROL"), "1.2.8.2")
    write(tmp_path / "apart" / "lab.dcm", ("LABEL", "LABEL"), "1.2.8.3", shared=True)
    series, _, _ = index(tmp_path / "apart")
    assert sorted(s.acquisition["asl"] for s in series) == ["control", "label"]
    assert all(s.volume is None for s in series)
    write(tmp_path / "both" / "asl.dcm", ("CONTROL", "LABEL"), "1.2.8.4")
    series, skips, _ = index(tmp_path / "both")
    assert series == [] and skips.series[ASL_OBJECT_REASON] == 1


def test_volumes_are_ordered_and_an_object_of_several_is_skipped_for_what_it_holds():
    """_volumes on header frames: b-value first, then control, label, m_zero_scan, images without a label last;
    a series whose b-values are in separate files but one of whose objects holds two labels is skipped as ASL."""
    from breastmri.dicom.index import _volumes

    def frames(*kinds, one_file=False):
        return [{"b_value": b, "asl": asl, "position": 0.0, "path": "f" if one_file else f"f{i}"}
                for i, (b, asl) in enumerate(kinds)]

    labels = frames((None, "label"), (None, None), (None, "m_zero_scan"), (None, "control"))
    assert [name for name, _ in _volumes(labels)] == ["control", "label", "m_zero_scan", "unknown"]
    mixed = frames((0.0, None), (800.0, None)) + [dict(f, path="multi") for f in frames((0.0, "control"),
                                                                                       (0.0, "label"))]
    assert _volumes(mixed) == ASL_OBJECT_REASON
    assert _volumes(frames((0.0, None), (800.0, None), one_file=True)) == DIFFUSION_OBJECT_REASON
