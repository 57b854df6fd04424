"""Which MR images are magnitude anatomy, and which objects enhance.py wrote: the image-kind rules of the index.

    kinds = image_kinds(ds)              # e.g. {"phase"}; empty for magnitude anatomy
    reason = _kind_reason(ds, include_kinds=())   # the counted skip reason, or None to keep the image

scan.scan_file asks _kind_reason of every MR image header; preprocess.include_kinds keeps a kind on purpose.
"""

import re

from breastmri.config import ConfigError

# --- Which MR images are magnitude anatomy ----------------------------------------------------------------------
# Degradation draws Rician noise, which only a magnitude image has (it rectifies the negative values of a phase,
# real or imaginary image), and the network learns to restore anatomy, not a computed map or a projection. An MR
# image of another kind is skipped with its kind's reason unless preprocess.include_kinds names the kind. DERIVED
# says nothing about the pixels: DERIVED\PRIMARY\M, MPR reformats, DERIVED\SECONDARY\OTHER and trace-weighted
# DWI (Siemens TRACEW) are magnitude images and are kept.
# A Siemens mosaic (ImageType value MOSAIC: the slices of an EPI volume tiled into one image, unpacked by readers
# such as dcm2niix) is magnitude, but not one slice: the network would see the tiles' borders as anatomy.
IMAGE_KINDS = ("phase", "real", "imaginary", "parametric_map", "localizer", "subtraction", "projection", "mosaic")
KIND_REASONS = {"phase": "phase image", "real": "real image", "imaginary": "imaginary image",
                "parametric_map": "parametric map", "localizer": "localizer", "subtraction": "subtraction",
                "projection": "projection (MIP)", "mosaic": "mosaic (slices tiled in one image)"}
