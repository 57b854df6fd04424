"""benchmark.py's speed and scaling parts: how fast is each step, and does time and memory grow linearly?

speed    preprocessing slices/s on a generated demo tree; training images/s of each model (PairedSlices from
         disk against the same batches in memory); inference ms per --speed-size^2 slice of each model (FLOPs
         and GFLOP/s beside it); each classical method per --speed-size^2 slice on validation slices resized
         with cubic interpolation, the multi-frame ones per frame of an (x, y, t) stack of
         MULTIFRAME_SPEED_FRAMES frames of one slice position, so "N x faster than BM3D / BM4D" is measured on one machine in one run.
scaling  time and peak memory of preprocessing and inference as the work grows, each size in a fresh child
         process (`benchmark.py --_scaling-child ...`), so that its peak RSS is its own.
See benchmark.py's docstring for what each number means and how long it takes.
"""

import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from breastmri.config import ConfigError, load_config
from breastmri.evaluate.benchmark_quality import (
    MULTIFRAME,
    BenchmarkError,
    classical_denoise,
    eval_split,
    multiframe_denoise,
    noise_levels,
)

# Demo series for the speed and scaling parts: small, so that 16 series (256 slices) stay quick.
DEMO_SLICES, DEMO_TIME_POINTS = 4, 4
CHILD_TIMEOUT_S = 600
# Frames of the stack the multi-frame methods are timed on. BM4D's cost per frame falls with the frames up to ~8,
# then stays (seconds per 192^2 frame on 2 cores, measured once: 5.8 with 2 frames, 3.8 with 4, 1.7 with 8,
# 1.9 with 16, 1.7 with 25, QIN-BREAST's time points): 8 is the demo's time points and within 10% of 25, where
# 4 frames doubled BM4D's figure. One run at 512^2 takes ~1.5 min.
MULTIFRAME_SPEED_FRAMES = 8
BENCHMARK_PY = Path(__file__).resolve().parents[2] / "benchmark.py"


def _log(message):
    print(message, flush=True)


# -----------------------------------------------------------------------------
# speed

