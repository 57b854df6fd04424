"""The restoration networks: get_model(cfg) returns a Functional keras.Model mapping noisy -> clean slices.

    cfg = load_config()                     # model.name: unet (default) | thesis_autoencoder
    model = get_model(cfg)
    check_input_size(cfg, 512, 512)         # raises a ValueError that says how to pad, before Keras would
    model.predict(noisy)                    # noisy: float32 (B, H, W, 1) in normalized units (clean ~ [0, 1])

Both models read and write normalized intensities (preprocessing maps the clean series' 0.5th..99.5th
percentiles to 0..1). Outputs are float32 even under a mixed_float16 policy, so losses and metrics are computed
in float32.

- "unet" (default): a U-Net (Ronneberger et al. 2015, arXiv:1505.04597) with a global residual, as in
  CARE (Weigert et al. 2018, doi:10.1038/s41592-018-0216-7): it predicts the correction that is added to the
  noisy input. Fully convolutional: any H, W that are multiples of 2**depth.
- "thesis_autoencoder": the 2021 thesis network, an 8 + 8 layer convolutional autoencoder with a fixed
  (S, S, 1) input, S a multiple of 2**model.pools; model.pools picks the reading of the thesis text (8: a pool
  after every conv, literal; 4: after every pair; 2), model.output_activation sigmoid | linear. Kept to
  reproduce the thesis numbers and as a baseline.

Callers must check sizes with check_input_size() (or pad, as enhance.py does): a U-Net fed a side that is not
a multiple of 2**depth fails deep inside Keras with a concatenate shape error, which does not say what to do.

CLI: python model.py [--config FILE] [--set model.name=thesis_autoencoder ...] prints the summary, the
parameter count and the FLOPs per image_size x image_size slice, without training.
"""

import itertools
import math

import keras
import numpy as np
from keras import layers

from breastmri.data.context import Context, projection_kind

MODEL_NAMES = ("unet", "thesis_autoencoder")
# Thesis encoder filters, one per Conv2D (each followed by a 2x2 max-pool); the decoder mirrors them.
# The thesis gives 16 -> 128 over 8 layers; pairs of equal widths double every second layer.
THESIS_FILTERS = (16, 16, 32, 32, 64, 64, 128, 128)
# model.pools: how many 2x2 max-pools the 8 encoder convs carry (8: after every conv, the literal text).
THESIS_POOLS = (8, 4, 2)
THESIS_OUTPUT_ACTIVATIONS = ("sigmoid", "linear")


def _seeded(initializer, seed):
    """A factory of `initializer` instances with distinct, reproducible seeds, one per layer.

    Seeding every layer makes get_model(cfg) build the same weights whatever the global random state.
    """
    counter = itertools.count()
    return lambda: initializer(seed=seed * 10_000 + next(counter))


def _conv_block(x, filters, name, kernel_init):
    """Two 3x3 'same' convolutions with ReLU: (B, H, W, C) -> (B, H, W, filters)."""
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", kernel_initializer=kernel_init(),
                          name=f"{name}_conv{i}")(x)
    return x


