"""A trained run loaded for enhancement, and a whole series predicted with it on the grid it was trained on.

    enhancer = load_enhancer("runs/demo")          # model.keras + the run's config.yaml
    enhanced = predict_stack(enhancer, stack)      # (n, H, W) modality units in, the same out

The input is normalized with the rule preprocessing applies to the degraded series, resized only when the run
was trained on resized arrays, given the context (frames, registered projection) the model was trained with, and
the normalization is undone exactly on the way out.
"""

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from breastmri.config import ConfigError, config_hash, load_run_config
from breastmri.data.context import context_stack
from breastmri.data.grid import resize_square, unresize_square
from breastmri.restore.predict import (
    MAX_PIXELS,
    EnhanceError,
    check_tile,
    default_tile,
    keep_common,
    pad_to_multiple,
    predict_padded,
    predict_tiled,
    receptive_margin,
)
from breastmri.restore.shipped import resolve_model


@dataclass
class Enhancer:
    """A loaded model and everything about it that decides how it is applied and how outputs are labelled."""

    model: object
    cfg: dict
    model_path: Path
    config_hash: str
    model_sha: str   # sha256 of model.keras, first 12 hex digits
    name: str        # cfg["model"]["name"]
    multiple: int    # input sides must be multiples of this (model.size_multiple)
    margin: int      # tile overlap on each side, pixels (receptive_margin); 0 for the thesis autoencoder
    timings: list = field(default_factory=list)  # seconds of every forward pass, for ms per slice

    @property
    def context(self):
        """The context.Context (channel offsets, pre-contrast frames, projection, noise map) the model was trained
        with (model.context_offsets)."""
        from breastmri.restore.networks import context_offsets

        return context_offsets(self.cfg)

    @property
    def size_handling(self):
        size = self.cfg["preprocess"]["image_size"]
        if size is None:
            return (f"native matrix, as in training (preprocess.image_size null): reflect-padded to a multiple of "
                    f"{self.multiple} (2**depth) and cropped back; tiles (when used) overlap by {self.margin} px, "
                    "the U-Net's receptive radius")
        return (f"resized, as in training: padded to a square and resized to {size}x{size} (the run's "
                f"preprocess.image_size) with grid.resize_square, mapped back with unresize_square")


# --------------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------------

def load_enhancer(path):
    """Load model.keras (compile=False) with the custom objects of main.py registered, and its config."""
    model_path, config_file = resolve_model(path)
    from breastmri.restore.networks import keeps_common  # keras: after the CLI's quiet start

    try:
        cfg = load_run_config(config_file)
        keeps_common(cfg)  # a bad model.common_anatomy is said here, not once per series
    except (ConfigError, ValueError) as error:
        raise EnhanceError(f"{config_file}: {error}") from None
    import tensorflow as tf

    from breastmri.restore import losses
    from breastmri.restore.networks import size_multiple

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialized (e.g. a second load in one process): keep what is set
            pass
    try:
        model = losses.load_model(model_path)
    except Exception as error:  # noqa: BLE001 - a truncated or foreign file: say which, in one line
        raise EnhanceError(f"cannot load {model_path}: {type(error).__name__}: {error}") from None
    name = cfg["model"]["name"]
    multiple = size_multiple(cfg)
    return Enhancer(model=model, cfg=cfg, model_path=model_path.resolve(), config_hash=config_hash(cfg),
                    model_sha=hashlib.sha256(model_path.read_bytes()).hexdigest()[:12], name=name,
                    multiple=multiple,
                    margin=receptive_margin(int(cfg["model"]["depth"])) if name == "unet" else 0)


def predict_stack(enhancer, stack, batch_size=8, tile=None, force_tiling=False, max_pixels=MAX_PIXELS,
                  zero=0.0, layout=None):
    """Model output for a normalized stack of frames, float32 (n, H, W) -> float32 (n, H, W), same normalized
    units.

    On the grid the model was trained on. preprocess.image_size null (the U-Net default): the scan's own matrix,
    reflect-padded to a multiple of 2**depth and cropped back (predict_padded); tiled when the padded slice has more
    than max_pixels pixels or force_tiling (tile side `tile`, default DEFAULT_TILE). A run trained on resized
    slices (preprocess.image_size S, the thesis): resize_square to S x S (padding with `zero`, the normalized value
    of no signal), exactly as preprocessing did, and unresize_square back.
    A context model (model.context) gets its input stacks built on that grid, by context.context_stack from the
    series' (time point, slice position) `layout`, as training built them from the preprocessed arrays: after the
    resize, so that a projection channel sees the pixels it saw in training.
    A model with model.common_anatomy projection then has the change it made alike in every frame of a slice
    position taken back (predict.keep_common), as main.py's evaluation does (evaluation.network_output).
    Returns (output, info) with info = {"method", "tiled", "tile", "margin", "model_shape"}.
    """
    stack = np.ascontiguousarray(stack, dtype=np.float32)
    n, rows, cols = stack.shape[:3]
    from breastmri.restore.networks import keeps_common

    context = enhancer.context
    channel = keeps_common(enhancer.cfg)
    layout = layout or [(0, i) for i in range(n)]

    def common(out, inputs):
        if channel is not None:
            positions = {}
            for i, (_, k) in enumerate(layout):
                positions.setdefault(k, []).append(i)
            keep_common(out, inputs, list(positions.values()), channel)
        return out

    def inputs(frames):
        if context.single_frame:
            return frames
        return context_stack(frames, layout, context)

    timings = enhancer.timings
    size = enhancer.cfg["preprocess"]["image_size"]
    if size is not None:
        size = int(size)
        per_call = max(1, min(batch_size, max_pixels // (size * size)))
        square = inputs(resize_square(stack, size, pad_value=zero))
        out = common(predict_padded(enhancer.model, square, enhancer.multiple, per_call, timings), square)
        return unresize_square(out, (rows, cols)), {
            "method": "resize", "tiled": False, "tile": None, "margin": 0, "model_shape": [size, size]}
    stack = inputs(stack)
    if enhancer.name != "unet":
        raise EnhanceError(f"{enhancer.name} has a fixed input size but its run has no preprocess.image_size")

    padded, _ = pad_to_multiple(stack, enhancer.multiple)
    p_rows, p_cols = padded.shape[1:3]
    tiled = force_tiling or p_rows * p_cols > max_pixels
    if tiled:
        tile = default_tile(enhancer.multiple, enhancer.margin) if tile is None else tile
        check_tile(tile, enhancer.multiple, enhancer.margin)
        per_call = max(1, min(batch_size, max_pixels // (tile * tile)))
        top, left = (p_rows - rows) // 2, (p_cols - cols) // 2
        out = predict_tiled(enhancer.model, padded, tile, enhancer.margin, per_call, timings)
        out = np.ascontiguousarray(out[:, top:top + rows, left:left + cols])
    else:
        per_call = max(1, min(batch_size, max_pixels // (p_rows * p_cols)))
        out = predict_padded(enhancer.model, stack, enhancer.multiple, per_call, timings)
    return common(out, stack), {"method": "pad", "tiled": bool(tiled), "tile": tile if tiled else None,
                 "margin": enhancer.margin, "model_shape": [int(p_rows), int(p_cols)]}
