"""What a PairedSlices dataset refuses, and why.

Two steps, each raising ValueError with what to change:

    check_arguments(...)       the arguments against each other, before any file is read
    check_data(ds, shapes)     the arguments against the data they name: the manifest's rows and the arrays' shapes

The modes and targets they check against are defined here, and paired.py uses them.
"""

import numpy as np

from breastmri.data.manifest import _layout_of, _simulated

# What a training sample's target is (train.mode in breastmri/config.py; main.py documents the choice):
# supervised: the clean (3T) image; noise2noise: another noisy frame of the same slice position (Lehtinen 2018);
# noise2void: the noisy frame itself, at blind-spot pixels hidden from the input (Krull 2019).
MODES = ("supervised", "noise2noise", "noise2void")
# what a supervised target is (PairedSlices says each; the 3T frames' projection has ~5 dB less noise than the 3T frame)
TARGETS = ("3t", "decorrelated", "projected", "truth", "expected")


def _positive_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


def check_arguments(mode, target, batch_size, patch_size, steps_per_epoch, crop_candidates, shard, context,
                    mask_fraction, mask_radius, frames_per_draw):
    """The arguments of PairedSlices against each other; `context` is the resolved context.Context."""
    if shard is not None and (not 0 <= int(shard[0]) < int(shard[1]) or batch_size % int(shard[1])):
        raise ValueError(f"shard {shard}: the index must lie in [0, count) and batch_size {batch_size} must be "
                         "a multiple of the count")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if target not in TARGETS or (target != "3t" and mode != "supervised"):
        raise ValueError(f"target must be one of {', '.join(TARGETS)} (3t only for self-supervised modes), "
                         f"got {target!r} with mode {mode}")
    if not _positive_int(batch_size):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if patch_size is not None and not _positive_int(patch_size):
        raise ValueError(f"patch_size must be None (whole slices) or a positive integer, got {patch_size!r}")
    if steps_per_epoch is not None and not _positive_int(steps_per_epoch):
        raise ValueError(f"steps_per_epoch must be None (one pass per epoch) or a positive integer, got "
                         f"{steps_per_epoch!r}")
    if not _positive_int(crop_candidates):
        raise ValueError(f"crop_candidates must be a positive integer, got {crop_candidates!r}")
    if mode == "noise2noise" and (any(dt for dt, _ in context.offsets) or context.precontrast_frames):
        raise ValueError("noise2noise cannot take time context or the pre-contrast guide (model.context time, "
                         "precontrast_frames): they hold the target frame, whose noise the network would copy. "
                         "Use slice context and the projection (it leaves the target frame out), or noise2void")
    if mode != "supervised" and context.noise_map:
        raise ValueError(f"{mode} cannot take a noise map (model.context.noise_map): set it to false")
    if mode == "noise2void" and context.precontrast_frames:
        raise ValueError("noise2void cannot take the pre-contrast guide (model.context.precontrast_frames): it "
                         "averages the target frame in, blind spots included; set it to 0")
    if mode == "noise2void" and not (0 < float(mask_fraction) <= 0.5 and int(mask_radius) >= 1):
        raise ValueError(f"noise2void needs 0 < mask_fraction <= 0.5 (every blind spot needs a pixel that is "
                         f"not one to take its value from) and mask_radius >= 1, got {mask_fraction} and "
                         f"{mask_radius}")
    if not _positive_int(frames_per_draw) or (frames_per_draw > 1 and mode != "supervised"):
        raise ValueError(f"frames_per_draw must be a positive integer (above 1 only for supervised training), "
                         f"got {frames_per_draw!r} with mode {mode}")


def check_data(ds, shapes):
    """A built dataset `ds` (its rows, arrays and settings) against what its mode, target, crops and fresh noise
    need; `shapes` are the (H, W) of each row's noisy array."""
    rows = ds.rows
    if ds.mode != "supervised" and ds.context.projection:
        short = sorted({r["series_uid"] for r in rows if _layout_of(r)[2] < 3})
        if short:  # a noise2noise stack loses its target: 2 frames would leave the frame alone
            raise ValueError(f"{ds.mode} with a projection (model.context.projection) needs series of 3 or more "
                             f"time points; {len(short)} have fewer, e.g. {short[0]}: with fewer the projection "
                             "is (nearly) the frame itself, noise included. Set model.context.projection to false")
    training = ds.shuffle or ds.augment or ds.patch_size is not None or ds.steps_per_epoch is not None
    if ds.mode == "supervised" and training and not ds.has_clean:
        raise ValueError(f"{ds.data_dir} has no clean images (degrade.model none: the input is the noisy "
                         "scan): supervised training needs pairs; use train.mode noise2noise or noise2void")
    if ds.mode == "supervised":  # once here, not per sample (the self-supervised modes never open a clean file)
        unequal = sorted({r["clean_file"] for r, shape in zip(rows, shapes)
                          if r.get("clean_file") and ds.array(r["clean_file"]).shape[1:] != shape})
        if unequal:
            raise ValueError(f"{unequal[0]} and its noisy array have different slice shapes; rerun preprocessing.py")
    if ds.patch_size is not None:
        side = min(min(shape) for shape in shapes)
        if ds.patch_size > side:
            raise ValueError(f"patch_size {ds.patch_size} is larger than the smallest slices ({side} px); "
                             "use a smaller patch_size or None for whole slices")
    elif len(set(shapes)) > 1 and (ds.shuffle or ds.steps_per_epoch is not None):
        raise ValueError(f"whole-slice training needs slices of one size, {ds.split} has {sorted(set(shapes))}; "
                         "train on crops (train.patch_size) or resize (preprocess.image_size)")
    if ds.target in ("truth", "expected") and not ds.has_truth:
        raise ValueError(f"target {ds.target} needs the phantom's noise-free truth (truth_file) for every slice; "
                         "real data has none: use projected")
    if ds.target == "expected" and any(r.get("noise_channels") is None for r in rows):
        raise ValueError("target expected needs the measured noise channels (manifest noise_channels), which "
                         "this manifest predates: rerun preprocessing.py")
    if ds.target == "decorrelated":
        unusable = sorted({r["noisy_file"] for r in rows if not _simulated(r)
                           or not r["sigma_added"] > 0 or r.get("sigma_source") is None})
        if unusable:
            raise ValueError(f"a decorrelated target needs simulated noise with recorded sigmas (degrade.model "
                             f"field or gaussian); {len(unusable)} series have none, e.g. {unusable[0]}")
    if ds.fresh_noise and ds.mode != "supervised":
        raise ValueError(f"{ds.mode} reads the noisy images only; fresh noise would be drawn on the clean ones")
    if ds.fresh_noise:
        unusable = sorted({r["noisy_file"] for r, shape in zip(rows, shapes)
                           if not _simulated(r) or shape != (r.get("rows"), r.get("cols"))})
        if unusable:
            raise ValueError(f"fresh_noise needs arrays at the acquisition matrix with a recorded degradation "
                             f"(preprocess.image_size null); {len(unusable)} series are not, e.g. "
                             f"{unusable[0]}: use the stored pairs (train.fresh_noise false)")
