"""Is the model worth using? Baselines, speed and scaling, measured on the same data in the same run.

    python benchmark.py --run-dir runs/demo --data data/processed_demo --max-slices 48
    python benchmark.py --run-dir runs/demo --parts quality --methods noisy,bm3d,unet
    python benchmark.py --run-dir runs/demo --thesis-run runs/demo_thesis --parts speed,scaling

Noise level and Rician correction of the classical methods: breastmri/evaluate/benchmark_quality.py's docstring; their calibration:
breastmri/evaluate/benchmark_calibration.py's.

The 2021 thesis reported its autoencoder alone, without even the degraded input to compare with. This script
puts every restoration a researcher could already run next to each other, on the same held-out slices (the
test patients: never used for training or checkpoint selection; the validation patients only when the data has
no test split, said so in the report):
the degraded input ("noisy"), the four 2-D classical denoisers of breastmri/restore/denoisers.py (non-local means "nlm", total
variation "tv", wavelet shrinkage "wavelet", BM3D "bm3d"), the multi-frame ones that also use the DCE time
points (BM4D over (x, y, t) "bm4d", MP-PCA over time "mppca", "tpca", the local temporal projection the
default U-Net gets as an input channel, run alone, and "nordic", optimal-shrinkage local PCA over time), the thesis
autoencoder ("thesis") and the default
model ("unet"). The parts, chosen with --parts (default all three), each in its own module:

breastmri/evaluate/benchmark_quality.py    quality, the noise the classical methods are given
breastmri/evaluate/benchmark_calibration.py  the classical methods' parameters, chosen on training slices
breastmri/evaluate/benchmark_kinetics.py   the lesion enhancement curves (with quality, on data whose DICOM tree has lesion masks)
breastmri/evaluate/benchmark_speed.py      speed and scaling
breastmri/evaluate/benchmark_report.py     benchmark.md, benchmark.png, the per-slice CSV

quality  Test split of --data, whole slices: PairedSlices(data, "test", max_slices=N, times_per_position=K), the
         same for every method: N / K slice positions evenly spaced over the test series, K time points of
         each (data_factory.spread_slices; K = --times-per-position, default 2, because BM4D and MP-PCA denoise
         a position's whole stack in one run: the same N slices at half the runs). Per slice and method: PSNR,
         SSIM and MSE over the whole image and over the body mask, against the 3T image and, when the data has
         one (demo data), against the noise-free truth: the headline reference (metrics.whole_and_masked;
         metrics.body_mask of the truth, or of the 3T image without one), and the time the method took (ms per
         slice; the networks per batch of the run's batch_size divided by its size, after
         one warm-up batch; the classical methods one slice at a time, mostly on one core). Summary: mean and
         95% Student-t interval over *patient* means (metrics.mean_ci with groups = patient ids: slices of one
         patient are not independent), the slice-level mean and std, and the gain over the degraded input,
         paired per slice and then averaged per patient. The multi-frame methods denoise the whole stack of
         the slice's position (bm4d, tpca, nordic) or the slab of the series' positions it depends on (mppca,
         denoisers.mppca_slab: the whole volume's output there) once and score the requested slices from it.
kinetics (part of quality) per test lesion, the relative-enhancement curve (S(t) - S0) / S0 in the lesion ROI
         for each method against the truth's: RMSE over frames, peak-enhancement error, initial-slope error
         (breastmri/evaluate/benchmark_kinetics.py); benchmark_kinetics.png plots truth, degraded input, the default model and
         the best classical method by headline PSNR. The headline's peak_enhancement_error comes from it.
speed    (a) preprocessing slices/s: preprocessing.benchmark on a generated demo tree (--speed-series series of
         4 slices x 4 time points, the data's demo.matrix, resized to its preprocess.image_size), one worker.
         (b) training images/s of each model with its own config (batch, patch, augmentation), a newly built
         model compiled as main.py does, fed by PairedSlices from disk (the real pipeline) and by the same kind of
         batches preloaded as numpy arrays, alternately, --speed-rounds times each (best round kept: the
         machine may be shared); steady state = steps after --speed-warmup warm-up steps, timed from
         batch-end timestamps; "pipeline cost" = 1 - pipeline / in-memory images/s (the goal is < 10%).
         PairedSlices.__getitem__ alone is timed too (read ms per batch), to tell the cost of reading and
         cropping from the cost of Keras' PyDataset -> tf.data adapter.
         (c) inference ms per --speed-size^2 slice (default 512) for each model at batch 1 and at the run's
         batch size (median of >= --speed-reps timed calls after 2 warm-ups, predict_on_batch, host->device
         copies included), next to its FLOPs per slice (model.count_flops: 2 x conv multiply-adds) and the
         achieved GFLOP/s = FLOPs / seconds, to compare with the device's peak. The U-Net is fully
         convolutional and keeps its trained weights at any size; the thesis autoencoder has a fixed input and
         is rebuilt at 512 with untrained weights when it was trained at another size (timing only; said so).
         (d) each classical method on --speed-bm3d-slices held-out slices resized to --speed-size (cubic),
         so "N x faster than BM3D" is measured on the same machine in the same run; bm4d, tpca and nordic on
         an (x, y, t) stack of 8 noisy copies of the slice, reported per frame ("N x faster than BM4D"; mppca, whose cost
         depends on the series' shape, by its per-frame time in the quality table).
scaling  Time and peak memory as the work grows, each size in a fresh child process (`benchmark.py
         --_scaling-child ...`), so its peak RSS is its own (VmHWM from /proc/self/status: on Linux
         getrusage's ru_maxrss of a child inherits the parent's resident size at fork, which would put
         the ~600 MiB of this TensorFlow process into every child; ru_maxrss elsewhere):
         preprocessing.run on trees of --scaling-series series (default 1, 4, 16; 16 slices each) and
         inference of the run's model on --scaling-slices slices (default 16, 64, 256) of the 16-series
         output, read through a memmapped PairedSlices. Linear time shows as a constant time per slice, flat
         memory as a peak that does not grow with n. Peak RSS counts the touched pages of memory-mapped arrays
         (file-backed, reclaimable page cache), so the inference child also reports its largest anonymous
         resident memory (RssAnon from /proc, sampled after every batch): the memory the process really owns.
         At the defaults the part takes about a minute on 2 cores (most of it importing TensorFlow 3 times).

Models: --run-dir is a main.py run (config.yaml, model.keras, metrics.json; the shipped models/default has no
metrics.json, so give --data); its model is "unet" (or "thesis" when it is a thesis_autoencoder run). The real
part alone (--parts real) reads no phantom and needs no --data. The thesis autoencoder is --thesis-run, or else found: the newest
sibling run dir whose config.yaml has model.name thesis_autoencoder and whose metrics.json has the same
data_dir. Both runs' training budget (epochs, steps, batch, patch, learning rate, training seconds) goes into
the report. The thesis autoencoder takes exactly image_size^2 slices; on data of another size it is skipped
with a note rather than fed resized slices (interpolation would change the noise it is scored on).

Outputs (--out, default <run-dir>/benchmark/): benchmark.json (everything), benchmark.md (tables for the
README: header with data, degradation, budget and machine; quality, with the paired gain over the degraded
input; kinetics; speed; scaling), benchmark.png (PSNR/SSIM per method with CIs; body-mask PSNR against ms per
slice), benchmark_kinetics.png (lesion enhancement curves),
benchmark_per_slice.csv (one row per method and slice). benchmark.json's "headline" object is the number the
project is judged by: per method, body PSNR on the test split against the truth (3T without one). cache/ keeps the generated demo DICOM tree for the
speed and scaling parts between runs.

Runtime (2 shared CPU cores, 192^2 demo slices of 8 time points). The 2-D part: quality ~5 min, nearly all BM3D
(3-8 s per slice depending on the load; NLM ~0.1 s, TV and wavelet < 0.05 s, the networks 0.03-0.1 s per
slice); speed ~3 min; scaling ~1 min. The multi-frame methods cost per stack: BM4D ~33 s per 192^2 x 8-frame
stack (~4 s per frame), and with --max-slices 48 (24 positions x 2 time points) 24 stacks (~13 min); MP-PCA ~25 s per
192^2 x 8 x 8 series volume, about half that for the 5-position slab one scored slice needs (merged where
scored positions are near); the kinetics check adds one stack per test lesion and method. Use a smaller
--max-slices, or leave bm4d out of --methods, for a quick run. benchmark.json's "seconds" says where a run's
time went.
"""

