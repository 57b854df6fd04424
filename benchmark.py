"""Is the model worth using? Baselines, speed and scaling, measured on the same data in the same run.

    python benchmark.py --run-dir runs/demo --data data/processed_demo --max-slices 48
    python benchmark.py --run-dir runs/demo --parts quality --methods noisy,bm3d,unet
    python benchmark.py --run-dir runs/demo --thesis-run runs/demo_thesis --parts speed,scaling

Writes benchmark.md, benchmark.json, benchmark.png and the per-slice CSV into --out (default <run-dir>/benchmark).
What each part measures and how: breastmri/evaluate/benchmark_suite.py.
"""

import argparse
import shlex
import sys

from breastmri.config import ConfigError
from breastmri.evaluate.benchmark_calibration import CALIBRATION_CROP
from breastmri.evaluate.benchmark_quality import BenchmarkError
from breastmri.evaluate.benchmark_real import DEFAULT_REAL_METHODS, MIN_TIME_POINTS, REAL_METHODS
from breastmri.evaluate.benchmark_speed import scaling_child
from breastmri.evaluate.benchmark_suite import METHODS, PARTS, run_benchmark
from breastmri.runtime import add_verbose_flag, quiet_start

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
    p.add_argument("--parts", default=",".join(p for p in PARTS if p != "real"),
                   help=f"comma-separated subset of {','.join(PARTS)} (default: all but real)")
    p.add_argument("--out", help="output folder (default <run-dir>/benchmark)")
    p.add_argument("--real-data", help="a folder of real DICOM series: the 'real' part scores the methods on its "
                                       "dynamics frame by frame against their real 3T frames (adds 'real' to --parts)")
    p.add_argument("--real-positions", type=int, default=3,
                   help="slice positions scored per real dynamic, in its middle (default 3)")
    p.add_argument("--real-chunk", type=int, default=0,
                   help="0 (default): every method sees a real dynamic whole; L: consecutive runs of at least L frames "
                        f"(>= {MIN_TIME_POINTS}), one at a time, as if it were several shorter dynamics")
    p.add_argument("--real-filter", default="", help="regex on SeriesDescription for the real part (default: all)")
    p.add_argument("--real-methods", default=",".join(DEFAULT_REAL_METHODS),
                   help=f"methods of the real part, a subset of {','.join(REAL_METHODS)} (default "
                        f"{','.join(DEFAULT_REAL_METHODS)}; bm3d takes about 1 s per frame)")
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
    add_verbose_flag(p)
    args = p.parse_args(argv)
    if args._scaling_child:
        return args
    if not args.run_dir:
        p.error("--run-dir is required (a run dir written by main.py)")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.parts = [m.strip() for m in args.parts.split(",") if m.strip()]
    if args.real_data and "real" not in args.parts:
        args.parts.append("real")
    args.real_methods = [m.strip() for m in args.real_methods.split(",") if m.strip()]
    if any(m not in REAL_METHODS for m in args.real_methods):
        p.error(f"--real-methods: choose from {', '.join(REAL_METHODS)}")
    if "real" in args.parts and not args.real_data:
        p.error("--parts real needs --real-data DIR (a folder of real DICOM series)")
    if args.real_chunk and args.real_chunk < MIN_TIME_POINTS:
        p.error(f"--real-chunk must be 0 or at least {MIN_TIME_POINTS}")
    if args.real_chunk and "real" not in args.parts:
        p.error("--real-chunk applies to the real part: give --real-data DIR")
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
    quiet_start()
    main()