def _median_seconds(fn, min_reps, min_seconds=1.0, max_reps=50):
    """Median wall time of fn() over at least min_reps calls (more, up to max_reps, until min_seconds)."""
    times, total = [], 0.0
    while len(times) < min_reps or (total < min_seconds and len(times) < max_reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        total += times[-1]
    return float(np.median(times)), len(times)


def time_inference(model, size, batch, min_reps):
    """ms per size x size slice at this batch size, after 2 warm-up calls, over at least min_reps slices' worth
    of timed calls (and at least 2: a batch of 16 at 512^2 takes ~6 s a call on 2 cores); with FLOPs and
    GFLOP/s."""
    from breastmri.restore.networks import count_flops

    channels = model.inputs[0].shape[-1] or 1  # a context model takes the target slice and its context
    x = np.random.default_rng(0).random((batch, size, size, channels), dtype=np.float32)
    for _ in range(2):
        model.predict_on_batch(x)
    seconds, reps = _median_seconds(lambda: model.predict_on_batch(x), max(2, math.ceil(min_reps / batch)))
    per_slice = seconds / batch
    flops = count_flops(model, size, size)
    return {"size": size, "batch": batch, "ms_per_slice": 1000 * per_slice, "reps": reps,
            "gflops_per_slice": flops / 1e9, "gflop_per_s": flops / per_slice / 1e9}


# A context model's inputs are built per slice position from all its time points (context.context_stack): timed
# on as many frames as a QIN-BREAST DCE position has, since the projection's cost per frame grows with them.
CONTEXT_SPEED_FRAMES = 25


def time_context(cfg, size, min_reps):
    """ms per size x size frame of building a context model's input stacks (context.context_stack on the
    CONTEXT_SPEED_FRAMES frames of one slice position) and, with model.common_anatomy projection, of taking back
    the output's change common to them (predict.keep_common), or None for a model that takes the slice alone."""
    from breastmri.data.context import context_stack
    from breastmri.restore.networks import context_offsets, keeps_common
    from breastmri.restore.predict import keep_common

    context = context_offsets(cfg)
    if context.single_frame:
        return None
    # one random image moved by a different sub-pixel shift per frame: a registered projection then does all its
    # work (frames of pure noise register to no shift, and would skip moving the frames)
    from breastmri.registration import shift_frames

    rng = np.random.default_rng(0)
    moves = np.concatenate([[[0, 0]], rng.uniform(-1.5, 1.5, (CONTEXT_SPEED_FRAMES - 1, 2))]).astype(np.float32)
    frames = shift_frames(np.repeat(rng.random((1, size, size), dtype=np.float32), CONTEXT_SPEED_FRAMES, 0), moves)
    frames += 0.05 * rng.standard_normal(frames.shape, dtype=np.float32)
    layout = [(t, 0) for t in range(CONTEXT_SPEED_FRAMES)]
    keeps = keeps_common(cfg)

    def stacks():
        inputs = context_stack(frames, layout, context)
        if keeps is not None:  # the change common to the position's frames taken back, on an output of their shape
            keep_common(frames.copy(), inputs, [list(range(CONTEXT_SPEED_FRAMES))], keeps)

    seconds, reps = _median_seconds(stacks, min_reps)
    return {"size": size, "frames": CONTEXT_SPEED_FRAMES, "ms_per_slice": 1000 * seconds / CONTEXT_SPEED_FRAMES,
            "reps": reps}


def model_for_speed(run, trained, size):
    """(model, note) able to take size x size inputs: the trained model when it can, else the same architecture
    with untrained weights (timing only). None and a reason when the architecture cannot take that size."""
    from breastmri.restore.networks import check_input_size, get_model

    cfg = run["cfg"]
    try:
        check_input_size(cfg, size, size)
        return trained, "trained weights"
    except ValueError:
        pass
    resized = {**cfg, "preprocess": {**cfg["preprocess"], "image_size": size}}
    try:
        check_input_size(resized, size, size)
        return get_model(resized), f"rebuilt at {size}x{size}, untrained weights (timing only)"
    except ValueError as e:
        return None, str(e)


def _batch_clock():
    """A Keras callback that records the time at the end of every training batch (in .ends)."""
    import keras

    class BatchClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

    return BatchClock()


def time_training(run, data_dir, steps, warmup, rounds=2):
    """Training images/s of a model of the run's config: PairedSlices from disk vs the same batches in memory.

    One freshly built and compiled model (as main.py builds it) is fitted for one epoch of warmup + steps
    batches from each feed, alternately, `rounds` times; images/s counts the steps after the warm-up from
    batch-end timestamps (tracing and iterator start-up excluded) and keeps each feed's best round, so a
    burst of load from other processes on a shared machine does not decide the comparison.
    read_ms_per_batch: PairedSlices.__getitem__ alone (memmap reads, fresh noise, input stacks, targets, crops,
    flips), timed while preloading.
    """
    import keras

    from breastmri.restore.losses import get_loss, psnr_metric
    from breastmri.restore.networks import check_input_size, get_model
    from breastmri.restore.training import load_splits, training_mode

    cfg, t = run["cfg"], run["cfg"]["train"]
    total = warmup + steps

    def dataset():  # the training split as main.py feeds it (its target, fresh noise and context)
        return load_splits({**cfg, "train": {**t, "steps_per_epoch": total}}, data_dir)[0]

    def images_per_s(fit):
        clock = _batch_clock()
        fit(clock)
        ends = clock.ends[warmup - 1:]
        return t["batch_size"] * (len(ends) - 1) / (ends[-1] - ends[0])

    pipeline, preload = dataset(), dataset()
    shape = pipeline.image_shape if t["patch_size"] is None else (t["patch_size"],) * 2
    check_input_size(cfg, *shape)  # a fixed-size model on data of another size: ValueError with the reason
    start = time.perf_counter()
    batches = [preload[i] for i in range(total)]  # batches like the pipeline's, read before any clock starts
    read_ms = 1000 * (time.perf_counter() - start) / total
    x, y = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])

    keras.utils.set_random_seed(cfg["seed"])
    model = get_model(cfg)
    supervised = training_mode(cfg) == "supervised"  # compiled as main.py compiles it
    model.compile(optimizer=keras.optimizers.Adam(t["learning_rate"]), loss=get_loss(t["loss"], masked=not supervised),
                  metrics=[psnr_metric()] if supervised else None)
    from_disk, in_memory = [], []
    for _ in range(rounds):
        from_disk.append(images_per_s(lambda clock: model.fit(pipeline, epochs=1, shuffle=False, verbose=0,
                                                              callbacks=[clock])))
        in_memory.append(images_per_s(lambda clock: model.fit(x, y, batch_size=t["batch_size"], epochs=1,
                                                              shuffle=False, verbose=0, callbacks=[clock])))
    best_disk, best_memory = max(from_disk), max(in_memory)
    return {"batch_size": t["batch_size"], "input": f"{x.shape[1]}x{x.shape[2]}",
            "patch_size": t["patch_size"], "steps": steps, "warmup_steps": warmup, "rounds": rounds,
            "pipeline_images_per_s": best_disk, "in_memory_images_per_s": best_memory,
            "pipeline_cost": 1.0 - best_disk / best_memory, "read_ms_per_batch": read_ms,
            "step_ms_in_memory": 1000 * t["batch_size"] / best_memory,
            "rounds_images_per_s": {"pipeline": from_disk, "in_memory": in_memory}, "workers": t["workers"]}