import json
import time
from datetime import datetime
from pathlib import Path

from breastmri.evaluate.benchmark_calibration import calibrate
from breastmri.evaluate.benchmark_quality import (
    CLASSICAL,
    MODELS,
    MULTIFRAME,
    BenchmarkError,
    Stacks,
    aggregate,
    check_noise,
    eval_split,
    evaluate_quality,
    reference_ceilings,
)
from breastmri.evaluate.benchmark_report import (
    data_info,
    machine_info,
    markdown,
    plot,
    quality_notes,
    quality_rows,
    write_per_slice,
)
from breastmri.evaluate.benchmark_runs import (
    budget,
    compare_budgets,
    find_thesis_run,
    load_model,
    read_run,
)
from breastmri.evaluate.benchmark_speed import (
    preprocessing_config,
    scaling_part,
    speed_part,
)
from breastmri.files import write_text_atomic

METHODS = ("noisy", "nlm", "tv", "wavelet", "bm3d", "bm4d", "mppca", "tpca", "nordic", "thesis", "unet",
           "noise2noise", "noise2void")
PARTS = ("quality", "speed", "scaling", "real")


def _log(message):
    print(message, flush=True)


def resolve_data_dir(args, run):
    data = args.data or run["metrics"].get("data_dir") or "data/processed"
    if not (Path(data) / "manifest.csv").is_file():
        raise BenchmarkError(f"{data}/manifest.csv not found; give --data (the --out folder of preprocessing.py)")
    return Path(data)


