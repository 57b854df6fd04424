"""Multi-frame context: which frames a slice's input stack holds, in which order, and that crops, flips and noise
treat the channels as one image."""

import numpy as np
import pytest

from breastmri.config import load_config
from breastmri.data.context import (
    Context,
    context_slices,
    context_stack,
    reflect,
    temporal_projection,
)
from breastmri.data.manifest import read_manifest
from breastmri.data.paired import PairedSlices
from breastmri.restore.networks import context_channels, context_offsets, get_model

LAYOUT = [(t, k) for t in range(4) for k in range(3)]  # 4 time points x 3 slice positions, time-major
LOOKUP = {tk: i for i, tk in enumerate(LAYOUT)}


def test_reflect_does_not_repeat_the_edge():
    assert [reflect(i, 4) for i in range(-3, 8)] == [3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1]
    assert reflect(5, 1) == 0 and reflect(-2, 1) == 0  # one time point: always itself


def test_channel_order_and_reflection_at_the_ends():
    cfg = load_config(overrides=["model.context.time=2", "model.context.slices=1",
                                 "model.context.precontrast_frames=3", "model.context.projection=false"])
    offsets, pre, _, _ = context_offsets(cfg)
    assert offsets == [(0, 0), (-1, 0), (1, 0), (-2, 0), (2, 0), (0, -1), (0, 1)] and pre == 3
    assert context_channels(cfg) == 8 and get_model(cfg).input_shape[-1] == 8
    channels, guide = context_slices(LOOKUP, 0, 0, 4, 3, offsets, pre, fallback=0)
    index = {i: tk for tk, i in LOOKUP.items()}
    # t-1 -> 1, t+1 -> 1, t-2 -> 2, t+2 -> 2 (reflected at t = 0), k-1 -> 1, k+1 -> 1 (reflected at k = 0)
    assert [index[c] for c in channels] == [(0, 0), (1, 0), (1, 0), (2, 0), (2, 0), (0, 1), (0, 1)]
    assert [index[g] for g in guide] == [(0, 0), (1, 0), (2, 0)]  # the first 3 frames at the same position
    channels, _ = context_slices(LOOKUP, 3, 2, 4, 3, offsets, 0, fallback=0)
    assert [index[c] for c in channels] == [(3, 2), (2, 2), (2, 2), (1, 2), (1, 2), (3, 1), (3, 1)]
    with pytest.raises(ValueError, match="model.context.time"):
        context_offsets(load_config(overrides=["model.context.time=-1"]))
    with pytest.raises(ValueError, match="noise_map"):  # the projection's noise level needs a projection
        context_offsets(load_config(overrides=["model.context.projection=false", "model.context.noise_map=true"]))


def test_context_stack_of_a_series_matches_the_lookup():
    images = np.arange(len(LAYOUT), dtype=np.float32)[:, None, None] * np.ones((1, 4, 4), np.float32)
    stack = context_stack(images, LAYOUT, Context([(0, 0), (-1, 0), (1, 0)], 2))
    assert stack.shape == (12, 4, 4, 4)
    i = LOOKUP[(2, 1)]
    assert stack[i, 0, 0].tolist() == [LOOKUP[(2, 1)], LOOKUP[(1, 1)], LOOKUP[(3, 1)],
                                       (LOOKUP[(0, 1)] + LOOKUP[(1, 1)]) / 2]


def test_dataset_stacks_come_from_the_slice_own_series(smoke_data):
    offsets = [(0, 0), (-1, 0), (1, 0), (0, 1)]
    ds = PairedSlices(smoke_data, "test", batch_size=4, context=(offsets, 2))
    rows = read_manifest(smoke_data, "test")
    by_key = {(r["series_uid"], r["time_index"], r["position_index"]): r for r in rows}
    for b in range(len(ds)):
        noisy, clean = ds[b]
        assert noisy.shape[-1] == 5 and clean.shape[-1] == 1
        for j, row in enumerate(ds.batch_rows(b)):
            stored = np.load(smoke_data / row["noisy_file"], mmap_mode="r")
            t, k, n_t, n_k = row["time_index"], row["position_index"], row["n_times"], row["n_positions"]
            for c, (dt, dk) in enumerate(offsets):
                neighbour = by_key[(row["series_uid"], reflect(t + dt, n_t), reflect(k + dk, n_k))]
                assert neighbour["patient_id"] == row["patient_id"]  # nothing of another series or patient
                np.testing.assert_array_equal(noisy[j, ..., c], stored[neighbour["slice_index"]])
            guide = [by_key[(row["series_uid"], f, k)]["slice_index"] for f in range(2)]
            np.testing.assert_allclose(noisy[j, ..., 4], stored[guide].mean(0), atol=1e-6)


