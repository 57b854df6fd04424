"""benchmark.py's report: the machine and data header, benchmark.md's tables, the figures and the per-slice CSV.

benchmark.md: a header (data, degradation, training budget, machine), then one section per part that ran:
quality (one table per reference, the paired gain over the degraded input, the reference ceilings), kinetics
(per method the lesion enhancement-curve errors), speed, scaling; quality_notes writes the sentences under the
quality table (how the classical methods were run, calibrated, and what fell back or was skipped). benchmark.png: PSNR/SSIM per method with CIs
and body PSNR against ms per slice. benchmark_kinetics.png: benchmark_kinetics.plot_kinetics.
"""

import json
import math
import os
import platform
from collections import Counter
from pathlib import Path

import numpy as np

from breastmri.evaluate.benchmark_calibration import CALIBRATION_CROP
from breastmri.evaluate.benchmark_quality import FALLBACK_2D, MULTIFRAME, REGISTER
from breastmri.files import save_figure_atomic, write_csv

# -----------------------------------------------------------------------------
# header

def machine_info():
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "cpu": platform.processor() or platform.machine()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import keras
    import tensorflow as tf

    info.update({"tensorflow": tf.__version__, "keras": keras.__version__})
    gpus = tf.config.list_physical_devices("GPU")
    names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
    info["device"] = ", ".join(names) if names else "CPU"
    return info


def data_info(data_dir, eval_rows, image_shape, split):
    """Which data and which degradation, from the manifest rows and the data's summary.json."""
    from breastmri.data.manifest import read_manifest

    every = read_manifest(data_dir)
    split_all = [r for r in every if r["split"] == split]
    positions = Counter((r["series_uid"], r.get("position_index", r["slice_index"])) for r in eval_rows)

    def mean_of(key):
        values = [r[key] for r in eval_rows if r.get(key) is not None]
        return float(np.mean(values)) if values else None

    summary_path = Path(data_dir) / "summary.json"
    recorded = json.loads(summary_path.read_text()).get("config", {}) if summary_path.is_file() else {}
    return {"data_dir": str(data_dir), "image_size": list(image_shape), "split": split,
            "acquisition_matrix": sorted({f"{r['rows']}x{r['cols']}" for r in eval_rows if r.get("rows")}),
            "eval_slices_used": len(eval_rows), "eval_slices_total": len(split_all),
            "eval_patients": len({r["patient_id"] for r in eval_rows}),
            "eval_positions": len(positions), "eval_times_per_position": max(positions.values(), default=0),
            "truth": all(r.get("truth_file") for r in eval_rows),
            "train_slices": sum(r["split"] == "train" for r in every),
            "degrade_model": sorted({r.get("degrade_model") or "unknown" for r in eval_rows}),
            "degrade_config": recorded.get("degrade"), "snr_ratio": mean_of("snr_ratio"),
            "sigma_source": mean_of("sigma_source"), "sigma_added": mean_of("sigma_added")}