def unet(depth=3, filters=32, seed=0, channels=1, residual=True, start=0):
    """Residual U-Net: (B, H, W, C) noisy -> (B, H, W, 1) restored, H and W multiples of 2**depth.

    channels: the target slice first, then its context (neighbouring time points and slices, a pre-contrast
    guide, a projection; see context_offsets). The correction is added to one channel, `start`: the target frame
    (0), or the projection channel of a context that has one (get_model), an estimate of the same frame with
    most of its noise gone, so the network starts from there and learns what the projection got wrong.

    depth: number of 2x2 max-pool downsamplings (levels below full resolution).
    filters: filters of the full-resolution blocks, doubled at each level (32, 64, 128, 256 for the defaults).

    Choices:
    - Blocks are two 3x3 conv + ReLU; He-normal weights (He et al. 2015) suit ReLU.
    - Down: 2x2 max-pool. Up: 2x2 stride-2 transposed conv (linear), then concatenation with the skip.
    - No BatchNorm: training and inference compute the same function, batch size 1 tiles behave like any
      other batch, and tiled prediction equals whole-image prediction up to border effects.
    - Output: a 1x1 conv to one channel, zero-initialized, added to the start channel. At initialization the
      network returns that channel (the noisy frame, or its projection: the PSNR of the input, or of the
      projection) and learns only the correction, whatever the context. At the demo budget (an earlier,
      hard-thresholded local projection) starting from the projection scored 31.21 dB on the test patients
      against 31.03 from the frame: the frame start spends its few steps learning to copy the projection.
      The 1x1 conv and the addition run in float32 so the identity path keeps full precision under mixed
      precision.
    - residual False (train.mode noise2void): the correction is added to the mean of the 8 neighbours of each
      target pixel (a fixed 3x3 ring, the centre left out) instead of the pixel itself. A blind-spot network must
      never be handed its centre pixel directly: in training that pixel holds a neighbour's value, at inference
      its own noisy value, and an identity path adds that noise back. The ring starts it from a denoised (if
      blurred) image without that path; the convolutions still see the centre, as in Noise2Void's plain U-Net.
      With a projection channel noise2void starts from the projection instead (residual True): in training its
      stack had the target frame's blind spots too (data_factory), so at a blind spot the projection holds a
      same-tissue neighbour's noise in place of the pixel's own. At inference it passes on the pixel's own noise
      with the projector's weight on the frame (about r / T for r kept components of T frames), which the network
      treats as it learned to treat the neighbour's. The ring mean of the projection, the blind alternative,
      scored 22.98 dB on 48 demo test slices against 31.61 for the projection: the demo's tissue varies too much
      from pixel to pixel for a neighbour mean. Needs 3 or more frames (PairedSlices refuses fewer).
    """
    kernel_init = _seeded(keras.initializers.HeNormal, seed)
    noisy = keras.Input((None, None, channels), name="noisy")
    if not 0 <= start < channels:
        raise ValueError(f"start channel {start} is not one of the {channels} input channels")
    target = noisy if channels == 1 else noisy[..., start:start + 1]  # a serializable slicing op, not a Lambda
    x = noisy
    skips = []
    for level in range(1, depth + 1):
        x = _conv_block(x, filters * 2 ** (level - 1), f"enc{level}", kernel_init)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    x = _conv_block(x, filters * 2 ** depth, "bottleneck", kernel_init)
    for level in range(depth, 0, -1):
        width = filters * 2 ** (level - 1)
        x = layers.Conv2DTranspose(width, 2, strides=2, kernel_initializer=kernel_init(), name=f"dec{level}_up")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skips[level - 1]])
        x = _conv_block(x, width, f"dec{level}", kernel_init)
    correction = layers.Conv2D(1, 1, kernel_initializer="zeros", bias_initializer="zeros", dtype="float32",
                               name="correction")(x)
    if not residual:
        ring = np.ones((3, 3, 1, 1), np.float32) / 8
        ring[1, 1] = 0
        target = layers.DepthwiseConv2D(3, padding="same", use_bias=False, trainable=False, dtype="float32",
                                        depthwise_initializer=keras.initializers.Constant(ring),
                                        name="neighbour_mean")(target)
    restored = layers.Add(dtype="float32", name="restored")([target, correction])
    return keras.Model(noisy, restored, name="unet")


