"""PairedSlices / read_manifest on a tiny preprocessing output written by a fixture (manifest contract of
/tmp/design.md: manifest.csv + arrays/<series_key>_{clean,noisy}.npy)."""

import csv
import hashlib
import pickle
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
import pytest

from breastmri.data.manifest import (
    MANIFEST_COLUMNS,
    evenly_spaced,
    read_manifest,
    spread_slices,
)
from breastmri.data.paired import PairedSlices

NOISY_OFFSET = 0.25  # noisy = clean + offset, so any misalignment of an augmented pair changes the difference


def write_processed(out_dir, patients=(("P1", "train"), ("P2", "train"), ("P3", "val"), ("P4", "val")),
                    slices=5, size=32, dtype="float32", tissue=12):
    """A preprocessing output: one series per patient, `slices` slices of size x size.

    clean is 0 (air) except a tissue square of side `tissue` in the top-left corner (values 0.5..0.9,
    asymmetric so flips and rotations change it), and pixel [-1, -1] holds a unique id of the slice
    (row number + 1) / 1000, below any tissue threshold. noisy = clean + NOISY_OFFSET.
    Returns the manifest rows in file order.
    """
    arrays = out_dir / "arrays"
    arrays.mkdir(parents=True)
    rows, slice_id = [], 0
    ramp = np.linspace(0.5, 0.9, tissue * tissue, dtype=np.float32).reshape(tissue, tissue)
    for patient_id, split in patients:
        series_uid = f"2.25.{int(hashlib.sha1(patient_id.encode()).hexdigest()[:12], 16)}"
        key = f"{patient_id}_{hashlib.sha1(series_uid.encode()).hexdigest()[:10]}"
        clean = np.zeros((slices, size, size), dtype=np.float32)
        clean[:, :tissue, :tissue] = ramp
        for i in range(slices):
            slice_id += 1
            clean[i, -1, -1] = slice_id / 1000
        noisy = clean + NOISY_OFFSET
        np.save(arrays / f"{key}_clean.npy", clean.astype(dtype))
        np.save(arrays / f"{key}_noisy.npy", noisy.astype(dtype))
        for i in range(slices):
            rows.append({
                "patient_id": patient_id, "study_uid": f"{series_uid}.1", "series_uid": series_uid,
                "series_description": "DCE", "slice_index": i, "split": split,
                "clean_file": f"arrays/{key}_clean.npy", "noisy_file": f"arrays/{key}_noisy.npy",
                "norm_lo": 10.0, "norm_hi": 900.0, "sigma_source": 0.01, "sigma_added": 0.012,
                "snr_ratio": 0.5, "degrade_model": "field", "rows": size, "cols": size,
                "sop_instance_uid": f"{series_uid}.{i}", "config_hash": "abc123",
            })
    with open(out_dir / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


@pytest.fixture
def data_dir(tmp_path):
    write_processed(tmp_path)
    return tmp_path


def slice_id(clean_item):
    """The id pixel of an unaugmented, uncropped clean slice (B dimension removed)."""
    return int(round(float(clean_item[-1, -1, 0]) * 1000))


def test_read_manifest_converts_numbers_and_filters_split(data_dir):
    rows = read_manifest(data_dir)
    assert len(rows) == 20
    assert list(rows[0]) == list(MANIFEST_COLUMNS)
    assert rows[3]["slice_index"] == 3 and isinstance(rows[3]["rows"], int)
    assert rows[0]["norm_hi"] == 900.0 and rows[0]["snr_ratio"] == 0.5
    val = read_manifest(data_dir, "val")
    assert len(val) == 10 and {r["split"] for r in val} == {"val"}


def test_missing_manifest_and_empty_split_errors(tmp_path, data_dir):
    with pytest.raises(FileNotFoundError, match="preprocessing.py"):
        read_manifest(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no slices in split 'test'"):
        PairedSlices(data_dir, "test")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_batch_shapes_dtypes_and_last_batch(tmp_path, dtype):
    write_processed(tmp_path, dtype=dtype)
    ds = PairedSlices(tmp_path, "train", batch_size=4)
    assert len(ds) == 3  # 10 slices: 4 + 4 + 2
    noisy, clean = ds[0]
    assert noisy.shape == clean.shape == (4, 32, 32, 1)
    assert noisy.dtype == clean.dtype == np.float32
    assert ds[2][0].shape == (2, 32, 32, 1)
    with pytest.raises(IndexError):
        ds[3]
    # values are the stored ones (float16 only rounds)
    np.testing.assert_allclose(noisy - clean, NOISY_OFFSET, atol=1e-3 if dtype == "float16" else 1e-6)
    assert ds.image_shape == (32, 32)


def test_unshuffled_batches_follow_rows(data_dir):
    ds = PairedSlices(data_dir, "val", batch_size=3)
    all_rows = read_manifest(data_dir)
    ids = []
    for i in range(len(ds)):
        ids += [slice_id(item) for item in ds[i][1]]
    # the batch items are the slices of ds.rows, in that order
    expected = [all_rows.index(row) + 1 for row in ds.rows]
    assert ids == expected
    assert ds.batch_rows(1) == ds.rows[3:6]


def test_shuffle_is_seeded_per_epoch_and_covers_every_slice(data_dir):
    a = PairedSlices(data_dir, "train", batch_size=4, shuffle=True, seed=7)
    b = PairedSlices(data_dir, "train", batch_size=4, shuffle=True, seed=7)
    other = PairedSlices(data_dir, "train", batch_size=4, shuffle=True, seed=8)
    orders = []
    for epoch in range(3):
        ids_a = [slice_id(item) for i in range(len(a)) for item in a[i][1]]
        ids_b = [slice_id(item) for i in range(len(b)) for item in b[i][1]]
        assert ids_a == ids_b                                   # same seed, same order
        assert sorted(ids_a) == list(range(1, 11))               # every train slice exactly once
        orders.append(ids_a)
        a.on_epoch_end()
        b.on_epoch_end()
    assert orders[0] != orders[1] and orders[1] != orders[2]    # a new order every epoch
    assert list(other.order()) != list(np.random.default_rng((7, 0)).permutation(10))
    assert list(a.order(epoch=0)) == list(np.random.default_rng((7, 0)).permutation(10))


def test_steps_per_epoch_streams_whole_passes(data_dir):
    ds = PairedSlices(data_dir, "train", batch_size=4, shuffle=True, seed=2, steps_per_epoch=3)
    assert len(ds) == 3
    stream = []
    for epoch in range(5):  # 5 epochs x 3 batches x 4 slices = 60 positions = 6 passes over 10 slices
        for i in range(len(ds)):
            clean = ds[i][1]
            assert clean.shape[0] == 4  # always full batches
            stream += [slice_id(item) for item in clean]
        ds.on_epoch_end()
    passes = [stream[k:k + 10] for k in range(0, 60, 10)]
    assert all(sorted(p) == list(range(1, 11)) for p in passes)  # every slice once per pass
    assert passes[0] != passes[1]
    # pass p follows the same permutation as epoch p of a one-pass-per-epoch dataset
    plain = PairedSlices(data_dir, "train", batch_size=10, shuffle=True, seed=2)
    plain.on_epoch_end()
    assert passes[1] == [slice_id(item) for item in plain[0][1]]
    with pytest.raises(ValueError, match="steps_per_epoch"):
        PairedSlices(data_dir, "train", steps_per_epoch=0)


def test_augmentation_keeps_pairs_aligned_and_is_reproducible(data_dir):
    ds = PairedSlices(data_dir, "train", batch_size=5, shuffle=True, augment=True, seed=3)
    plain = PairedSlices(data_dir, "train", batch_size=5, shuffle=True, augment=False, seed=3)
    changed = 0
    for i in range(len(ds)):
        noisy, clean = ds[i]
        np.testing.assert_allclose(noisy - clean, NOISY_OFFSET, atol=1e-6)
        # the same slices as without augmentation, each one of the 8 symmetries of its original
        for item, original in zip(clean[..., 0], plain[i][1][..., 0]):
            variants = [np.rot90(original, k) for k in range(4)]
            variants += [v[:, ::-1] for v in variants]
            assert any(np.array_equal(item, v) for v in variants)
            changed += not np.array_equal(item, original)
        np.testing.assert_array_equal(clean, ds[i][1])  # same (seed, epoch, index) -> same batch
    assert changed > 0


def test_patch_crops_have_patch_shape_and_prefer_tissue(tmp_path):
    # 64 x 64 slices with a 16 x 16 tissue corner: a uniformly random 16 px crop overlaps it ~6 % of the area
    write_processed(tmp_path, size=64, tissue=16, slices=8)
    kwargs = dict(batch_size=8, shuffle=True, augment=True, patch_size=16, seed=1)
    best_of_4 = PairedSlices(tmp_path, "train", **kwargs)
    uniform = PairedSlices(tmp_path, "train", crop_candidates=1, **kwargs)
    fractions = {}
    for name, ds in (("best_of_4", best_of_4), ("uniform", uniform)):
        tissue = []
        for epoch in range(4):
            for i in range(len(ds)):
                noisy, clean = ds[i]
                assert noisy.shape == clean.shape == (8, 16, 16, 1) and noisy.dtype == np.float32
                np.testing.assert_allclose(noisy - clean, NOISY_OFFSET, atol=1e-6)
                tissue.append(np.mean(clean > 0.1))
            ds.on_epoch_end()
        fractions[name] = np.mean(tissue)
    assert fractions["best_of_4"] > 2 * fractions["uniform"]
    with pytest.raises(ValueError, match="patch_size 128"):
        PairedSlices(tmp_path, "train", patch_size=128)


def test_split_has_no_patient_of_the_other_split(data_dir):
    train = PairedSlices(data_dir, "train")
    val = PairedSlices(data_dir, "val")
    assert {r["split"] for r in val.rows} == {"val"}
    assert not {r["patient_id"] for r in train.rows} & {r["patient_id"] for r in val.rows}
    everything = PairedSlices(data_dir, None)
    assert len(everything.rows) == len(train.rows) + len(val.rows)


def test_max_slices_is_an_even_deterministic_subset(data_dir):
    assert list(evenly_spaced(10, 4)) == [0, 3, 6, 9]
    assert list(evenly_spaced(3, 10)) == [0, 1, 2]
    ds = PairedSlices(data_dir, "val", batch_size=2, max_slices=4)
    full = read_manifest(data_dir, "val")
    assert ds.rows == [full[i] for i in (0, 3, 6, 9)]
    assert len(ds) == 2


def test_spread_slices_takes_time_points_of_fewer_positions():
    # 3 series of 4 time points x 5 positions, rows in manifest order (time-major within a series)
    rows = [{"series_uid": f"S{s}", "time_index": t, "position_index": k, "n_times": 4, "n_positions": 5,
             "slice_index": 5 * t + k} for s in range(3) for t in range(4) for k in range(5)]
    picked = spread_slices(rows, 8, times_per_position=2)
    assert list(picked) == sorted(picked) and len(set(picked)) == 8
    keys = [(rows[i]["series_uid"], rows[i]["position_index"]) for i in picked]
    assert len(set(keys)) == 4 and all(keys.count(k) == 2 for k in set(keys))
    # each position at 2 time points half the time axis apart, the j-th position starting at time j
    times = {}
    for i in picked:
        times.setdefault((rows[i]["series_uid"], rows[i]["position_index"]), []).append(rows[i]["time_index"])
    assert sorted(sorted(t) for t in times.values()) == [[0, 2], [0, 2], [1, 3], [1, 3]]
    assert len(spread_slices(rows, 7, times_per_position=2)) == 7
    # more time points asked than a position has, or too few positions: each slice once, and still `count`
    picked = spread_slices(rows, 12, times_per_position=6)
    assert len(picked) == len(set(picked)) == 12
    assert len(spread_slices(rows[:20], 16, times_per_position=8)) == 16  # one series: 5 positions x 4 times
    # one time point per position (or times_per_position 1): plain evenly spaced rows
    single = [{"series_uid": "S", "slice_index": i} for i in range(10)]
    assert list(spread_slices(single, 4, times_per_position=2)) == list(evenly_spaced(10, 4))
    assert list(spread_slices(rows, 8)) == list(evenly_spaced(len(rows), 8))


def test_threaded_workers_give_the_same_batches(data_dir):
    kwargs = dict(batch_size=3, shuffle=True, augment=True, patch_size=16, seed=5)
    single = PairedSlices(data_dir, "train", **kwargs)
    expected = [single[i] for i in range(len(single))]
    threaded = PairedSlices(data_dir, "train", workers=2, use_multiprocessing=False, **kwargs)
    assert threaded.workers == 2 and not threaded.use_multiprocessing
    # direct concurrent access (exercises the per-process memmap cache from two threads)
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(threaded.__getitem__, range(len(threaded))))
    for (n1, c1), (n2, c2) in zip(expected, got):
        np.testing.assert_array_equal(n1, n2)
        np.testing.assert_array_equal(c1, c2)
    # through Keras' own threaded enqueuer: an identity model returns the noisy batches in order
    inputs = keras.Input((None, None, 1))
    identity = keras.Model(inputs, keras.layers.Activation("linear")(inputs))
    predicted = identity.predict(threaded, verbose=0)
    np.testing.assert_array_equal(predicted, np.concatenate([n for n, _ in expected]))


def test_arrays_are_memmaps_and_not_pickled(data_dir):
    ds = PairedSlices(data_dir, "train", batch_size=4)
    size_before = len(pickle.dumps(ds))
    for i in range(len(ds)):
        ds[i]
    assert ds._arrays and all(isinstance(a, np.memmap) for a in ds._arrays.values())
    assert isinstance(ds.array(ds.rows[0]["clean_file"]), np.memmap)
    # a copy sent to a worker process carries the paths, not the array data
    assert len(pickle.dumps(ds)) == size_before
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone[1][0], ds[1][0])


