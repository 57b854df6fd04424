"""How much is left above the registered temporal projection, and of what kind? Measured with the truth.

    python headroom.py --data data/processed_demo            # validation patients; ~3 min on 2 cores

The default U-Net starts from the registered temporal projection (context.temporal_projection) and, at the demo
budget, ends where it started. This script asks whether that is the network's fault or the data's, by giving
simpler estimators information no real method has (the truth), on the validation patients' DCE positions, body
mask, mean over frames:

  projection    the registered projection of the degraded frames: the network's start (tpca)
  oracle basis  the same blocks, each frame projected onto the truth's own local time courses with the Wiener
                gain of each (lambda / (lambda + sigma^2), lambda the truth's eigenvalue): the best a block-wise
                temporal projection could do if it knew the anatomy's time courses; what estimating them costs
  + BM3D        BM3D on the projection, given the true RMS error of the projection as its sigma: what a strong
                spatial denoiser recovers from what the projection leaves
  linear        one linear filter per time point over 3 x 3 neighbourhoods of every frame of the position moved
                onto the target frame (registered), the frame and its projection, fit by least squares to the
                truth of the training patients: what a learned spatio-temporal filter of the raw frames adds
                (the network sees only the frame and its projection)

The classical multi-frame methods and the default are compared in benchmark.py; this is the ceiling argument
behind the README's "what limits the default".
"""

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from context import LOCAL_BLOCK, LOCAL_STRIDE, register_shifts, shift_frames, temporal_projection
from data_factory import read_manifest
from metrics import body_mask, slice_metrics


def positions(data_dir, split):
    """Yield (noisy, truth) float32 (T, H, W) of every DCE slice position of the split (3 or more time points)."""
    series = {}
    for r in read_manifest(data_dir, split):
        if r.get("time_index") is not None and r["n_times"] >= 3 and r.get("truth_file"):
            series.setdefault(r["series_uid"], []).append(r)
    for rows in series.values():
        index = {(r["time_index"], r["position_index"]): r["slice_index"] for r in rows}
        noisy, truth = (np.load(Path(data_dir) / rows[0][key], mmap_mode="r") for key in ("noisy_file", "truth_file"))
        for k in range(rows[0]["n_positions"]):
            at = [index.get((t, k)) for t in range(rows[0]["n_times"])]
            if None not in at:
                yield np.asarray(noisy[at], np.float32), np.asarray(truth[at], np.float32)


def oracle_projection(noisy, truth):
    """Each frame projected, block by block (LOCAL_BLOCK px every LOCAL_STRIDE px, registered as the projection
    is), onto the truth's temporal principal components with Wiener gains; overlapping blocks averaged."""
    shifts = register_shifts(noisy)
    moved, clean = shift_frames(noisy, shifts), shift_frames(truth, shifts)
    sigma2 = float(np.mean((moved - clean)[:, body_mask(truth[0])] ** 2))
    n_times, height, width = moved.shape
    out, total = np.zeros_like(moved), np.zeros((height, width), np.float32)
    for y in range(0, height - LOCAL_BLOCK + 1, LOCAL_STRIDE):
        for x in range(0, width - LOCAL_BLOCK + 1, LOCAL_STRIDE):
            at = (slice(None), slice(y, y + LOCAL_BLOCK), slice(x, x + LOCAL_BLOCK))
            block, known = moved[at].reshape(n_times, -1), clean[at].reshape(n_times, -1)
            mean = block.mean(1, keepdims=True)
            known = known - known.mean(1, keepdims=True)
            values, vectors = np.linalg.eigh(known @ known.T / known.shape[1])
            gain = np.maximum(values, 0) / (np.maximum(values, 0) + sigma2)
            out[at] += ((vectors * gain) @ (vectors.T @ (block - mean)) + mean).reshape(out[at].shape)
            total[at[1:]] += 1
    return shift_frames(out / np.maximum(total, 1), -shifts, spline=True)


def filter_inputs(noisy, projected, t):
    """(H, W, F) features of frame t: 3 x 3 neighbourhoods of every frame moved onto frame t, of frame t and of
    its projection."""
    shifts = register_shifts(noisy)
    channels = list(shift_frames(noisy, shifts - shifts[t])) + [noisy[t], projected[t]]
    features = []
    for c in channels:
        padded = np.pad(c, 1, mode="reflect")
        features += [padded[1 + dy:1 + dy + c.shape[0], 1 + dx:1 + dx + c.shape[1]]
                     for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return np.stack(features, -1)


def fit_linear(data_dir, samples=3000, seed=0):
    """{(n_times, t): weights} of the linear filter, fit on the training patients' body pixels."""
    rng, design, targets = np.random.default_rng(seed), {}, {}
    for noisy, truth in positions(data_dir, "train"):
        projected = temporal_projection(noisy, "registered")
        for t in range(len(noisy)):
            mask = body_mask(truth[t])
            features, target = filter_inputs(noisy, projected, t)[mask], truth[t][mask]
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
    """{estimator: mean body PSNR against the truth} over every frame of the split's DCE positions (BM3D on every
    bm3d_every-th frame, with the projection's score on the same frames beside it)."""
    import bm3d

    weights = fit_linear(data_dir)
    scores = {k: [] for k in ("input", "projection", "oracle basis", "linear", "projection (BM3D frames)",
                              "projection + BM3D")}
    frame = 0
    for noisy, truth in positions(data_dir, split):
        projected = temporal_projection(noisy, "registered")
        oracle = oracle_projection(noisy, truth)
        for t in range(len(noisy)):
            mask = body_mask(truth[t])
            psnr = lambda image: slice_metrics(image, truth[t], mask)["psnr"]  # noqa: E731
            features = filter_inputs(noisy, projected, t)
            linear = np.c_[features.reshape(-1, features.shape[-1]), np.ones(features[..., 0].size)]
            key = (len(noisy), t)
            scores["input"].append(psnr(noisy[t]))
            scores["projection"].append(psnr(projected[t]))
            scores["oracle basis"].append(psnr(oracle[t]))
            if key in weights:
                scores["linear"].append(psnr((linear @ weights[key]).reshape(truth[t].shape).astype(np.float32)))
            if frame % bm3d_every == 0:
                sigma = math.sqrt(float(np.mean((projected[t] - truth[t])[mask] ** 2)))
                scores["projection (BM3D frames)"].append(psnr(projected[t]))
                scores["projection + BM3D"].append(psnr(bm3d.bm3d(projected[t], sigma).astype(np.float32)))
            frame += 1
    return {k: {"psnr": float(np.mean(v)), "frames": len(v)} for k, v in scores.items() if v}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/processed_demo")
    p.add_argument("--split", default="val", help="patients scored (the filter is fit on train)")
    p.add_argument("--out", help="also write the table as JSON here")
    args = p.parse_args(argv)
    if not any(r.get("truth_file") for r in read_manifest(args.data)):
        sys.exit(f"error: {args.data} has no truth arrays (only the demo generator writes them)")
    result = headroom(args.data, args.split)
    base = result["projection"]["psnr"]
    print(f"{args.split} patients, body PSNR against the truth (dB), mean over frames")
    for name, entry in result.items():
        reference = result["projection (BM3D frames)"]["psnr"] if name == "projection + BM3D" else base
        gain = "" if name in ("input", "projection", "projection (BM3D frames)") else f"  {entry['psnr'] - reference:+.2f}"
        print(f"  {name:26s} {entry['psnr']:6.2f}{gain}   ({entry['frames']} frames)")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
