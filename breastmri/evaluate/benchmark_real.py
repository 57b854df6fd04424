"""The benchmark's real-data part: the methods on real dynamics, scored frame by frame against the real 3T frames.

    python benchmark.py --run-dir runs/demo --parts real --real-data ../shared/realdata/prostatex-0218

The phantom decides nothing on its own (docs/limits.md): a method that helps it can harm real scans. This part
takes a real DICOM folder, preprocesses it exactly as preprocessing.py does with the run's settings (dynamics
assembled, the noise measured from the series, the field model's 1.5T simulation with the scanner's noise
spectrum), and runs every method on each dynamic of at least MIN_TIME_POINTS time points, at a few slice
positions in its middle (--real-positions). Two references:

- **the real 3T frames** (every frame): the methods are scored against the frame the degraded input came from.
  That reference carries the scanner's own noise (sigma_source), so even a perfect, noise-free estimate scores
  only about 20 log10(range / sigma_source) against it: the ceiling is stated beside the table.
- **held-back frames** (the pre-contrast frames only): the last HELD_BACK pre-contrast frames are removed from what
  every method sees, and the earlier pre-contrast frames are scored against the average of the held-back 3T frames:
  the same anatomy before contrast, with noise that no method saw. That ranks methods on real noise without a
  truth; motion between the frames counts against every method alike, view-sharing sequences (TWIST) share part
  of their noise between frames, which makes the reference less independent than it looks, and the methods see a
  sequence two frames shorter (renumbered), which costs the temporal methods two pre-contrast neighbours.

Beside the PSNR, what each method did to the anatomy (_detail): the error it made alike in every frame, which noise
cannot be, and how much of the fine detail of the 3T frames' temporal mean its own temporal mean keeps, by band of
spatial frequency. A network whose phantom-taught prior smooths real anatomy shows it there.

Every number is per frame (the mean over the scored positions) as well as over the frames: a method that helps late
frames and harms early ones shows it. With a chunk (--real-chunk L) every method sees a dynamic in consecutive runs
of at least L frames, one at a time, and every frame is still scored: does series length decide a ranking? (With
frames held back, the runs are cut from the frames the methods see, renumbered as without runs.) Above the tables,
difference_correlation says whether the 3T frames change together beyond their own noise. The classical methods
that run on one core are run side by side, one per core (runtime.parallel_map); a method's seconds are the sum of its runs' own. PSNR is taken inside the body (the mean
frame above 10% of its 99th percentile) with data_range the 99.5th percentile of the 3T frames there.
"""

import logging
import math
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from breastmri.data import preprocess
from breastmri.data.manifest import _zero, noise_spectrum_of, read_manifest, series_info
from breastmri.data.splits import patients_seen
from breastmri.dicom.index import volume_of
from breastmri.evaluate.benchmark_quality import timed_call, workers_for
from breastmri.restore.denoisers import MULTIFRAME, correct_rician_mean, denoise, denoise_frames
from breastmri.restore.training import needs_rician_correction
from breastmri.runtime import parallel_map
from breastmri.simulate.noise import body_of, frames_before_contrast

MIN_TIME_POINTS = 8
HELD_BACK = 2          # pre-contrast frames held back as the independent reference
PRE_CONTRAST_MARGIN = 2  # frames before the detected contrast onset not taken as free of it (frames_before_contrast)
REAL_METHODS = ("noisy", "bm3d", "mppca", "tpca", "nordic", "unet")
DEFAULT_REAL_METHODS = ("noisy", "mppca", "tpca", "nordic", "unet")  # bm3d: about 1 s per frame and pass
SHARED_NOISE_CORRELATION = -0.3  # difference_correlation above it: the 3T frames share noise between neighbours
# (the phantom reads -0.42 to -0.67 over 4 pre-contrast frames, a real pCASL series -0.49, ProstateX's TWIST -0.07)
DETAIL_BANDS = ((0.08, 0.16), (0.16, 0.24), (0.24, 0.32), (0.32, 0.40), (0.40, 0.50))  # cycles per pixel