def quality_notes(report, noise, scales, table, calib_note, summary, skipped, classical, n_calibration, rows=()):
    """The sentences under the quality table: how the classical methods were run and what was skipped.
    classical: the 2-D and multi-frame classical methods run; rows: the per-slice rows (for fallbacks)."""
    notes = list(report["notes"])
    models = report["data"]["degrade_model"]
    if classical:
        if "field" in models:
            notes.append("classical methods: sigma_pixel = g x sqrt(sigma_source² + sigma_added²) (g: noise std "
                         "gain of the resize), Rician mean inverted with the acquisition-resolution sigma, "
                         "clean floor re-applied at sigma_source; '_gauss' rows: the same run without the "
                         "Rician correction")
        else:
            notes.append("classical methods: sigma_pixel = g x sigma_added (additive Gaussian noise, no Rician "
                         "correction; g: noise std gain of the resize)")
        gain = noise["slices"][0]["resize_std_gain"] if noise["slices"] else None
        if noise["mean_ratio"] is not None:
            notes.append(f"noise check on {len(noise['slices'])} slices: g = {gain:.3f}; measured std of "
                         f"(noisy - clean) in tissue / (g x sigma_added) = {noise['mean_ratio']:.3f}")
        if table:
            reference = "the noise-free truth" if report["data"].get("truth") else "the 3T image"
            notes.append(f"parameter per method, best body PSNR against {reference} on {n_calibration} "
                         "random training slices with tissue (multi-frame methods: the stacks of the first of them, "
                         f"a {CALIBRATION_CROP}² window, registered on the whole slices; seeded; listed in "
                         "benchmark.json): "
                         + ", ".join(f"{m} {'patch radius' if m == 'mppca' else 'sigma x'} {s:g}"
                                     for m, s in scales.items() if m in table))
        multiframe = [m for m in classical if m in MULTIFRAME]
        if multiframe:
            notes.append("multi-frame methods: bm4d over the (x, y, t) stack of the slice's position, mppca over the "
                         "series' (x, y, z, t) volume (sigma estimated by MP-PCA itself), tpca (the default U-Net's "
                         "temporal projection alone) and nordic (optimal-shrinkage local PCA, NORDIC, given sigma) "
                         "over the (x, y, t) stack, each stack denoised once"
                         + ("; every frame registered onto the first of its slice position (rigid, in-plane) and "
                            "the output moved back, as the default U-Net's projection does" if REGISTER else "")
                         + "; ms per slice = the stack's run divided by its frames")
            fallbacks = {}
            for r in rows:
                if r.get("fallback") and r["method"] in multiframe:
                    fallbacks[r["method"]] = fallbacks.get(r["method"], 0) + 1
            for method, n in fallbacks.items():
                notes.append(f"{method}: {n} slice(s) of series with one time point fell back to {FALLBACK_2D}")
        if report["data"].get("truth") and "field" in models:
            notes.append("against the truth the classical methods are scored on their amplitude estimate (Rician "
                         "mean inverted); against the 3T image on the same estimate with the 3T image's own Rician "
                         "floor put back (its air is not zero)")
        elif calib_note:
            notes.append(calib_note)
        effects = []
        for method in classical:
            corrected, plain = summary.get(method), summary.get(f"{method}_gauss")
            if corrected and plain:
                whole = corrected["whole"]["psnr"]["mean"] - plain["whole"]["psnr"]["mean"]
                body = corrected["masked"]["psnr"]["mean"] - plain["masked"]["psnr"]["mean"]
                effects.append(f"{method} {whole:+.2f} / {body:+.2f}")
        if effects:
            notes.append("Rician correction, PSNR corrected - uncorrected (whole / body, dB): " + ", ".join(effects))
    for method, reason in skipped.items():
        if method not in report["methods"]:  # requested methods show their reason in their own row
            notes.append(f"{method} skipped: {reason}")
    return notes


def _num(value, digits=2, scientific=False, sign=False):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:{'+' if sign else ''}.{digits}{'e' if scientific else 'f'}}"


def ci_cell(ci, digits, scientific=False, sign=False):
    """'mean [low, high]' of a metrics.mean_ci, or the mean alone when there is no interval (one patient); sign:
    '+' before positive numbers (a difference)."""
    if ci is None:
        return "—"
    mean = _num(ci["mean"], digits, scientific, sign)
    if ci.get("ci_low") is None or not math.isfinite(ci["ci_low"]):
        return mean
    return f"{mean} [{_num(ci['ci_low'], digits, scientific, sign)}, {_num(ci['ci_high'], digits, scientific, sign)}]"


def _ms(value):
    if value is None or value == 0:  # 0: the degraded input, nothing to run
        return "—"
    return f"{value:.0f}" if value >= 10 else f"{value:.2f}"


def quality_rows(report):
    """Method names in table order: requested methods, each followed by its _gauss variant."""
    names = []
    for method in report["methods"]:
        names.append(method)
        if f"{method}_gauss" in report["quality"]["summary"]:
            names.append(f"{method}_gauss")
    return names


