"""How much is left above the registered temporal projection, and of what kind? Measured with the truth.

    python -m breastmri.studies.headroom --data data/processed_demo            # validation patients; ~3 min on 2 cores

The default U-Net starts from the registered temporal projection (context.temporal_projection) and, at the demo
budget, ends where it started. This script asks whether that is the network's fault or the data's, by giving
simpler estimators information no real method has (the truth), on the validation patients' DCE positions, body
mask, mean over frames:

  projection    the registered projection of the degraded frames: the network's start (tpca)
  oracle basis  the same blocks (registered, 8 px every 4), each frame projected onto the truth's own local time
                courses with the Wiener gain of each (lambda / (lambda + sigma^2), lambda the truth's eigenvalue,
                sigma the true noise level; overlapping blocks averaged uniformly): a block-wise temporal
                projection that knew the anatomy's time courses and their strengths; what estimating them costs
  + BM3D        BM3D on the projection, given the true RMS error of the projection as its sigma: what a strong
                spatial denoiser recovers from what the projection leaves
  linear        one linear filter per time point over 3 x 3 neighbourhoods of every frame of the position moved
                onto the target frame (registered), the frame and its projection, fit by least squares to the
                truth of the training patients: what a learned spatio-temporal filter of the raw frames adds
                (the network sees only the frame and its projection)

Also reported: the share of the projection's error energy (inside the body) above a quarter of the sampling
frequency, i.e. how much of what it leaves is fine texture. Every row is scored on the same frames (BM3D, the
slowest, on every third, with the projection's score on those beside it). The classical multi-frame methods and
the default are compared in benchmark.py; this is the ceiling argument behind docs/results.md.
"""

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from breastmri.data.context import (
    LOCAL_BLOCK,
    LOCAL_STRIDE,
    register_shifts,
    shift_frames,
    temporal_projection,
)
from breastmri.data.manifest import read_manifest
from breastmri.metrics import body_mask, slice_metrics
from breastmri.runtime import add_verbose_flag, quiet_start

SEED, SAMPLES = 0, 3000  # the linear filter's fit: random body pixels per training frame


def positions(data_dir, split):
    """Yield (noisy, truth) float32 (T, H, W) of every DCE slice position of the split (3 or more time points),
    as the benchmark reads a position's stack (benchmark_quality.Stacks)."""
    from breastmri.evaluate.benchmark_quality import Stacks

    stacks = Stacks(data_dir)
    for row in read_manifest(data_dir, split):
        if row.get("time_index") == 0 and (row.get("n_times") or 1) >= 3 and row.get("truth_file"):
            rows = stacks.rows_of(row)
            if rows is not None:
                yield stacks.frames(rows), stacks.frames(rows, "truth_file")


def _starts(size):
    """Block starts every LOCAL_STRIDE px, plus one flush with the far edge, so every pixel is covered."""
    starts = list(range(0, size - LOCAL_BLOCK + 1, LOCAL_STRIDE))
    return starts + ([size - LOCAL_BLOCK] if starts[-1] != size - LOCAL_BLOCK else [])


def oracle_projection(noisy, truth, shifts):
    """Each frame projected, block by block (LOCAL_BLOCK px every LOCAL_STRIDE px, registered as the projection
    is), onto the truth's temporal principal components with Wiener gains; overlapping blocks averaged."""
    moved, clean = shift_frames(noisy, shifts), shift_frames(truth, shifts)
    sigma2 = float(np.mean((moved - clean)[:, body_mask(truth[0])] ** 2))
    n_times, height, width = moved.shape
    out, total = np.zeros_like(moved), np.zeros((height, width), np.float32)
    for y in _starts(height):
        for x in _starts(width):
            at = (slice(None), slice(y, y + LOCAL_BLOCK), slice(x, x + LOCAL_BLOCK))
            block, known = moved[at].reshape(n_times, -1), clean[at].reshape(n_times, -1)
            mean = block.mean(1, keepdims=True)
            known = known - known.mean(1, keepdims=True)
            values, vectors = np.linalg.eigh(known @ known.T / known.shape[1])
            gain = np.maximum(values, 0) / (np.maximum(values, 0) + sigma2)
            out[at] += ((vectors * gain) @ (vectors.T @ (block - mean)) + mean).reshape(out[at].shape)
            total[at[1:]] += 1
    return shift_frames(out / np.maximum(total, 1), -shifts, spline=True)