def thesis_autoencoder(image_size=512, pools=8, output_activation="sigmoid", seed=0):
    """The 2021 thesis autoencoder: (B, S, S, 1) noisy -> (B, S, S, 1) restored, S a multiple of 2**pools.

    Encoder: 8 Conv2D 3x3 'same' ReLU with filters 16, 16, 32, 32, 64, 64, 128, 128 and `pools` 2x2
    MaxPooling2D spread evenly over them (one after every 8 // pools convs). Decoder: the mirror image,
    8 Conv2D 3x3 'same' with filters 128, 128, 64, 64, 32, 32, 16, and 1 for the 8th (ReLU after the first 7),
    with a 2x UpSampling2D (nearest) in front of every 8 // pools convs, so the output has the input's size.
    No skip connections, no normalization layers (none in the thesis).

    pools, the readings of the thesis text ("after each convolutional layer a pooling is applied", next to the
    design "8+8 layers, 16 -> 128 filters, MaxPooling/UpSampling"; its figures keep anatomy):
    - 8: a pool after every conv, the text taken literally. A 512 x 512 slice is squeezed to 2 x 2 x 128 (256:
      1 x 1 x 128), which cannot carry anatomy: on the demo data it lands ~20 dB below its degraded input.
    - 4: a pool after every pair of convs (one per filter width). 512 -> 32 x 32 x 128 (256: 16 x 16 x 128).
    - 2: a pool after every fourth conv. 512 -> 128 x 128 x 128; 6x the FLOPs of pools=4.

    output_activation: "sigmoid" (as the thesis, whose images are in [0, 1]) or "linear". Under our
    normalization the clean 99.5th percentile is 1, so the sigmoid clips the brightest 0.5 % of pixels near 1;
    its saturation is also how the literal model collapses to an all-zero output. "linear" has neither
    problem. Either is a separate float32 layer ("restored") after the last conv, so it runs in float32 under
    mixed precision.

    Other choices the thesis leaves open, made here:
    - Filter sequence: the thesis states 16 -> 128 over 8 layers; pairs of equal widths are used.
    - Weights: He-normal (He et al. 2015, the standard for ReLU), seeded per layer. The Keras default,
      Glorot-uniform, halves the signal at each of the 15 ReLU layers; on the demo data the literal model's
      output then sat near the sigmoid's 0.5, was pushed into saturation by the (mostly air) targets within a
      few dozen steps and collapsed to all-zero (validation PSNR stuck at 9.4 dB, at Adam 1e-4 and 1e-3 alike).
      He-normal trains (13.7 dB after 80 steps at 1e-4 where Glorot gave 9.4).
    - Upsampling: nearest neighbour (the UpSampling2D default).
    - Input: fixed S x S, as the thesis' network.
    """
    if pools not in THESIS_POOLS:
        raise ValueError(f"model.pools must be one of {', '.join(map(str, THESIS_POOLS))} (pools spread evenly over "
                         f"the 8 encoder convolutions), got {pools!r}")
    if output_activation not in THESIS_OUTPUT_ACTIVATIONS:
        raise ValueError(f"model.output_activation must be one of {', '.join(THESIS_OUTPUT_ACTIVATIONS)}, "
                         f"got {output_activation!r}")
    multiple = 2 ** pools
    if image_size % multiple or image_size < multiple:
        raise ValueError(f"thesis_autoencoder with model.pools={pools} needs preprocess.image_size to be a multiple "
                         f"of {multiple} (2**pools), got {image_size}; use 256 or 512 (the thesis used 512)")
    every = len(THESIS_FILTERS) // pools
    kernel_init = _seeded(keras.initializers.HeNormal, seed)
    noisy = keras.Input((image_size, image_size, 1), name="noisy")
    x = noisy
    for i, width in enumerate(THESIS_FILTERS, start=1):
        x = layers.Conv2D(width, 3, padding="same", activation="relu", kernel_initializer=kernel_init(),
                          name=f"encoder_conv{i}")(x)
        if i % every == 0:
            x = layers.MaxPooling2D(2, name=f"encoder_pool{i // every}")(x)
    decoder_filters = THESIS_FILTERS[::-1][:-1] + (1,)
    for i, width in enumerate(decoder_filters, start=1):
        last = i == len(decoder_filters)
        if (i - 1) % every == 0:
            x = layers.UpSampling2D(2, name=f"decoder_up{(i - 1) // every + 1}")(x)
        x = layers.Conv2D(width, 3, padding="same", activation=None if last else "relu",
                          kernel_initializer=kernel_init(), name=f"decoder_conv{i}")(x)
    restored = layers.Activation(output_activation, dtype="float32", name="restored")(x)
    return keras.Model(noisy, restored, name="thesis_autoencoder")


