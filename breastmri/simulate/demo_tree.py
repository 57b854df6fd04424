"""Embedded demo data: a synthetic QIN-BREAST-like DICOM tree (3T breast DCE-MRI plus PET/CT decoys).

TCIA's QIN-BREAST collection (doi:10.7937/K9/TCIA.2016.21JUEBH0) holds 3T Philips Achieva breast DCE-MRI
(sagittal 3-D spoiled gradient echo, 192 x 192 x 20 slices of 5 mm, 25 temporal positions) plus PET/CT of the
same patients. This module writes a small tree that looks and reads like a download of it, so the pipeline
(preprocessing -> training -> evaluation) runs and is tested without any download:

    python demo_data.py --out data/demo_dicom --patients 8 --seed 0 --preview

Layout, as the NBIA Data Retriever writes it ("descriptive" directory type):

    <out>/QIN-BREAST/<PatientID>/<MM-DD-YYYY>-NA-<StudyDescription>-<last 5 of StudyUID>/
          <SeriesNumber %.6f>-<SeriesDescription, only [A-Za-z0-9 .-]>-<last 5 of SeriesUID>/1-001.dcm ...
    <out>/metadata.csv       one row per series, the Retriever's 17 columns
    <out>/demo_params.json   parameters + summary + ground truth; its presence marks a complete tree

Per patient (PatientID QIN-BREAST-01-0001, ...): 2 or 3 MR visits (baseline, after cycle 1 of neoadjuvant therapy,
later), each a study with the DCE series `dynamic_smartTX` (some patients: `dynamic`), optionally (extras) a
multi-flip T1-map and a DWI series; the baseline study also holds a Basic Text SR (no pixel data); one PET/CT
study "BREAST PRONE" with `CTAC` (CT) and `PET AC 3DWB` (PT). Only the MR series are training material; the rest
are decoys that a reader of the tree has to skip.

DCE files: MR Image Storage, explicit VR little endian, uint16 with BitsStored 12, modality value =
stored * RescaleSlope + RescaleIntercept. InstanceNumber is time-major: instance = t * slices + k + 1 for temporal
position t (0-based) and slice k (0-based, ImagePositionPatient advancing by SliceThickness along the slice
normal), and file 1-NNN.dcm holds instance NNN. `phantom(patient, visit, ...)[...][k, row, col]` is the ground
truth of that slice's pixel [row, col].

Images are simulated from physics, not drawn: a 3-D tissue-fraction phantom of a prone breast (skin, fat,
fibroglandular tissue with a patient-specific density, vessels, pectoral muscle, ribs, lung/heart, an enhancing
lesion in 3 of 4 patients), a spoiled-gradient-echo signal equation with 3T relaxation times, extended Tofts
kinetics with each patient's AIF, 8 receive channels, and complex Gaussian noise per channel before the
sum-of-squares magnitude (noncentral chi in tissue, chi with 16 degrees of freedom in air). The same seed gives byte-identical DICOM files (UIDs are '2.25.' + a
name-based UUID of seed, sizes, patient and series); other seeds give other anatomy. A patient's content does not
depend on how many patients are generated.

Three files tell this story: breastmri/simulate/phantom.py (acquisition, anatomy, signal), breastmri/simulate/demo_dicom.py (headers, series
files, truth sidecars, decoys) and this one (the tree: which patient gets which study, metadata.csv, the
completeness record, the preview figure and the CLI). The names other modules use are importable from here.
"""

import csv
import json
import os
import shutil
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from tqdm import tqdm

