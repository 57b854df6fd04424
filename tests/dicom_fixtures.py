"""Tiny synthetic DICOM files for the preprocessing tests, written with pydicom into tmp_path.

Images are small (tens of pixels) magnitude images: an elliptical "body" with a smooth texture in air,
with Rician noise of a known sigma (complex Gaussian noise, then magnitude), stored as uint16.
"""

import hashlib
import shutil

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    JPEGLSLossless,
    MRImageStorage,
    MRSpectroscopyStorage,
    PositronEmissionTomographyImageStorage,
)

# The MR_small.dcm variants bundled with pydicom 3 (no download needed), by transfer syntax.
BUNDLED_MR = {
    "explicit_le": "MR_small.dcm",
    "implicit_le": "MR_small_implicit.dcm",
    "explicit_be": "MR_small_bigendian.dcm",
    "rle": "MR_small_RLE.dcm",
    "jpeg2000_lossless": "MR_small_jp2klossless.dcm",
    "jpeg_ls_lossless": "MR_small_jpeg_ls_lossless.dcm",
}


def set_uint16_pixels(ds, pixels):
    """Unsigned 16-bit grayscale pixel data (and its image pixel tags) for a (H, W) or (frames, H, W) array."""
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    return ds

def textured(value, shape=(16, 16)):
    """A uint16 image of `value` plus a fixed pattern of 0-16 (17 values): an image of a handful of values is read as
    a mask or label map (preprocess.MAX_LABEL_VALUES) and skipped."""
    return (value + np.arange(shape[0] * shape[1]).reshape(shape) % 17).astype(np.uint16)


def bundled(name):
    """Path of a test file shipped inside pydicom (never downloads)."""
    path = get_testdata_file(name, download=False)
    if path is None:
        raise FileNotFoundError(f"{name} is not bundled with this pydicom")
    return path


def uid(*parts):
    """A deterministic 2.25.<int> UID from the given parts. (pydicom's generate_uid(prefix=None, ...) ignores
    entropy_srcs and returns a random UUID-based UID, so it cannot be used for reproducible fixtures.)"""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()
    return UID(f"2.25.{int(digest[:30], 16)}")


def phantom(rows, cols, sigma=20.0, signal=1000.0, seed=0, body=0.6):
    """A magnitude image (rows, cols) float64: textured ellipse (axes `body` of the matrix) of mean ~signal in
    air, plus Rician noise of std `sigma` per channel."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:rows, :cols]
    r = np.hypot((y - rows / 2) / (body * rows / 2), (x - cols / 2) / (body * cols / 2))
    texture = 0.75 + 0.25 * np.sin(x / 3.0) * np.cos(y / 4.0)
    clean = np.where(r < 1, signal * texture, 0.0)
    return np.abs(clean + sigma * (rng.standard_normal(clean.shape) + 1j * rng.standard_normal(clean.shape)))


def image_dataset(pixels, *, patient_id="P1", study_uid=None, series_uid=None, sop_uid=None, instance=1,
                  position=0.0, description="DCE", modality="MR", sop_class=MRImageStorage, temporal=None,
                  acquisition_time=None, slope=None, intercept=None, field_strength=3.0):
    """A classic single-frame grayscale image Dataset (uint16 pixels, 2D), axial orientation, ready to save."""
    pixels = np.asarray(pixels)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    sop_uid = sop_uid or uid(patient_id, series_uid, instance, temporal, position, "sop")
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.Modality = modality
    if patient_id is not None:
        ds.PatientID = patient_id
        ds.PatientName = f"Test^{patient_id}"
    ds.StudyInstanceUID = study_uid or uid(patient_id, "study")
    if series_uid is not None:
        ds.SeriesInstanceUID = series_uid
    ds.SeriesDescription = description
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0.0, 0.0, float(position)]
    ds.MagneticFieldStrength = field_strength
    if temporal is not None:
        ds.TemporalPositionIdentifier = temporal
    if acquisition_time is not None:
        ds.AcquisitionTime = acquisition_time
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept or 0
    return set_uint16_pixels(ds, pixels)


def write_mr_series(folder, patient_id, n_slices=4, rows=32, cols=32, seed=0, sigma=20.0, description="DCE",
                    series_uid=None, time_points=1, temporal_tag=True, slope=None, intercept=None, body=0.6):
    """One MR series of n_slices x time_points single-frame files in `folder`, files named in *reverse* order
    (so a correct result proves the reader sorts by header, not by file name).
    Returns (series_uid, stored uint16 stack (time_points * n_slices, rows, cols) in the expected order)."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or uid(patient_id, description, seed, "series")
    stack = []
    total = n_slices * time_points
    for t in range(time_points):
        for z in range(n_slices):
            k = t * n_slices + z
            pixels = np.clip(np.round(phantom(rows, cols, sigma, seed=seed * 1000 + k, body=body)
                                      * (1 + 0.2 * t)), 0, 65535).astype(np.uint16)
            stack.append(pixels)
            ds = image_dataset(pixels, patient_id=patient_id, series_uid=series_uid, instance=k + 1,
                               position=2.5 * z, description=description,
                               temporal=(t + 1) if temporal_tag else None,
                               acquisition_time=f"{10 + t:02d}0000.{z:06d}", slope=slope, intercept=intercept)
            ds.save_as(folder / f"IM{total - k:04d}.dcm", enforce_file_format=True)
    return series_uid, np.stack(stack)