def run_benchmark(args):
    """All requested parts; returns the report dict (also written to --out)."""
    from breastmri.data.paired import PairedSlices
    from breastmri.runtime import setup_devices

    started = time.perf_counter()
    run = read_run(args.run_dir)
    phantom = [p for p in args.parts if p != "real"]  # the parts that read the preprocessed phantom
    data_dir = resolve_data_dir(args, run) if phantom else None
    if args.data and not phantom:
        _log(f"--data {args.data} not read: the real part alone reads no phantom")
    out = Path(args.out) if args.out else run["dir"] / "benchmark"
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = out / "cache"
    max_slices = args.max_slices or None

    try:  # the run's device settings, on one device (a benchmark measures one device, not a strategy)
        setup_devices({**run["cfg"]["train"], "distribute": "none", "cpu_devices": 1})
    except RuntimeError as e:  # devices already initialized in this process (tests): keep them
        _log(f"devices: {e}")

    runs, notes = {run["method"]: run}, []
    thesis_dir = args.thesis_run or (find_thesis_run(run["dir"], data_dir)
                                     if run["method"] != "thesis" and phantom else None)
    if thesis_dir and run["method"] != "thesis":
        runs["thesis"] = read_run(thesis_dir)
        if runs["thesis"]["method"] != "thesis":
            raise BenchmarkError(f"--thesis-run {thesis_dir} is a {runs['thesis']['cfg']['model']['name']} run")
        if not args.thesis_run:
            notes.append(f"thesis autoencoder found next to the run: {thesis_dir}")
    for selfsup_dir in filter(None, args.selfsup_runs.split(",")):
        r = read_run(selfsup_dir)
        if r["method"] not in ("noise2noise", "noise2void"):
            raise BenchmarkError(f"--selfsup-runs {selfsup_dir} is not a self-supervised run (train.mode "
                                 f"{r['cfg']['train']['mode']})")
        runs[r["method"]] = r
        if r["method"] not in args.methods:  # a run named is a run scored
            args.methods.append(r["method"])
    for method, r in runs.items():
        recorded = r["metrics"].get("data_dir")
        if recorded and phantom and Path(recorded).resolve() != data_dir.resolve():
            notes.append(f"{method} was evaluated on {recorded}, not on {data_dir}")
    # the speed part times the supervised networks; a self-supervised U-Net runs at the same speed
    wanted_models = [m for m in MODELS if m in args.methods
                     or ("speed" in args.parts and m in runs and m in ("thesis", "unet"))]
    models = {m: (runs[m], load_model(runs[m])) for m in wanted_models if m in runs} if phantom else {}
    budgets = {m: budget(r) for m, r in runs.items()}

    report = {"date": datetime.now().isoformat(timespec="seconds"),
              "command": args.command, "methods": args.methods, "parts": args.parts,
              "machine": machine_info(), "data": None,  # None: real data only, no phantom read
              "budget": budgets, "budget_note": compare_budgets(budgets), "notes": notes}
    if phantom:
        split = eval_split(data_dir)
        if split != "test":
            notes.append(f"{data_dir} has no test patients: every number is on the validation patients, on which "
                         "the networks' checkpoints were selected")
        held_out = PairedSlices(data_dir, split, batch_size=1, max_slices=max_slices,
                                times_per_position=args.times_per_position)
        d = report["data"] = data_info(data_dir, held_out.rows, held_out.image_shape, split)
        _log(f"data: {d['eval_slices_used']} of {d['eval_slices_total']} {split} slices from {d['eval_patients']} "
             f"patient(s), {d['image_size'][0]}x{d['image_size'][1]}, degradation {', '.join(d['degrade_model'])}")
    _log("models: " + ", ".join(f"{m} ({r['dir']})" for m, r in runs.items()))
    classical = [m for m in args.methods if m in CLASSICAL + MULTIFRAME]
    scales = {}
    # wall seconds of each step (and of everything up to the report, "total"), so a run says where its time went
    seconds, clock = {}, time.perf_counter()

    def lap(name):
        nonlocal clock
        seconds[name] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()

    if "quality" in args.parts:
        noise = check_noise(data_dir)
        if noise["mean_ratio"] is not None:
            _log(f"noise check: measured / predicted pixel std of the added noise = {noise['mean_ratio']:.3f}")
        scales, table, calib_note, calibration = calibrate(classical, data_dir, args.calibrate_slices,
                                                           seed=run["cfg"]["seed"], n_stacks=args.calibrate_stacks)
        lap("calibration")
        stacks = Stacks(data_dir, scales)  # shared by quality and kinetics: each stack is denoised once
        quality_models = {m: v for m, v in models.items() if m in args.methods}
        rows, skipped = evaluate_quality(args.methods, quality_models, data_dir, max_slices, scales, split=split,
                                         stacks=stacks, times_per_position=args.times_per_position)
        if not rows:
            raise BenchmarkError("no method produced any result; check --methods")
        write_per_slice(rows, out / "benchmark_per_slice.csv")
        summary = aggregate(rows)
        ceilings = reference_ceilings(data_dir, split, max_slices, args.times_per_position)
        q_notes = quality_notes(report, noise, scales, table, calib_note, summary, skipped, classical,
                                args.calibrate_slices, rows)
        report["quality"] = {"summary": summary, "skipped": skipped, "noise": noise, "sigma_scales": scales,
                             "calibration": table, "calibration_slices": args.calibrate_slices,
                             "calibration_record": calibration, "ceilings": ceilings, "notes": q_notes}
        lap("quality")
        report["kinetics"] = kinetics_part(args, quality_models, data_dir, split, scales, stacks)
        lap("kinetics")
    if "speed" in args.parts:
        supervised = {m: v for m, v in models.items() if m in ("thesis", "unet")}
        report["speed"] = speed_part(args, supervised, data_dir, preprocessing_config(run, data_dir), cache_dir,
                                     classical, scales)
        lap("speed")
    if "scaling" in args.parts:
        report["scaling"] = scaling_part(args, run, preprocessing_config(run, data_dir), cache_dir)
        lap("scaling")
    if "real" in args.parts:
        from breastmri.evaluate.benchmark_real import real_part

        report["real"] = real_part(args.real_data, run, args.real_methods, args.real_positions, args.real_filter, _log,
                                   args.real_chunk)
        lap("real")
    report["seconds"] = {**seconds, "total": round(time.perf_counter() - started, 1)}

    if "quality" in report:
        report["headline"] = headline(report, run["method"])

    from breastmri.metrics import json_safe

    write_text_atomic(out / "benchmark.json", json.dumps(json_safe(report), indent=2, default=str))
    text = markdown(report)
    if "real" in report:
        from breastmri.evaluate.benchmark_real import markdown as real_markdown

        text += "\n\n" + real_markdown(report["real"])
    write_text_atomic(out / "benchmark.md", text + "\n")
    written = ["benchmark.json", "benchmark.md"]
    if "quality" in report:
        plot(report, out / "benchmark.png")
        written += ["benchmark.png", "benchmark_per_slice.csv"]
    if report.get("kinetics", {}).get("lesions"):
        from breastmri.evaluate.benchmark_kinetics import plot_kinetics

        plot_kinetics(report["kinetics"], kinetics_shown(report, run["method"]), out / "benchmark_kinetics.png")
        written.append("benchmark_kinetics.png")
    print()
    print(text)
    print(f"wrote {out}/: " + ", ".join(written))
    report["out"] = str(out)
    return report