def _data_lines(d):
    """The header's data and degradation lines of a report's phantom `data` (data_info)."""
    deg = d.get("degrade_config") or {}
    if "field" in d["degrade_model"]:
        degradation = (f"field model (Rician), {deg.get('source_field_t', '?')} T -> {deg.get('target_field_t', '?')} "
                       f"T, SNR ratio {_num(d['snr_ratio'], 3)}")
    else:
        degradation = f"{', '.join(d['degrade_model'])} model (additive Gaussian, the thesis)"
    return [
        f"- **Data**: `{d['data_dir']}`, {d['split']} split: {d['eval_slices_used']} of {d['eval_slices_total']} "
        f"slices ({d.get('eval_positions', '?')} slice positions evenly spaced, each at up to "
        f"{d.get('eval_times_per_position', '?')} time point(s)) from "
        f"{d['eval_patients']} patient(s), {d['image_size'][0]}x{d['image_size'][1]} "
        f"(acquired {', '.join(d['acquisition_matrix']) or '?'}); {d['train_slices']} training slices.",
        f"- **Degradation**: {degradation}; mean sigma_source {_num(d['sigma_source'], 4)}, sigma_added "
        f"{_num(d['sigma_added'], 4)} (normalized units, acquisition resolution)."]


def markdown(report):
    """benchmark.md: a header (data, degradation, budget, machine) and one table per part that ran."""
    d, m = report["data"], report["machine"]
    lines = ["# Benchmark: restoring simulated 1.5T from 3T breast MRI", ""] + (_data_lines(d) if d else [
        "- **Data**: real data only (the real part below); no phantom read."]) + [
        f"- **Machine**: {m['platform']}, {m['cpus_usable']} of {m['cpu_count']} CPUs ({m['cpu']}), "
        f"device {m['device']}, TensorFlow {m['tensorflow']}, Keras {m['keras']}, Python {m['python']}.",
        f"- **Run**: {report['date']}, `{report['command']}`."]
    if report.get("seconds"):
        lines.append("- **Wall time** (s): " + ", ".join(f"{k} {v:g}" for k, v in report["seconds"].items()) + ".")
    lines.append("")

    if report["budget"]:
        lines += ["## Training budget", "",
                  "| Model | Run | Epochs (run) | Steps/epoch | Batch | Patch | LR | Loss | Training s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for method, b in report["budget"].items():
            lines.append(f"| {method} | `{b['run_dir']}` | {b['epochs']} ({b['epochs_run'] or '?'}) | "
                         f"{b['steps_per_epoch'] or 'one pass'} | {b['batch_size']} | {b['patch_size'] or 'whole'} | "
                         f"{b['learning_rate']:g} | {b['loss']} | {_num(b['train_seconds'], 1)} |")
        if report.get("budget_note"):
            lines += ["", f"Note: {report['budget_note']}."]
        lines.append("")

    if "quality" in report:
        q = report["quality"]
        n = max((s["n_patients"] for s in q["summary"].values()), default=0)
        interval = (f"Mean [95% CI over {n} patient means, Student t]" if n > 1 else
                    "Mean (one patient: no confidence interval)")
        split = d["split"]
        lines += ["## Quality", "",
                  f"{interval} on the {split} slices ({'patients never used for training or checkpoint selection' if split == 'test' else 'NO test patients: these are the checkpoint-selection patients'}); "
                  "'body' = inside the body mask (of the truth when there is one, else of the 3T image); 'gain' = "
                  "method - degraded input on the same slice (paired, then averaged per patient). ms per slice on "
                  "this machine (classical methods on one slice at a time, networks per batch).", ""]
        blocks = [("truth", "truth_", "against the noise-free truth (the headline)")] if d.get("truth") else []
        blocks.append(("3T", "", "against the 3T image (itself noisy: see docs/metrics.md on ceilings)"))
        for label, prefix, title in blocks:
            lines += [f"### {label} reference: {title}", "",
                      "| Method | PSNR body (dB) | SSIM body | Gain, PSNR body (dB) | PSNR (dB) | SSIM | MSE | "
                      "ms / slice |", "|---|---|---|---|---|---|---|---|"]
            for name in quality_rows(report):
                s = q["summary"].get(name)
                if s is None:
                    lines.append(f"| {name} | skipped: {q['skipped'].get(name, 'not run')} |  |  |  |  |  |  |")
                    continue
                w, k = s[f"{prefix}whole"], s[f"{prefix}masked"]
                gain = (ci_cell(s["gain_vs_noisy"][f"{prefix}masked"]["psnr"], 2) if "gain_vs_noisy" in s
                        else "—")
                lines.append(f"| {name} | {ci_cell(k['psnr'], 2)} | {ci_cell(k['ssim'], 3)} | {gain} | "
                             f"{ci_cell(w['psnr'], 2)} | {ci_cell(w['ssim'], 3)} | {ci_cell(w['mse'], 2, True)} | "
                             f"{_ms(s['ms_per_slice'])} |")
            lines.append("")
        c = q.get("ceilings")
        if c:
            lines += [f"References, on the same {c['n_slices']} slices (body PSNR, dB): the degraded input scores "
                      f"{c['input_vs_truth']:.2f} against the truth and {c['input_vs_3t']:.2f} against the 3T image. "
                      f"The 3T image itself scores {c['3t_vs_truth']:.2f} against the truth (+{c['gain_3t_vs_truth']:.2f}"
                      f": 3T quality); against the 3T image the truth scores {c['truth_vs_3t']:.2f} "
                      f"(+{c['gain_truth_vs_3t']:.2f}) and the MMSE estimate of the 3T image {c['mmse_vs_3t']:.2f} "
                      f"(+{c['gain_mmse_vs_3t']:.2f}), which keeps part of the noise.", ""]
        lines += ["Notes:"]
        for note in q["notes"]:
            lines.append(f"- {note}")
        lines.append("")

    k = report.get("kinetics")
    if k is not None:
        lines += ["## Kinetics: lesion enhancement curves", ""]
        if not k.get("lesions"):
            lines += [k.get("note") or "No lesion to check.", ""]
        else:
            peaks = [max(e["truth"]) for e in k["lesions"]]
            lines += [f"{len(k['lesions'])} of {k['n_lesions_total']} test lesions (ROI: the lesion mask at its largest "
                      "cross-section, all frames of that slice position); relative enhancement RE(t) = (S(t) - S0) / S0 "
                      f"in the ROI (S0: pre-contrast mean), truth peak RE {100 * min(peaks):.0f}-{100 * max(peaks):.0f}%. "
                      "RMSE over frames in percentage points; peak error = |peak RE - truth's| / truth's, mean over "
                      "lesions (signed mean beside it); slope = initial wash-in (first post- vs last pre-contrast "
                      "frame), mean relative |error|. Ktrans and ve: voxelwise extended Tofts fits in the ROI (the "
                      "visit's AIF), median |error| against the same fit of the truth / its median, mean over "
                      "lesions; lesion PSNR: the ROI's voxels over every frame against the truth. Curves: "
                      "benchmark_kinetics.png.", "",
                      "| Method | Lesions | RE RMSE (pp) | Peak-enhancement error | Signed | Initial-slope error "
                      "| Ktrans error | ve error | Lesion PSNR (dB) |",
                      "|---|---|---|---|---|---|---|---|---|"]

            def cell(value, fmt):
                return "—" if value is None else fmt.format(value)

            for name, e in k["summary"].items():
                lines.append(f"| {name} | {e['n_lesions']} | {100 * e['rmse']:.2f} | {100 * e['peak_enhancement_error']:.1f}% "
                             f"| {100 * e['peak_error_signed']:+.1f}% | {100 * e['slope_error']:.1f}% "
                             f"| {cell(e.get('ktrans_error'), '{:.1%}')} | {cell(e.get('ve_error'), '{:.1%}')} "
                             f"| {cell(e.get('lesion_psnr'), '{:.2f}')} |")
            diffs = [e["export_max_abs_diff"] for e in k["lesions"] if e.get("export_max_abs_diff") is not None]
            if diffs:
                lines += ["", f"Truth curve check: the preprocessed truth in the ROI against the generator's exported "
                          f"curve, largest difference {max(diffs):.2e} (RE units)."]
            lines.append("")

    if "speed" in report:
        s = report["speed"]
        p = s["preprocessing"]
        lines += ["## Speed", "", "| Step | Model / method | Size | Throughput | ms / slice | GFLOP / slice | "
                  "GFLOP/s | Note |", "|---|---|---|---|---|---|---|---|",
                  f"| preprocessing | — | {p['matrix']}² -> {p['image_size']}² | {p['slices_per_s']:.1f} slices/s | "
                  f"{_ms(1000 / p['slices_per_s'])} |  |  | {p['series']} series, {p['slices']} slices, "
                  f"{p['workers']} worker(s), indexing included |"]
        for method, e in s["models"].items():
            tr = e.get("training")
            if tr:
                lines.append(f"| training, data pipeline | {method} | {tr['input']} x {tr['batch_size']} | "
                             f"{tr['pipeline_images_per_s']:.1f} images/s |  |  |  | PairedSlices from disk, "
                             f"{tr['workers']} worker(s) |")
                lines.append(f"| training, arrays in memory | {method} | {tr['input']} x {tr['batch_size']} | "
                             f"{tr['in_memory_images_per_s']:.1f} images/s |  |  |  | pipeline cost "
                             f"{tr['pipeline_cost']:.0%} (goal < 10%); reading a batch: "
                             f"{tr['read_ms_per_batch']:.0f} of {tr['step_ms_in_memory']:.0f} ms per step |")
            elif e.get("training_skipped"):
                lines.append(f"| training | {method} |  |  |  |  |  | skipped: {e['training_skipped']} |")
            for inf in e.get("inference", []):
                speedup, speedup4 = inf.get("speedup_vs_bm3d"), inf.get("speedup_vs_bm4d")
                context = e.get("context")
                note = e["weights"] + (
                    f"; network {_ms(inf['ms_per_slice_network'])} + input stacks {_ms(context['ms_per_slice'])} "
                    f"(context of {context['frames']} frames per position)" if context else "") + (
                    f"; {speedup:.0f}x faster than BM3D" if speedup else "") + (
                    f", {speedup4:.0f}x faster than BM4D per frame" if speedup4 else "")
                lines.append(f"| inference | {method} | {inf['size']}² x {inf['batch']} |  | "
                             f"{_ms(inf['ms_per_slice'])} | {inf['gflops_per_slice']:.2f} | "
                             f"{inf['gflop_per_s']:.1f} | {note} |")
            if e.get("inference_skipped"):
                lines.append(f"| inference | {method} |  |  |  |  |  | skipped: {e['inference_skipped']} |")
        for method, c in s["classical"].items():
            how = (f"per frame of a {c['frames_per_run']}-frame run" if c.get("frames_per_run") else "per slice")
            lines.append(f"| denoising | {method} | {c['size']}² |  | {_ms(c['ms_per_slice'])} |  |  | "
                         f"{c['slices']} slice(s), {how}, Gaussian run + Rician correction |")
        for note in s["notes"]:
            lines.append(f"\nNote: {note}.")
        lines += ["", "Training throughput is the best of --speed-rounds alternating measurements per feed; on a "
                  "machine shared with other work, differences of 10-20% can be load, not pipeline: the read time "
                  "per batch (PairedSlices alone) against the step time is the steadier measure of reading cost.", ""]

    if "scaling" in report:
        sc = report["scaling"]
        lines += ["## Scaling", "",
                  f"Each size in a fresh process. Preprocessing: demo series of {sc['series_slices']} slices, "
                  f"{sc['matrix']}² -> {sc['image_size']}². Inference: the run's model through a memmapped "
                  "PairedSlices. Peak RSS includes touched pages of memory-mapped files (page cache); "
                  "'anon' is the process's own memory.", "",
                  "| Part | n | Slices | Seconds | ms / slice | Peak RSS (MiB) | Peak anon (MiB) |",
                  "|---|---|---|---|---|---|---|"]
        for e in sc["preprocess"]:
            lines.append(f"| preprocessing | {e['n_series']} series | {e['slices']} | {e['seconds']:.2f} | "
                         f"{_ms(e['ms_per_slice'])} | {e['peak_rss_mib']:.0f} | — |")
        for e in sc["infer"]:
            lines.append(f"| inference | {e['n_slices']} slices | {e['slices']} | {e['seconds']:.2f} | "
                         f"{_ms(e['ms_per_slice'])} | {e['peak_rss_mib']:.0f} | "
                         f"{_num(e.get('peak_anon_rss_mib'), 0)} |")
        for kind, label in (("preprocess", "preprocessing"), ("infer", "inference")):
            ratio = sc.get(f"{kind}_time_per_slice_ratio")
            if ratio is not None:
                lines.append(f"\n{label}: time per slice at the largest size / smallest = {ratio:.2f} "
                             f"(1 = linear); peak RSS grows by {sc[f'{kind}_peak_rss_growth_mib']:.0f} MiB.")
        for note in sc.get("notes", []):
            lines.append(f"\nNote: {note}.")
        lines.append("")
    return "\n".join(lines)


def plot(report, out_png):
    """benchmark.png: (left) PSNR (bars) and SSIM (markers, right axis) per method with 95% CIs;
    (right) body-mask PSNR against ms per slice, log x (the degraded input as a dashed line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    summary = report["quality"]["summary"]
    names = [n for n in quality_rows(report) if n in summary]
    prefix = "truth_" if report["data"].get("truth") else ""  # the headline reference
    reference = "noise-free truth" if prefix else "3T image"

    def value_err(ci):
        """(mean, half-width of the CI); the half-width is NaN (no error bar drawn) without an interval."""
        mean = ci["mean"] if ci["mean"] is not None else np.nan
        low, high = ci.get("ci_low"), ci.get("ci_high")
        if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
            return mean, np.nan
        return mean, (high - low) / 2

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    x = np.arange(len(names))
    for offset, region, label, color in ((-0.2, "whole", "PSNR whole", "#9ecae1"),
                                         (0.2, "masked", "PSNR body", "#3182bd")):
        vals = [value_err(summary[n][prefix + region]["psnr"]) for n in names]
        left.bar(x + offset, [v for v, _ in vals], 0.4, yerr=[e for _, e in vals], capsize=3, color=color,
                 label=label, error_kw={"ecolor": "#636363", "elinewidth": 1})
    psnrs = [summary[n][prefix + r]["psnr"]["mean"] for n in names for r in ("whole", "masked")]
    finite = [p for p in psnrs if p is not None and math.isfinite(p)]
    if finite:
        left.set_ylim(min(finite) - 3, max(finite) + 2)
    left.set_ylabel("PSNR (dB)")
    left.set_xticks(x, names, rotation=30, ha="right")
    twin = left.twinx()
    for offset, region, marker in ((-0.1, "whole", "o"), (0.3, "masked", "D")):  # off the bars' error bars
        vals = [value_err(summary[n][prefix + region]["ssim"]) for n in names]
        twin.errorbar(x + offset, [v for v, _ in vals], yerr=[e for _, e in vals], fmt=marker, color="black",
                      capsize=3, markersize=5, label=f"SSIM {'whole' if region == 'whole' else 'body'}")
    twin.set_ylabel("SSIM")
    handles = left.get_legend_handles_labels()
    extra = twin.get_legend_handles_labels()
    fig.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=8, loc="lower left", ncol=4,
               bbox_to_anchor=(0.01, 0.0))
    n_patients = max(s["n_patients"] for s in summary.values())
    left.set_title(f"Quality vs {reference}, {report['data']['split']} split (95% CI over {n_patients} patients)"
                   if n_patients > 1 else f"Quality vs {reference} (one patient: no confidence interval)",
                   fontsize=10)

    colors = {}
    for name in names:
        s = summary[name]
        mean, err = value_err(s[prefix + "masked"]["psnr"])
        if name == "noisy" or s["ms_per_slice"] <= 0:
            right.axhline(mean, color="gray", linestyle="--", linewidth=1)
            right.text(0.99, mean, "degraded input ", transform=right.get_yaxis_transform(), va="bottom",
                       ha="right", fontsize=8, color="gray")
            continue
        # an uncorrected "_gauss" variant: hollow marker in its method's colour, label on the left
        base = name.removesuffix("_gauss")
        color = colors.setdefault(base, f"C{len(colors)}")
        variant = name != base
        right.errorbar(s["ms_per_slice"], mean, yerr=None if math.isnan(err) else err, fmt="o", capsize=3,
                       color=color, markerfacecolor="none" if variant else color)
        right.annotate(name, (s["ms_per_slice"], mean), textcoords="offset points", xytext=(-6 if variant else 6, 0),
                       ha="right" if variant else "left", va="center", fontsize=8, color=color)
    right.set_xscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    right.xaxis.set_major_formatter(plain)
    right.xaxis.set_minor_locator(matplotlib.ticker.LogLocator(subs=(2.0, 5.0)))
    right.xaxis.set_minor_formatter(plain)
    right.margins(x=0.15)  # room for the labels left and right of the outermost points
    right.set_xlabel("ms per slice (log scale)")
    right.set_ylabel(f"PSNR in the body mask vs {reference} (dB)")
    right.set_title("Quality against time", fontsize=10)
    right.grid(True, which="both", alpha=0.3)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    save_figure_atomic(fig, out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)


def write_per_slice(rows, path):
    columns = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    write_csv(rows, path, columns)