def demo_tree(cache_dir, cfg, n_series):
    """(root, series folders): a cached demo DICOM tree with at least n_series DCE series of 16 slices each."""
    from breastmri.dicom.index import index_tree
    from breastmri.simulate.demo_tree import ensure_demo_tree

    # Every demo patient has 2 or 3 MR visits with one DCE series each.
    patients = max(2, math.ceil(n_series / 2))
    root = ensure_demo_tree(Path(cache_dir) / "demo_dicom", patients=patients, seed=cfg["demo"]["seed"],
                            slices=DEMO_SLICES, time_points=DEMO_TIME_POINTS, matrix=cfg["demo"]["matrix"])
    series, _, _ = index_tree(root)
    folders = sorted({Path(s.frames[0][0]).parent for s in series})
    if len(folders) < n_series:
        raise BenchmarkError(f"the demo tree {root} has {len(folders)} series, fewer than {n_series}")
    return Path(root), folders


def subset_tree(root, folders, dst):
    """A DICOM tree at dst holding only `folders` (hard links where the filesystem allows, else copies)."""
    def link(src, target):
        try:
            os.link(src, target)
        except OSError:
            shutil.copy2(src, target)

    for folder in folders:
        shutil.copytree(folder, Path(dst) / folder.relative_to(root), copy_function=link)
    return Path(dst)


def preprocessing_config(run, data_dir):
    """The config the data was preprocessed with (its summary.json), else the run's own config."""
    summary = Path(data_dir) / "summary.json"
    if summary.is_file():
        recorded = json.loads(summary.read_text()).get("config")
        if recorded:
            try:
                return load_config(None, [recorded])
            except ConfigError:
                pass
    return run["cfg"]


def classical_speed(methods, data_dir, size, n_slices, params=None):
    """ms per size x size slice of each classical method on held-out slices resized with cubic interpolation.

    2-D methods: one run per slice. Multi-frame methods: one run on a (T, size, size) stack of
    MULTIFRAME_SPEED_FRAMES copies of the slice, each with its own seeded noise of the slice's sigma added,
    reported per frame (mppca then has one slice position, Z = 1: far slower per frame than on a series volume,
    see speed_part); with the calibrated parameters (params)."""
    import cv2

    from breastmri.data.paired import PairedSlices

    params = params or {}
    ds = PairedSlices(data_dir, eval_split(data_dir), batch_size=1, max_slices=n_slices)
    results = {}
    for method in methods:
        times, frames = [], 1
        for b in range(len(ds)):
            noisy = ds[b][0][0, ..., 0]
            levels = noise_levels(ds.batch_rows(b)[0], noisy)
            if noisy.shape[0] != size:
                noisy = cv2.resize(noisy, (size, size), interpolation=cv2.INTER_CUBIC)
            if method in MULTIFRAME:
                n = MULTIFRAME_SPEED_FRAMES
                shape = (n, size, size)
                rng = np.random.default_rng(b)
                stack = noisy + levels["sigma_pixel"] * rng.standard_normal(shape).astype(np.float32)
                frames = int(np.prod(shape[:-2]))
                start = time.perf_counter()
                multiframe_denoise(method, stack, levels, params.get(method))
            else:
                start = time.perf_counter()
                classical_denoise(method, noisy, levels, params.get(method, 1.0))
            times.append((time.perf_counter() - start) / frames)
        results[method] = {"size": size, "slices": len(times), "ms_per_slice": 1000 * float(np.mean(times))}
        if method in MULTIFRAME:
            results[method]["frames_per_run"] = frames
        _log(f"  {method} at {size}x{size}: {results[method]['ms_per_slice']:.0f} ms per slice")
    return results


