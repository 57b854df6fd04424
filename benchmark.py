"""Is the model worth using? Baselines, speed and scaling, measured on the same data in the same run.

    python benchmark.py --run-dir runs/demo --data data/processed_demo --max-slices 48
    python benchmark.py --run-dir runs/demo --parts quality --methods noisy,bm3d,unet
    python benchmark.py --run-dir runs/demo --thesis-run runs/demo_thesis --parts speed,scaling

Noise level and Rician correction of the classical methods: benchmark_quality.py's docstring; their calibration:
benchmark_calibration.py's.

The 2021 thesis reported its autoencoder alone, without even the degraded input to compare with. This script
puts every restoration a researcher could already run next to each other, on the same held-out slices (the
test patients: never used for training or checkpoint selection; the validation patients only when the data has
no test split, said so in the report):
the degraded input ("noisy"), the four 2-D classical denoisers of denoisers.py (non-local means "nlm", total
variation "tv", wavelet shrinkage "wavelet", BM3D "bm3d"), the two multi-frame ones that also use the DCE time
points (BM4D over (x, y, t) "bm4d", MP-PCA over time "mppca", and "tpca", the local temporal projection the
default U-Net gets as an input channel, run alone), the thesis autoencoder ("thesis") and the default
model ("unet"). The parts, chosen with --parts (default all three), each in its own module:

benchmark_quality.py    quality, the noise the classical methods are given
benchmark_calibration.py  the classical methods' parameters, chosen on training slices
benchmark_kinetics.py   the lesion enhancement curves (with quality, on data whose DICOM tree has lesion masks)
benchmark_speed.py      speed and scaling
benchmark_report.py     benchmark.md, benchmark.png, the per-slice CSV

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
         the slice's position (bm4d) or the slab of the series' positions it depends on (mppca,
         denoisers.mppca_slab: the whole volume's output there) once and score the requested slices from it.
kinetics (part of quality) per test lesion, the relative-enhancement curve (S(t) - S0) / S0 in the lesion ROI
         for each method against the truth's: RMSE over frames, peak-enhancement error, initial-slope error
         (benchmark_kinetics.py); benchmark_kinetics.png plots truth, degraded input, the default model and
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
         so "N x faster than BM3D" is measured on the same machine in the same run; bm4d on an (x, y, t)
         stack of 4 noisy copies of the slice, reported per frame ("N x faster than BM4D"; mppca, whose cost
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

Models: --run-dir is a main.py run (config.yaml, model.keras, metrics.json); its model is "unet" (or "thesis"
when it is a thesis_autoencoder run). The thesis autoencoder is --thesis-run, or else found: the newest
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

import argparse
import json
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path

from benchmark_calibration import CALIBRATION_CROP, calibrate
from benchmark_quality import (CLASSICAL, MODELS, MULTIFRAME, BenchmarkError, Stacks, aggregate, check_noise,
                               eval_split, evaluate_quality, reference_ceilings)
from benchmark_report import data_info, machine_info, markdown, plot, quality_notes, quality_rows, write_per_slice
from benchmark_speed import preprocessing_config, scaling_child, scaling_part, speed_part
from config import ConfigError, load_run_config

METHODS = ("noisy", "nlm", "tv", "wavelet", "bm3d", "bm4d", "mppca", "tpca", "thesis", "unet", "noise2noise",
           "noise2void")
PARTS = ("quality", "speed", "scaling")


def _log(message):
    print(message, flush=True)


# -----------------------------------------------------------------------------
# runs and models

def read_run(run_dir):
    """A main.py run dir as {"dir", "cfg", "metrics", "method"} (metrics: {} when there is no metrics.json)."""
    run_dir = Path(run_dir)
    cfg_path, model_path = run_dir / "config.yaml", run_dir / "model.keras"
    for path in (cfg_path, model_path):
        if not path.is_file():
            raise BenchmarkError(f"{path} not found: give a run dir written by main.py (config.yaml + model.keras)")
    try:
        cfg = load_run_config(cfg_path)
    except ConfigError as e:
        raise BenchmarkError(f"{cfg_path}: {e}") from e
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    mode = cfg["train"]["mode"]
    method = "thesis" if cfg["model"]["name"] == "thesis_autoencoder" else "unet" if mode == "supervised" else mode
    return {"dir": run_dir, "cfg": cfg, "metrics": metrics, "method": method}


def find_thesis_run(run_dir, data_dir):
    """The newest sibling of run_dir that is a thesis_autoencoder run evaluated on data_dir, or None.

    "Evaluated on" = the data_dir main.py wrote into its metrics.json resolves to the same folder.
    """
    run_dir, data = Path(run_dir).resolve(), Path(data_dir).resolve()
    found = []
    for sibling in sorted(run_dir.parent.iterdir()):
        if sibling == run_dir or not (sibling / "model.keras").is_file():
            continue
        try:
            run = read_run(sibling)
        except (BenchmarkError, ValueError):
            continue
        recorded = run["metrics"].get("data_dir")
        if run["method"] == "thesis" and recorded and Path(recorded).resolve() == data:
            found.append(((sibling / "model.keras").stat().st_mtime, sibling))
    return max(found)[1] if found else None


def load_model(run):
    """The run's model.keras, loaded as main.py loads it."""
    import main

    return main.load_model(run["dir"] / "model.keras")


