"""A diffusion series of several b-values is not a dynamic: the index splits it into one series per b-value, which
preprocessing and enhance.py then treat as single-time-point series (index module docstring). The real case,
ProstateX's 4-b-value series: tests/test_real_data.py."""

import pydicom
import pytest

from breastmri.config import load_config
from breastmri.data import preprocess
from breastmri.data.manifest import read_manifest
from breastmri.dicom.dynamics import assemble_dynamics
from breastmri.dicom.index import index
from breastmri.enhance import pipeline
from breastmri.enhance.enhancer import load_enhancer
from tests.dicom_fixtures import write_dwi_series


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


def test_each_b_value_is_preprocessed_and_enhanced_on_its_own(tmp_path, identity_run):
    uid = write_dwi_series(tmp_path / "in", "P1")
    cfg = load_config(overrides=["preprocess.split=[1.0,0.0,0.0]"])
    preprocess.run(tmp_path / "in", tmp_path / "data", cfg, progress=False)
    rows = read_manifest(tmp_path / "data")
    assert {r["series_uid"] for r in rows} == {f"{uid}#b=0", f"{uid}#b=800"}
    assert {(r["n_times"], r["time_index"]) for r in rows} == {(1, 0)} and {r["source_series_uid"] for r in rows} == {uid}
    assert len({r["noisy_file"] for r in rows}) == 2

    summary = pipeline.run(load_enhancer(identity_run), tmp_path / "in", tmp_path / "out", progress=False)
    assert summary["series_done"] == 2
    assert sorted((r["volume"], r["time_points"], r["slices"]) for r in summary["series"]) == [("b=0", 1, 3),
                                                                                              ("b=800", 1, 3)]
    written = [pydicom.dcmread(p) for p in sorted((tmp_path / "out").rglob("*.dcm"))]
    by_series = {}
    for ds in written:
        by_series.setdefault(ds.SeriesInstanceUID, set()).add((ds.SeriesDescription, int(ds.SeriesNumber)))
    assert len(by_series) == 2 and all(len(v) == 1 for v in by_series.values())
    (first,), (second,) = by_series.values()
    assert {first[0], second[0]} == {"ep2d_diff b=0 enhanced", "ep2d_diff b=800 enhanced"}
    assert first[1] != second[1]  # a viewer shows them as two series
