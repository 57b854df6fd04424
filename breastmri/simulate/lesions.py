"""Lesions and tissue kinetics of the phantom: where contrast goes, voxel by voxel.

A patient has 0 to 3 lesions: none in every 4th patient, else one main lesion (5-30 mm, smooth or spiculated, a
necrotic core when large) and 0-2 small satellites beside it. Each lesion has a curve type a radiologist reads
(persistent, plateau, wash-out) that sets its Ktrans, ve and vp (extended Tofts), and a voxelwise Ktrans pattern:
rim enhancement around a poorly perfused core when necrotic, patchy perfusion everywhere. The gland enhances
too (background parenchymal enhancement): a patient's level from minimal to marked, varying smoothly by region.
The phantom (phantom.py) gives the anatomy; this module gives the lesions' shapes and every tissue's Ktrans, ve
and vp, whose fraction-weighted voxel means the demo tree stores as the truth's parameter maps.
"""

import numpy as np
from scipy import ndimage

from breastmri.simulate.protocol import SLICE_THICKNESS_MM

# Curve types of breast lesions (BI-RADS kinetic curve assessment after the initial phase) and the extended-Tofts
# parameters that give them: kep = Ktrans / ve below ~0.6/min keeps rising (persistent), ~0.6-1.5 levels off
# (plateau), above ~1.5 washes out within the 6-7 minutes of the protocol. Ranges (uniform) after the breast DCE
# pharmacokinetic literature (e.g. Huang et al., Radiology 2008;248:86: Ktrans 0.05-1 /min, ve 0.1-0.6).
CURVE_TYPES = {
    #             Ktrans /min     ve            vp
    "persistent": ((0.05, 0.20), (0.40, 0.60), (0.01, 0.04)),
    "plateau":    ((0.15, 0.40), (0.25, 0.40), (0.02, 0.06)),
    "washout":    ((0.35, 1.00), (0.12, 0.25), (0.03, 0.08)),
}
CURVE_MIX = (0.3, 0.35, 0.35)      # malignant-heavy, as in a neoadjuvant cohort
# Background parenchymal enhancement: gland Ktrans from minimal to marked (log-uniform), ve and vp of normal gland.
BPE_KTRANS_PER_MIN = (0.003, 0.06)
BPE_GRADES = ((0.008, "minimal"), (0.018, "mild"), (0.035, "moderate"), (np.inf, "marked"))
GLAND_VE, GLAND_VP = 0.3, 0.008
BPE_REGION_MM = 25.0                # BPE varies smoothly over regions of this size
BPE_REGION_SPREAD = 0.6            # std of log Ktrans between regions


def lesion_draws(rng, index):
    """The lesions of one patient: a list of 0-3 dicts (shape, size, kinetics, therapy response), the first the
    main lesion. Deterministic in index % 4 (every 4th patient has none; every 4th from 0 one of at least 8 mm), so
    even a 3-patient tree has lesions."""
    if index % 4 == 3:
        return []
    diameter = rng.uniform(8, 30) if index % 4 == 0 else rng.uniform(5, 30)
    curve = str(rng.choice(list(CURVE_TYPES), p=CURVE_MIX))
    (k_lo, k_hi), (ve_lo, ve_hi), (vp_lo, vp_hi) = CURVE_TYPES[curve]
    shrink1 = rng.uniform(0.75, 1.0)
    kfall1 = rng.uniform(0.6, 1.0)
    main = {
        "diameter_mm": diameter, "curve": curve,
        "spiculated": bool(rng.random() < 0.5),
        "necrotic": bool(diameter > 14 and rng.random() < 0.7),
        "ktrans_per_min": rng.uniform(k_lo, k_hi), "ve": rng.uniform(ve_lo, ve_hi), "vp": rng.uniform(vp_lo, vp_hi),
        "size_factor": [1.0, shrink1, shrink1 * rng.uniform(0.4, 0.95)],
        "ktrans_factor": [1.0, kfall1, kfall1 * rng.uniform(0.5, 1.0)],
        "axes": rng.uniform(0.7, 1.0, 2), "rotation": rng.normal(size=(3, 3)),
        "lobes": rng.normal(0, 0.07, 4), "lobe_dirs": rng.normal(size=(4, 3)),
        "spicule_dirs": rng.normal(size=(int(rng.integers(8, 15)), 3)),
        "spicule_len": rng.uniform(1.4, 2.3, 15), "spicule_mm": rng.uniform(0.9, 1.6, 15),
        "texture_seed": int(rng.integers(2 ** 31)), "pick": rng.random(), "offset_mm": None,
    }
    lesions = [main]
    for _ in range(int(rng.choice(3, p=(0.5, 0.3, 0.2)))):  # satellites: small, near the main lesion, same type
        direction = rng.normal(size=3)
        lesions.append(dict(main, diameter_mm=rng.uniform(5, 8), spiculated=False, necrotic=False,
                            ktrans_per_min=main["ktrans_per_min"] * rng.uniform(0.7, 1.1),
                            axes=rng.uniform(0.75, 1.0, 2), rotation=rng.normal(size=(3, 3)),
                            texture_seed=int(rng.integers(2 ** 31)),
                            offset_mm=(direction / np.linalg.norm(direction) * (diameter / 2 + rng.uniform(6, 15)))
                            .tolist()))
    return lesions