def kinetics_part(args, models, data_dir, split, params, stacks):
    """The lesion enhancement curves of every requested method (benchmark_kinetics), or a note why there are none."""
    from breastmri.data.manifest import evenly_spaced
    from breastmri.evaluate.benchmark_kinetics import find_lesions, lesion_kinetics

    lesions, note = find_lesions(data_dir, split)
    if note:
        _log(note)
        return {"lesions": [], "summary": {}, "note": note}
    total = len(lesions)
    if args.kinetics_lesions:
        lesions = [lesions[i] for i in evenly_spaced(total, args.kinetics_lesions)]
    _log(f"kinetics: {len(lesions)} of {total} {split} lesions, {len(args.methods)} methods")
    result = lesion_kinetics(args.methods, models, data_dir, lesions, params, stacks, split=split)
    result["n_lesions_total"] = total
    return result


def kinetics_shown(report, default_model):
    """Methods drawn in benchmark_kinetics.png: the degraded input, the default model, the best classical method
    by headline body PSNR."""
    methods = report.get("headline", {}).get("methods", {})
    classical = [m for m, v in methods.items() if v["kind"] == "classical" and not m.endswith("_gauss")]
    best = max(classical, key=lambda m: methods[m]["psnr"], default=None)
    return [m for m in ("noisy", default_model, best) if m]