# Values of ImageType (0008,0008) from value 3 on and of FrameType (0008,9007), normalized by _type_token (upper
# case; spaces, "_" and "-" dropped; "*" spelled STAR). Sources: PS3.3 C.8.3.1.1.1 (MR Image Type value 3: PHASE
# MAP, T1 MAP, T2 MAP, DENSITY MAP, DIFFUSION MAP, VELOCITY MAP, PHASE SUBTRACT, MODULUS SUBTRACT, PROJECTION IMAGE;
# MPR, IMAGE ADDITION and OTHER are kept); C.8.16.1.3/C.8.16.1.4 and C.8.13.1.1.1 (Enhanced MR value 3 flavor
# LOCALIZER, MAX_IP, MIN_IP, METABOLITE_MAP; value 4 derived pixel contrast ADC, DIFFUSION_ANISO, DIFFUSION_ATTNTD,
# T1_MAP, T2_MAP, T2_STAR_MAP, SNR_MAP, TTP, MTT, RCBF, RCBV, T_TEST, Z_SCORE, SUBTRACTION, MAXIMUM, MINIMUM, ...;
# RESAMPLED, ADDITION, MEAN, DIFFUSION are kept); Siemens (M / P / REAL / IMAGINARY at value 3, ADC, EADC, FA,
# TTEST, SUB, MIP_SAG / MIP_COR / MIP_TRA, MNIP); Philips (value 3 PHASE MAP, value 4 M / P / R / I, as in
# ORIGINAL\PRIMARY\PHASE MAP\P\FFE); dcm2niix (phase, real, imaginary from ImageType).
_TYPE_VALUE_KINDS = {
    **dict.fromkeys(("P", "PHASE", "PHASEMAP", "PHASESUBTRACT"), "phase"),
    **dict.fromkeys(("R", "REAL"), "real"),
    **dict.fromkeys(("I", "IMAGINARY"), "imaginary"),
    **dict.fromkeys((
        "ADC", "EADC", "FA", "FRACTIONALANISOTROPY", "DIFFUSIONANISO", "DIFFUSIONATTNTD", "DIFFUSIONMAP",
        "T1MAP", "T2MAP", "T2STARMAP", "R1MAP", "R2MAP", "R2STARMAP", "DENSITYMAP", "PROTONDENSITYMAP", "PDMAP",
        "VELOCITYMAP", "METABOLITEMAP", "SNRMAP", "RHO", "RCOEFFICIENT", "SCM", "TCURVE", "NEI", "TTP", "MTT",
        "RCBF", "RCBV", "CBF", "CBV", "TTEST", "ZSCORE", "STDDEVIATION", "DIVISION"), "parametric_map"),
    **dict.fromkeys(("LOCALIZER", "LOCALISER", "SURVEY", "SCOUT"), "localizer"),
    **dict.fromkeys(("SUB", "SUBTRACT", "SUBTRACTED", "SUBTRACTION", "MODULUSSUBTRACT"), "subtraction"),
    **dict.fromkeys(("MIP", "MAXIP", "MINIP", "MNIP", "MPRMIP", "PROJECTIONIMAGE", "MAXIMUM", "MINIMUM",
                     "VOLUMERENDER", "SURFACERENDER"), "projection"),
    "MOSAIC": "mosaic",
}
# Series names of kinds whose ImageType often says nothing: scouts (Siemens "localizer", "t2localizer",
# "AAHead_Scout", Philips "SURVEY" / "FAST LOCALIZER", GE "3-Plane Loc", "3pl loc"; scout and survey as words,
# "Scouting" is not), and what a scanner or workstation computed from a DCE: subtractions ("ax_vibe_dyn_SUB_2",
# "Sag early-pre subtr."), projections ("MIP SUB 2", "MIP_TRA") and kinetic maps and masks (I-SPY's "PE2(SER)",
# "SER", "Analysis Mask"; Ktrans, wash-in, AUC, TTP maps, CAD and DynaCAD output; "PE" alone is a phase-encoding
# direction, "seg" segmented k-space). These are written DERIVED\PRIMARY\M or
# DERIVED\SECONDARY\OTHER, which keep magnitude anatomy, so their names count only on a DERIVED image: an ORIGINAL
# "Sub Ax T1" or "NO SUB" is anatomy. Words are bounded by anything but a letter ("subject" is not a subtraction,
# "segmented" no segmentation), and "no", "non", "w/o" before one deny it.
_NOT = r"(?<![a-z])(?<!no[ _-])(?<!non[ _-])(?<!w/o[ _-])"
_NAME_KINDS = {
    "localizer": re.compile(r"locali[sz]er|(?<![a-z])(scout|survey)(?![a-z])|(?<![a-z0-9])3[ -]?pl(ane)?[ _-]?loc",
                            re.IGNORECASE),
    "subtraction": re.compile(_NOT + r"(sub|subs|subtr[a-z]*|minus)(?![a-z])", re.IGNORECASE),
    "projection": re.compile(_NOT + r"(mip|minip|mnip|maxip)(?![a-z])", re.IGNORECASE),
    "parametric_map": re.compile(_NOT + r"(ser|pe\d+|ktrans|kep|i?auc|wash[ _-]?(in|out)|ttp|mtt|maps?|masks?"
                                 r"|segmentation|(dyna)?cad|thresh[a-z]*)(?![a-z])", re.IGNORECASE)}