@pytest.mark.parametrize("fresh_noise", [False, True])
def test_crops_flips_and_noise_treat_the_stack_as_one_image(smoke_data, fresh_noise):
    # two channels of the same frame: after crop, flip, rotation and noise they must still be identical
    ds = PairedSlices(smoke_data, "train", batch_size=4, shuffle=True, augment=True, patch_size=32,
                      fresh_noise=fresh_noise, context=([(0, 0), (0, 0), (1, 0)], 0))
    for epoch in range(3):
        ds.epoch = epoch
        noisy, clean = ds[0]
        np.testing.assert_array_equal(noisy[..., 0], noisy[..., 1])
        assert not np.array_equal(noisy[..., 0], noisy[..., 2])  # another time point: other noise
        # the target channel is the degraded clean target, in the same geometry
        for j in range(len(noisy)):
            assert np.corrcoef(noisy[j, ..., 0].ravel(), clean[j, ..., 0].ravel())[0, 1] > 0.5


def test_decorrelated_target_is_built_from_the_target_frame_of_the_same_draw(smoke_data):
    offsets = [(0, 0), (-1, 0), (1, 0)]
    plain = PairedSlices(smoke_data, "val", batch_size=3, context=(offsets, 2))
    decorrelated = PairedSlices(smoke_data, "val", batch_size=3, context=(offsets, 2), target="decorrelated")
    noisy, clean = plain[0]
    noisy_d, target = decorrelated[0]
    np.testing.assert_array_equal(noisy, noisy_d)  # the input does not change
    for j, row in enumerate(plain.batch_rows(0)):
        c = (row["sigma_source"] / row["sigma_added"]) ** 2
        expected = clean[j, ..., 0] - c * (noisy[j, ..., 0] - clean[j, ..., 0])  # channel 0: the target frame
        np.testing.assert_allclose(target[j, ..., 0], expected, rtol=1e-5, atol=1e-6)
    # training crops with fresh noise: the same rule on each fresh draw, flips applied to input and target alike
    fresh = PairedSlices(smoke_data, "train", batch_size=4, patch_size=32, augment=True, fresh_noise=True, seed=5,
                         steps_per_epoch=2, context=(offsets, 2), target="decorrelated")
    reference = PairedSlices(smoke_data, "train", batch_size=4, patch_size=32, augment=True, fresh_noise=True,
                             seed=5, steps_per_epoch=2, context=(offsets, 2))
    noisy_f, target_f = fresh[1]
    noisy_r, clean_r = reference[1]
    np.testing.assert_array_equal(noisy_f, noisy_r)
    for j, row in enumerate(fresh.batch_rows(1)):
        c = (row["sigma_source"] / row["sigma_added"]) ** 2
        np.testing.assert_allclose(target_f[j, ..., 0], clean_r[j, ..., 0] - c * (noisy_r[j, ..., 0] - clean_r[j, ..., 0]),
                                   rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="supervised"):
        PairedSlices(smoke_data, "train", mode="noise2void", target="decorrelated")


