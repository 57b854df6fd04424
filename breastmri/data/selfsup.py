"""Self-supervised samples: noise2noise frame pairs (registered onto each other) and blind-spot masking for
the noise2void training mode (Krull et al. 2019, arXiv:1811.10980).

A fraction of the pixels of an input crop is replaced by a neighbour's value (or, for a DCE series, by the pixel's
own value at another time point); the loss is then taken at those pixels only, so the network cannot learn the
identity and learns the signal from the surroundings.

What PairedSlices(mode=...) makes of a row (selfsup_sample):
- "noise2noise": the split keeps the frames t < noise2noise_frames (the pre-contrast frames) of slice
  positions that have at least two of them; the input is frame t (with its slice neighbours as context),
  the target another of those frames at the same position of the same series, drawn per sample, so every
  frame takes turns as input and target; with `register` shifted onto frame t (_registered), weight 1
  except where the shift brings in pixels from outside the slice. A projection channel projects every frame
  of the position but the target (leave-target-out; inference projects all T of them). Time context and the
  pre-contrast guide would show the network the target's own noise, so they are refused.
- "noise2void": the target is the input frame itself; a fraction `mask_fraction` (<= 0.5) of its pixels is
  replaced (blind_spot) wherever the input reads that frame (its channel and the projection's stack), and
  only they carry weight. The replacement is a pixel of the (2 mask_radius + 1)^2 window that is not a blind
  spot: with a projection, the one whose course over the position's other frames is closest; without, a
  random one. Time and slice neighbours keep their pixels (their noise is independent); the guide is
  refused (it averages the target frame in).
Both draw blind spots and crops on whole slices, the crop chosen on the input frame (never on the
target's noise), and take a projection only on series of 3 or more time points.
"""

import numpy as np

from breastmri.data.context import reflect, temporal_projection
from breastmri.data.crops import symmetry
from breastmri.registration import register_shifts, shift_frames


def blind_spot(image, rng, fraction, radius=2, time_courses=None):
    """Noise2Void masking of one (h, w) image: (masked copy, weight).

    round(fraction * h * w) distinct pixels (at least one) are drawn uniformly; each takes the value of a pixel
    of the (2 radius + 1)^2 window around it that is not a blind spot itself (window positions outside the image
    are reflected back in, as np.pad's 'reflect', so a border pixel cannot land on itself either). A blind spot
    copied into its neighbour would show the network, a pixel away, the very noise it is asked to predict there
    (about `fraction` of the blind spots otherwise). weight is 1 at the masked pixels, 0 elsewhere: the loss is
    taken there only. ValueError when a blind spot has no such pixel (an image of one pixel; fraction near 1).

    time_courses: None, or (F, h, w) other frames of the same anatomy with noise independent of the image's (the
    other time points of a DCE position). Without them the source is drawn uniformly (Noise2Void); with them, it
    is the window pixel whose values there are closest (least squares) to the blind spot's: a pixel of the same
    tissue, so the replaced value looks like the pixel's own up to its noise, which is independent of the target
    (the choice never reads the image). The temporal projection of a masked stack then sees an ordinary time
    course, where a random neighbour's value would make the blind spots the only pixels whose course jumps at the
    target frame. (Noise correlated between neighbouring pixels, as after scanner-side interpolation, would leak
    through either choice, more through this one.)
    """
    h, w = image.shape
    n = max(1, int(round(fraction * h * w)))
    picked = rng.choice(h * w, size=n, replace=False)
    ys, xs = np.divmod(picked, w)
    blind = np.zeros((h, w), bool)
    blind[ys, xs] = True
    source_y, source_x = ys.copy(), xs.copy()
    if time_courses is not None:
        window = np.arange(-radius, radius + 1)
        dy, dx = (a.ravel() for a in np.meshgrid(window, window, indexing="ij"))
        cy, cx = reflect(ys[:, None] + dy, h), reflect(xs[:, None] + dx, w)  # (n, candidates)
        courses = np.asarray(time_courses, np.float32)
        distance = ((courses[:, cy, cx] - courses[:, ys, xs][..., None]) ** 2).sum(0)
        distance[blind[cy, cx]] = np.inf  # the pixel itself and every other blind spot
        best = np.argmin(distance, axis=1)
        source_y, source_x = cy[np.arange(n), best], cx[np.arange(n), best]
    # drawn uniformly: every blind spot without time courses, and those whose window holds only blind spots
    redraw = blind[source_y, source_x]
    for _ in range(100):
        if not redraw.any():
            break
        dy, dx = rng.integers(-radius, radius + 1, size=(2, int(redraw.sum())))
        source_y[redraw] = reflect(ys[redraw] + dy, h)
        source_x[redraw] = reflect(xs[redraw] + dx, w)
        redraw = blind[source_y, source_x]
    if redraw.any():
        raise ValueError(f"{int(redraw.sum())} blind spots found no pixel of their {2 * radius + 1}^2 window that "
                         f"is not a blind spot ({h}x{w} image, mask_fraction {fraction}): lower mask_fraction")
    masked = np.array(image, dtype=np.float32, copy=True)
    masked[ys, xs] = image[source_y, source_x]
    weight = np.zeros((h, w), np.float32)
    weight[ys, xs] = 1.0
    return masked, weight