_DERIVED_NAME_KINDS = ("subtraction", "projection", "parametric_map")
_PROJECTION_PREFIXES = ("MIP", "MINIP", "MNIP")  # Siemens MIP_SAG, MIP_COR, MIP_TRA, MNIP_...
# ComplexImageComponent (0008,9208), PS3.3 C.8.13.3.1.1 (top level of enhanced objects or per frame in the MR Image
# Frame Type functional group). MAGNITUDE is kept; MIXED sends the check to the frames.
_COMPLEX_KINDS = {"PHASE": "phase", "REAL": "real", "IMAGINARY": "imaginary"}
# VolumeBasedCalculationTechnique (0008,9207), PS3.3 C.8.16.2.1.3: MPR / CURVED_MPR / NONE are kept.
_PROJECTION_TECHNIQUES = {"MAX_IP", "MIN_IP", "VOLUME_RENDER", "SURFACE_RENDER"}
# GE private (0043,xx2F) of GEMS_PARM_01, "Image Type (real, imaginary, phase, magnitude)": 0 magnitude, 1 phase,
# 2 real, 3 imaginary (pydicom's private dictionary; GE marks complex components here, not in ImageType).
_GE_CREATOR, _GE_COMPLEX = "GEMS_PARM_01", {1: "phase", 2: "real", 3: "imaginary"}
# Philips private (2005,xx11) of "Philips MR Imaging DD 001", the PAR/REC image_type_mr code, which classic Philips
# objects also give as ImageType value 4 (ORIGINAL\PRIMARY\M_FFE\M\FFE). Codes M, W, IP, OP, F, T0, ANATOMIC,
# DERIVED are magnitude images and kept; the BreVE breast DCE maps (MAXRELENH ... AREACURV) and the scanner's ASL
# perfusion images (PERFUSION, also ImageType value 4: ORIGINAL\PRIMARY\PERFUSION_FFE\PERFUSION\FFE) are parametric
# (only as Philips' code: PERFUSION is also a standard image flavor, value 3, of enhanced MR DCE frames).
_PHILIPS_CREATOR = "Philips MR Imaging DD 001"
_PHILIPS_KINDS = {
    "P": "phase", "R": "real", "CR": "real", "I": "imaginary",
    **dict.fromkeys(("T1", "T2", "RHO", "ADC", "EADC", "FA", "RCBV", "RCBF", "MTT", "TTP", "DELAY", "MAXRELENH",
                     "RELENH", "MAXENH", "WASHIN", "WASHOUT", "BREVENH", "AREACURV", "T_TEST", "STD_DEVIATION",
                     "T2_STAR", "R2", "R2_STAR", "PERFUSION"), "parametric_map"),
}
# What enhance.py writes into every object (enhance.derived_dataset), so that no run indexes its own output as a
# source: a private block (PS3.5 7.8.1) under this creator, a ContributingEquipmentSequence item with this
# Manufacturer, and a DerivationDescription (top level, or per frame for enhanced MR) that starts with this text.
# Any one of them is enough (anonymizers often drop private blocks).
ENHANCE_PRIVATE_CREATOR = "mri-enhance"
ENHANCE_PRIVATE_GROUP = 0x0071
ENHANCE_SOFTWARE_NAME = "mri-enhance enhance.py"
ENHANCE_DERIVATION_PREFIX = "Denoised by enhance.py"
ENHANCE_OUTPUT_REASON = "output of enhance.py"


def check_include_kinds(include_kinds):
    """The tuple of kinds in preprocess.include_kinds; ConfigError for a name that is not in IMAGE_KINDS."""
    if include_kinds is None:
        return ()
    if isinstance(include_kinds, str):
        include_kinds = [include_kinds]
    unknown = [k for k in include_kinds if k not in IMAGE_KINDS]
    if unknown:
        raise ConfigError(f"preprocess.include_kinds names {unknown}; choose from {', '.join(IMAGE_KINDS)} "
                          f"(enhance.py's own output cannot be included)")
    return tuple(include_kinds)


def _type_token(value):
    return str(value).strip().upper().replace("*", "STAR").replace(" ", "").replace("_", "").replace("-", "")


def _type_value_kinds(values):
    """Kinds named by ImageType / FrameType values from value 3 on (values 1-2 say ORIGINAL/DERIVED and
    PRIMARY/SECONDARY, nothing about the pixels)."""
    if values is None:
        return set()
    values = [values] if isinstance(values, str) else list(values)
    kinds = set()
    for value in values[2:]:
        token = _type_token(value)
        kind = _TYPE_VALUE_KINDS.get(token)
        if kind is None and token.startswith(_PROJECTION_PREFIXES):
            kind = "projection"
        if kind is not None:
            kinds.add(kind)
    return kinds


def _description_kinds(item):
    """Kinds told by an MR Image Description / frame type item (the dataset itself or an MRImageFrameTypeSequence
    item): ComplexImageComponent and VolumeBasedCalculationTechnique."""
    kinds = set()
    component = str(item.get("ComplexImageComponent", "") or "").strip().upper()
    if component in _COMPLEX_KINDS:
        kinds.add(_COMPLEX_KINDS[component])
    if str(item.get("VolumeBasedCalculationTechnique", "") or "").strip().upper() in _PROJECTION_TECHNIQUES:
        kinds.add("projection")
    return kinds