def test_projected_target_is_the_3t_frames_own_registered_projection(smoke_data):
    # validation (whole slices): the target frame of the registered projection of its position's 3T frames; the
    # input does not change
    plain = PairedSlices(smoke_data, "val", batch_size=3, context=([(0, 0)], 0, "registered"))
    projected = PairedSlices(smoke_data, "val", batch_size=3, context=([(0, 0)], 0, "registered"), target="projected")
    noisy, clean = plain[0]
    noisy_p, target = projected[0]
    np.testing.assert_array_equal(noisy, noisy_p)
    for j, row in enumerate(plain.batch_rows(0)):
        frames = np.load(smoke_data / row["clean_file"])[projected.position_of(row)]
        assert row["n_times"] >= 3 and len(frames) == row["n_times"]
        expected = temporal_projection(frames, "registered")[row["time_index"]]
        np.testing.assert_allclose(target[j, ..., 0], expected, atol=1e-6)
        assert np.mean((target[j, ..., 0] - clean[j, ..., 0]) ** 2) > 0  # not the 3T image
    # training crops with fresh noise: the whole slice's projection, cropped where the 3T crop was taken
    args = dict(batch_size=4, patch_size=32, fresh_noise=True, seed=3, steps_per_epoch=2,
                context=([(0, 0)], 0, "registered"), shuffle=True)
    noisy_r, clean_r = PairedSlices(smoke_data, "train", **args)[1]
    fresh = PairedSlices(smoke_data, "train", target="projected", **args)
    noisy_f, target_f = fresh[1]
    np.testing.assert_array_equal(noisy_f, noisy_r)
    for j, row in enumerate(fresh.batch_rows(1)):
        slices = np.load(smoke_data / row["clean_file"])
        windows = np.lib.stride_tricks.sliding_window_view(slices[row["slice_index"]], (32, 32))
        (y,), (x,) = np.nonzero(np.all(windows == clean_r[j, ..., 0], axis=(2, 3)))
        whole = temporal_projection(slices[fresh.position_of(row)], "registered")[row["time_index"]]
        np.testing.assert_allclose(target_f[j, ..., 0], whole[y:y + 32, x:x + 32], atol=1e-6)
    # a training set whose 3T projections do not fit in memory: each crop projects its window, to the same target
    windowed = PairedSlices(smoke_data, "train", target="projected", **args)
    windowed._clean_projections_fit = False
    np.testing.assert_allclose(windowed[1][1], target_f, atol=1e-5)
    assert not windowed._projections  # nothing kept
    # fewer than 3 time points at a position: the 3T image
    short = PairedSlices(smoke_data, "train", target="projected", **{**args, "context": ([(0, 0)], 0)})
    short.position_of = lambda row: [row["slice_index"]] * 2
    np.testing.assert_array_equal(short[1][1], clean_r)