def _model_name(cfg):
    name = cfg["model"]["name"]
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model.name '{name}'; choose one of {', '.join(MODEL_NAMES)}")
    return name


def _unet_args(cfg):
    depth = cfg["model"].get("depth", 3)
    filters = cfg["model"].get("filters", 32)
    for key, value in (("depth", depth), ("filters", filters)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"model.{key} must be a positive integer, got {value!r}")
    return depth, filters


def _thesis_args(cfg):
    pools = cfg["model"].get("pools", 8)
    if isinstance(pools, bool) or pools not in THESIS_POOLS:
        raise ValueError(f"model.pools must be one of {', '.join(map(str, THESIS_POOLS))}, got {pools!r}")
    return pools, cfg["model"].get("output_activation", "sigmoid")


def get_model(cfg):
    """The Functional keras.Model named by cfg["model"]["name"], weights seeded by cfg["seed"]."""
    name = _model_name(cfg)
    seed = int(cfg.get("seed", 0))
    if name == "unet":
        depth, filters = _unet_args(cfg)
        channels = context_channels(cfg)
        # from the projection channel (Context.projection_channel); a saved run config's `projection: true` (the
        # global kind) was trained from the frame, so --resume must rebuild it that way
        legacy = cfg["model"].get("context", {}).get("projection") is True
        start = 0 if legacy else context_offsets(cfg).projection_channel or 0
        # a blind-spot network has no identity path to the frame (see unet); its projection may start it
        residual = cfg.get("train", {}).get("mode") != "noise2void" or start > 0
        return unet(depth, filters, seed, channels=channels, residual=residual, start=start)
    return thesis_autoencoder(int(cfg["preprocess"]["image_size"]), *_thesis_args(cfg), seed=seed)


def context_offsets(cfg):
    """What the network sees besides the target slice, from cfg["model"]["context"], as a Context:
    offsets [(dt, dk), ...] for every channel, the target (0, 0) first, then time points -1, +1, -2, +2, ... and
    slices -1, +1, ...; precontrast_frames: 0, or N for a channel holding the mean of the series' first N frames at
    the target's position, the pre-contrast image a DCE series is read against; projection: one of
    context.PROJECTIONS for a last channel holding the target frame projected onto the principal time courses of
    its position (context.temporal_projection), which brings every frame of the position into the input; false
    (None) for none. true means "global", the only kind when a saved run config wrote it. noise_map: true for a
    channel after the projection holding its noise level (context.projection_channels); it needs a projection."""
    if _model_name(cfg) != "unet":
        return Context([(0, 0)])  # the thesis autoencoder takes one slice: model.context is the unet's
    context = cfg["model"].get("context") or {}
    values = {key: context.get(key, 0) for key in ("time", "slices", "precontrast_frames")}
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"model.context.{key} must be an integer >= 0, got {value!r}")
    projection = projection_kind(context.get("projection", False))
    noise_map = context.get("noise_map", False)
    if not isinstance(noise_map, bool) or (noise_map and not projection):
        raise ValueError(f"model.context.noise_map must be true or false, and true only with a projection (it is the "
                         f"projection's noise level), got {noise_map!r} with projection {projection!r}")
    offsets = [(0, 0)]
    offsets += [(sign * d, 0) for d in range(1, values["time"] + 1) for sign in (-1, 1)]
    offsets += [(0, sign * d) for d in range(1, values["slices"] + 1) for sign in (-1, 1)]
    return Context(offsets, values["precontrast_frames"], projection, noise_map)