def budget(run):
    """What the run was trained with, from its config.yaml and the "train" block of its metrics.json."""
    t, done = run["cfg"]["train"], run["metrics"].get("train", {})
    return {"run_dir": str(run["dir"]), "model": run["cfg"]["model"]["name"], "epochs": t["epochs"],
            "epochs_run": done.get("epochs_run"), "steps_per_epoch": t["steps_per_epoch"],
            "batch_size": t["batch_size"], "patch_size": t["patch_size"], "augment": t["augment"],
            "learning_rate": t["learning_rate"], "loss": t["loss"], "train_seconds": done.get("seconds"),
            "train_images_per_s_with_validation": done.get("images_per_s_with_validation"),
            "data_dir": run["metrics"].get("data_dir")}


def compare_budgets(budgets):
    """A note when the runs were not trained with the same epochs, steps per epoch and batch size."""
    keys = ("epochs", "steps_per_epoch", "batch_size")
    if len(budgets) < 2 or len({tuple(b[k] for k in keys) for b in budgets.values()}) == 1:
        return None
    return "training budgets differ: " + "; ".join(
        f"{m}: " + ", ".join(f"{k} {b[k]}" for k in keys) for m, b in budgets.items())


# -----------------------------------------------------------------------------
# command line

def _int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", help="main.py run dir of the default model (config.yaml + model.keras)")
    p.add_argument("--data", help="preprocessing output (default: data_dir in the run's metrics.json)")
    p.add_argument("--thesis-run", help="run dir of the thesis autoencoder (default: a sibling run on the same data)")
    p.add_argument("--selfsup-runs", default="",
                   help="comma-separated run dirs of self-supervised runs (train.mode), scored as methods "
                        "noise2noise / noise2void on the same slices (added to --methods)")
    p.add_argument("--max-slices", type=int, default=48,
                   help="held-out (test) slices, evenly spaced, the same for every method (0: all; default 48)")
    p.add_argument("--times-per-position", type=int, default=2,
                   help="time points scored per slice position (default 2): --max-slices / this many positions, "
                        "so each BM4D stack and MP-PCA slab denoised serves this many scored slices")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--out", help="output folder (default <run-dir>/benchmark)")
    p.add_argument("--calibrate-slices", type=int, default=12,
                   help="random training slices with tissue used to pick each classical method's sigma multiplier "
                        "(0: off; default 12)")
    p.add_argument("--calibrate-stacks", type=int, default=2,
                   help="training stacks (series volumes for mppca) that calibrate the multi-frame methods, each "
                        f"registered whole and denoised on a {CALIBRATION_CROP}^2 window (default 2)")
    p.add_argument("--kinetics-lesions", type=int, default=0,
                   help="test lesions in the kinetics check, evenly spaced (0: all; default 0)")
    p.add_argument("--speed-size", type=int, default=512, help="side of the slices timed in the speed part")
    p.add_argument("--speed-steps", type=int, default=10, help="timed training steps per model and feed")
    p.add_argument("--speed-warmup", type=int, default=3, help="training steps before the clock starts")
    p.add_argument("--speed-rounds", type=int, default=2,
                   help="alternating training measurements per feed (disk, memory); the best of each is kept")
    p.add_argument("--speed-reps", type=int, default=5, help="minimum timed inference calls per batch size")
    p.add_argument("--speed-bm3d-slices", type=int, default=1, help="slices per classical method at --speed-size")
    p.add_argument("--speed-series", type=int, default=4, help="demo series preprocessed for slices/s")
    p.add_argument("--workers", type=int, default=1, help="preprocessing worker processes in the speed part")
    p.add_argument("--scaling-series", type=_int_list, default=[1, 4, 16], help="series counts to preprocess")
    p.add_argument("--scaling-slices", type=_int_list, default=[16, 64, 256], help="slice counts to infer")
    # internal: one size of the scaling part in a fresh process
    p.add_argument("--_scaling-child", choices=("preprocess", "infer"), help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--child-root", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    p.add_argument("--child-config", help=argparse.SUPPRESS)
    p.add_argument("--child-data", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._scaling_child:
        return args
    if not args.run_dir:
        p.error("--run-dir is required (a run dir written by main.py)")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.parts = [m.strip() for m in args.parts.split(",") if m.strip()]
    for name, given, known in (("--methods", args.methods, METHODS), ("--parts", args.parts, PARTS)):
        unknown = [g for g in given if g not in known]
        if unknown or not given:
            p.error(f"{name}: unknown {unknown or 'empty list'}; choose from {', '.join(known)}")
    for name in ("max_slices", "calibrate_slices", "calibrate_stacks", "kinetics_lesions"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    for name in ("times_per_position", "speed_size", "speed_steps", "speed_rounds", "speed_reps",
                 "speed_bm3d_slices", "speed_series", "workers"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.speed_warmup < 1:
        p.error("--speed-warmup must be >= 1 (the first step traces the model)")
    return args


def resolve_data_dir(args, run):
    data = args.data or run["metrics"].get("data_dir") or "data/processed"
    if not (Path(data) / "manifest.csv").is_file():
        raise BenchmarkError(f"{data}/manifest.csv not found; give --data (the --out folder of preprocessing.py)")
    return Path(data)


def run_benchmark(args):
    """All requested parts; returns the report dict (also written to --out)."""
    from data_factory import PairedSlices
    from main import setup_devices

    started = time.perf_counter()
    run = read_run(args.run_dir)
    data_dir = resolve_data_dir(args, run)
    out = Path(args.out) if args.out else run["dir"] / "benchmark"
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = out / "cache"
    max_slices = args.max_slices or None

    try:  # the run's device settings, on one device (a benchmark measures one device, not a strategy)
        setup_devices({**run["cfg"]["train"], "distribute": "none", "cpu_devices": 1})
    except RuntimeError as e:  # devices already initialized in this process (tests): keep them
        _log(f"devices: {e}")

    runs, notes = {run["method"]: run}, []
    thesis_dir = args.thesis_run or (find_thesis_run(run["dir"], data_dir) if run["method"] != "thesis" else None)
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
        if recorded and Path(recorded).resolve() != data_dir.resolve():
            notes.append(f"{method} was evaluated on {recorded}, not on {data_dir}")
    # the speed part times the supervised networks; a self-supervised U-Net runs at the same speed
    wanted_models = [m for m in MODELS if m in args.methods
                     or ("speed" in args.parts and m in runs and m in ("thesis", "unet"))]
    models = {m: (runs[m], load_model(runs[m])) for m in wanted_models if m in runs}
    budgets = {m: budget(r) for m, r in runs.items()}

    split = eval_split(data_dir)
    if split != "test":
        notes.append(f"{data_dir} has no test patients: every number is on the validation patients, on which the "
                     "networks' checkpoints were selected")
    held_out = PairedSlices(data_dir, split, batch_size=1, max_slices=max_slices,
                            times_per_position=args.times_per_position)
    report = {"date": datetime.now().isoformat(timespec="seconds"),
              "command": args.command, "methods": args.methods, "parts": args.parts,
              "machine": machine_info(), "data": data_info(data_dir, held_out.rows, held_out.image_shape, split),
              "budget": budgets, "budget_note": compare_budgets(budgets), "notes": notes}
    d = report["data"]
    _log(f"data: {d['eval_slices_used']} of {d['eval_slices_total']} {split} slices from {d['eval_patients']} "
         f"patient(s), {d['image_size'][0]}x{d['image_size'][1]}, degradation {', '.join(d['degrade_model'])}; "
         "models: " + ", ".join(f"{m} ({r['dir']})" for m, r in runs.items()))
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
    report["seconds"] = {**seconds, "total": round(time.perf_counter() - started, 1)}

    if "quality" in report:
        report["headline"] = headline(report, run["method"])

    from metrics import json_safe

    (out / "benchmark.json").write_text(json.dumps(json_safe(report), indent=2, default=str))
    text = markdown(report)
    (out / "benchmark.md").write_text(text + "\n")
    written = ["benchmark.json", "benchmark.md"]
    if "quality" in report:
        plot(report, out / "benchmark.png")
        written += ["benchmark.png", "benchmark_per_slice.csv"]
    if report.get("kinetics", {}).get("lesions"):
        from benchmark_kinetics import plot_kinetics

        plot_kinetics(report["kinetics"], kinetics_shown(report, run["method"]), out / "benchmark_kinetics.png")
        written.append("benchmark_kinetics.png")
    print()
    print(text)
    print(f"wrote {out}/: " + ", ".join(written))
    report["out"] = str(out)
    return report


def kinetics_part(args, models, data_dir, split, params, stacks):
    """The lesion enhancement curves of every requested method (benchmark_kinetics), or a note why there are none."""
    from benchmark_kinetics import find_lesions, lesion_kinetics
    from manifest import evenly_spaced

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
                         "peak_enhancement_error": kinetics["peak_enhancement_error"] if kinetics else None}
    return {"reference": "truth" if truth else "3T", "split": report["data"]["split"], "region": "body",
            "methods": methods}


def main(argv=None):
    args = parse_args(argv)
    if args._scaling_child:
        return scaling_child(args)
    args.command = "python benchmark.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    try:
        return run_benchmark(args)
    except (BenchmarkError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
