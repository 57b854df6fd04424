"""What a slice's input stack holds besides the slice itself: its neighbours in time and space, a pre-contrast
guide, its projection onto the time courses of its position and that projection's noise map (model.context). One
module for training (data.paired.PairedSlices) and inference (enhance.py), so both assemble the same stacks.

    channels, guide = context_slices(lookup, t, k, n_times, n_positions, offsets, precontrast_frames, fallback)
    inputs = context_stack(normalized_series, layout, context)   # (n, H, W, C); context: a Context

A DCE series images each slice position at T time points; (t, k) names a frame by its time index and position.
Neighbours are reflected at the ends of the series and a missing frame falls back to the target itself, so any
series, down to a single frame, gives a stack of the same channels.
"""

import collections
import math

import numpy as np
from scipy import ndimage

from breastmri.registration import register_shifts, shift_frames


# What model.context asks the network to see (model.context_offsets builds it from the config): channel offsets
# [(dt, dk)], the target (0, 0) first; the number of pre-contrast frames averaged into a guide (0: none); the kind of
# projection channel that follows (None: none; one of PROJECTIONS, see temporal_projection); noise_map: a last
# channel holding the noise level of the projection channel (temporal_projection's `noise`).
class Context(collections.namedtuple("Context", "offsets precontrast_frames projection noise_map",
                                     defaults=(0, None, False))):
    @property
    def single_frame(self):
        """True when the input is the target slice alone (no stack to build)."""
        return len(self.offsets) == 1 and not self.precontrast_frames and not self.projection

    @property
    def channels(self):
        """Channels of the input stack: the offsets', the guide's, the projection's and its noise map's."""
        return len(self.offsets) + bool(self.precontrast_frames) + bool(self.projection) + bool(self.noise_map)

    @property
    def projection_channel(self):
        """Index of the projection channel (None without one): after the guide, before the noise map."""
        return self.channels - 1 - bool(self.noise_map) if self.projection else None


def reflect(i, n):
    """Index i reflected into range(n) without repeating the edge (-1 -> 1, n -> n - 2), as np.pad's 'reflect';
    an int for an int, elementwise for an integer array."""
    if n <= 1:
        return i * 0
    i = i % (2 * (n - 1))
    beyond = i - (n - 1)
    return i - 2 * beyond * (beyond > 0)