def headline(report, default_model):
    """The number the project is judged by, per method: body PSNR on the held-out split against the truth (the
    3T image when the data has no truth), with its patient-level CI, SSIM and the speed at 512^2."""
    truth = report["data"].get("truth")
    region = "truth_masked" if truth else "masked"
    speed = report.get("speed", {})
    methods = {}
    for name in quality_rows(report):
        s = report["quality"]["summary"].get(name)
        if s is None:
            continue
        base = name.removesuffix("_gauss")
        ms = None
        if base in MODELS:
            inference = speed.get("models", {}).get(base, {}).get("inference", [])
            ms = next((i["ms_per_slice"] for i in inference if i["size"] == 512 and i["batch"] == 1), None)
        elif base in speed.get("classical", {}) and speed["classical"][base]["size"] == 512:
            ms = speed["classical"][base]["ms_per_slice"]
        psnr = s[region]["psnr"]
        kinetics = report.get("kinetics", {}).get("summary", {}).get(name)
        methods[name] = {"kind": "input" if name == "noisy" else "model" if base in MODELS else "classical",
                         "default": name == default_model, "psnr": psnr["mean"],
                         "psnr_ci": [psnr["ci_low"], psnr["ci_high"]], "ssim": s[region]["ssim"]["mean"],
                         "ms_per_slice_512": ms,
                         "peak_enhancement_error": kinetics["peak_enhancement_error"] if kinetics else None,
                         "ktrans_error": kinetics.get("ktrans_error") if kinetics else None}
    return {"reference": "truth" if truth else "3T", "split": report["data"]["split"], "region": "body",
            "methods": methods}