def real_part(real_root, run, methods, positions=3, series_filter="", log=print, chunk=0):
    """{"source", "dynamics": [per dynamic: frames, references, per-frame and summary gains], "methods"} for the
    methods of REAL_METHODS named in `methods`; `run` is benchmark_runs.read_run's record of the model's run.
    chunk: 0, every method sees every frame of a dynamic; L >= MIN_TIME_POINTS, it sees consecutive runs of at
    least L of them, one at a time (chunks_of), as if the dynamic were several shorter ones."""
    if chunk and chunk < MIN_TIME_POINTS:
        raise ValueError(f"chunk must be 0 or at least {MIN_TIME_POINTS} frames, got {chunk}")
    chosen = [m for m in REAL_METHODS if m in methods or m == "noisy"]
    cfg = dict(run["cfg"], preprocess=dict(run["cfg"]["preprocess"], series_filter=series_filter))
    if cfg["degrade"]["model"] == "none":  # a self-supervised run on 1.5T scans: the benchmark needs the 3T pair
        cfg["degrade"] = dict(cfg["degrade"], model="field")
    record = {"source": str(real_root), "methods": chosen, "positions_per_dynamic": positions, "chunk": chunk,
              "degradation": {k: cfg["degrade"][k] for k in ("model", "snr_ratio", "field_exponent", "noise_spectrum")}}
    enhancer = None
    if "unet" in chosen:
        from breastmri.enhance.enhancer import load_enhancer

        enhancer = load_enhancer(run["dir"])
    with tempfile.TemporaryDirectory(prefix="benchmark-real-") as tmp:
        quiet = logging.getLogger("preprocessing")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # a folder of one patient: the split warnings say nothing here
        try:
            summary = preprocess.run(real_root, tmp, cfg, progress=False)
        except preprocess.PreprocessError as error:  # nothing usable (another field, no MR): the other parts stand
            log(f"real data: {error}")
            return dict(record, series_found=0, dynamics=[], seen_in_training=[], error=str(error))
        finally:
            quiet.setLevel(level)
        rows = read_manifest(tmp)
        by_series = defaultdict(list)
        for row in rows:
            by_series[row["series_uid"]].append(row)
        dynamics = []
        for uid, series_rows in by_series.items():
            if series_rows[0]["n_times"] < MIN_TIME_POINTS:
                continue
            row0 = series_rows[0]
            log(f"real data: {row0['patient_id']} {row0['series_description']} ({row0['n_times']} time points)")
            scored = _score_dynamic(Path(tmp), series_rows, chosen, enhancer, positions, chunk)
            if "skipped" in scored:
                log(f"real data: skipped, {scored['skipped']}")
            dynamics.append(scored)
        if not dynamics:
            skipped = ", ".join(f"{reason}: {n}" for reason, n in summary["series_skipped"].items()) or "none"
            log(f"real data: no dynamic of at least {MIN_TIME_POINTS} time points among the "
                f"{summary['series_used']} series used under {real_root} (series skipped: {skipped})")
        known = patients_seen(run["dir"])  # its own split and, through train.init_from, its start's
        seen = None if known is None else sorted(known & {row["patient_id"] for row in rows})
        if seen:
            log(f"real data: warning: {', '.join(seen)} took part in this run's training or checkpoint selection "
                f"(its split.json, or that of the run it started from): no independent test")
        elif seen is None:
            log(f"real data: {run['dir']} has no split.json (or the run it started from has none): cannot tell "
                "whether these patients took part in its training")
    return dict(record, series_found=summary["series_found"], dynamics=dynamics, seen_in_training=seen)