# The projection comes in three kinds (model.context.projection). Each compares the eigenvalues of a T x T temporal
# covariance over N pixels with the upper Marchenko-Pastur edge of pure noise, (1 + sqrt(T / N))^2 sigma^2.
# - "global": one covariance over the whole slice, sigma^2 from its smallest eigenvalue; the components above
#   PROJECTION_EDGE x the edge are kept. The margin 1.5 was chosen on the demo validation patients of the 0.2
#   phantom (1.2: 29.99 dB, 1.5: 30.07, 2.0: 29.71; input 27.64).
# - "local": one covariance per LOCAL_BLOCK^2 block, blocks every LOCAL_STRIDE pixels, each component shrunk by
#   1 - edge / eigenvalue (zero at and below the edge), overlapping outputs averaged with weight
#   1 / (1 + components kept) (Manjon 2013, as dipy's mppca). A block holds one or two tissues, so a small
#   lesion's time course is a principal one there. sigma^2 is each block's own: the Marchenko-Pastur fit of its
#   eigenvalues (block_noise, Veraart 2016, as dipy's classifier), averaged over NOISE_BLOCKS x NOISE_BLOCKS
#   neighbouring blocks. One sigma for the whole slice, from its covariance's smallest eigenvalue, read 1.22x the
#   true noise on the calibrated phantom (heart, vessels and breathing are not low-rank) and 2x on a real breast
#   DCE slice with a pulsating chest, and the edge then cut real signal everywhere. On every second position of
#   the demo validation patients (160 frames, body PSNR against the truth; input 34.46) the registered projection
#   scores 36.36 with the slice's sigma, 36.65 with the block's own (averaged over 5 x 5 blocks: 36.64; 9 x 9:
#   36.66; unaveraged 36.58) and 36.77 given the true sigma. The fit takes NOISE_FRAMES frames spread over the
#   series: it needs many more pixels than frames (a block has 64), and on ProstateX's TWIST dynamic (70 frames,
#   whose view sharing also correlates the noise of neighbouring frames) the fit on all frames read 5% of the
#   noise (the projection then gained 0.18 dB), on 8 spread frames 91% (+1.56 dB; the slice's sigma: +1.78).
#   No block's sigma^2 exceeds the whole slice's (its smallest eigenvalue, which signal can only raise): on that
#   dynamic the cap took tpca in make benchmark's real part from +0.42 dB (12 frames worse) to +0.98 (1 worse);
#   on the demo's validation positions it changes nothing. An earlier sweep on the 0.2 phantom set the rest:
#   blocks of 12 or 16 lose 0.3 / 0.6 dB, stride 2 gains 0.26 dB at 4x the cost; stride 4 keeps a 512^2 slice of
#   25 frames at ~0.1 s per frame on 2 cores.
# - "registered" (the default before 0.3): "local" on the frames moved onto the position's first frame
#   (register_shifts), the output moved back onto each frame's own grid. A pixel's time course is only low-rank if it
#   stays on the same tissue: at every edge the motion adds components the projection must keep, noise included. On the
#   0.2 phantom's 16 benchmark slices the local projection alone scored 31.50 dB, registered 33.60; moved onto the
#   target frame instead (one projection per target frame, T times the cost) 33.67; moved with a cubic spline instead
#   of the Fourier shift, which smooths the noise of the moved frames unevenly and the target's twice, 32.95; a linear
#   one, 30.69 (the smoothed frames' lower noise fools the Marchenko-Pastur edge).
# - "guarded" (the default since 0.3): "registered", and where the projection took off more than noise, part of it
#   put back. The guard keeps frame - alpha r (r = frame - projection) with alpha = sigma^2 (1 - P_tt) / r^2,
#   numerator and denominator each averaged in a Gaussian window of GUARD_WIDTH px, at most 1 (P_tt: the
#   projection's weight of the frame on itself, from its blocks' kept components and gains): Stein's unbiased
#   risk of that blend, alpha^2 r^2 + 2 sigma^2 (1 - alpha (1 - P_tt)) - sigma^2, is least there (treating the
#   components as fixed; what a time course they miss leaves in r raises r^2 and lowers alpha). So the
#   network's channel falls back towards the frame itself where motion, pulsation, an end of the series or a time
#   course of its own leave the temporal model wrong, and stays the projection where it holds. sigma^2 is the
#   projection's own (its blocks'), so the guard needs no noise level from outside. On 8 positions of the demo's
#   validation patients (64 frames, body PSNR against the truth; input 33.52) it scored 35.58 against the
#   registered projection's 35.46, and its worst frame gained +0.26 dB where the projection's lost 2.33. On the real
#   ProstateX dynamic (70 frames, 3 positions, against its 3T frames; its noise then read from frames 0 and 1, a
#   milder 1.5T than now, where the guarded projection gains +2.48) +1.06 dB against +0.98, no frame worse
#   (frame 69: +0.40 against -0.10). Trusting the projection more (the expected power x 1.25 / 1.5) scored
#   35.74 / 35.77 on the phantom and +0.99 / +0.99 on the real dynamic, whose last frame then lost 0.06 dB at 1.5:
#   the phantom and real data pull apart, and the unscaled risk keeps every real frame. GUARD_WIDTH 2 / 4 / 8 px:
#   35.45 / 35.58 / 35.60 on the phantom, +1.20 / +1.06 / +1.01 on the real dynamic (whose 3T reference carries
#   the scanner's noise, which favours putting back); 4 is within 0.02 dB of the phantom's best.
# A repeated frame (a missing frame's fallback) makes the smallest eigenvalues ~0 and the projection ~the identity:
# no denoising, no harm.
PROJECTIONS = ("global", "local", "registered", "guarded")
REGISTERED = ("registered", "guarded")  # the kinds that move the frames onto the first
PROJECTION_EDGE = 1.5
LOCAL_BLOCK, LOCAL_STRIDE = 8, 4  # the block a multiple of the stride (_local_projection adds whole tilings)
NOISE_BLOCKS = 5  # a block's sigma^2: the mean of the Marchenko-Pastur fits of the NOISE_BLOCKS^2 blocks around it
NOISE_FRAMES = 8  # ... each fit on at most this many frames, spread evenly over the series
REGISTER_MARGIN = 10  # px (+ the largest shift) around a window of the registered projection, projected with it
GUARD_WIDTH, GUARD_TRUNCATE = 4.0, 3.0  # the guard's Gaussian window (px) and where it is cut (in widths)