def test_local_projection_averages_every_block_as_a_direct_loop_does():
    """Block by block, with dipy's own Marchenko-Pastur classifier for each block's noise, averaged over
    NOISE_BLOCKS^2 neighbouring blocks: the vectorized projection is the same; and a block whose eigenvalues all
    lie within the noise's spread reads their mean."""
    import math

    from dipy.denoise.localpca import _pca_classifier
    from scipy import ndimage

    from breastmri.data.context import LOCAL_BLOCK as B
    from breastmri.data.context import LOCAL_STRIDE as S
    from breastmri.data.context import NOISE_BLOCKS, _local_projection, block_noise

    rng = np.random.default_rng(2)
    courses = rng.random((5, 3))
    frames = (np.einsum("tk,khw->thw", courses, rng.random((3, 21, 26)))
              + 0.05 * rng.standard_normal((5, 21, 26))).astype(np.float32)
    ny, nx = (-(-(n - B) // S) + 1 for n in frames.shape[1:])
    padded = np.pad(frames, ((0, 0), (0, (ny - 1) * S + B - 21), (0, (nx - 1) * S + B - 26)), mode="reflect")
    decompositions, noise = {}, np.zeros((ny, nx))
    for by in range(ny):  # one block at a time: its temporal PCA and its noise by dipy
        for bx in range(nx):
            at = (slice(by * S, by * S + B), slice(bx * S, bx * S + B))
            x = padded[(slice(None),) + at].reshape(5, -1).astype(np.float64)
            mean = x.mean(1, keepdims=True)
            values, vectors = np.linalg.eigh((x - mean) @ (x - mean).T / x.shape[1])
            noise[by, bx] = _pca_classifier(values, x.shape[1])[0]
            assert block_noise(values[None], x.shape[1])[0] == pytest.approx(noise[by, bx], rel=1e-5)
            decompositions[by, bx] = at, x, mean, values, vectors
    noise = ndimage.uniform_filter(noise, NOISE_BLOCKS, mode="nearest")
    out, total = np.zeros(padded.shape), np.zeros(padded.shape[1:])
    for (by, bx), (at, x, mean, values, vectors) in decompositions.items():  # shrunk, weighted 1 / (1 + kept)
        edge = noise[by, bx] * (1 + math.sqrt(5 / x.shape[1])) ** 2
        gain = np.clip(1 - edge / np.maximum(values, 1e-30), 0, 1)
        weight = 1 / (1 + (gain > 0).sum())
        out[(slice(None),) + at] += weight * ((vectors * gain) @ vectors.T @ (x - mean) + mean).reshape(5, B, B)
        total[at] += weight
    expected = (out / total)[:, :21, :26]
    whole = (slice(None), slice(None))
    np.testing.assert_allclose(_local_projection(frames, whole)[0], expected, atol=1e-5)
    pure = np.sort(rng.normal(1.0, 0.01, (1, 8)))
    assert block_noise(pure, 64)[0] == pytest.approx(pure.mean())


@pytest.mark.parametrize("shift", [(0.37, -1.21), (2.5, 0.0), (-3.9, 4.2)])
def test_the_separable_spline_shift_is_scipys_quintic_shift(shift):
    from scipy import ndimage

    from breastmri.registration import _spline_shift

    image = ndimage.gaussian_filter(np.random.default_rng(1).random((37, 53)), 1.5).astype(np.float32)
    expected = ndimage.shift(image, shift, order=5, mode="mirror")
    np.testing.assert_allclose(_spline_shift(image, shift), expected, atol=1e-6)
    assert np.abs(expected - image).max() > 0.01  # the shift moved something


def layout_of(data_dir, row):
    """(time_index, position_index) of every slice of the row's series, by slice index (Series.layout)."""
    series = [r for r in read_manifest(data_dir) if r["series_uid"] == row["series_uid"]]
    layout = [None] * len(series)
    for r in series:
        layout[r["slice_index"]] = (r["time_index"], r["position_index"])
    return layout


def _tissues(seed=0, size=64, lesion=None):
    """(clean, noisy) (8, size, size) frames of three tissues with their own time course (flat, slow, bolus) and
    optionally a square lesion (side `lesion`) with a fourth, washing-out course."""
    rng = np.random.default_rng(seed)
    courses = np.stack([np.ones(8), np.linspace(0, 1, 8), (np.arange(8) >= 3) * 2.0,
                        np.r_[0, 0, 0, 3, 2.5, 2, 1.6, 1.3]])
    labels = rng.integers(0, 3, size=(size, size))
    if lesion:
        labels[20:20 + lesion, 30:30 + lesion] = 3
    amplitude = rng.uniform(0.2, 1.0, size=(size, size))
    clean = np.moveaxis(courses[labels] * amplitude[..., None], -1, 0).astype(np.float32)  # (T, size, size)
    return clean, clean + 0.05 * rng.standard_normal(clean.shape).astype(np.float32), labels


@pytest.mark.parametrize("kind", ["global", "local", "registered", "guarded"])
def test_temporal_projection_keeps_the_time_courses_and_drops_noise(kind):
    """Three tissues with their own time course under noise: the projection keeps the courses (rank 3 of 8) and
    removes most of the noise; a frame alone comes back unchanged."""
    clean, noisy, labels = _tissues()
    out = temporal_projection(noisy, kind)
    assert out.shape == noisy.shape and out.dtype == np.float32
    error, before = np.mean((out - clean) ** 2), np.mean((noisy - clean) ** 2)
    assert error < 0.6 * before                  # about 3/8 of the noise variance remains (more in blocks)
    bolus = labels == 2                          # the enhancement is kept, not averaged away
    assert abs(out[5][bolus].mean() - clean[5][bolus].mean()) < 0.01
    np.testing.assert_array_equal(temporal_projection(noisy[:1], kind), noisy[:1])
    poisoned = noisy.copy()
    poisoned[2, 5, 5] = np.nan                   # no LinAlgError: main.py then reports the non-finite loss
    np.testing.assert_array_equal(temporal_projection(poisoned, kind), poisoned)
    with pytest.raises(ValueError, match="projection"):
        temporal_projection(noisy, "mppca")


@pytest.mark.parametrize("kind", ["global", "local", "registered", "guarded"])
def test_the_noise_map_is_the_noise_the_projection_keeps(kind):
    """Over 12 noise draws of three tissues, the noise map's RMS in each frame is within 20% of the standard
    deviation of the projection across the draws (the noise it keeps, pixel by pixel), and a map of a (smooth)
    frame without a time axis reads that frame's own noise (0.05) within 20%."""
    clean, _, _ = _tissues()
    rng = np.random.default_rng(1)
    draws = [temporal_projection(clean + 0.05 * rng.standard_normal(clean.shape).astype(np.float32), kind,
                                 noise=True) for _ in range(12)]
    kept = np.std([out for out, _ in draws], axis=0, ddof=1)
    mapped = np.sqrt(np.mean([level ** 2 for _, level in draws], axis=0))
    assert all(level.shape == clean.shape and level.dtype == np.float32 for _, level in draws)
    ratio = np.sqrt((mapped ** 2).mean((1, 2)) / (kept ** 2).mean((1, 2)))
    assert np.all(np.abs(ratio - 1) < 0.2), ratio
    assert np.all(kept.mean((1, 2)) < 0.8 * 0.05)  # it did take noise off
    smooth = np.linspace(0.2, 1.0, 64, dtype=np.float32)[None, :, None] * np.ones((1, 64, 64), np.float32)
    alone, level = temporal_projection(smooth + 0.05 * rng.standard_normal((1, 64, 64)).astype(np.float32), kind,
                                       noise=True)
    assert abs(level.mean() / 0.05 - 1) < 0.2
    frame = smooth + 0.05 * rng.standard_normal((1, 64, 64)).astype(np.float32)  # its map, too, crops exactly
    np.testing.assert_array_equal(temporal_projection(frame, kind, (slice(5, 20), slice(0, 9)), noise=True)[1],
                                  temporal_projection(frame, kind, noise=True)[1][:, 5:20, :9])


def test_local_projection_keeps_a_small_lesion_and_crops_exactly():
    """A 6 x 6 px lesion with its own time course is too few pixels for the whole slice's components: the global
    projection bends its curve towards the other tissues, the local one (blocks of 8) keeps it. A window of the
    local projection equals the whole projection cropped, at the edges too (training crops this way)."""
    clean, noisy, labels = _tissues(seed=1, size=96, lesion=6)
    lesion = labels == 3
    errors = {kind: np.abs(temporal_projection(noisy, kind)[:, lesion].mean(1) - clean[:, lesion].mean(1)).max()
              for kind in ("global", "local")}
    assert errors["local"] < 0.03 < errors["global"], errors
    whole = temporal_projection(noisy, "local")
    for rows, cols in [(slice(13, 51), slice(0, 96)), (slice(60, 96), slice(71, 96)), (slice(0, 1), slice(5, 6))]:
        np.testing.assert_allclose(temporal_projection(noisy, "local", (rows, cols)), whole[:, rows, cols],
                                   atol=1e-6)


def test_registered_projection_undoes_frame_motion():
    """Frames moved by known sub-pixel shifts: register_shifts finds them, shift_frames moves a frame there and
    back (up to the ringing of what crossed the edges), a shift past REGISTER_MAX_SHIFT counts as failed, and the registered
    projection is closer to the moving truth than the local one (whose blocks see the motion as extra time
    courses), on each frame's own grid."""
    from scipy import ndimage

    from breastmri.registration import REGISTER_MAX_SHIFT, register_shifts, shift_frames

    rng = np.random.default_rng(3)
    texture = ndimage.gaussian_filter(rng.random((96, 96)), 1.5).astype(np.float32)
    texture = (texture - texture.min()) / np.ptp(texture)
    texture[:12], texture[-12:], texture[:, :12], texture[:, -12:] = 0, 0, 0, 0   # anatomy inside air, as a scan
    courses = np.linspace(1.0, 1.6, 8, dtype=np.float32)
    truth_shifts = np.array([[0, 0]] + [rng.uniform(-1.5, 1.5, 2) for _ in range(7)], np.float32)
    still = courses[:, None, None] * texture
    clean = shift_frames(still, -truth_shifts)            # frame t shows the anatomy moved by -shift[t]
    noisy = clean + 0.05 * rng.standard_normal(clean.shape).astype(np.float32)
    found = register_shifts(noisy)
    np.testing.assert_allclose(found, truth_shifts, atol=0.1)  # 0.1 px
    inner = (slice(None), slice(12, -12), slice(12, -12))
    there_and_back = shift_frames(shift_frames(noisy, found), -found)
    assert np.sqrt(np.mean((there_and_back - noisy)[inner] ** 2)) < 0.1 * 0.05    # 10% of the noise's sd
    far = np.stack([texture, np.roll(texture, 3 * int(REGISTER_MAX_SHIFT), axis=1)])
    assert not np.any(register_shifts(far))              # a jump that large is no motion: left at 0
    errors = {kind: np.mean((temporal_projection(noisy, kind)[inner] - clean[inner]) ** 2)
              for kind in ("local", "registered")}
    assert errors["registered"] < 0.6 * errors["local"], errors
    # a window (training crops) and a subset of frames equal the whole projection's, at the edges too
    for kind in ("registered", "guarded"):
        whole = temporal_projection(noisy, kind)
        for window in [(slice(30, 70), slice(0, 40)), (slice(90, 96), slice(60, 96))]:
            np.testing.assert_allclose(temporal_projection(noisy, kind, window, found, which=[5, 2]),
                                       whole[[5, 2]][(slice(None),) + window], atol=1e-5)


def test_the_guard_puts_back_what_the_temporal_model_misses_and_keeps_what_it_holds():
    """Three tissues with their own time course, and in one frame a fine pattern that no other frame has (a
    motion jump, a pulsating vessel) near the noise level: the registered projection takes most of it off that
    frame, the guarded one puts a good part of it back, and where the time courses hold (away from the patch) it stays the projection: it
    removes as much noise there (within 10%). A window equals the whole output cropped, at the edges too."""
    clean, noisy, _ = _tissues()
    texture = 0.06 * (np.indices((16, 16)).sum(0) % 2 * 2 - 1)   # a fine pattern near the noise level
    clean[4, 40:56, 40:56] += texture
    noisy[4, 40:56, 40:56] += texture
    outs = {kind: temporal_projection(noisy, kind) for kind in ("registered", "guarded")}
    patch, inner = (4, slice(42, 54), slice(42, 54)), texture[2:-2, 2:-2]
    kept = {kind: ((out[patch] - clean[patch] + inner) * inner).mean() / (inner * inner).mean()  # share kept
            for kind, out in outs.items()}
    assert kept["registered"] < 0.5 and kept["guarded"] > kept["registered"] + 0.15, kept
    errors = {kind: np.mean((out[:, :32] - clean[:, :32]) ** 2) for kind, out in outs.items()}
    assert errors["guarded"] < 1.1 * errors["registered"] < 0.6 * np.mean((noisy[:, :32] - clean[:, :32]) ** 2)
    for window in [(slice(0, 20), slice(30, 64)), (slice(50, 64), slice(0, 64)), (slice(40, 41), slice(7, 8))]:
        np.testing.assert_allclose(temporal_projection(noisy, "guarded", window), outs["guarded"][(slice(None),) +
                                   window], atol=1e-5)


@pytest.mark.parametrize("kind, noise_map", [("global", False), ("local", False), ("registered", False),
                                             ("guarded", False), ("guarded", True)])
def test_projection_channel_is_the_same_in_training_and_enhancement(kind, noise_map, smoke_data):
    """The dataset's projection channel (and its noise map) equals context_stack's (enhance.py) on the stored draw,
    for whole slices and for training crops (projected on the crop's window of the whole slices)."""
    cfg = load_config(overrides=["model.context.time=1", f"model.context.projection={kind}",
                                 "model.context.precontrast_frames=2", f"model.context.noise_map={noise_map}"])
    context = context_offsets(cfg)
    channels = 5 + noise_map
    assert context.projection == kind and context_channels(cfg) == channels == get_model(cfg).input_shape[-1]
    ds = PairedSlices(smoke_data, "test", batch_size=4, context=context)
    noisy, _ = ds[0]
    row = ds.batch_rows(0)[0]
    stack = context_stack(np.load(smoke_data / row["noisy_file"]), layout_of(smoke_data, row), context)
    np.testing.assert_allclose(noisy[0], stack[row["slice_index"]], atol=1e-6)
    assert not np.allclose(noisy[0, ..., 4], noisy[0, ..., 0], atol=1e-3)   # not the frame itself
    # the untrained network returns the projection (its start), never the noise map after it
    np.testing.assert_allclose(get_model(cfg).predict(noisy[:1], verbose=0), noisy[:1, ..., 4:5], atol=1e-6)
    if noise_map:  # a noise level: positive, below the frame's own noise where the projection took some off
        assert np.all(noisy[..., 5] >= 0) and 0 < np.median(noisy[..., 5]) < 0.2
    crops = PairedSlices(smoke_data, "test", batch_size=4, context=context, patch_size=24, fresh_noise=False)
    noisy, clean = crops[0]
    for j, row in enumerate(crops.batch_rows(0)):
        whole_clean = np.load(smoke_data / row["clean_file"])[row["slice_index"]]
        y, x = next((y, x) for y in range(whole_clean.shape[0] - 23) for x in range(whole_clean.shape[1] - 23)
                    if np.array_equal(whole_clean[y:y + 24, x:x + 24], clean[j, ..., 0]))
        stack = context_stack(np.load(smoke_data / row["noisy_file"]), layout_of(smoke_data, row), context)
        np.testing.assert_allclose(noisy[j], stack[row["slice_index"], y:y + 24, x:x + 24], atol=1e-6)
    for mode in ("noise2void", "noise2noise"):  # the self-supervised modes take it too (test_selfsup: how)
        assert PairedSlices(smoke_data, "train", mode=mode, context=([(0, 0)], 0, True)).context.projection == "global"

    with pytest.raises(ValueError, match="model.context.projection"):
        context_offsets(load_config(overrides=["model.context.projection=2"]))
    legacy = load_config(overrides=["model.context.projection=true"])   # a saved run config of the last release
    assert context_offsets(legacy).projection == "global"
    # the untrained network returns its start channel: the projection (the last), but the frame for `true`,
    # as those runs were trained (--resume rebuilds them with get_model)
    x = np.random.default_rng(0).random((1, 16, 16, 2), dtype=np.float32)
    for cfg, start in ((legacy, 0), (load_config(overrides=["model.context.projection=global"]), 1)):
        np.testing.assert_allclose(get_model(cfg).predict_on_batch(x)[..., 0], x[..., start], atol=1e-6)
    assert context_offsets(load_config(overrides=["model.context.projection=false"])).projection is None


def test_a_long_series_reads_its_noise_from_spread_frames():
    """70 frames (more than a block's 64 pixels) of three tissue time courses whose noise neighbouring frames
    partly share (view sharing, as ProstateX's TWIST): the noise fit on NOISE_FRAMES spread frames, capped by the
    whole slice's estimate, still removes most of the noise, and a window still equals the whole projection
    cropped. (On ProstateX the fit on all 70 frames read 5% of the noise; this milder correlation does not show it.)"""
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, size=(64, 64))
    courses = np.stack([np.ones(70), np.linspace(0, 1, 70), 1 + np.sin(np.linspace(0, 3, 70))])
    clean = np.moveaxis(courses[labels] * rng.uniform(0.3, 1.0, (64, 64))[..., None], -1, 0).astype(np.float32)
    white = rng.standard_normal((71,) + clean.shape[1:]).astype(np.float32)
    noisy = clean + 0.05 * (white[1:] + 0.3 * white[:-1]) / np.sqrt(1.09)
    out = temporal_projection(noisy, "local")
    assert np.mean((out - clean) ** 2) < 0.25 * np.mean((noisy - clean) ** 2)
    window = (slice(10, 40), slice(33, 64))
    np.testing.assert_allclose(temporal_projection(noisy, "local", window), out[:, 10:40, 33:64], atol=1e-6)


def test_fine_structure_draws_sparse_lines_into_the_3t_frames_and_their_target_alike(smoke_data, monkeypatch):
    from breastmri.data.crops import fine_structure

    s = fine_structure(np.random.default_rng(0), (96, 96), 0.5)
    assert s.max() > 0.2 and s.min() < -0.2                     # bright lines and dark ones
    assert np.mean(np.abs(s) > 0.05) < 0.35                     # sparse: most pixels untouched
    assert np.mean(s ** 4) / np.mean(s ** 2) ** 2 > 4           # a few large values, not a texture
    low = (np.hypot(*np.meshgrid(np.fft.fftfreq(96), np.fft.fftfreq(96))) < 0.1).astype(float)
    smooth = fine_structure(np.random.default_rng(0), (96, 96), 0.5, gain=low)
    assert np.abs(np.diff(smooth, axis=1)).mean() < 0.5 * np.abs(np.diff(s, axis=1)).mean()  # band-limited
    # in training: the same crops, the lines added to the target as a fraction of its signal, none in air
    args = dict(batch_size=4, patch_size=32, fresh_noise=True, seed=3, steps_per_epoch=2, shuffle=True)
    _, plain = PairedSlices(smoke_data, "train", **args)[1]
    _, lined = PairedSlices(smoke_data, "train", fine_structure=0.5, **args)[1]
    ratio = (lined / plain)[plain > 0.05]
    assert ratio.max() > 1.05 and ratio.min() < 0.95 and abs(np.median(ratio) - 1) < 0.02
    # the input frame carries the same lines at the same pixels, flips included (noise left out to see it)
    import breastmri.data.paired as paired

    monkeypatch.setattr(paired, "add_noise", lambda frames, *a, **k: frames)
    frame_plain, target_plain = PairedSlices(smoke_data, "train", **args)[1]
    frame_lined, target_lined = PairedSlices(smoke_data, "train", fine_structure=0.5, **args)[1]
    np.testing.assert_allclose(frame_lined[..., :1] - frame_plain[..., :1], target_lined - target_plain, atol=1e-5)
    # the lines move with each frame's anatomy: registered, every frame's lines land where the first frame's are
    data = PairedSlices(smoke_data, "train", fine_structure=0.5, **args)
    row = next(r for r in data.rows if data.noise_spectrum(r) is not None)
    position = data.position_of(row)
    motion = np.array([(0.0, 0.0)] + [(1.5 * k, -0.7 * k) for k in range(1, len(position))], np.float32)
    monkeypatch.setattr(data, "_stored_shifts", lambda r, frames, array: motion[[position.index(i) for i in frames]])
    lines, signal = data._fine_structure(row, position, position, data.image_shape, np.random.default_rng(1))
    assert signal is data.array(row["truth_file"] if row.get("truth_file") else row["clean_file"])
    from breastmri.registration import register_shifts

    np.testing.assert_allclose(register_shifts(np.stack([lines[i] for i in position])), motion, atol=0.1)
    monkeypatch.setattr(data, "noise_spectrum", lambda r: None)  # no k-space window measured: no lines
    assert data._fine_structure(row, position, position, data.image_shape, np.random.default_rng(1)) == (None, None)
    with pytest.raises(ValueError, match="fine_structure"):
        PairedSlices(smoke_data, "train", fine_structure=0.5, patch_size=32)  # stored noise: no clean draw to line
    with pytest.raises(ValueError, match="fine_structure"):
        PairedSlices(smoke_data, "train", fine_structure=0.7, **args)  # a dark line would turn the signal negative