def filter_inputs(noisy, projected, t, shifts):
    """(H, W, F) features of frame t: 3 x 3 neighbourhoods of every frame moved onto frame t (shifts: the
    position's register_shifts), of frame t and of its projection."""
    channels = list(shift_frames(noisy, shifts - shifts[t])) + [noisy[t], projected[t]]
    features = []
    for c in channels:
        padded = np.pad(c, 1, mode="reflect")
        features += [padded[1 + dy:1 + dy + c.shape[0], 1 + dx:1 + dx + c.shape[1]]
                     for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return np.stack(features, -1)


def fit_linear(data_dir, samples=SAMPLES, seed=SEED):
    """{(n_times, t): weights} of the linear filter, fit on `samples` random body pixels per training frame."""
    rng, design, targets = np.random.default_rng(seed), {}, {}
    for noisy, truth in positions(data_dir, "train"):
        shifts = register_shifts(noisy)
        projected = temporal_projection(noisy, "registered", shifts=shifts)
        for t in range(len(noisy)):
            mask = body_mask(truth[t])
            features, target = filter_inputs(noisy, projected, t, shifts)[mask], truth[t][mask]
            pick = rng.choice(len(target), min(samples, len(target)), replace=False)
            design.setdefault((len(noisy), t), []).append(features[pick])
            targets.setdefault((len(noisy), t), []).append(target[pick])
    weights = {}
    for key, parts in design.items():
        a = np.concatenate(parts)
        a = np.c_[a, np.ones(len(a))]
        weights[key] = np.linalg.solve(a.T @ a + 1e-3 * np.eye(a.shape[1]), a.T @ np.concatenate(targets[key]))
    return weights


def headroom(data_dir, split="val", bm3d_every=3):
    """{estimator: {"psnr": mean body PSNR against the truth, "frames"}} over every frame of the split's DCE
    positions whose series length the training patients have (the linear filter needs their fit); BM3D on every
    bm3d_every-th of them, with the projection's score on the same frames beside it. "fine error energy": the
    projection's, as a fraction."""
    import bm3d
    from tqdm import tqdm

    weights = fit_linear(data_dir)
    scores = {k: [] for k in ("input", "projection", "oracle basis", "linear", "projection (BM3D frames)",
                              "projection + BM3D", "fine error energy")}
    frame = 0
    for noisy, truth in tqdm(list(positions(data_dir, split)), desc="headroom", unit="position", leave=False):
        if (len(noisy), 0) not in weights:
            continue
        shifts = register_shifts(noisy)
        projected = temporal_projection(noisy, "registered", shifts=shifts)
        oracle = oracle_projection(noisy, truth, shifts)
        for t in range(len(noisy)):
            mask = body_mask(truth[t])
            psnr = lambda image: slice_metrics(image, truth[t], mask)["psnr"]  # noqa: E731
            features = filter_inputs(noisy, projected, t, shifts)
            linear = np.c_[features.reshape(-1, features.shape[-1]), np.ones(features[..., 0].size)]
            scores["input"].append(psnr(noisy[t]))
            scores["projection"].append(psnr(projected[t]))
            scores["oracle basis"].append(psnr(oracle[t]))
            scores["linear"].append(psnr((linear @ weights[(len(noisy), t)]).reshape(mask.shape).astype(np.float32)))
            energy = np.abs(np.fft.fft2((projected[t] - truth[t]) * mask)) ** 2
            frequency = np.hypot(*np.meshgrid(np.fft.fftfreq(mask.shape[0]), np.fft.fftfreq(mask.shape[1]),
                                              indexing="ij"))
            scores["fine error energy"].append(float(energy[frequency > 0.25].sum() / energy.sum()))
            if frame % bm3d_every == 0:
                sigma = math.sqrt(float(np.mean((projected[t] - truth[t])[mask] ** 2)))
                scores["projection (BM3D frames)"].append(psnr(projected[t]))
                scores["projection + BM3D"].append(psnr(bm3d.bm3d(projected[t], sigma).astype(np.float32)))
            frame += 1
    if not scores["input"]:
        raise ValueError(f"no {split} DCE position with a truth array and a series length the training patients have")
    fine = scores.pop("fine error energy")
    return {**{k: {"psnr": float(np.mean(v)), "frames": len(v)} for k, v in scores.items()},
            "fine error energy": {"fraction": float(np.mean(fine)), "frames": len(fine)}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/processed_demo")
    p.add_argument("--split", default="val", choices=("val", "test"),
                   help="patients scored (the linear filter is fit on train)")
    p.add_argument("--out", help="also write the table as JSON here")
    add_verbose_flag(p)
    args = p.parse_args(argv)
    if not any(r.get("truth_file") for r in read_manifest(args.data)):
        sys.exit(f"error: {args.data} has no truth arrays (only the demo generator writes them)")
    try:
        result = headroom(args.data, args.split)
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(f"{args.split} patients, body PSNR against the truth (dB), mean over frames")
    for name, entry in result.items():
        if "psnr" not in entry:
            print(f"  {name}: {entry['fraction']:.0%} above 0.25 cycles/px ({entry['frames']} frames)")
            continue
        start = result["projection (BM3D frames)" if name == "projection + BM3D" else "projection"]["psnr"]
        gain = "" if name in ("input", "projection", "projection (BM3D frames)") else f"  {entry['psnr'] - start:+.2f}"
        print(f"  {name:26s} {entry['psnr']:6.2f}{gain}   ({entry['frames']} frames)")
    if args.out:
        Path(args.out).write_text(json.dumps({"split": args.split, "seed": SEED, "samples_per_frame": SAMPLES,
                                              "results": result}, indent=1))
    return result


if __name__ == "__main__":
    quiet_start()
    main()