def write_dwi_series(folder, patient_id, b_values=(0, 800), n_slices=3, rows=32, cols=32, vendor="standard",
                     series_uid=None, description="ep2d_diff", acquired_s=0):
    """One diffusion series: n_slices positions x len(b_values) single-frame files, no temporal tag, each b-value
    acquired after the last (AcquisitionTime), echo planar. The b-value in DiffusionBValue (vendor "standard") or
    only in Siemens' private (0019,xx0C) of "SIEMENS MR HEADER" (vendor "siemens"); a b-value None is left out of
    the header. Returns the series_uid."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or uid(patient_id, description, "dwi", "series")
    for v, b in enumerate(b_values):
        for z in range(n_slices):
            k = v * n_slices + z
            pixels = np.clip(np.round(phantom(rows, cols, seed=k) * np.exp(-(b or 0) * 1e-3)), 0,
                             65535).astype(np.uint16)
            ds = image_dataset(pixels, patient_id=patient_id, series_uid=series_uid, instance=k + 1,
                               position=2.5 * z, description=description,
                               acquisition_time=f"12{acquired_s // 60 + v:02d}00.{z:06d}")
            ds.ScanningSequence = "EP"  # echo planar, as every clinical diffusion sequence
            if b is None:
                pass  # some vendors leave the b=0 images without a b-value
            elif vendor == "siemens":
                block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
                block.add_new(0x0C, "IS", str(b))
            else:
                ds.DiffusionBValue = float(b)
            ds.save_as(folder / f"IM{k + 1:04d}.dcm", enforce_file_format=True)
    return series_uid


def write_asl_series(folder, patient_id, n_slices=2, time_points=4, rows=24, cols=24, vendor="philips",
                     series_uid=None, one_series_per_image=False, description="SOURCE - pCASL"):
    """Arterial spin labelling source images: at every slice position and time point (TemporalPositionIdentifier) a
    control and a label image, the label 1% darker (the perfusion signal), each with fresh noise. Label or control
    in Philips' Label Type (vendor "philips") or the standard ASLContext ("standard"). one_series_per_image: every
    (time point, label) its own series of one protocol, as a split archive stores them. Returns the series_uid (the
    first one's with one_series_per_image)."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or uid(patient_id, description, "asl", "series")
    rng = np.random.default_rng(0)
    for t in range(time_points):
        for c, context in enumerate(("CONTROL", "LABEL")):
            own_uid = uid(series_uid, t, context) if one_series_per_image and (t or c) else series_uid
            for z in range(n_slices):
                k = (t * 2 + c) * n_slices + z
                signal = phantom(rows, cols, seed=z) * (0.99 if context == "LABEL" else 1.0)
                pixels = np.clip(np.round(signal + 20 * rng.standard_normal(signal.shape)), 0, 65535)
                ds = image_dataset(pixels.astype(np.uint16), patient_id=patient_id, series_uid=own_uid,
                                   instance=k + 1, position=5.0 * z, description=description, temporal=t + 1,
                                   acquisition_time=f"1200{t:02d}.{c}{z:05d}")
                ds.ScanningSequence, ds.ProtocolName = "EP", "pCASL"
                if vendor == "philips":
                    ds.private_block(0x2005, "Philips MR Imaging DD 005", create=True).add_new(0x29, "CS", context)
                else:
                    ds.ASLContext = context
                ds.save_as(folder / f"IM{k + 1:04d}.dcm", enforce_file_format=True)
    return series_uid


def enhanced_mr_dataset(frames, positions, temporal, slopes, intercepts, *, patient_id="PE", series_uid=None,
                        file_order=None):
    """An Enhanced MR Image Storage object whose frames are stored in `file_order` (a permutation of the
    logical frames), with per-frame position, TemporalPositionIndex and Pixel Value Transformation."""
    frames = np.asarray(frames)
    n = len(frames)
    order = list(range(n)) if file_order is None else list(file_order)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    ds.SOPClassUID = EnhancedMRImageStorage
    ds.SOPInstanceUID = uid(patient_id, "enhanced")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "MR"
    ds.PatientID = patient_id
    ds.StudyInstanceUID = uid(patient_id, "study")
    ds.SeriesInstanceUID = series_uid or uid(patient_id, "enhanced-series")
    ds.SeriesDescription = "enhanced"
    ds.InstanceNumber = 1
    ds.NumberOfFrames = n
    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PlaneOrientationSequence = Sequence([orientation])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for logical in order:
        item = Dataset()
        content = Dataset()
        content.TemporalPositionIndex = int(temporal[logical])
        content.InStackPositionNumber = logical + 1
        item.FrameContentSequence = Sequence([content])
        plane = Dataset()
        plane.ImagePositionPatient = [0.0, 0.0, float(positions[logical])]
        item.PlanePositionSequence = Sequence([plane])
        transform = Dataset()
        transform.RescaleSlope = slopes[logical]
        transform.RescaleIntercept = intercepts[logical]
        transform.RescaleType = "US"
        item.PixelValueTransformationSequence = Sequence([transform])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    return set_uint16_pixels(ds, frames[order])


def write_mixed_tree(root, seed=0):
    """A tree with two small MR series (two patients) and one file for each thing that must be skipped.
    Returns {"mr_slices": n, "skips": {reason: files}} with the reasons preprocessing should count."""
    n_slices, rows, cols = 3, 24, 24
    write_mr_series(root / "P1" / "mr", "P1", n_slices, rows, cols, seed=seed)
    write_mr_series(root / "P2" / "mr", "P2", n_slices, rows, cols, seed=seed + 1)
    other = root / "other"
    other.mkdir(parents=True)
    shutil.copy(bundled("CT_small.dcm"), other / "ct.dcm")
    shutil.copy(bundled("test-SR.dcm"), other / "sr.dcm")
    shutil.copy(bundled("liver_1frame.dcm"), other / "seg.dcm")
    pixels = np.full((8, 8), 100, np.uint16)
    image_dataset(pixels, patient_id="P3", series_uid=uid("pt"), modality="PT",
                  sop_class=PositronEmissionTomographyImageStorage).save_as(other / "pt.dcm", enforce_file_format=True)
    pr = image_dataset(pixels, patient_id="P3", series_uid=uid("pr"), modality="PR",
                       sop_class=GrayscaleSoftcopyPresentationStateStorage)
    del pr.PixelData
    pr.save_as(other / "pr.dcm", enforce_file_format=True)
    spectroscopy = image_dataset(pixels, patient_id="P3", series_uid=uid("mrs"), sop_class=MRSpectroscopyStorage)
    del spectroscopy.PixelData
    spectroscopy.save_as(other / "mrs.dcm", enforce_file_format=True)
    no_pixels = image_dataset(pixels, patient_id="P3", series_uid=uid("nopix"))
    del no_pixels.PixelData
    no_pixels.save_as(other / "mr_no_pixels.dcm", enforce_file_format=True)
    color = image_dataset(np.zeros((8, 8), np.uint16), patient_id="P3", series_uid=uid("color"))
    color.SamplesPerPixel = 3
    color.PhotometricInterpretation = "RGB"
    color.PlanarConfiguration = 0
    color.BitsAllocated, color.BitsStored, color.HighBit = 8, 8, 7
    color.PixelData = np.zeros((8, 8, 3), np.uint8).tobytes()
    color.save_as(other / "mr_color.dcm", enforce_file_format=True)
    # A download cut short in the pixel data, and one cut inside the header.
    full = image_dataset(np.full((16, 16), 500, np.uint16), patient_id="P3", series_uid=uid("trunc"))
    full.save_as(other / "full.dcm", enforce_file_format=True)
    data = (other / "full.dcm").read_bytes()
    (other / "full.dcm").unlink()
    (other / "mr_truncated_pixels.dcm").write_bytes(data[:-100])
    (other / "mr_truncated_header.dcm").write_bytes(data[:300])
    shutil.copy(bundled("MR_truncated.dcm"), other / "bundled_truncated.dcm")
    (other / "notes.dcm").write_text("this is a text file with a .dcm name, not DICOM at all\n" * 5)
    (other / "tiny.dcm").write_bytes(b"\x01\x02")
    return {
        "mr_slices": 2 * n_slices,
        "mr_files": 2 * n_slices,
        "skips": {"modality CT": 1, "modality SR": 1, "modality SEG": 1, "modality PT": 1, "modality PR": 1,
                  "SOP class MR Spectroscopy Storage": 1, "no pixel data": 1, "color MR": 1,
                  "truncated": 3, "not DICOM": 2},
    }


# --------------------------------------------------------------------------------------------------------------
# Complete objects for the dciodvfy checks (tests/test_dciodvfy.py): every module a validator asks for is there,
# so an error in the enhanced output is one the writer added, not one the fixture already had.

def _code(value, scheme, meaning):
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _common_enhanced_header(ds, source, sop_class, patient_id, series_number, description):
    """Patient, study, series, frame of reference, equipment and SOP common attributes of an enhanced MR object
    (PS3.3 A.36.2.3 / A.36.2.4), copied from the classic `source` where it has them."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid(patient_id, sop_class, "instance")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.InstanceCreationDate, ds.InstanceCreationTime = "20040826", "185434"
    ds.Modality = "MR"
    ds.PatientName, ds.PatientID = f"Test^{patient_id}", patient_id
    ds.PatientBirthDate, ds.PatientSex = "", "F"
    ds.StudyInstanceUID = source.StudyInstanceUID
    ds.StudyDate, ds.StudyTime = "20040826", "185059"
    ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "1", ""
    ds.SeriesInstanceUID = uid(patient_id, sop_class, "series")
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.FrameOfReferenceUID = source.get("FrameOfReferenceUID") or uid(patient_id, "frame of reference")
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer, ds.ManufacturerModelName = "TOSHIBA_MEC", "MRT50H1"
    ds.DeviceSerialNumber, ds.SoftwareVersions = "0000200", "V3.51*P25"
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = "20040826", "185059"
    ds.AcquisitionContextSequence = Sequence()
    ds.PresentationLUTShape = "IDENTITY"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    return ds


def _shared_geometry(spacing, thickness, orientation):
    """A SharedFunctionalGroupsSequence item with pixel measures, plane orientation and an identity rescale
    (the groups every multi-frame fixture shares)."""
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing, measures.SliceThickness = spacing, thickness
    shared.PixelMeasuresSequence = Sequence([measures])
    plane = Dataset()
    plane.ImageOrientationPatient = orientation
    shared.PlaneOrientationSequence = Sequence([plane])
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, 0, "US"
    shared.PixelValueTransformationSequence = Sequence([transform])
    return shared


def _dimensions(ds, name):
    """Multi-frame Dimension module (PS3.3 C.7.6.17): one dimension, the in-stack position of each frame."""
    organization = uid(name, "dimension organization")
    org = Dataset()
    org.DimensionOrganizationUID = organization
    ds.DimensionOrganizationSequence = Sequence([org])
    index = Dataset()
    index.DimensionOrganizationUID = organization
    index.DimensionIndexPointer = 0x00209057  # In-Stack Position Number
    index.FunctionalGroupPointer = 0x00209111  # Frame Content Sequence
    ds.DimensionIndexSequence = Sequence([index])


def enhanced_mr_jpegls_file(path, n_frames=3):
    """An Enhanced MR Image Storage object (ORIGINAL\\PRIMARY, pulse sequence and MR functional groups as a
    scanner writes them) with JPEG-LS lossless pixel data, written to `path`; returns the path.

    Stands in for pydicom's emri_small_jpeg_ls_lossless.dcm, which is not bundled with pydicom (it is
    downloaded on demand, and CI has no network). The frames are the JPEG-LS frame of the bundled
    MR_small_jpeg_ls_lossless.dcm (64 x 64, signed 16 bit) repeated at n_frames slice positions."""
    source = pydicom.dcmread(bundled("MR_small_jpeg_ls_lossless.dcm"))
    frame = next(generate_frames(source.PixelData, number_of_frames=1))
    ds = _common_enhanced_header(Dataset(), source, EnhancedMRImageStorage, "EMR", 2, "emri like")
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.PatientPosition = "HFS"
    ds.AcquisitionNumber = 1
    ds.AcquisitionDateTime = "20040826185059"
    ds.AcquisitionDuration = 120.0
    ds.ContentQualification = "PRODUCT"
    ds.ResonantNucleus = "1H"
    ds.KSpaceFiltering = "NONE"
    ds.MagneticFieldStrength = 1.5
    ds.ApplicableSafetyStandardAgency = "IEC"
    ds.ImageComments = "synthetic, for validator tests"
    ds.ComplexImageComponent = "MAGNITUDE"
    ds.AcquisitionContrast = "T2"
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    # MR Pulse Sequence module (PS3.3 C.8.13.4): required while ImageType value 1 is ORIGINAL.
    ds.PulseSequenceName = "SE"
    ds.MRAcquisitionType = "3D"
    ds.EchoPulseSequence = "SPIN"
    ds.MultipleSpinEcho = "NO"
    ds.MultiPlanarExcitation = "NO"
    ds.PhaseContrast = "NO"
    ds.TimeOfFlightContrast = "NO"
    ds.SteadyStatePulseSequence = "NONE"
    ds.EchoPlanarPulseSequence = "NO"
    ds.SaturationRecovery = "NO"
    ds.SpectrallySelectedSuppression = "NONE"
    ds.OversamplingPhase = "NONE"
    ds.GeometryOfKSpaceTraversal = "RECTILINEAR"
    ds.RectilinearPhaseEncodeReordering = "LINEAR"
    ds.SegmentedKSpaceTraversal = "SINGLE"
    ds.CoverageOfKSpace = "FULL"
    ds.NumberOfKSpaceTrajectories = 1
    ds.NumberOfFrames = n_frames
    _dimensions(ds, "EMR")

    shared = _shared_geometry(source.PixelSpacing, source.SliceThickness, source.ImageOrientationPatient)
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth = 600, 1600
    shared.FrameVOILUTSequence = Sequence([voi])
    anatomy = Dataset()
    anatomy.FrameLaterality = "U"
    anatomy.AnatomicRegionSequence = Sequence([_code("76752008", "SCT", "Breast")])
    shared.FrameAnatomySequence = Sequence([anatomy])
    timing = Dataset()
    timing.RepetitionTime, timing.FlipAngle, timing.EchoTrainLength = 4000.0, 90.0, 1
    timing.RFEchoTrainLength, timing.GradientEchoTrainLength = 1, 0
    sar = Dataset()
    sar.SpecificAbsorptionRateDefinition, sar.SpecificAbsorptionRateValue = "IEC_WHOLE_BODY", 0.5
    timing.SpecificAbsorptionRateSequence = Sequence([sar])
    mode = Dataset()
    mode.OperatingModeType, mode.OperatingMode = "GRADIENT", "IEC_NORMAL"
    timing.OperatingModeSequence = Sequence([mode])
    shared.MRTimingAndRelatedParametersSequence = Sequence([timing])
    fov = Dataset()
    fov.InPlanePhaseEncodingDirection = "ROW"
    fov.MRAcquisitionFrequencyEncodingSteps = 64
    fov.MRAcquisitionPhaseEncodingStepsInPlane = 64
    fov.MRAcquisitionPhaseEncodingStepsOutOfPlane = 64
    fov.PercentSampling, fov.PercentPhaseFieldOfView = 100.0, 100.0
    shared.MRFOVGeometrySequence = Sequence([fov])
    echo = Dataset()
    echo.EffectiveEchoTime = 240.0
    shared.MREchoSequence = Sequence([echo])
    modifier = Dataset()
    modifier.InversionRecovery, modifier.FlowCompensation, modifier.Spoiling = "NO", "NONE", "NONE"
    modifier.T2Preparation, modifier.SpectrallySelectedExcitation = "NO", "NONE"
    modifier.SpatialPresaturation, modifier.PartialFourier, modifier.ParallelAcquisition = "NONE", "NO", "NO"
    shared.MRModifierSequence = Sequence([modifier])
    imaging = Dataset()
    imaging.MagnetizationTransfer, imaging.BloodSignalNulling, imaging.Tagging = "NONE", "NO", "NONE"
    imaging.TransmitterFrequency, imaging.PixelBandwidth = 63.924339, 130.0
    shared.MRImagingModifierSequence = Sequence([imaging])
    receive = Dataset()
    receive.ReceiveCoilName, receive.ReceiveCoilType = "BREAST", "MULTICOIL"
    receive.ReceiveCoilManufacturerName, receive.QuadratureReceiveCoil = "TOSHIBA_MEC", "NO"
    element = Dataset()
    element.MultiCoilElementName, element.MultiCoilElementUsed = "1", "YES"
    receive.MultiCoilDefinitionSequence = Sequence([element])
    shared.MRReceiveCoilSequence = Sequence([receive])
    transmit = Dataset()
    transmit.TransmitCoilName, transmit.TransmitCoilType = "BODY", "BODY"
    transmit.TransmitCoilManufacturerName = "TOSHIBA_MEC"
    shared.MRTransmitCoilSequence = Sequence([transmit])
    averages = Dataset()
    averages.NumberOfAverages = 1.0
    shared.MRAveragesSequence = Sequence([averages])
    diffusion = Dataset()
    diffusion.DiffusionBValue, diffusion.DiffusionDirectionality = 0.0, "NONE"
    shared.MRDiffusionSequence = Sequence([diffusion])
    saturation = Dataset()
    saturation.SpatialPresaturation = "NONE"
    frame_type = Dataset()
    frame_type.FrameType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    frame_type.PixelPresentation, frame_type.VolumetricProperties = "MONOCHROME", "VOLUME"
    frame_type.VolumeBasedCalculationTechnique = "NONE"
    frame_type.ComplexImageComponent, frame_type.AcquisitionContrast = "MAGNITUDE", "T2"
    shared.MRImageFrameTypeSequence = Sequence([frame_type])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])

    per_frame = []
    for k in range(n_frames):
        item = Dataset()
        content = Dataset()
        content.FrameAcquisitionNumber = 1
        content.FrameReferenceDateTime = content.FrameAcquisitionDateTime = "20040826185059"
        content.FrameAcquisitionDuration = 120.0
        content.StackID, content.InStackPositionNumber = "1", k + 1
        content.DimensionIndexValues = [k + 1]
        item.FrameContentSequence = Sequence([content])
        plane = Dataset()
        position = [float(v) for v in source.ImagePositionPatient]
        plane.ImagePositionPatient = position[:2] + [position[2] + k * float(source.SliceThickness)]
        item.PlanePositionSequence = Sequence([plane])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)

    for keyword in ("SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated",
                    "BitsStored", "HighBit", "PixelRepresentation"):
        setattr(ds, keyword, source[keyword].value)
    ds.PixelData = encapsulate([frame] * n_frames)
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def legacy_converted_mr_file(path, classic_paths):
    """A Legacy Converted Enhanced MR Image object (PS3.3 A.71.3) built from single-frame classic MR files (as
    a PACS converts them): one frame per file, the classic attributes that vary per file in each frame's
    Unassigned Per-Frame Converted Attributes, and each frame naming its source file in a
    ConversionSourceAttributesSequence (PS3.3 C.7.6.16.2.25). Uncompressed; returns the path."""
    sources = sorted((pydicom.dcmread(p) for p in classic_paths), key=lambda d: float(d.ImagePositionPatient[2]))
    first = sources[0]
    ds = _common_enhanced_header(Dataset(), first, UID("1.2.840.10008.5.1.4.1.1.4.4"), first.PatientID, 7,
                                 "legacy converted")
    ds.PatientName, ds.PatientID = first.PatientName, first.PatientID
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.PixelPresentation, ds.VolumetricProperties, ds.VolumeBasedCalculationTechnique = "MONOCHROME", "VOLUME", "NONE"
    ds.Laterality = "L"
    ds.NumberOfFrames = len(sources)
    ds.ContentQualification = "PRODUCT"
    _dimensions(ds, "legacy")

    shared = _shared_geometry([0.7, 0.7], 2.5, first.ImageOrientationPatient)
    frame_type = Dataset()
    frame_type.FrameType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    frame_type.PixelPresentation, frame_type.VolumetricProperties = "MONOCHROME", "VOLUME"
    frame_type.VolumeBasedCalculationTechnique = "NONE"
    shared.MRImageFrameTypeSequence = Sequence([frame_type])
    unassigned = Dataset()
    unassigned.MagneticFieldStrength = first.MagneticFieldStrength
    shared.UnassignedSharedConvertedAttributesSequence = Sequence([unassigned])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for k, src in enumerate(sources):
        item = Dataset()
        content = Dataset()
        content.StackID, content.InStackPositionNumber = "1", k + 1
        content.DimensionIndexValues = [k + 1]
        item.FrameContentSequence = Sequence([content])
        plane = Dataset()
        plane.ImagePositionPatient = src.ImagePositionPatient
        item.PlanePositionSequence = Sequence([plane])
        reference = Dataset()
        reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = src.SOPClassUID, src.SOPInstanceUID
        item.ConversionSourceAttributesSequence = Sequence([reference])
        frame_unassigned = Dataset()
        frame_unassigned.InstanceNumber = src.InstanceNumber
        item.UnassignedPerFrameConvertedAttributesSequence = Sequence([frame_unassigned])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    set_uint16_pixels(ds, np.stack([s.pixel_array for s in sources]))
    ds.BitsStored, ds.HighBit = 12, 11
    ds.save_as(path, enforce_file_format=True)
    return path


def padded_mr_file(path, padding=-2000, border=6):
    """MR_small.dcm (signed 16 bit) with a `border`-pixel frame of PixelPaddingValue `padding` around the
    image, as scanners pad a reconstruction to a larger matrix (PS3.3 C.7.5.1.1.2); returns the path."""
    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    pixels = ds.pixel_array.copy()
    pixels[:border], pixels[-border:], pixels[:, :border], pixels[:, -border:] = padding, padding, padding, padding
    ds.PixelData = pixels.astype("<i2").tobytes()
    ds.add_new(0x00280120, "SS", padding)  # PixelPaddingValue: SS, as PixelRepresentation is 1
    ds.SOPInstanceUID = uid("padded", ds.SOPInstanceUID)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = uid("padded", ds.SeriesInstanceUID)
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        del ds[keyword]
    ds.save_as(path, enforce_file_format=True)
    return path