def bpe_grade(ktrans_per_min):
    """The BI-RADS-like grade of a gland Ktrans: minimal, mild, moderate or marked."""
    return next(name for limit, name in BPE_GRADES if ktrans_per_min < limit)


def gland_kinetics(rng, shape, spacing_mm, bpe_ktrans):
    """Voxelwise background parenchymal enhancement: (Ktrans, ve, vp) float32 (slices, H, W) each, Ktrans the
    patient's level times a smooth log-normal regional factor (geometric mean 1)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32),
                                    [BPE_REGION_MM / s for s in spacing_mm], mode="reflect")
    field = (field - field.mean()) / (field.std() + 1e-12)
    ktrans = (bpe_ktrans * np.exp(BPE_REGION_SPREAD * field)).astype(np.float32)
    return ktrans, np.full(shape, GLAND_VE, np.float32), (GLAND_VP * np.exp(0.3 * field)).astype(np.float32)


def lesion_volume(les, visit, grid, envelope, depth, subcut_mm, centre=None):
    """Fraction and Ktrans multiplier (mean 1 over the lesion), float32 (slices, H, W), and its record.

    grid: phantom._grid's (x, s, a, px); centre: its centre in mm (x, s, a) or None to pick a point of the glandular
    envelope in the central slices, deep enough that the lesion stays under the subcutaneous fat."""
    x, s, a, px = grid
    slices, matrix = x.shape[0], a.shape[2]
    if centre is None:
        k_lo, k_hi = int(np.floor((slices - 1) * 0.3)), int(np.ceil((slices - 1) * 0.7))
        deep = (envelope > 0.7) & (depth > subcut_mm + les["diameter_mm"] / 2)
        cand, offset = np.argwhere(deep[k_lo:k_hi + 1]), k_lo
        if len(cand) == 0:
            cand, offset = np.argwhere(envelope > 0.3), 0
        if len(cand) == 0:  # no gland envelope on this grid (tiny matrix): the middle of the slab
            cand, offset = np.array([[slices // 2, matrix // 2, matrix // 3]]), 0
        kc, ic, jc = cand[int(les["pick"] * len(cand))]
        centre = np.array([x.ravel()[kc + offset], s.ravel()[ic], a.ravel()[jc]])
    centre = np.asarray(centre, np.float64)
    index = list(_nearest_voxel(grid, centre)[0])

    radius = les["diameter_mm"] / 2 * les["size_factor"][visit]
    q, _ = np.linalg.qr(les["rotation"])
    axes = np.array([1.0, *les["axes"]])
    lobe_dirs = les["lobe_dirs"] / np.linalg.norm(les["lobe_dirs"], axis=1, keepdims=True)
    reach = radius * (2.4 if les["spiculated"] else 1.3) + 2 * px

    # Evaluate on 5 sub-positions through the 5 mm slice, so thin-slice partial volume is right.
    sub = (np.arange(5) + 0.5) / 5 * SLICE_THICKNESS_MM - SLICE_THICKNESS_MM / 2
    ks = np.flatnonzero(np.abs(x.ravel() - centre[0]) <= reach + SLICE_THICKNESS_MM)
    is_ = np.flatnonzero(np.abs(s.ravel() - centre[1]) <= reach)
    js = np.flatnonzero(np.abs(a.ravel() - centre[2]) <= reach)
    frac = np.zeros((slices, matrix, matrix), np.float32)
    mult = np.zeros_like(frac)
    record = {"diameter_mm": round(2 * radius, 2), "centre_mm": [round(float(v), 2) for v in centre],
              "centre_index": index, "curve": les["curve"]}
    if len(ks) == 0 or len(is_) == 0 or len(js) == 0:
        return frac, mult, record
    px_ = (x.ravel()[ks][:, None, None, None] + sub[None, None, None, :])
    v = np.stack(np.broadcast_arrays(px_ - centre[0], s.ravel()[is_][None, :, None, None] - centre[1],
                                     a.ravel()[js][None, None, :, None] - centre[2]), axis=-1)
    norm = np.linalg.norm(v, axis=-1) + 1e-9
    rho = np.linalg.norm((v @ q) / axes, axis=-1)                    # ellipsoidal radius, mm
    lobes = 1 + (((v / norm[..., None]) @ lobe_dirs.T) ** 2 - 1 / 3) @ les["lobes"]
    surface = radius * lobes
    f = np.clip((surface - rho) / px + 0.5, 0, 1)
    inner = np.clip(rho / surface, 0, 1)
    if les["spiculated"]:
        dirs = les["spicule_dirs"] / np.linalg.norm(les["spicule_dirs"], axis=1, keepdims=True)
        for j, dvec in enumerate(dirs):
            length = radius * les["spicule_len"][j]
            along = np.clip(v @ dvec, 0, length)
            dist = np.linalg.norm(v - along[..., None] * dvec, axis=-1)
            r_sp = les["spicule_mm"][j] / 2 * (1 - along / length) + 0.25
            f = np.maximum(f, np.clip((r_sp - dist) / px + 0.5, 0, 1) * (along > 0.5 * radius))
    # Ktrans varies inside the lesion: rim enhancement around a core that hardly enhances when necrotic (the core's
    # multiplier ~0.1 of the rim's), plus ~10 % patchy perfusion; normalized to mean 1, so the recorded Ktrans is
    # the lesion mean.
    tex = _texture(les["texture_seed"], v)
    m = (0.1 + 1.1 * np.clip((inner - 0.45) / 0.4, 0, 1) ** 1.5) if les["necrotic"] else (0.85 + 0.3 * inner)
    m = np.clip(m * (1 + tex), 0.03, None)
    region = np.ix_(ks, is_, js)
    frac[region] = f.mean(axis=-1)
    mult[region] = (m * f).sum(axis=-1) / np.maximum(f.sum(axis=-1), 1e-9)
    mean = (mult * frac).sum() / max(frac.sum(), 1e-9)
    mult /= mean if mean > 0 else 1.0
    ktrans = les["ktrans_per_min"] * les["ktrans_factor"][visit]
    record.update({"shape": "spiculated" if les["spiculated"] else "smooth", "necrotic": les["necrotic"],
                   "ktrans_per_min": round(float(ktrans), 4), "ve": round(float(les["ve"]), 3),
                   "vp": round(float(les["vp"]), 3),
                   "volume_ml": round(float(frac.sum()) * px * px * SLICE_THICKNESS_MM / 1000, 3)})
    return frac, mult.astype(np.float32), record


TEXTURE_MM, TEXTURE_REACH_MM = 1.5, 48.0  # the lesion's perfusion texture: a fixed grid around its centre


def _texture(seed, offsets_mm):
    """The lesion's patchy perfusion (~10 %, smooth over ~2 mm) at offsets (..., 3) mm from its centre: one field
    per lesion on a fixed grid, so a lesion keeps its pattern from visit to visit as it shrinks."""
    n = int(2 * TEXTURE_REACH_MM / TEXTURE_MM) + 1
    field = ndimage.gaussian_filter(np.random.default_rng(seed).normal(0, 0.4, (n, n, n)), (0.7, 1.3, 1.3))
    index = np.moveaxis(offsets_mm, -1, 0) / TEXTURE_MM + (n - 1) / 2
    return ndimage.map_coordinates(field, index.reshape(3, -1), order=1, mode="nearest").reshape(offsets_mm.shape[:-1])


def _nearest_voxel(grid, point):
    """(index (k, i, j) of the voxel of phantom._grid's grid nearest a point (x, s, a) in mm, whether the point
    lies inside the grid: within half a step of that voxel on every axis)."""
    index, inside = [], True
    for axis, c in zip(grid[:3], point):
        values = axis.ravel()
        i = int(np.argmin(np.abs(values - c)))
        step = values[1] - values[0] if len(values) > 1 else grid[3]
        inside &= bool(abs(values[i] - c) <= step / 2)
        index.append(i)
    return tuple(index), inside


def _envelope_at(envelope, grid, centre):
    """The glandular envelope's value at the voxel nearest a point (mm); 0 off the grid."""
    index, inside = _nearest_voxel(grid, centre)
    return float(envelope[index]) if inside else 0.0


