"""enhance.py's output against dciodvfy (dicom3tools, the reference DICOM validator): for every kind of input the
walker accepts, enhancing must add no error that the source does not already have.

dciodvfy checks each object against its IOD in PS3.3 (modules, conditions, enumerated values). The comparison is
by message, source against output, so an error the input already carries (a vendor's quirk) is not held against
the writer. Outside CI, a machine without dciodvfy skips these tests with the reason; in CI (CI=true) a missing
dciodvfy is a failure, as .ci/run installs it (Debian package dicom3tools).
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from dicom_fixtures import (
    bundled,
    enhanced_mr_jpegls_file,
    legacy_converted_mr_file,
    padded_mr_file,
    write_dwi_series,
    write_mr_series,
)
from pydicom.data import get_testdata_file

from breastmri.enhance import pipeline

DCIODVFY = shutil.which("dciodvfy")


@pytest.fixture(scope="module")
def dciodvfy():
    if DCIODVFY is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("dciodvfy is not installed, and CI must run these checks: .ci/run installs it with "
                        "`apt-get install -y dicom3tools` when it runs as root")
        pytest.skip("dciodvfy not found on PATH: install the Debian package dicom3tools "
                    "(`apt-get install dicom3tools`) to validate enhance.py's DICOM output")
    return DCIODVFY


def errors(dciodvfy, path):
    """The set of dciodvfy's error messages for one file, normalized: whitespace collapsed, UIDs and the file
    name replaced by placeholders (a derived object has new UIDs; the message is what matters)."""
    result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=120)
    found = set()
    for line in (result.stdout + result.stderr).splitlines():
        if not line.startswith("Error"):
            continue
        line = line.replace(str(path), "<file>")
        line = re.sub(r"\b\d+(\.\d+){3,}\b", "<uid>", line)
        found.add(" ".join(line.split()))
    return found


def _copy(name):
    def make(folder):
        shutil.copy(bundled(name), folder / "source.dcm")
    return make


def _enhanced_jpegls(folder):
    enhanced_mr_jpegls_file(folder / "source.dcm")


def _enhanced_without_groups(folder):
    """A malformed Enhanced MR source: no functional groups at all (the IOD requires them)."""
    enhanced_mr_jpegls_file(folder / "source.dcm")
    ds = pydicom.dcmread(folder / "source.dcm")
    del ds.PerFrameFunctionalGroupsSequence, ds.SharedFunctionalGroupsSequence
    ds.save_as(folder / "source.dcm")


def _emri_small(folder):
    # pydicom's own Enhanced MR test file (JPEG-LS); fetched on demand by pydicom, so only used when cached.
    path = get_testdata_file("emri_small_jpeg_ls_lossless.dcm", download=False)
    if path is None:
        pytest.skip("emri_small_jpeg_ls_lossless.dcm is not in pydicom's local cache (no download in tests); "
                    "enhanced_mr_jpegls covers the same kind of input")
    shutil.copy(path, folder / "source.dcm")


def _legacy_converted(folder):
    classic = folder.parent / "classic"
    write_mr_series(classic, "PL", n_slices=3, rows=24, cols=24)
    legacy_converted_mr_file(folder / "source.dcm", sorted(classic.glob("*.dcm")))


def _padded(folder):
    padded_mr_file(folder / "source.dcm")


def _classic_multiframe(folder):
    """MR Image Storage (a single-frame IOD) holding 3 frames, as some exports write it: the output's references
    may not give frame numbers."""
    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    frame = ds.pixel_array
    ds.NumberOfFrames = 3
    ds.PixelData = b"".join(frame.astype(frame.dtype.newbyteorder("<")).tobytes() for _ in range(3))
    ds.save_as(folder / "source.dcm", little_endian=True, implicit_vr=False)


def _enhanced_without_image_type(folder):
    """An Enhanced MR source without ImageType (Type 1 there): the output still needs its four values."""
    enhanced_mr_jpegls_file(folder / "source.dcm")
    ds = pydicom.dcmread(folder / "source.dcm")
    del ds.ImageType
    ds.save_as(folder / "source.dcm")


INPUT_KINDS = {
    "classic_mr": _copy("MR_small.dcm"),
    "classic_mr_jpeg2000": _copy("MR_small_jp2klossless.dcm"),
    "classic_mr_implicit_vr": _copy("MR_small_implicit.dcm"),
    "enhanced_mr_jpegls": _enhanced_jpegls,
    "enhanced_mr_without_functional_groups": _enhanced_without_groups,
    "emri_small_jpegls": _emri_small,
    "legacy_converted_enhanced_mr": _legacy_converted,
    "padded_mr": _padded,
    "classic_mr_of_three_frames": _classic_multiframe,
    "enhanced_mr_without_image_type": _enhanced_without_image_type,
}


@pytest.mark.parametrize("kind", sorted(INPUT_KINDS))
def test_enhancing_adds_no_dciodvfy_error(kind, dciodvfy, identity, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    INPUT_KINDS[kind](folder)
    source = folder / "source.dcm"
    summary = pipeline.run(identity, source, tmp_path / "out", progress=False)
    assert summary["series_done"] == 1, summary["series"]
    (output,) = sorted((tmp_path / "out").rglob("*.dcm"))
    before, after = errors(dciodvfy, source), errors(dciodvfy, output)
    new = sorted(after - before)
    print(f"{kind}: dciodvfy errors source {len(before)}, enhanced {len(after)}, new {len(new)}")
    assert not new, f"enhancing {kind} added dciodvfy errors:\n" + "\n".join(new)


def test_each_b_value_of_a_split_diffusion_series_adds_no_dciodvfy_error(dciodvfy, identity, tmp_path):
    """A diffusion series of two b-values is written as two derived series (one per b-value): their files are as
    valid as the source's."""
    write_dwi_series(tmp_path / "in", "P1", b_values=(0, 800), n_slices=2)
    summary = pipeline.run(identity, tmp_path / "in", tmp_path / "out", progress=False)
    assert summary["series_done"] == 2, summary["series"]
    before = set().union(*(errors(dciodvfy, p) for p in sorted((tmp_path / "in").glob("*.dcm"))))
    after = set().union(*(errors(dciodvfy, p) for p in sorted((tmp_path / "out").rglob("*.dcm"))))
    assert not sorted(after - before), "\n".join(sorted(after - before))