def projection_kind(value):
    """model.context.projection -> None or one of PROJECTIONS. true is "global", the only kind a run config saved
    before "local" existed can mean; false, 0 and None are none."""
    if value is True:
        return "global"
    if value in (False, None, 0):
        return None
    if value not in PROJECTIONS:
        raise ValueError(f"model.context.projection must be false, {' or '.join(PROJECTIONS)}, got {value!r}")
    return value


def temporal_projection(frames, kind="local", window=None, shifts=None, which=None, noise=False):
    """(T, H, W) frames of one slice position over time -> (T, H, W), every frame projected onto the principal
    temporal components of the stack that stand above the noise (kind "global": of the whole slice; "local": of
    each block around the pixel; "registered": "local" on the frames moved onto the first; "guarded": "registered"
    put back towards the frame where it took off more than noise; see PROJECTIONS above).

    A DCE position holds few distinct time courses (fat, gland, vessels, lesion; Veraart's MP-PCA uses the same
    redundancy): their T x T temporal covariance has a few large eigenvalues and the rest near the noise level
    sigma^2. The noise of a frame is spread over all T components, so keeping the r large ones keeps about r / T of
    its variance. The network gets this as one channel beside the frame itself, never instead of it: a time course
    that few pixels share may fall under the edge. window: (rows, cols) slices: only that part of the output,
    computed from the blocks that cover it and those whose noise they average, so it equals the whole output
    cropped (training crops this way; "registered" and "guarded" move the whole slice and project the window and
    a margin: the whole output cropped to within 1e-6, tested). shifts: those two only, the frames'
    register_shifts when the caller has them. which: indices of the frames to return (default all; they move
    back only those). One frame (T = 1), or frames with non-finite values,
    are returned as they are.

    noise: (projection, noise level), the second the standard deviation of the noise the projection keeps, per pixel
    and frame (what a noise map gives a network, as in FFDNet: Zhang et al. 2018, doi:10.1109/TIP.2018.2839891): of
    a block whose noise variance is sigma^2 and projection P = V diag(gain) V^T, the output keeps sigma^2 (P^2)_tt of
    frame t's (sigma^2 P_tt for the hard "global" kind); the guard's blend (1 - alpha) frame + alpha projection keeps
    sigma^2 [(1 - alpha)^2 + 2 alpha (1 - alpha) P_tt + alpha^2 (P^2)_tt]; each averaged over the blocks as their
    outputs are (what the overlapping blocks' averaging and the registered kinds' spline shift back take off besides
    is not counted: the map errs high). Frames without a time axis keep all their noise, read from each whole
    frame's finest wavelet band (skimage.restoration.estimate_sigma), so a window's map is the whole map cropped."""
    frames, which = np.asarray(frames, np.float32), slice(None) if which is None else list(which)
    alpha = None
    if kind == "guarded":
        projected, powers, alpha = _guarded_projection(frames, window, shifts, which, 3 if noise else 0)
    else:
        projected, powers = _moved_projection(frames, kind, window, shifts, which, 3 if noise else 0)
    if not noise:
        return projected
    if powers is None:  # no time axis, or frames not finite: the frames as they are, with all their noise
        from skimage.restoration import estimate_sigma

        level = [estimate_sigma(np.nan_to_num(f).astype(np.float64)) for f in frames[which]]  # whole frames
        return projected, np.broadcast_to(np.float32(level)[:, None, None], projected.shape).copy()
    left, on_self, squared = powers[:, 0], powers[:, 1], powers[:, 2]
    if alpha is not None:  # the guard's blend
        squared = ((left + on_self) * (1 - alpha) ** 2 + 2 * alpha * (1 - alpha) * on_self + alpha ** 2 * squared)
    return projected, np.sqrt(np.maximum(squared, 0)).astype(np.float32)