def speed_part(args, models, data_dir, prep_cfg, cache_dir, classical, params=None):
    from breastmri.data.preprocess import benchmark as preprocessing_benchmark

    result, notes = {"models": {}}, []
    _log(f"speed: preprocessing {args.speed_series} demo series")
    root, folders = demo_tree(cache_dir, prep_cfg, max(args.speed_series, max(args.scaling_series, default=1)))
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        tree = subset_tree(root, folders[:args.speed_series], Path(tmp) / "tree")
        pre = preprocessing_benchmark(tree, prep_cfg, workers=args.workers, out_dir=Path(tmp))
    result["preprocessing"] = {k: pre[k] for k in ("slices", "series", "workers", "image_size", "seconds",
                                                   "slices_per_s", "slices_per_s_processing")}
    result["preprocessing"]["matrix"] = prep_cfg["demo"]["matrix"]

    for method, (run, trained) in models.items():
        entry = {}
        _log(f"speed: {method} inference at {args.speed_size}x{args.speed_size}")
        model, note = model_for_speed(run, trained, args.speed_size)
        if model is None:
            entry["inference_skipped"] = note
        else:
            entry["weights"] = note
            entry["inference"] = [time_inference(model, args.speed_size, b, args.speed_reps)
                                  for b in sorted({1, run["cfg"]["train"]["batch_size"]})]
            entry["context"] = time_context(run["cfg"], args.speed_size, args.speed_reps)
            for timing in entry["inference"]:  # what enhancing a slice costs: its inputs, then the network
                timing["ms_per_slice_network"] = timing["ms_per_slice"]
                timing["ms_per_slice"] += entry["context"]["ms_per_slice"] if entry["context"] else 0.0
        _log(f"speed: {method} training steps")
        try:
            entry["training"] = time_training(run, data_dir, args.speed_steps, args.speed_warmup,
                                              args.speed_rounds)
        except ValueError as e:  # a fixed-size model on data of another size
            entry["training_skipped"] = str(e).splitlines()[0]
        result["models"][method] = entry

    # MP-PCA's cost grows with the (x, y, z) voxels, not with the frames (~10 s per frame of a 512^2 x 4-frame
    # stack, ~0.4 s per frame of a 192^2 x 8 x 8 series): a per-frame figure at 512^2 would depend on the series
    # shape, so it is left to the quality part's ms per slice (one slab of a series per run, divided by its frames).
    timed = [m for m in classical if m != "mppca"]
    if len(timed) < len(classical):
        notes.append("mppca is not timed at this size: its cost depends on the series' (x, y, z) size, not on "
                     "the frame; see its ms per slice in the quality table (per frame of the series slab a scored "
                     "slice needs, denoisers.mppca_slab)")
    result["classical"] = classical_speed(timed, data_dir, args.speed_size, args.speed_bm3d_slices, params)
    bm3d = result["classical"].get("bm3d", {}).get("ms_per_slice")
    bm4d = result["classical"].get("bm4d", {}).get("ms_per_slice")
    for method, entry in result["models"].items():
        for timing in entry.get("inference", []):
            timing["speedup_vs_bm3d"] = bm3d / timing["ms_per_slice"] if bm3d else None
            timing["speedup_vs_bm4d"] = bm4d / timing["ms_per_slice"] if bm4d else None
        training = entry.get("training")
        if training and training["pipeline_cost"] >= 0.10:
            notes.append(f"{method}: measured pipeline cost {training['pipeline_cost']:.0%} of training throughput "
                         f"(goal < 10%); reading a batch alone takes "
                         f"{training['read_ms_per_batch'] / training['step_ms_in_memory']:.0%} of a training step")
    result["notes"] = notes
    return result


# -----------------------------------------------------------------------------
# scaling (each size in a fresh child process)