from breastmri.files import save_figure_atomic
from breastmri.simulate.acquisition import (
    dce_series,
    dwi_series,
    noise_sigma,
    t1map_series,
)
from breastmri.simulate.demo_dicom import (
    COLLECTION,
    DATA_DESCRIPTION_URI,
    LESION_FILE,
    MANUFACTURER,
    METADATA_COLUMNS,
    MR_STUDY_DESCRIPTION,
    PETCT_STUDY_DESCRIPTION,
    SOP_CLASSES,
    TRUTH_FILE,
    TRUTH_INDEX,
    _file_size_text,
    _uid,
    _write_ct,
    _write_mr_series,
    _write_pet,
    _write_report,
    folder_name,
)
from breastmri.simulate.motion import patient_motion
from breastmri.simulate.phantom import (
    DEMO_DEFAULTS,
    GENERATOR_VERSION,
    NOISE_SIGMA,
    RESCALE_INTERCEPT,
    RESCALE_SLOPE,
    _patient_draws,
    patient_id,
    phantom,
)
from breastmri.simulate.protocol import (
    ACQUIRED_FRACTION,
    BAND_LIMITS,
    BOLUS_TRANSIT_S,
    DWI_B_VALUES,
    FIELD_STRENGTH_T,
    FOV_MM,
    FRAME_INTERVAL_S,
    PRE_CONTRAST_FRAMES,
    SLICE_THICKNESS_MM,
    T1MAP_FLIPS_DEG,
    frame_times,
)

# ---------------------------------------------------------------------------------------------------------------
# The tree.

KSPACE_MODES = ("protocol", "full", "mixed")  # what each visit acquires (make_demo_tree's kspace)


def _acquired_fraction(kspace, seed, index, visit):
    """The k-space fractions (rows, cols) one visit acquires, None for the full matrix; "mixed" draws one of
    protocol.BAND_LIMITS from the visit's own seed, so a patient's draw does not depend on the tree's size."""
    if kspace == "mixed":
        return BAND_LIMITS[int(np.random.default_rng([seed, 7, index, visit, 5]).integers(len(BAND_LIMITS)))]
    return None if kspace == "full" else ACQUIRED_FRACTION