def _moved_projection(frames, kind, window, shifts, which, powers=0):
    """(projection, expected powers) of temporal_projection's kinds but the guard; the powers (see
    _local_projection) only with `powers` > 0 and a time axis to project along, else None. So do the helpers
    below."""
    if kind in REGISTERED and frames[0].size > len(frames) >= 2 and np.all(np.isfinite(frames)):
        shifts = register_shifts(frames) if shifts is None else np.asarray(shifts, np.float32)
        if np.any(shifts):
            return _registered_projection(frames, shifts, window, which, powers)
    return tuple(None if a is None else a[which] for a in _projection(frames, kind, window, powers))


def _guarded_projection(frames, window, shifts, which, powers=0):
    """The "guarded" kind: the registered projection on the window and a margin (guard_region), each pixel put
    back towards the frame by alpha = expected residual power / residual power (Gaussian windows, at most 1).
    (guarded, the registered projection's `powers` expected powers (at least the guard's), alpha) on the window;
    the last two None without a time axis."""
    region, inner = guard_region(window, frames.shape[1:])
    projected, expected = _moved_projection(frames, "registered", region, shifts, which, max(powers, 1))
    part = frames[which][(slice(None),) + region]
    crop = (Ellipsis,) + inner
    if expected is None:  # no time axis: the frames as they are, as the other kinds
        return part[crop].copy(), None, None
    residual = part - projected
    smooth = lambda a: ndimage.gaussian_filter(a, (0, GUARD_WIDTH, GUARD_WIDTH), mode="reflect",  # noqa: E731
                                               truncate=GUARD_TRUNCATE)
    alpha = np.clip(smooth(expected[:, 0]) / np.maximum(smooth(residual * residual), 1e-30), 0, 1)
    return (part - alpha * residual)[crop].astype(np.float32), expected[crop], alpha[crop]


def guard_region(window, shape):
    """(region, inner): a window of (H, W) = shape frames and the margin the guard's Gaussian reads around it (inside
    the frames: at their edges it reflects, as on the whole frames), and where the window lies in that region."""
    return _around(window, shape, int(GUARD_TRUNCATE * GUARD_WIDTH + 0.5))  # scipy's radius of the Gaussian


def _around(window, shape, margin):
    """(region, inner): the (rows, cols) `window` of (H, W) = shape frames and `margin` px around it, inside the
    frames, and where the window lies in that region. window None: all."""
    window = (slice(None), slice(None)) if window is None else tuple(window)
    bounds = [w.indices(n)[:2] for w, n in zip(window, shape)]
    region = tuple(slice(max(0, lo - margin), min(n, hi + margin)) for (lo, hi), n in zip(bounds, shape))
    return region, tuple(slice(lo - r.start, hi - r.start) for (lo, hi), r in zip(bounds, region))


def _projection(frames, kind, window, powers=0, block_noise_fit=True):
    """(projection, expected powers or None) of temporal_projection without its registration: "registered" is
    "local" here. block_noise_fit False: every block takes the whole slice's noise (the projection's first
    definition, which the realism statistics keep so that their figures stay comparable)."""
    if kind not in PROJECTIONS:
        raise ValueError(f"unknown projection {kind!r}; choose one of {', '.join(PROJECTIONS)}")
    frames = np.asarray(frames, np.float32)
    window = (slice(None), slice(None)) if window is None else tuple(window)
    n_times = len(frames)
    if n_times < 2 or frames[0].size <= n_times:  # no time axis, or too few pixels to measure the noise
        return frames[(slice(None),) + window].copy(), None
    x = frames.reshape(n_times, -1)
    mean = x.mean(1, keepdims=True, dtype=np.float64).astype(np.float32)
    x = x - mean
    covariance = (x @ x.T).astype(np.float64) / x.shape[1]
    if not np.all(np.isfinite(covariance)):  # NaN/inf: left as they are for the callers' checks
        return frames[(slice(None),) + window].copy(), None
    values, vectors = np.linalg.eigh(covariance)
    ratio = math.sqrt(n_times / x.shape[1])
    noise = max(values[0], 0.0) / (1 - ratio) ** 2
    if kind != "global":
        return _local_projection(frames, window, noise, powers, block_noise_fit)
    kept = vectors[:, values > PROJECTION_EDGE * noise * (1 + ratio) ** 2].astype(np.float32)
    out = ((kept @ (kept.T @ x)) + mean).reshape(frames.shape)[(slice(None),) + window]
    if not powers:
        return out, None
    on_self = (kept * kept).sum(1)  # a hard projection: P^2 = P
    maps = (noise * np.stack([1 - on_self, on_self, on_self], 1)[:, :powers]).astype(np.float32)
    return out, np.broadcast_to(maps[:, :, None, None], maps.shape + out.shape[1:]).copy()