def _private_value(ds, group, creator, offset):
    """Value of a private element found by its creator (in whichever block it was given), or None. Raw bytes when
    the element is UN (a file re-encoded without the private dictionary): the caller decodes them."""
    try:
        return ds.get_private_item(group, offset, creator).value
    except (KeyError, ValueError, TypeError):
        return None


def _ge_kind(ds):
    value = _private_value(ds, 0x0043, _GE_CREATOR, 0x2F)
    if isinstance(value, bytes):
        value = int.from_bytes(value[:2], "little", signed=True) if len(value) >= 2 else None
    try:
        return _GE_COMPLEX.get(int(value)) if value is not None else None
    except (TypeError, ValueError):
        return None


def _philips_kind(ds):
    value = _private_value(ds, 0x2005, _PHILIPS_CREATOR, 0x11)
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if value is None and "PHILIPS" in str(ds.get("Manufacturer", "") or "").upper():
        image_type = ds.get("ImageType")
        if image_type is not None and not isinstance(image_type, str) and len(image_type) >= 5:
            value = image_type[3]  # M_FFE\M\FFE: value 4 is the image_type_mr code
    return _PHILIPS_KINDS.get(str(value).strip().upper()) if value is not None else None


def image_kinds(ds):
    """The IMAGE_KINDS a header says it holds (an empty set for magnitude anatomy).

    Looks at ImageType values 3+, ComplexImageComponent and VolumeBasedCalculationTechnique (top level and, for
    enhanced and legacy converted MR, in the MR Image Frame Type functional group of the shared item and of every
    frame), the GE and Philips private image type codes, and a series named as a scout, or a DERIVED one named as
    a subtraction, MIP or kinetic map (_NAME_KINDS; the SeriesDescription, not ProtocolName: GE's names the exam). A
    multi-frame object with any frame of a kind counts as that kind (its frames are written back as one object by
    enhance.py, so it is used or skipped as a whole)."""
    kinds = _type_value_kinds(ds.get("ImageType")) | _description_kinds(ds)
    name = str(ds.get("SeriesDescription", "") or "")
    image_type = ds.get("ImageType")
    derived = bool(image_type) and str(image_type if isinstance(image_type, str) else image_type[0]).strip().upper() \
        == "DERIVED"
    kinds |= {kind for kind, pattern in _NAME_KINDS.items()
              if pattern.search(name) and (derived or kind not in _DERIVED_NAME_KINDS)}
    for vendor_kind in (_ge_kind(ds), _philips_kind(ds)):
        if vendor_kind is not None:
            kinds.add(vendor_kind)
    groups = list(ds.get("SharedFunctionalGroupsSequence") or []) + list(ds.get("PerFrameFunctionalGroupsSequence")
                                                                         or [])
    for group in groups:
        for item in group.get("MRImageFrameTypeSequence") or []:
            kinds |= _type_value_kinds(item.get("FrameType")) | _description_kinds(item)
    return kinds


def written_by_enhance(ds):
    """True when enhance.py wrote this object: its private creator, its ContributingEquipmentSequence item or its
    DerivationDescription (top level, or in a frame's Derivation Image functional group)."""
    for tag in ds.keys():
        if tag.is_private and 0x10 <= tag.element <= 0xFF:  # a private creator element (PS3.5 7.8.1)
            if str(ds[tag].value).strip() == ENHANCE_PRIVATE_CREATOR:
                return True
    if any(str(item.get("Manufacturer", "") or "").strip() == ENHANCE_SOFTWARE_NAME
           for item in ds.get("ContributingEquipmentSequence") or []):
        return True
    descriptions = [ds.get("DerivationDescription")]
    for key in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for group in list(ds.get(key) or [])[:1]:
            descriptions.extend(d.get("DerivationDescription") for d in group.get("DerivationImageSequence") or [])
    return any(str(d or "").startswith(ENHANCE_DERIVATION_PREFIX) for d in descriptions)


def _kind_reason(ds, include_kinds=()):
    """Skip reason for an MR image that is enhance.py's output or not magnitude anatomy, or None."""
    if written_by_enhance(ds):
        return ENHANCE_OUTPUT_REASON
    skipped = image_kinds(ds) - set(include_kinds)
    for kind in IMAGE_KINDS:  # one reason per file, in this order
        if kind in skipped:
            return KIND_REASONS[kind]
    return None