PCASL = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "philips-asl-3t" / "202_SOURCE_-_pCASL"


@pytest.mark.skipif(not PCASL.is_dir(), reason=f"real scanner files not found at {PCASL}")
def test_the_real_pcasl_control_and_label_series_add_no_dciodvfy_error(dciodvfy, identity, tmp_path):
    """A real Philips pCASL source series (its images at two positions and three time points), split into its
    control and its label images and written as two derived series: as valid as the scanner's files."""
    headers = {p: pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(PCASL.glob("*.dcm"))}
    positions = sorted({round(float(ds.ImagePositionPatient[2]), 2) for ds in headers.values()})[:2]
    picked = [p for p, ds in headers.items() if round(float(ds.ImagePositionPatient[2]), 2) in positions
              and int(ds.TemporalPositionIdentifier) <= 3]
    (tmp_path / "in").mkdir()
    for p in picked:
        shutil.copy(p, tmp_path / "in" / p.name)
    summary = pipeline.run(identity, tmp_path / "in", tmp_path / "out", progress=False)
    assert sorted(r["volume"] for r in summary["series"]) == ["control", "label"]
    written = sorted((tmp_path / "out").rglob("*.dcm"))
    assert len(written) == len(picked) == 12
    before = set().union(*(errors(dciodvfy, p) for p in picked))
    after = set().union(*(errors(dciodvfy, p) for p in written))
    assert not sorted(after - before), "\n".join(sorted(after - before))