def _registered_projection(frames, shifts, window, which, powers=0):
    """The "registered" kind: the frames moved onto the first (Fourier shift), projected ("local") on the window's
    registered_region, the frames `which` moved back there (spline) and cropped to the window; with `powers`, the
    expected powers moved back alike."""
    region, inner = registered_region(window, frames.shape[1:], shifts)
    moved = _projection(shift_frames(frames, shifts), "local", region, powers)
    back = -np.asarray(shifts, np.float32)[which]

    def moved_back(a):  # (T, H, W) frames, or (T, K, H, W) K maps per frame
        a = a[which]
        per_frame = 1 if a.ndim == 3 else a.shape[1]
        flat = shift_frames(a.reshape((-1,) + a.shape[-2:]), np.repeat(back, per_frame, axis=0), spline=True)
        return flat.reshape(a.shape)[(Ellipsis,) + inner]

    return tuple(None if a is None else moved_back(a) for a in moved)


def registered_region(window, shape, shifts):
    """(region, inner): the (rows, cols) part of (H, W) = shape frames that a `window` of an output computed on
    frames moved by `shifts` and moved back with the spline needs (the window and REGISTER_MARGIN px plus the
    largest shift around it, inside the frames: a pixel moved back reads |shift| px away, and the margin keeps the
    spline's mirrored edges out of the window), and where the window lies in that region. window None: all."""
    largest = int(np.ceil(np.abs(np.asarray(shifts, np.float32)).max(initial=0)))
    return _around(window, shape, REGISTER_MARGIN + largest)