def place_lesions(lesions, visit, grid, envelope, depth, subcut_mm):
    """All lesions of a visit: (fraction float32 (slices, H, W) in [0, 1], (Ktrans, ve, vp) float32 maps of the
    lesion tissue (0 outside), records (main first; satellites keep their offset from the main centre))."""
    shape = envelope.shape
    frac = np.zeros(shape, np.float32)
    ktrans, ve, vp = (np.zeros(shape, np.float32) for _ in range(3))
    records, main_centre = [], None
    for les in lesions:
        centre = None if les["offset_mm"] is None else np.asarray(main_centre) + les["offset_mm"]
        if centre is not None and _envelope_at(envelope, grid, centre) < 0.3:
            continue  # a satellite grows in the gland: one that would land in fat, muscle or off the grid is not drawn
        f, mult, record = lesion_volume(les, visit, grid, envelope, depth, subcut_mm, centre)
        main_centre = record["centre_mm"] if main_centre is None else main_centre
        if not f.any():
            continue
        new = f > frac
        frac = np.maximum(frac, f)
        if "ktrans_per_min" in record:
            ktrans[new] = (record["ktrans_per_min"] * mult)[new]
            ve[new], vp[new] = record["ve"], (record["vp"] * np.minimum(mult, 1.5))[new]
        records.append(record)
    return frac, (ktrans, ve, vp), records