def selfsup_sample(ds, row, rng):
    """(input (h, w, C), target (h, w, 2)) of one row in a ds-supervised mode; reads only noisy arrays."""
    channels, _ = ds.context_of(row)
    noisy_all = ds.array(row["noisy_file"])
    own = target = row["slice_index"]
    if ds.mode == "noise2noise":
        options = ds.partners(row)
        target = options[int(rng.integers(len(options)))]
    # the projection's stack: every time point of the position except a noise2noise target (its noise would
    # reach the input through the projection)
    left_out = target if ds.mode == "noise2noise" else None
    projected = [f for f in ds.position_of(row) if f != left_out] if ds.context.projection else []
    frames, which = np.unique(channels + projected, return_inverse=True)
    # whole slices: blind spots and the crop are drawn on them, and the projection's noise level comes from them
    stack = np.asarray(noisy_all[frames], np.float32)
    i = int(np.searchsorted(frames, own))
    if ds.mode == "noise2noise":
        values = np.asarray(noisy_all[target], np.float32)
        weight = np.ones_like(values)
        if ds.register:  # frame i of the stack is the input frame itself (noise2noise masks nothing)
            values, weight = registered_target(ds, (row["noisy_file"], own, target), stack[i], values)
    else:
        # the blind spots hide the target frame wherever it is read: its channel, the projection's stack, a
        # neighbour reflected onto it (a series of one time point or position), a missing frame's fallback.
        # Other frames keep their pixels: their noise is independent of the target's.
        values = stack[i].copy()
        others = [j for j, f in enumerate(frames) if f != own and f in projected]
        stack[i], weight = blind_spot(stack[i], rng, ds.mask_fraction, ds.mask_radius,
                                      time_courses=stack[others] if others else None)
    window = (slice(None), slice(None))
    if ds.patch_size is not None:
        # chosen on the input frame (blind spots hidden): a tissue count on the target would read the noise
        # the loss is taken on, and prefer crops where it is positive
        y, x = ds._crop_position(stack[i], rng)
        window = (slice(y, y + ds.patch_size), slice(x, x + ds.patch_size))
    stack = stack[which]
    n = len(channels)
    parts = [stack[:n][(slice(None),) + window]]
    if projected:
        parts.append(temporal_projection(stack[n:], ds.context.projection, window,
                                         which=[projected.index(own)]))
    inputs = np.moveaxis(np.concatenate(parts), 0, -1)
    target = np.stack([values[window], weight[window]], axis=-1)
    if ds.augment:
        inputs, target = symmetry(inputs, target, rng)
    return np.ascontiguousarray(inputs, np.float32), np.ascontiguousarray(target, np.float32)


def registered_target(ds, key, reference, moving):
    """(frame `moving` shifted onto frame `reference`, weight), whole slices; key names the pair for the cache.

    A noise2noise target must show the input's anatomy, or the network learns the motion between them as blur:
    the 0.2 demo's pre-contrast frames, each moved by up to 1.5 mm, differed by 23.6 dB in truth PSNR, worse than
    their noise; registered, by 34.0 dB. Rigid, the registration the projection gets (registration.register_shifts,
    cached per pair; registration.shift_frames, a Fourier shift, which keeps the target's noise zero-mean and
    independent of the input's); pixels whose source lies outside the slice get weight 0. Elastic motion is
    left."""
    shift = ds._shifts.get(key)  # a single dict operation: safe with threaded workers
    if shift is None:
        shift = ds._shifts[key] = register_shifts(np.stack([reference, moving]))[1]
    # output pixel y reads moving at y - shift: inside the slice along both axes, or no weight
    inside = [(0 <= y) & (y <= n - 1) for y, n in ((np.arange(n) - d, n) for d, n in zip(shift, moving.shape))]
    weight = (inside[0][:, None] & inside[1][None, :]).astype(np.float32)
    return shift_frames(moving[None], shift)[0], weight