def _block_range(window, size, block, stride):
    """(first, last) block index along one axis whose blocks (starting every `stride` pixels from 0) cover the
    window's pixels, and the number of blocks that cover the whole axis (the last one padded past its end)."""
    n_blocks = max(0, -(-(size - block) // stride)) + 1
    lo, hi, _ = window.indices(size)
    return max(0, (lo - block) // stride + 1), min(n_blocks - 1, (hi - 1) // stride), n_blocks


def block_noise(values, pixels):
    """(B, T) ascending eigenvalues of B blocks' temporal covariances over `pixels` pixels each -> (B,) sigma^2:
    the mean of the eigenvalues that the Marchenko-Pastur law explains as noise (Veraart et al. 2016, as dipy's
    MP-PCA classifier): the largest c for which the c + 1 smallest spread no wider than 4 sqrt((c + 1) / pixels)
    times their mean (c = 0 always qualifies). Beyond pixels - 1 frames the smallest are zero by rank and left
    out."""
    values = np.maximum(np.asarray(values, np.float64), 0)[:, -(pixels - 1):]
    count = np.arange(1, values.shape[1] + 1)
    means = np.cumsum(values, 1) / count
    noise_like = values - values[:, :1] <= 4 * np.sqrt(count / pixels) * means
    last = values.shape[1] - 1 - np.argmax(noise_like[:, ::-1], 1)
    return means[np.arange(len(values)), last]


def _local_projection(frames, window, ceiling=np.inf, powers=0, block_noise_fit=True):
    """temporal_projection's "local" kind on the blocks covering `window`, each block's sigma^2 by block_noise
    averaged over NOISE_BLOCKS^2 blocks (those around the window are decomposed for it, so a window equals the
    whole output cropped) and at most `ceiling` (the whole slice's sigma^2). powers 1 or 3: also (T, powers, h, w)
    expected powers of the noise, per pixel and frame, each block's averaged over the blocks as their outputs are:
    sigma^2 (1 - P_tt), the residual power the noise alone leaves (P = V diag(gain) V^T the block's projection;
    the guard's numerator), then sigma^2 P_tt and sigma^2 (P^2)_tt (the noise the projection keeps)."""
    n_times, height, width = frames.shape
    block, stride, reach = LOCAL_BLOCK, LOCAL_STRIDE, NOISE_BLOCKS // 2
    (y0, y1, ny), (x0, x1, nx) = (_block_range(w, n, block, stride) for w, n in zip(window, (height, width)))
    # blocks start every `stride` pixels from the top left; the last ones reach past the edge into a reflection
    padded = np.pad(frames, ((0, 0), (0, (ny - 1) * stride + block - height), (0, (nx - 1) * stride + block - width)),
                    mode="reflect")
    (u0, u1), (v0, v1) = (max(0, y0 - reach), min(ny - 1, y1 + reach)), (max(0, x0 - reach), min(nx - 1, x1 + reach))
    around = padded[:, u0 * stride:u1 * stride + block, v0 * stride:v1 * stride + block]
    blocks = np.lib.stride_tricks.sliding_window_view(around, (block, block), axis=(1, 2))[:, ::stride, ::stride]
    x = blocks.reshape(n_times, -1, block * block).transpose(1, 0, 2)        # (blocks, T, pixels)
    mean = x.mean(2, keepdims=True)
    x = x - mean
    covariance = x @ x.transpose(0, 2, 1) / x.shape[2]
    values, vectors = np.linalg.eigh(covariance)
    spread = np.unique(np.linspace(0, n_times - 1, min(n_times, NOISE_FRAMES)).round().astype(int))
    # the noise from NOISE_FRAMES frames spread over the series: their covariance is the part of the whole one
    noise_values = values if len(spread) == n_times else np.linalg.eigvalsh(covariance[:, spread][:, :, spread])
    grid = blocks.shape[1:3]
    noise = np.minimum(ndimage.uniform_filter(block_noise(noise_values, x.shape[2]).reshape(grid), NOISE_BLOCKS,
                                              mode="nearest"), ceiling) if block_noise_fit else np.full(grid, ceiling)
    inner = (slice(y0 - u0, y1 - u0 + 1), slice(x0 - v0, x1 - v0 + 1))       # the blocks that cover the window
    x, mean, values, vectors = (a.reshape(grid + a.shape[1:])[inner].reshape((-1,) + a.shape[1:])
                                for a in (x, mean, values, vectors))
    noise = noise[inner].reshape(-1, 1)
    part = padded[:, y0 * stride:y1 * stride + block, x0 * stride:x1 * stride + block]
    by, bx = y1 - y0 + 1, x1 - x0 + 1
    edge = noise * (1 + math.sqrt(n_times / x.shape[2])) ** 2
    gain = np.clip(1 - edge / np.maximum(values, 1e-30), 0, 1).astype(np.float32)
    kept = gain > 0
    projected = ((vectors * gain[:, None, :]) @ (vectors.transpose(0, 2, 1) @ x) + mean).transpose(1, 0, 2)
    projected = projected.reshape(n_times, by, bx, block, block)
    weight = (1.0 / (1.0 + kept.sum(1))).reshape(by, bx).astype(np.float32)
    out, total = np.zeros(part.shape, np.float32), np.zeros(part.shape[1:], np.float32)
    if powers:  # per block and frame, (by, bx, T, powers)
        on_self = np.einsum("btk,bk,btk->bt", vectors, gain, vectors)
        maps = [1 - on_self, on_self, np.einsum("btk,bk,btk->bt", vectors, gain * gain, vectors)][:powers]
        power = (noise[:, :, None] * np.stack(maps, -1)).reshape(by, bx, n_times, powers)
        expected_out = np.zeros((n_times, powers) + part.shape[1:], np.float32)
    # every (block / stride)-th block along both axes tiles the image without overlap: add each such tiling at once
    if block % stride:
        raise ValueError(f"the local projection's block ({block} px) must be a multiple of its stride ({stride} px)")
    step = block // stride
    for oy in range(step):
        for ox in range(step):
            tile_weight = weight[oy::step, ox::step]
            tiles = projected[:, oy::step, ox::step] * tile_weight[None, :, :, None, None]
            tile_rows, tile_cols = tiles.shape[1:3]
            at = (slice(oy * stride, oy * stride + tile_rows * block),
                  slice(ox * stride, ox * stride + tile_cols * block))
            out[(slice(None),) + at] += tiles.transpose(0, 1, 3, 2, 4).reshape(n_times, tile_rows * block,
                                                                                tile_cols * block)
            total[at] += np.repeat(np.repeat(tile_weight, block, 0), block, 1)
            if powers:
                tiled = (power[oy::step, ox::step] * tile_weight[:, :, None, None]).transpose(2, 3, 0, 1)
                expected_out[(slice(None), slice(None)) + at] += np.repeat(np.repeat(tiled, block, 2), block, 3)
    rows, cols = (w.indices(n) for w, n in zip(window, (height, width)))
    crop = (slice(None), slice(rows[0] - y0 * stride, rows[1] - y0 * stride),
            slice(cols[0] - x0 * stride, cols[1] - x0 * stride))
    return (out / total)[crop], (expected_out / total)[(slice(None),) + crop] if powers else None


def context_slices(lookup, t, k, n_times, n_positions, offsets, precontrast_frames, fallback):
    """Slice indices of a target frame (t, k)'s input channels and of its pre-contrast guide frames.

    lookup: {(time_index, position_index): slice index} of one series; offsets: [(dt, dk)] of the channels, the
    target (0, 0) first (model.context_offsets); time and slice neighbours are reflected at the ends of the
    series (a series of one time point repeats its frame); a frame missing from the lookup (an irregular series)
    falls back to `fallback`, the target itself. precontrast_frames N: the first N time points at position k (as
    many as exist), averaged into the guide channel by the caller. Used by PairedSlices and by enhance.py, so
    both assemble the same stacks."""
    channels = [lookup.get((reflect(t + dt, n_times), reflect(k + dk, n_positions)), fallback) for dt, dk in offsets]
    guide = [lookup.get((f, k), fallback) for f in range(min(precontrast_frames, n_times))]
    return channels, guide


def position_frames(lookup, k, n_times, fallback):
    """Slice indices of every time point at position k (the stack temporal_projection takes), in time order;
    a missing frame falls back to `fallback`, the target itself."""
    return [lookup.get((f, k), fallback) for f in range(n_times)]


def projection_channels(frames, context, window=None, shifts=None, which=None):
    """(T', C, h, w): temporal_projection(frames, context.projection, ...) of each returned frame, and with
    context.noise_map its noise level (C = 2; else C = 1): the last channels of a context's input stack."""
    out = temporal_projection(frames, context.projection, window, shifts, which, noise=context.noise_map)
    return np.stack(out if context.noise_map else (out,), 1)


def context_stack(images, layout, context):
    """(n, H, W) normalized frames of one series -> (n, H, W, C) model inputs of a Context (model.context_offsets),
    by context_slices (and projection_channels, one per position, for a projection channel and its noise map).
    layout: (time_index, position_index) per frame (preprocessing's Series.layout)."""
    images, offsets, precontrast_frames = np.asarray(images), context.offsets, context.precontrast_frames
    lookup = {tk: i for i, tk in enumerate(layout)}
    n_times, n_positions = 1 + max(t for t, _ in layout), 1 + max(k for _, k in layout)
    projected = {}
    out = []
    for i, (t, k) in enumerate(layout):
        channels, guide = context_slices(lookup, t, k, n_times, n_positions, offsets, precontrast_frames, i)
        stack = [images[c] for c in channels] + ([np.mean([images[g] for g in guide], axis=0)] if guide else [])
        if context.projection:
            frames = tuple(position_frames(lookup, k, n_times, i))
            if frames not in projected:
                projected[frames] = projection_channels(images[list(frames)], context)
            stack.extend(projected[frames][t])
        out.append(np.stack(stack, axis=-1))
    return np.stack(out).astype(np.float32)