def test_a_position_is_registered_once_for_every_run(smoke_data, monkeypatch):
    """The registration of the stored draw's positions (what a registered projection of a fresh draw moves its
    frames by) is kept beside the arrays: a second dataset (another run, worker or process) reads it instead of
    registering again and makes the same batches; a rewritten array invalidates it."""
    import breastmri.data.paired as paired
    from breastmri.data.context import Context

    for sidecar in (smoke_data / "arrays").glob("*.shifts.json"):
        sidecar.unlink()

    def batch():
        ds = PairedSlices(smoke_data, "train", batch_size=4, shuffle=True, seed=3, patch_size=24, fresh_noise=True,
                          context=Context([(0, 0)], 0, "guarded"), frames_per_draw=2)
        return ds[0]

    first = batch()
    sidecars = sorted((smoke_data / "arrays").glob("*.shifts.json"))
    assert sidecars
    calls = []
    monkeypatch.setattr(paired, "register_shifts",
                        lambda frames: calls.append(len(frames)) or np.zeros((len(frames), 2), np.float32))
    second = batch()
    assert not calls
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    array = sidecars[0].with_name(sidecars[0].name.replace(".shifts.json", ""))
    array.write_bytes(array.read_bytes())  # rewritten: a new modification time
    batch()
    assert calls