def chunks_of(frames, chunk):
    """`frames` cut into consecutive runs of at least `chunk` (0: one run of all): len // chunk runs, as even as
    np.array_split makes them, so a short tail joins the runs before it rather than being seen alone."""
    frames = list(frames)
    if not chunk or len(frames) < 2 * chunk:
        return [frames]
    return [list(map(int, run)) for run in np.array_split(frames, len(frames) // chunk)]


def _score_dynamic(data_dir, rows, methods, enhancer, n_positions, chunk=0):
    row0 = rows[0]
    clean_all = np.load(data_dir / row0["clean_file"])
    noisy_all = np.load(data_dir / row0["noisy_file"])
    index = {(r["time_index"], r["position_index"]): r["slice_index"] for r in rows}
    n_times, total_positions = row0["n_times"], row0["n_positions"]
    described = (row0["series_description"], volume_of(row0["series_uid"]))  # and which volume of a split series
    info = series_info(data_dir, row0)
    result = {"patient_id": row0["patient_id"], "study_uid": row0.get("study_uid", ""),
              "series_description": " ".join(filter(None, described)),
              "dynamic_id": row0.get("dynamic_id") or row0["series_uid"], "time_points": n_times,
              "noise": {key: info.get(key) for key in ("sigma_method", "sigma_estimates", "noise_correlation_source")}}
    # the longest run of neighbouring slice positions with every time point (a file missing from one frame drops
    # its position; a run keeps the methods' neighbouring slices neighbours), the n_positions nearest its middle
    # scored
    runs = [[]]
    for k in range(total_positions):
        if all((t, k) in index for t in range(n_times)):
            runs[-1].append(k)
        elif runs[-1]:
            runs.append([])
    complete = max(runs, key=lambda run: (len(run), -abs(sum(run[:1] + run[-1:]) / 2 - total_positions / 2)))
    if not complete:
        return dict(result, skipped="no slice position has every time point")
    result["positions_left_out"] = [k for k in range(total_positions) if k not in complete]
    middle = complete[len(complete) // 2]
    scored_positions = sorted(sorted(complete, key=lambda k: abs(k - middle))[:n_positions])
    positions = [complete.index(k) for k in scored_positions]  # among the complete positions, which the methods see
    grid = np.array([[index[(t, k)] for k in complete] for t in range(n_times)])  # (T, Z)
    clean, noisy = clean_all[grid], noisy_all[grid]                                 # (T, Z, H, W)
    zero, sigma_src = _zero(row0), row0["sigma_source"]
    spectrum = noise_spectrum_of(data_dir, row0)  # of the source noise and the added noise alike
    sigma_total = math.hypot(sigma_src, row0["sigma_added"])
    body = body_of(clean[:, positions].mean(axis=0))                                # (P, H, W)
    if not body.any(axis=(-2, -1)).all():
        return dict(result, skipped="no signal above the air at a scored position")
    data_range = float(np.percentile(clean[:, positions][:, body], 99.5)) - zero
    # the frames before contrast; the onset the detector reads lags the first traces by a frame or two, so the
    # pre-contrast frames used here (held back and scored, and the difference correlation) stop two frames
    # earlier when contrast arrives
    pre = frames_before_contrast(clean[:, positions] - zero, body)
    clear = max(pre - PRE_CONTRAST_MARGIN, 0) if pre < n_times else pre
    result.update({"positions": scored_positions, "pre_contrast_frames": pre, "pre_contrast_frames_used": clear,
              "sigma_source": sigma_src, "sigma_total": sigma_total, "data_range": data_range,
              "ceiling_db": 20 * math.log10(data_range / sigma_src) if sigma_src > 0 else None,
              "difference_correlation": difference_correlation(clean[:clear, positions], body)})

    def psnr(estimate, reference):
        """(T', P) PSNR in dB inside each position's body."""
        err = np.stack([((estimate[:, p] - reference[:, p]) ** 2)[:, body[p]].mean(axis=-1)
                        for p in range(len(positions))], axis=1)
        return 10 * np.log10(data_range ** 2 / np.maximum(err, 1e-20))

    all_frames = list(range(n_times))
    seconds = {}

    def run_all(frames):
        """{method: its (len(frames), P, H, W) output}, each chunk of `frames` (chunks_of) run on its own."""
        parts = [run_frames(run) for run in chunks_of(frames, chunk)]
        return {m: np.concatenate([part[m] for part in parts]) for m in parts[0]}

    def run_frames(frames):
        """{method: its output of `frames`, seen together}; each method's seconds (its runs' own) added to
        `seconds`. The single-core classical runs go side by side; the U-Net runs here, with its model."""
        seen = noisy[frames]
        pooled = {m: _classical_jobs(m, seen - np.float32(zero), positions, sigma_total, sigma_src, spectrum)
                  for m in methods if m not in ("noisy", "unet")}
        side_by_side = [m for m in pooled if workers_for(m) != 1]  # the others use every core on their own
        done = iter(parallel_map(timed_call, [job for m in side_by_side for job in pooled[m]]))
        outputs = {}
        for m in methods:
            if m == "noisy":
                results = [(seen[:, positions], 0.0)]
            elif m == "unet":
                results = [timed_call((_unet, (enhancer, seen, positions, zero, sigma_total)))]
            elif m in side_by_side:
                results = [next(done) for _ in pooled[m]]
            else:
                results = [timed_call(job) for job in pooled[m]]
            seconds[m] = round(seconds.get(m, 0.0) + sum(t for _, t in results), 1)
            outs = [out for out, _ in results]
            if m in MULTIFRAME:   # one run per position
                outs = [np.stack(outs, axis=1) + np.float32(zero)]
            elif m in pooled:     # one run per frame and position
                outs = [np.reshape(outs, (len(frames), len(positions)) + outs[0].shape) + np.float32(zero)]
            outputs[m] = outs[0]
        return outputs

    outputs = run_all(all_frames)
    scores = {m: psnr(out, clean[:, positions]) for m, out in outputs.items()}
    result["against_3t"] = _table(scores, all_frames)
    result["detail"] = _detail(outputs, clean[:, positions], body, sigma_src)
    if clear >= HELD_BACK + 1:
        held = list(range(clear - HELD_BACK, clear))
        seen = [t for t in all_frames if t not in held]
        scored = list(range(clear - HELD_BACK))
        reference = clean[held][:, positions].mean(axis=0, keepdims=True)
        outputs = run_all(seen)
        scores = {m: psnr(out[:len(scored)], np.repeat(reference, len(scored), 0)) for m, out in outputs.items()}
        result["against_held_back"] = dict(_table(scores, scored), held_back_frames=held)
    result["seconds"] = seconds
    return result


def _table(scores, frames):
    """Per frame (mean over positions): the input's PSNR and each method's gain over it; and the summary."""
    scores = {m: np.asarray(s, np.float64) for m, s in scores.items()}
    base = scores["noisy"].mean(axis=1)
    per_frame = {m: (s.mean(axis=1) - base).round(3).tolist() for m, s in scores.items() if m != "noisy"}
    summary = {m: {"mean_gain_db": round(float(np.mean(g)), 3), "worst_gain_db": round(float(np.min(g)), 3),
                   "worst_frame": frames[int(np.argmin(g))], "frames_worse": [f for f, v in zip(frames, g) if v < 0]}
               for m, g in per_frame.items()}
    return {"frames": frames, "input_psnr_db": base.round(3).tolist(), "gain_db": per_frame, "summary": summary}


def _detail(outputs, reference, body, sigma):
    """What each method did to the anatomy of a dynamic, beside its PSNR: {method: {"common_error", "detail_kept"}}
    for outputs {method: (T, P, H, W)} against the real 3T frames `reference` (T, P, H, W). "common_error": the
    power, in the body and in units of sigma^2 (sigma_source^2), of the error's mean over the frames, the part that
    is the same in every frame: noise, independent from frame to frame, leaves about its variance / T there, so a
    larger value is anatomy changed alike in every frame (edges blurred or moved). "detail_kept": per band of
    DETAIL_BANDS, the power of the output's temporal mean over that of the 3T frames' mean (nearly noise-free over
    many frames), each position's body box Hann-windowed; below 1 the method smooths away fine anatomy, above 1 it
    leaves noise or adds texture. None throughout without noise to count in (sigma 0) or a body box to window."""
    if not sigma > 0 or min(np.count_nonzero(b.any(axis=1)) for b in body) < 16:
        return {m: {"common_error": None, "detail_kept": [None] * len(DETAIL_BANDS)} for m in outputs}
    positions = range(len(body))
    mean_3t = reference.mean(axis=0)
    power_3t = [band_power(mean_3t[p], body[p]) for p in positions]
    detail = {}
    for m, estimate in outputs.items():
        mean = estimate.mean(axis=0)
        error = mean - mean_3t  # the error's mean over the frames
        common = np.mean([np.mean(error[p][body[p]] ** 2) for p in positions]) / sigma ** 2
        kept = np.mean([band_power(mean[p], body[p]) / power_3t[p] for p in positions], axis=0)
        detail[m] = {"common_error": round(float(common), 3), "detail_kept": [round(float(k), 3) for k in kept]}
    return detail


def difference_correlation(frames, body):
    """Whether the 3T frames change by independent noise alone from frame to frame: the mean correlation, in the
    body, of successive differences of the pre-contrast frames (T, P, H, W), `body` (P, H, W). Static frames with
    noise independent between frames give -0.5 (x1 - x0 and x2 - x1 share x1 with opposite signs). Noise shared
    between neighbouring frames (view sharing) or changes that last several frames (drift, slow motion) bring it
    towards 0 or above; it cannot tell which (a box window of sharing and a linear drift both read about 0). A
    change in one frame alone pulls it towards -1. Then a 3T frame holds part of what its neighbours hold, and gains
    against it favour methods that keep that. Pairs of constant differences or with fewer than 2 body pixels are
    left out; None with fewer than 3 frames or no pair left."""
    if len(frames) < 3:
        return None
    d = np.diff(np.asarray(frames, np.float64), axis=0)
    pairs = []
    for p in range(len(body)):
        values = d[:, p][:, body[p]]
        for a, b in zip(values[:-1], values[1:]):
            if a.size >= 2 and a.std() > 0 and b.std() > 0:
                pairs.append(np.corrcoef(a, b)[0, 1])
    return round(float(np.mean(pairs)), 3) if pairs else None


def band_power(image, mask):
    """Mean periodogram power of `image` inside the bounding box of `mask` (mean removed, Hann-windowed) in each
    band of DETAIL_BANDS (cycles per pixel)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(np.float64)
    h, w = box.shape
    power = np.abs(np.fft.fft2((box - box.mean()) * np.outer(np.hanning(h), np.hanning(w)))) ** 2
    radius = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :])
    return np.array([power[(radius >= low) & (radius < high)].mean() for low, high in DETAIL_BANDS])


def _classical_jobs(method, magnitude, positions, sigma_total, sigma_src, spectrum=None):
    """A classical method's runs on the frames it sees, magnitudes (zero signal at 0, (T', Z, H, W)), as jobs for
    timed_call: a multi-frame method one run per scored position (over time; MP-PCA over a slab of real slices
    3.6 mm apart did worse), a 2-D one one run per frame and position (frame-major)."""
    common = dict(rician=True, reference_sigma=sigma_src)
    if method in MULTIFRAME:
        return [(denoise_frames, (method, magnitude[:, k], sigma_total), dict(register=True, **common))
                for k in positions]
    return [(denoise, (method, magnitude[t, k], sigma_total), dict(spectrum=spectrum, **common))
            for t in range(len(magnitude)) for k in positions]


def _unet(enhancer, seen, positions, zero, sigma_total):
    """The U-Net's (T', P, H, W) output of the seen frames (T', Z, H, W), at the scored positions."""
    from breastmri.enhance.enhancer import predict_stack

    t, z = seen.shape[:2]
    layout = [(i, k) for i in range(t) for k in range(z)]
    pred, _ = predict_stack(enhancer, seen.reshape((t * z,) + seen.shape[2:]), zero=zero, layout=layout)
    if needs_rician_correction(enhancer.cfg, "field"):  # a self-supervised run learned E[magnitude]
        pred = correct_rician_mean(pred, sigma_total, zero)
    return pred.reshape(seen.shape)[:, positions]


def markdown(real):
    """The real-data section of benchmark.md: per dynamic, the summary and the per-frame gains."""
    lines = ["## Real data, frame by frame", "",
             f"Source: `{real['source']}`; degradation {real['degradation']}; methods run on every frame, scored at "
             f"{real['positions_per_dynamic']} slice positions in the middle of each dynamic, inside the body "
             "(breastmri/evaluate/benchmark_real.py). Gain: dB of PSNR over the degraded input, per frame the mean "
             "over the positions."
             + (f" Each method saw runs of at least {real['chunk']} consecutive frames, one at a time "
                "(--real-chunk), not the whole dynamic." if real.get("chunk") else "")]
    if real.get("error"):
        lines += ["", f"Nothing to score: {real['error']}."]
    elif not real["dynamics"]:
        lines += ["", f"No dynamic of at least {MIN_TIME_POINTS} time points among the {real['series_found']} series "
                      "found."]
    if real.get("seen_in_training"):
        lines += ["", f"**{', '.join(real['seen_in_training'])} took part in this run's training or checkpoint "
                      "selection (its split.json, or that of the run it started from): no independent test.**"]
    elif real.get("seen_in_training", []) is None:
        lines += ["", "The run has no split.json (or the run it started from has none): whether these patients took "
                      "part in its training cannot be told."]
    studies = defaultdict(set)
    for d in real["dynamics"]:
        studies[d.get("patient_id", "")].add(d.get("study_uid", ""))
    for d in real["dynamics"]:
        study = f" (study ...{d['study_uid'][-8:]})" if len(studies[d.get("patient_id", "")]) > 1 else ""
        heading = f"### {d.get('patient_id', '')}{study} {d['series_description']}: {d['time_points']} time points"
        if "skipped" in d:
            lines += ["", heading, "", f"Not scored: {d['skipped']}."]
            continue
        noise = d.get("noise") or {}
        lines += ["", f"{heading}, positions {d['positions']}, {d['pre_contrast_frames']} before contrast", "",
                  f"Reference noise sigma_source {d['sigma_source']:.4f} (measured from the "
                  f"{noise.get('sigma_method') or '?'}; estimates {noise.get('sigma_estimates')}), degraded input "
                  f"sigma {d['sigma_total']:.4f} (normalized units); data_range {d['data_range']:.3f}. Against the "
                  f"real 3T frames even a noise-free estimate scores at most about {d['ceiling_db']:.1f} dB.", ""]
        if d.get("difference_correlation") is not None:
            c = d["difference_correlation"]
            lines += [f"Successive differences of the pre-contrast 3T frames correlate {c:+.2f} in the body (-0.50 for "
                      "noise independent between frames)" + (
                          ": neighbouring frames share more than noise (view sharing, drift or slow motion), so a 3T "
                          "frame holds part of what its neighbours hold, and gains against it favour methods that keep "
                          "that; gains against held-back frames are not clean either (they favour averaging over "
                          "time): read both." if c > SHARED_NOISE_CORRELATION else "."), ""]
        if "detail" in d:
            bands = " | ".join(f"{low:.2f}-{high:.2f}" for low, high in DETAIL_BANDS)
            lines += ["**what each method did to the anatomy** (_detail: the error common to every frame, in "
                      "sigma_source^2, noise alone leaving about its variance / T; and the fine detail of the "
                      "temporal mean kept, against the 3T frames' mean, by band in cycles per pixel)", "",
                      f"| method | common error | {bands} |", "|---|---|" + "---|" * len(DETAIL_BANDS)]
            for m, v in d["detail"].items():
                if v["common_error"] is None:
                    continue
                kept = " | ".join(f"{k:.2f}" for k in v["detail_kept"])
                lines.append(f"| {m} | {v['common_error']:.3f} | {kept} |")
            lines.append("")
        if "against_held_back" not in d:
            lines += [f"No table against held-back frames: it needs {HELD_BACK + 1} pre-contrast frames clear of "
                      f"contrast ({HELD_BACK} held back, one scored; the {PRE_CONTRAST_MARGIN} before its arrival "
                      f"are not clear), this dynamic has {d['pre_contrast_frames_used']}.", ""]
        for key, title in (("against_3t", "against the real 3T frames"),
                           ("against_held_back", "against held-back pre-contrast frames (noise no method saw)")):
            if key not in d:
                continue
            t = d[key]
            lines += [f"**{title}**" + (f" (held back: frames {t['held_back_frames']})" if "held_back_frames" in t
                                        else ""), "",
                      "| method | mean gain (dB) | worst frame: gain (dB) | frames worse than the input |",
                      "|---|---|---|---|"]
            for m, s in t["summary"].items():
                worse = ", ".join(map(str, s["frames_worse"])) or "none"
                lines.append(f"| {m} | {s['mean_gain_db']:+.2f} | {s['worst_frame']}: {s['worst_gain_db']:+.2f} | "
                             f"{worse} |")
            names = list(t["gain_db"])
            lines += ["", "| frame | input PSNR (dB) | " + " | ".join(names) + " |",
                      "|---|---|" + "---|" * len(names)]
            for i, f in enumerate(t["frames"]):
                gains = " | ".join(f"{t['gain_db'][m][i]:+.2f}" for m in names)
                lines.append(f"| {f} | {t['input_psnr_db'][i]:.2f} | {gains} |")
            lines.append("")
    return "\n".join(lines)