def keeps_common(cfg):
    """The projection channel when model.common_anatomy takes back the network's change common to a slice
    position's frames (predict.keep_common): a U-Net with a projection channel and common_anatomy "projection";
    None otherwise ("network", or nothing to take it back to)."""
    value = cfg["model"].get("common_anatomy", "network")
    if value not in ("projection", "network"):
        raise ValueError(f"model.common_anatomy must be projection or network, got {value!r}")
    context = context_offsets(cfg)
    return context.projection_channel if value == "projection" and context.projection else None


def context_channels(cfg):
    """Input channels of the model: 1 + 2 x time + 2 x slices (+ 1 with a pre-contrast guide, + 1 with the
    projection, + 1 with its noise map)."""
    return context_offsets(cfg).channels


def size_multiple(cfg):
    """Input sides must be multiples of this: 2**depth for the unet, 2**pools for the thesis autoencoder."""
    if _model_name(cfg) == "unet":
        return 2 ** _unet_args(cfg)[0]
    return 2 ** _thesis_args(cfg)[0]


def check_input_size(cfg, h, w):
    """Raise a ValueError that says how to pad when the configured model cannot take an h x w input."""
    name = _model_name(cfg)
    if h < 1 or w < 1:
        raise ValueError(f"input size {h}x{w} is empty")
    multiple = size_multiple(cfg)
    if name == "thesis_autoencoder":
        size = cfg["preprocess"]["image_size"]
        if size % multiple:
            raise ValueError(f"thesis_autoencoder with model.pools={_thesis_args(cfg)[0]} needs preprocess.image_size "
                             f"to be a multiple of {multiple} (2**pools), got {size}")
        if (h, w) != (size, size):
            raise ValueError(f"thesis_autoencoder takes exactly {size}x{size} slices (preprocess.image_size, a "
                             f"multiple of {multiple} = 2**model.pools), got {h}x{w}; resize or pad the slices to "
                             f"{size}x{size}")
    elif h % multiple or w % multiple:
        padded = (math.ceil(h / multiple) * multiple, math.ceil(w / multiple) * multiple)
        raise ValueError(f"unet with model.depth={_unet_args(cfg)[0]} cannot take a {h}x{w} input: both sides "
                         f"must be multiples of {multiple} (2**depth); pad to {padded[0]}x{padded[1]} (e.g. "
                         f"reflect padding) and crop the output back")


def count_flops(model, h, w):
    """Floating point operations of one h x w slice through `model`: 2 x multiply-adds of its convolutions.

    Counts Conv2D (out_h * out_w * k_h * k_w * c_in / groups * c_out MACs) and Conv2DTranspose
    (in_h * in_w * k_h * k_w * c_in * c_out MACs: every input pixel scatters one kernel), from the layer
    configs and the shapes an h x w input gives. Biases, activations, pooling, upsampling, concatenation and
    additions are left out (under 1 % for these models). A model with a flexible input is cloned onto an
    h x w input to get those shapes; weights are not needed.
    """
    in_shape = model.inputs[0].shape  # (batch, H, W, C)
    if tuple(in_shape[1:3]) != (h, w):
        if any(fixed is not None and fixed != side for fixed, side in zip(in_shape[1:3], (h, w))):
            raise ValueError(f"model '{model.name}' takes {in_shape[1]}x{in_shape[2]} inputs, not {h}x{w}")
        model = keras.models.clone_model(model, input_tensors=keras.Input((h, w, in_shape[-1])))
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += count_flops(layer, *layer.inputs[0].shape[1:3])
            continue
        if not isinstance(layer, (layers.Conv2D, layers.Conv2DTranspose)):
            continue
        kh, kw = layer.kernel_size
        c_in = layer.input.shape[-1]
        _, out_h, out_w, c_out = layer.output.shape
        if isinstance(layer, layers.Conv2DTranspose):
            _, in_h, in_w, _ = layer.input.shape
            macs = in_h * in_w * kh * kw * c_in * c_out
        else:
            macs = out_h * out_w * kh * kw * (c_in // layer.groups) * c_out
        total += 2 * macs
    return int(total)