def _check_params(patients, seed, slices, time_points, matrix, extras, texture_beta=DEMO_DEFAULTS["texture_beta"],
                  motion_mm=DEMO_DEFAULTS["motion_mm"], split_dynamics=False, mask_background=False,
                  kspace=DEMO_DEFAULTS["kspace"]):
    for name, value, low in (("patients", patients, 1), ("slices", slices, 1), ("time_points", time_points, 2),
                             ("matrix", matrix, 32)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if patients > 9999:
        raise ValueError(f"patients must be <= 9999 (PatientIDs have 4 digits), got {patients}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    for name, value, low, high in (("texture_beta", texture_beta, 0.0, 4.0), ("motion_mm", motion_mm, 0.0, 10.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")
    if kspace not in KSPACE_MODES:
        raise ValueError(f"kspace must be one of {KSPACE_MODES}, got {kspace!r}")
    return {"patients": int(patients), "seed": int(seed), "slices": int(slices), "time_points": int(time_points),
            "matrix": int(matrix), "extras": bool(extras), "texture_beta": float(texture_beta),
            "motion_mm": float(motion_mm), "split_dynamics": bool(split_dynamics),
            "mask_background": bool(mask_background), "kspace": kspace}


def make_demo_tree(out_dir, patients=DEMO_DEFAULTS["patients"], seed=DEMO_DEFAULTS["seed"],
                   slices=DEMO_DEFAULTS["slices"], time_points=DEMO_DEFAULTS["time_points"], matrix=192,
                   extras=False, texture_beta=DEMO_DEFAULTS["texture_beta"], motion_mm=DEMO_DEFAULTS["motion_mm"],
                   split_dynamics=False, mask_background=False, kspace=DEMO_DEFAULTS["kspace"]):
    """Write the synthetic QIN-BREAST tree into out_dir (created; must not already hold a QIN-BREAST folder).

    patients: number of patients; seed: global seed (same seed -> identical files); slices, time_points, matrix:
    DCE series size (slices x time_points images of matrix x matrix); extras: also write a multi-flip T1-map and a
    DWI series per visit; texture_beta: exponent of the gland/fat power-law texture; motion_mm: largest in-plane
    displacement between DCE frames (0: none; motion.patient_motion); split_dynamics: write each DCE as one series per time point, as
    Siemens and many archives store it (no TemporalPositionIdentifier; TriggerTime, AcquisitionTime and
    AcquisitionNumber order them); mask_background: set the air of every DCE frame to 0 (where the noise-free
    signal averaged over time is under 3 noise sigmas), as Philips and anonymised archives do; kspace: what each
    visit acquires (KSPACE_MODES): "protocol", protocol.ACQUIRED_FRACTION of k-space zero-filled (scanner.py), whose
    noise is correlated between neighbouring pixels as real scanners' noise is; "full", the full matrix (white
    noise); "mixed", one of protocol.BAND_LIMITS drawn per visit (a training cohort's). Each DCE series
    gets its noise-free truth, lesion mask and kinetic parameter maps as hidden sidecar files (write_truth). Returns the summary dict also stored in <out>/demo_params.json (written last).
    """
    params = _check_params(patients, seed, slices, time_points, matrix, extras, texture_beta, motion_mm,
                           split_dynamics, mask_background, kspace)
    out = Path(out_dir)
    if (out / COLLECTION).exists():
        raise FileExistsError(f"{out / COLLECTION} exists; remove it or use ensure_demo_tree({str(out)!r})")
    started = time.perf_counter()
    root = out / COLLECTION
    root.mkdir(parents=True)
    times_s, _, n_pre = frame_times(time_points)
    series_rows, ground_truth = [], []
    n_studies = 0
    tree_key = (seed, slices, time_points, matrix, texture_beta, motion_mm)

    for index in tqdm(range(patients), desc="demo patients", unit="patient", disable=None):
        d = _patient_draws(seed, index)
        pid = patient_id(index)
        truth = {"patient_id": pid, "density": d["density"], "visits": []}

        # PET/CT staging study, a few days before the baseline MR.
        petct = {"patient_id": pid, "age": d["age"], "date": d["baseline"] + timedelta(days=d["petct_day"]),
                 "time_s": 60.0 * d["study_minute"], "description": PETCT_STUDY_DESCRIPTION,
                 "uid": _uid(*tree_key, pid, "petct"), "study_id": "1"}
        petct_dir = root / pid / (f"{petct['date']:%m-%d-%Y}-NA-{folder_name(petct['description'])}-"
                                  f"{petct['uid'][-5:]}")
        rng = np.random.default_rng([seed, 7, index, 0, 99])
        ct = _write_ct(petct, petct_dir, rng)
        pet = _write_pet(petct, petct_dir, rng, ct.pop("_hu"))
        series_rows += [(petct, ct), (petct, pet)]
        n_studies += 1

        for visit in range(d["n_visits"]):
            ph = phantom(index, visit, seed=seed, slices=slices, matrix=matrix, texture_beta=texture_beta)
            main_lesion = ph["lesions"][0] if ph["lesions"] else None
            study = {"patient_id": pid, "age": d["age"], "date": d["baseline"] + timedelta(days=d["days"][visit]),
                     "time_s": 60.0 * d["study_minute"], "description": MR_STUDY_DESCRIPTION,
                     "uid": _uid(*tree_key, pid, "mr", visit), "study_id": str(visit + 2),
                     "dce_start_s": 900.0, "acquired_fraction": _acquired_fraction(kspace, seed, index, visit)}
            arrival_s = (PRE_CONTRAST_FRAMES - 1) * FRAME_INTERVAL_S + d["bolus_delay_s"]
            study["injection_s"] = study["dce_start_s"] + arrival_s - BOLUS_TRANSIT_S
            study["frame_of_reference_uid"] = _uid(study["uid"], "for")
            study_dir = root / pid / (f"{study['date']:%m-%d-%Y}-NA-{folder_name(study['description'])}-"
                                      f"{study['uid'][-5:]}")
            if extras:
                rng = np.random.default_rng([seed, 7, index, visit, 2])
                series_rows.append((study, _write_mr_series(
                    study, study_dir, "t1map", t1map_series(ph, rng, study["acquired_fraction"]),
                    "multi-flip_T1-map_smartTX", 501,
                    per_volume=T1MAP_FLIPS_DEG)))
                rng = np.random.default_rng([seed, 7, index, visit, 3])
                series_rows.append((study, _write_mr_series(
                    study, study_dir, "dwi", dwi_series(ph, rng, study["acquired_fraction"]), "DWI_b0_500", 701,
                    per_volume=DWI_B_VALUES)))
            fields, through, largest_mm = patient_motion(np.random.default_rng([seed, 7, index, visit, 4]), times_s,
                                                         n_pre, ph["bias"].shape, FOV_MM / matrix, motion_mm)
            rng = np.random.default_rng([seed, 7, index, visit, 1])
            description = "dynamic" if d["dynamic_plain"] else "dynamic_smartTX"
            stored, signal = dce_series(ph, times_s, arrival_s, rng, (fields, through), study["acquired_fraction"])
            lesion = {"fraction": ph["fractions"]["lesion"], "times_s": times_s, "n_pre": n_pre,
                      "ktrans": ph["ktrans"], "ve": ph["ve"]}
            if mask_background:
                stored[:, signal.mean(axis=0) < 3 * noise_sigma(ph)] = 0
            if split_dynamics:  # one series per time point, numbered on from 801, named by its time as TWIST does
                parts = [_write_mr_series(study, study_dir, f"dce-t{v}", stored[v:v + 1],
                                          f"{description}_TT={times_s[v]:.1f}s", 801 + v, frame_s=times_s[v:v + 1],
                                          truth=signal[v:v + 1], acquisition_number=v + 1) for v in range(time_points)]
                series_rows += [(study, part) for part in parts]
                dce = parts[0]
            else:
                dce = _write_mr_series(study, study_dir, "dce", stored, description, 801, frame_s=times_s,
                                       truth=signal, lesion=lesion)
                series_rows.append((study, dce))
            if visit == 0:
                les = main_lesion
                text = ("Synthetic demo report. " + (
                    f"Enhancing {les['shape']} mass, {les['diameter_mm']:.0f} mm." if les else "No enhancing mass."))
                series_rows.append((study, _write_report(study, study_dir, text)))
            truth["visits"].append({"visit": visit, "study_uid": study["uid"], "date": f"{study['date']:%Y-%m-%d}",
                                    "dce_series_uid": dce["series_uid"],
                                    "dce_dir": dce["dir"].relative_to(out).as_posix(), "lesion": main_lesion,
                                    "lesions": ph["lesions"], "bpe": ph["bpe"],
                                    "noise_sigma_modality": round(noise_sigma(ph), 3),
                                    "acquired_fraction": study["acquired_fraction"],
                                    "bolus_arrival_s": round(arrival_s, 3),
                                    "aif": {k: round(v, 3) for k, v in d["aif"].items()},
                                    "motion_max_mm": [round(m, 3) for m in largest_mm],
                                    "through_plane_mm": [round(float(z) * SLICE_THICKNESS_MM, 3) for z in through]})
            n_studies += 1
        ground_truth.append(truth)

    # metadata.csv, one row per series, as the NBIA Data Retriever writes it.
    series_count, n_files, n_bytes = {}, 0, 0
    with open(out / "metadata.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(METADATA_COLUMNS)
        for study, row in series_rows:
            series_count[row["modality"]] = series_count.get(row["modality"], 0) + 1
            n_files += row["files"]
            n_bytes += row["bytes"]
            writer.writerow([row["series_uid"], COLLECTION, "NO", DATA_DESCRIPTION_URI, study["patient_id"],
                             study["uid"], study["description"], f"{study['date']:%m-%d-%Y}", row["description"],
                             MANUFACTURER, row["modality"], row["sop_class"], SOP_CLASSES[row["sop_class"]],
                             row["files"], _file_size_text(row["bytes"]),
                             "./" + row["dir"].relative_to(out).as_posix(),
                             datetime.now().isoformat(timespec="milliseconds")])

    summary = {
        "patients": patients, "studies": n_studies, "series": dict(sorted(series_count.items())),
        "files": n_files, "bytes": n_bytes, "mb": round(n_bytes / 1e6, 1),
        "seconds": round(time.perf_counter() - started, 2),
        "noise_sigma_modality": NOISE_SIGMA, "noise_sigma_stored": NOISE_SIGMA / RESCALE_SLOPE,
        "rescale_slope": RESCALE_SLOPE, "rescale_intercept": RESCALE_INTERCEPT,
        "field_strength_t": FIELD_STRENGTH_T, "frame_times_s": times_s.tolist(),
        "pre_contrast_frames": n_pre, "pixel_spacing_mm": FOV_MM / matrix, "slice_thickness_mm": SLICE_THICKNESS_MM,
        "instance_order": "time-major: InstanceNumber = t * slices + k + 1",
        "texture_beta": texture_beta, "motion_mm": motion_mm,
        "truth_files": f"{TRUTH_FILE} + {TRUTH_INDEX} in each DCE series folder (noise-free signal, modality units)",
        "lesion_files": f"{LESION_FILE} (mask, one image per SOP instance) + {TRUTH_INDEX}['lesion'] (noise-free "
                        "enhancement curve inside it) in each DCE series folder with a lesion",
        "ground_truth": ground_truth,
    }
    record = {"version": GENERATOR_VERSION, "params": params, "summary": summary}
    (out / "demo_params.json").write_text(json.dumps(record, indent=1, default=str))
    return dict(summary, out_dir=str(out))


def _read_record(out):
    try:
        return json.loads((Path(out) / "demo_params.json").read_text())
    except (OSError, ValueError):
        return None


def ensure_demo_tree(out_dir=DEMO_DEFAULTS["out"], **params):
    """The demo tree at out_dir, generated only if it is missing or was made with other parameters.

    params: those of make_demo_tree (defaults filled in). Generation happens in a temporary sibling folder that
    replaces out_dir only when complete, so an interrupted run never leaves a half tree that looks finished.
    Refuses to replace a non-empty folder that is not a demo tree. Returns Path(out_dir).
    """
    unknown = set(params) - {"patients", "seed", "slices", "time_points", "matrix", "extras", "texture_beta",
                             "motion_mm", "split_dynamics", "mask_background", "kspace"}
    if unknown:
        raise TypeError(f"ensure_demo_tree got unknown parameters {sorted(unknown)}")
    full = {"patients": DEMO_DEFAULTS["patients"], "seed": DEMO_DEFAULTS["seed"], "slices": DEMO_DEFAULTS["slices"],
            "time_points": DEMO_DEFAULTS["time_points"], "matrix": 192, "extras": False,
            "texture_beta": DEMO_DEFAULTS["texture_beta"], "motion_mm": DEMO_DEFAULTS["motion_mm"],
            "split_dynamics": False, "mask_background": False, "kspace": DEMO_DEFAULTS["kspace"]}
    full.update(params)
    full = _check_params(**full)
    out = Path(out_dir)
    record = _read_record(out)
    if record and record.get("version") == GENERATOR_VERSION and record.get("params") == full:
        return out
    if out.exists() and any(out.iterdir()) and record is None:
        raise FileExistsError(f"{out} is not empty and is not a demo tree (no demo_params.json); "
                              "choose another --out or remove it")
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        make_demo_tree(tmp, **full)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Preview figure.

def read_dce(series_dir):
    """A DCE series folder -> (modality values float32 (time_points, slices, H, W), times_s (time_points,)),
    ordered by TemporalPositionIdentifier and position along the slice normal."""
    import pydicom

    frames = {}
    for path in sorted(Path(series_dir).glob("*.dcm")):
        ds = pydicom.dcmread(path)
        orientation = np.array(ds.ImageOrientationPatient, float)
        normal = np.cross(orientation[:3], orientation[3:])
        key = float(np.dot(np.array(ds.ImagePositionPatient, float), normal))
        values = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        frames.setdefault(int(ds.TemporalPositionIdentifier), []).append((key, float(ds.TriggerTime) / 1000, values))
    order = sorted(frames)
    volume = np.stack([np.stack([v for _, _, v in sorted(frames[t], key=lambda e: e[0])]) for t in order])
    times = np.array([frames[t][0][1] for t in order])
    return volume, times


def save_preview(tree_dir, path=None):
    """Figure of the demo patient with the largest baseline lesion, at the lesion's slice (read back from the DICOM
    files): an early (last pre-contrast), peak and late frame, the truth's Ktrans map, and the mean curves of the
    lesion (stored and noise-free) and of fat. Returns the PNG path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tree_dir = Path(tree_dir)
    record = _read_record(tree_dir)
    if record is None:
        raise FileNotFoundError(f"{tree_dir} has no demo_params.json; generate it with demo_data.py first")
    params = record["params"]
    cases = [(v["visits"][0]["lesion"]["volume_ml"] if v["visits"][0]["lesion"] else -1.0, v)
             for v in record["summary"]["ground_truth"]]
    _, patient = max(cases, key=lambda c: c[0])
    visit = patient["visits"][0]
    series_dir = tree_dir / visit["dce_dir"]
    volume, times = read_dce(series_dir)
    truth = np.load(series_dir / TRUTH_FILE).reshape(volume.shape)
    ph = phantom(patient["patient_id"], 0, seed=params["seed"], slices=params["slices"], matrix=params["matrix"],
                 texture_beta=params["texture_beta"])
    n_pre = record["summary"]["pre_contrast_frames"]
    les = visit["lesion"]
    k = les["centre_index"][0] if les else volume.shape[1] // 2
    lesion_mask = ph["fractions"]["lesion"][k] > 0.9
    fat_mask = ph["fractions"]["fat"][k] > 0.98
    curve = truth[:, k][:, lesion_mask].mean(axis=1) if lesion_mask.any() else truth[:, k].mean(axis=(1, 2))
    peak = int(np.argmax(curve))
    shown = [(n_pre - 1, "last pre-contrast"), (peak, "lesion peak"), (len(times) - 1, "late")]
    vmax = float(np.percentile(volume[:, k][:, ph["chest"][k] == 0], 99.7))  # the breast's range, not the heart's

    fig, axes = plt.subplots(1, 5, figsize=(22, 4.8), gridspec_kw={"width_ratios": [1, 1, 1, 1, 1.3]})
    for ax, (t, label) in zip(axes, shown):
        ax.imshow(volume[t, k], cmap="gray", vmin=0, vmax=vmax)
        ax.set_title(f"{label} (frame {t + 1}, t = {times[t]:.0f} s)", fontsize=9)
        ax.axis("off")
    shown_map = axes[3].imshow(ph["ktrans"][k], cmap="magma", vmin=0, vmax=max(0.05, float(ph["ktrans"][k].max())))
    axes[3].set_title("truth: Ktrans (/min)", fontsize=9)
    axes[3].axis("off")
    fig.colorbar(shown_map, ax=axes[3], fraction=0.046)
    ax = axes[4]
    for mask, name, color in ((lesion_mask, "lesion", "tab:red"), (fat_mask, "fat", "tab:orange")):
        if mask.any():
            stored = volume[:, k][:, mask].mean(axis=1)
            clean = truth[:, k][:, mask].mean(axis=1)
            base = clean[:n_pre].mean()
            ax.plot(times, 100 * (stored / base - 1), "o", color=color, label=f"{name}, stored ({mask.sum()} px)")
            ax.plot(times, 100 * (clean / base - 1), "-", color=color, label=f"{name}, noise-free truth")
    ax.axvline(visit["bolus_arrival_s"], color="gray", ls=":", label="bolus arrival")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("enhancement over pre-contrast (%)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    title = f"{patient['patient_id']} baseline, {patient['density']} breast, {visit['bpe']} BPE"
    if les:
        title += (f"; lesion {les['diameter_mm']:.0f} mm {les['shape']}{', necrotic' if les['necrotic'] else ''}, "
                  f"{les['curve']} curve, Ktrans {les['ktrans_per_min']:.2f}/min, ve {les['ve']:.2f}, "
                  f"{len(visit['lesions'])} lesion(s)")
    fig.suptitle(f"Synthetic QIN-BREAST-like DCE (3T SPGR, sagittal, slice {k + 1}): {title}", fontsize=10)
    fig.tight_layout()
    path = Path(path) if path else tree_dir / "preview.png"
    save_figure_atomic(fig, path, dpi=90)
    plt.close(fig)
    return path