def _proc_status_mib(key):
    """A memory line of /proc/self/status (Linux) in MiB, e.g. "VmHWM" or "RssAnon"; None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _peak_rss_mib():
    """Peak resident memory of this process, MiB.

    VmHWM (the high-water mark of this process's own address space) where Linux provides it: ru_maxrss of a
    child started by a big parent is not clean, because Linux carries the parent's resident size at fork into
    the child's ru_maxrss across exec. Elsewhere getrusage(RUSAGE_SELF).ru_maxrss (KiB on Linux, bytes on macOS).
    """
    peak = _proc_status_mib("VmHWM")
    if peak is not None:
        return peak
    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _anon_rss_mib():
    """Current anonymous resident memory (RssAnon): what the process owns, without file-backed pages."""
    return _proc_status_mib("RssAnon")


def scaling_child(args):
    """Body of `benchmark.py --_scaling-child preprocess|infer`: one size, one JSON line on stdout."""
    if args._scaling_child == "preprocess":
        from breastmri.data import preprocess

        cfg = load_config(None, [json.loads(Path(args.child_config).read_text())])
        after_import = _peak_rss_mib()
        summary = preprocess.run(args.child_root, args.child_out, cfg, workers=1, progress=False)
        result = {"series": summary["series_used"], "slices": summary["slices"], "seconds": summary["seconds"],
                  "peak_rss_mib": _peak_rss_mib(), "rss_after_import_mib": after_import}
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from breastmri.data.paired import PairedSlices
        from breastmri.evaluate.benchmark_runs import load_model, read_run
        from breastmri.restore.networks import context_offsets

        run = read_run(args.run_dir)
        model = load_model(run)
        ds = PairedSlices(args.child_data, None, batch_size=run["cfg"]["train"]["batch_size"], max_slices=args.n,
                          context=context_offsets(run["cfg"]))
        model.predict_on_batch(ds[0][0])  # warm-up (tracing)
        after_load = _peak_rss_mib()
        anon = [_anon_rss_mib()]
        start = time.perf_counter()
        for b in range(len(ds)):
            model.predict_on_batch(ds[b][0])
            anon.append(_anon_rss_mib())
        seconds = time.perf_counter() - start
        result = {"slices": len(ds.rows), "seconds": seconds, "peak_rss_mib": _peak_rss_mib(),
                  "rss_after_load_mib": after_load,
                  "peak_anon_rss_mib": max(anon) if None not in anon else None,
                  "image_size": list(ds.image_shape)}
    print(json.dumps(result))


def _run_child(command):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(BENCHMARK_PY), *command], capture_output=True,
                          text=True, timeout=CHILD_TIMEOUT_S, env=env, cwd=BENCHMARK_PY.parent)
    if done.returncode != 0:
        raise RuntimeError(f"scaling child {' '.join(command[:2])} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - start
    return result


def scaling_part(args, run, prep_cfg, cache_dir):
    sizes = sorted(args.scaling_series)
    root, folders = demo_tree(cache_dir, prep_cfg, max(sizes[-1], args.speed_series))
    result = {"preprocess": [], "infer": [], "series_slices": DEMO_SLICES * DEMO_TIME_POINTS,
              "matrix": prep_cfg["demo"]["matrix"], "image_size": prep_cfg["preprocess"]["image_size"]}
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        tmp = Path(tmp)
        config_path = tmp / "config.json"
        config_path.write_text(json.dumps(prep_cfg))
        for n in sizes:
            tree = subset_tree(root, folders[:n], tmp / f"tree_{n}")
            out = tmp / f"processed_{n}"
            _log(f"scaling: preprocessing {n} series in a child process")
            entry = _run_child(["--_scaling-child", "preprocess", "--n", str(n), "--child-root", str(tree),
                                "--child-out", str(out), "--child-config", str(config_path)])
            result["preprocess"].append({"n_series": n, **entry})
        data = tmp / f"processed_{sizes[-1]}"
        available = result["preprocess"][-1]["slices"]
        for n in sorted(args.scaling_slices):
            if n > available:
                result.setdefault("notes", []).append(f"inference: {n} slices asked, {available} available")
                continue
            _log(f"scaling: inference on {n} slices in a child process")
            entry = _run_child(["--_scaling-child", "infer", "--n", str(n), "--run-dir", str(run["dir"]),
                                "--child-data", str(data)])
            result["infer"].append({"n_slices": n, **entry})
    for kind, unit in (("preprocess", "slices"), ("infer", "slices")):
        entries = result[kind]
        for e in entries:
            e["ms_per_slice"] = 1000 * e["seconds"] / e[unit]
        if len(entries) > 1:
            result[f"{kind}_time_per_slice_ratio"] = entries[-1]["ms_per_slice"] / entries[0]["ms_per_slice"]
            result[f"{kind}_peak_rss_growth_mib"] = entries[-1]["peak_rss_mib"] - entries[0]["peak_rss_mib"]
    return result
