"""Paired (noisy, clean) slices from the output of preprocessing.py, as a Keras PyDataset.

preprocessing.py writes, under its --out folder,

    manifest.csv                      one row per slice (columns in the order of MANIFEST_COLUMNS)
    arrays/<series_key>_clean.npy     (n, H, W) float32 or float16, normalized so the degraded series spans ~[0, 1]
    arrays/<series_key>_noisy.npy     same shape, the simulated lower-field version of the same slices

and this module turns one split of it into batches:

    ds = PairedSlices("data/processed", "train", batch_size=8, shuffle=True, augment=True, patch_size=128)
    noisy, clean = ds[0]              # each (B, 128, 128, 1) float32
    model.fit(ds, epochs=...)         # Keras calls ds.on_epoch_end() after every epoch (Keras 3.15 also calls
                                      # it once before the first, so training starts at pass 1: still seeded)

Memory does not depend on the dataset size: arrays are memory-mapped when a batch first needs them (one np.memmap
per file and process, reopened after a fork), and only the slices of the current batch are read (with a projection
context, every frame of their positions). Arrays keep each series' acquisition matrix (preprocess.image_size null)
or share one side S (resized): crops batch together whatever the size, whole slices of different sizes go into
batches of one size each.

Randomness (shuffling, crops, flips) is a pure function of (seed, epoch, batch index): a batch is the same
whichever worker thread or process computes it, and the same when the run is repeated.
"""

import math
import os
from pathlib import Path

import keras
import numpy as np

from breastmri.data.context import (
    REGISTERED,
    Context,
    context_slices,
    position_frames,
    projection_channels,
    projection_kind,
)
from breastmri.data.crops import crop_position, fine_structure, symmetry
from breastmri.data.manifest import _layout_of, _zero, noise_spectrum_of, read_manifest, spread_slices
from breastmri.data.paired_checks import check_arguments, check_data
from breastmri.data.selfsup import selfsup_sample
from breastmri.data.shift_cache import ShiftCache
from breastmri.registration import register_shifts, shift_frames
from breastmri.runtime import keep_freed_memory
from breastmri.simulate.degrade import add_noise, decorrelated_target, expected_target
from breastmri.simulate.noise import spectrum_power

# kept projections per array kind (the stored draw's, the 3T image's): a QIN-BREAST series' fit (60 x 25 frames of
# 512^2: 1.5 GiB), so whole-slice validation, visiting a series time point by time point, projects each position once
STORED_PROJECTION_BYTES = 2 ** 31


class PairedSlices(keras.utils.PyDataset):
    """One split of the preprocessed data as batches `(noisy, clean)`, each float32 (B, H, W, 1).

    data_dir: the --out folder of preprocessing.py (holds manifest.csv and arrays/).
    split: "train", "val", or None for every slice.
    batch_size: slices per batch. len(ds) = ceil(n / batch_size): the last batch may be smaller, so every slice
        is seen exactly once per epoch (no drop-remainder: with a few hundred slices dropping a partial batch
        would skip a different few percent each epoch; a fully convolutional model takes any batch size).
    shuffle: visit slices in a new order every pass (np.random.default_rng((seed, p)).permutation(n) for pass p).
        Without shuffle the order is the manifest's (series by series); `rows` maps batch items back to patient /
        series / slice (batch b holds rows[b * batch_size:(b + 1) * batch_size]).
    steps_per_epoch: None for one pass per epoch (pass = epoch, counted by on_epoch_end()). An int makes an
        epoch that many full batches taken from an endless stream of passes (epoch e, batch i starts at slice
        position (e * steps_per_epoch + i) * batch_size of the stream), so short or long epochs still see every
        slice once per pass and stay reproducible. Give it here rather than to model.fit(steps_per_epoch=...):
        Keras then keeps one iterator across epochs and calls on_epoch_end() in the middle of a pass, which
        would change the order mid-pass.
    augment: random flips and 90-degree rotations (the square's 8 symmetries), alike for noisy and clean (training).
    fresh_noise: draw the degraded image anew for every sample (degrade.add_noise with the series' recorded model
        and sigma_added, from the batch's generator seeded by (seed, epoch, index)) instead of reading the stored
        one, so the network never sees the same noise twice. Needs arrays at the acquisition matrix (noise is
        white there; after a resize it would not be). Validation and test keep the stored, recorded draw.
    context: a context.Context (model.context_offsets); the input stack is context_slices' channels, the guide
        mean, then the projection channels of the position's whole slices (its noise map too; for a crop, of its
        window: enhance.py's on the whole slice, cropped; for the stored draw, kept up to STORED_PROJECTION_BYTES).
    patch_size: None for whole slices (validation, evaluation, the thesis autoencoder), or the side of random
        square crops for training a fully convolutional model. Crops prefer tissue: `crop_candidates`
        positions are drawn and the one with the most clean pixels above `tissue_threshold` is kept, so few
        batches are wasted on air while crops still cover the whole body (a best-of-few, not an argmax).
    frames_per_draw: supervised training, N > 1: the shuffled order keeps N frames of one slice position together
        (each position's frames in a random order, cut into runs of N), and each run shares one crop window, one
        fresh noise draw and one projection of it, as enhance.py projects a position once for all its frames: the
        projection of a crop costs about as much as a training step, and this divides it by N (train.frames_per_draw).
    fine_structure: A in (0, 2/3), training crops with fresh noise only: one pattern of thin lines per group
        (crops.fine_structure, contrast around A, filtered by the series' k-space window; none where it was not
        measured), moved with each frame's anatomy and added as that fraction of its signal to its 3T frames before
        the noise and to its targets alike (_fine_structure; train.fine_structure, not adopted: docs/results.md).
    seed: seeds shuffling, crops and augmentation together with the epoch and batch index.
    max_slices: keep only this many slices, evenly spaced over the split (deterministic; quick evaluation);
        with times_per_position > 1, as that many time points of fewer slice positions (spread_slices: the
        benchmark's multi-frame methods then score several slices per stack they denoise).
    register: noise2noise only: shift each target onto its input frame (train.noise2noise_register).
    target (supervised only, but "3t"): "3t", the 3T image; "decorrelated", the 3T image minus c times the
        target frame's degradation noise, whose noise is then uncorrelated with the input's
        (degrade.decorrelated_target); "projected", the target frame of the registered temporal projection of
        every 3T frame of its position (kept once per position like the stored draw's; series of fewer than 3
        time points keep the 3T image); "truth" (the phantom only), the generator's noise-free image; "expected"
        (the phantom only), the truth's expected 3T magnitude, its noise floor kept (degrade.expected_target).
        All apply to the stored draw (validation) and to fresh draws (training) alike.
    mode: "supervised" (batches (noisy, clean)) or one of the self-supervised modes, which read the noisy arrays
        only (never a clean or truth file) and give (input, target) with target float32 (B, H, W, 2): channel 0
        the noisy target values, channel 1 the loss weight of each pixel (main.py's masked losses):
        "noise2noise" (the input frame t and another pre-contrast frame t' < noise2noise_frames of its position as
        the target, registered onto it) or "noise2void" (blind spots of the frame itself); selfsup.py says how.
    **kwargs: `workers`, `use_multiprocessing`, `max_queue_size`, passed to keras.utils.PyDataset.
    """

    def __init__(self, data_dir, split, batch_size=8, shuffle=False, augment=False, patch_size=None, seed=0,
                 max_slices=None, steps_per_epoch=None, tissue_threshold=0.1, crop_candidates=4, fresh_noise=False,
                 context=None, mode="supervised", noise2noise_frames=3, register=True, mask_fraction=0.02,
                 mask_radius=2, target="3t", times_per_position=1, shard=None, frames_per_draw=1, fine_structure=0.0,
                 **kwargs):
        super().__init__(**kwargs)
        context = Context(*(context or ([(0, 0)],)))
        self.context = Context(list(context.offsets), int(context.precontrast_frames),
                               projection_kind(context.projection), bool(context.noise_map))
        check_arguments(mode, target, batch_size, patch_size, steps_per_epoch, crop_candidates, shard, self.context,
                        mask_fraction, mask_radius, frames_per_draw)
        # (index, count): this worker's share of every batch (multi-worker training, sharded by sample): batch_size
        # stays the global batch, of which this dataset makes samples [index * b, (index + 1) * b), b = batch_size /
        # count, each with random streams of its own, so the shares of all workers are the global batch
        self.shard = None if shard is None else (int(shard[0]), int(shard[1]))
        self.data_dir, self.split, self.mode, self.target = Path(data_dir), split, mode, target
        self._projections, self._position_shifts = {}, ShiftCache(self.data_dir)
        self.noise2noise_frames, self.register, self._shifts = int(noise2noise_frames), bool(register), {}
        self.mask_fraction, self.mask_radius = float(mask_fraction), int(mask_radius)
        rows = read_manifest(self.data_dir, split)
        # (time_index, position_index) -> slice index, per series, from the whole manifest: a max_slices subset
        # still finds the neighbours of its slices
        series = {r["series_uid"] for r in rows}
        self._lookup = {}
        for r in read_manifest(self.data_dir):
            if r["series_uid"] in series:
                t, k, _, _ = _layout_of(r)
                self._lookup.setdefault(r["series_uid"], {})[(t, k)] = r["slice_index"]
        # positions per series (a manifest without layout columns cannot say it per row)
        self._n_positions = {uid: 1 + max(k for _, k in lookup) for uid, lookup in self._lookup.items()}
        if mode == "noise2noise":
            rows = [r for r in rows if self.partners(r)]
            if not rows:
                raise ValueError(f"noise2noise needs slice positions with at least 2 of the first "
                                 f"{self.noise2noise_frames} time points (train.noise2noise_frames); split {split} "
                                 "has none (single-frame series?): use train.mode noise2void")
        if mode != "supervised" and self.context.projection and (shuffle or patch_size or steps_per_epoch):
            # training leaves out series too short to project (a T2 beside a DCE); check_data refuses the rest
            kept = [r for r in rows if _layout_of(r)[2] >= 3] or rows
            if len(kept) < len(rows):
                print(f"{mode}: {len({r['series_uid'] for r in rows}) - len({r['series_uid'] for r in kept})} "
                      f"series of fewer than 3 time points left out of {split} (their projection is the frame)")
            rows = kept
        self.rows = [rows[i] for i in spread_slices(rows, max_slices, times_per_position)]
        self.batch_size, self.shuffle, self.augment = int(batch_size), bool(shuffle), bool(augment)
        self.patch_size = None if patch_size is None else int(patch_size)
        self.seed = int(seed)
        self.steps_per_epoch = None if steps_per_epoch is None else int(steps_per_epoch)
        if self.shard is not None and self.steps_per_epoch is None:
            # every global batch full (the endless stream of passes): a short last batch would leave a worker an
            # empty share, or shares of unequal size whose averaged gradient is not the global batch's
            self.steps_per_epoch = max(1, len(self.rows) // self.batch_size)
        self.tissue_threshold, self.crop_candidates = float(tissue_threshold), int(crop_candidates)
        self.frames_per_draw = int(frames_per_draw)
        self._positions = {}  # (series, position) -> its row indices: order() keeps frames_per_draw of them together
        for i, r in enumerate(self.rows):
            self._positions.setdefault((r["series_uid"], _layout_of(r)[1]), []).append(i)
        self.epoch = 0
        self._arrays = {}            # path -> np.memmap, filled lazily by array()
        self._spectra = {}           # noisy_file -> the noise spectrum of its series, filled by noise_spectrum()
        self._arrays_pid = os.getpid()
        self.fresh_noise = bool(fresh_noise)
        self.fine_structure = float(fine_structure)
        if self.fine_structure and not (self.fresh_noise and mode == "supervised" and patch_size is not None
                                        and target in ("3t", "truth", "expected")):
            raise ValueError("fine_structure needs training crops with fresh noise, supervised, and a target of 3t, "
                             "truth or expected")
        if not 0 <= self.fine_structure < 2 / 3:  # a dark line takes up to 1.5 A off: the signal stays positive
            raise ValueError(f"fine_structure must lie in [0, 2/3), not {fine_structure}")
        shapes = [tuple(self.array(r["noisy_file"]).shape[1:]) for r in self.rows]
        check_data(self, shapes)
        self._groups, self._orders = None, {}  # batches of one size each (see _batch_indices); order() per pass
        if self.patch_size is None and len(set(shapes)) > 1:
            # whole slices of several sizes (evaluation): rows are series by series, so equal shapes come in runs;
            # each run is cut into batches
            self._groups, start = [], 0
            for end in range(1, len(shapes) + 1):
                if end == len(shapes) or shapes[end] != shapes[start] or end - start == self.batch_size:
                    self._groups.append(np.arange(start, end))
                    start = end
        # the 3T projections of the whole split, kept once per position, if they fit (the demo's: 50 MB);
        # otherwise training crops project their own window (the whole-slice projection, cropped: tested)
        self._clean_projections_fit = target == "projected" and sum(
            4 * math.prod(self.array(f).shape) for f in {r["clean_file"] for r in self.rows if r.get("clean_file")}
        ) <= STORED_PROJECTION_BYTES

    # -- state shared with worker processes ----------------------------------------------------------------

    def __getstate__(self):
        # Pickling a memmap would copy its whole content: send only the paths, a worker reopens them.
        state = self.__dict__.copy()
        state["_arrays"] = {}
        return state

    def array(self, relative_path):
        """The (n, H, W) memmap of one array file (path relative to data_dir), opened once per process."""
        if self._arrays_pid != os.getpid():  # forked worker: start a cache of its own
            self._arrays, self._arrays_pid = {}, os.getpid()
        memmap = self._arrays.get(relative_path)
        if memmap is None:
            path = self.data_dir / relative_path
            if not path.is_file():
                raise FileNotFoundError(f"{path} (listed in {self.data_dir / 'manifest.csv'}) does not exist; "
                                        "rerun preprocessing.py")
            memmap = np.load(path, mmap_mode="r")
            if memmap.ndim != 3:
                raise ValueError(f"{path} has shape {memmap.shape}; expected (slices, H, W)")
            self._arrays[relative_path] = memmap  # a race between threads only opens a file twice
        return memmap

    def noise_spectrum(self, row):
        """The spectrum of the noise preprocessing added to the row's series (its sidecar's noise_spectrum; None:
        white), so a fresh draw is the same process as the stored one. Read once per series."""
        key = row["noisy_file"]
        if key not in self._spectra:
            self._spectra[key] = noise_spectrum_of(self.data_dir, row)
        return self._spectra[key]

    @property
    def image_shape(self):
        """(H, W) of the first slice (of every slice, unless the arrays keep several acquisition matrices)."""
        return tuple(self.array(self.rows[0]["noisy_file"]).shape[1:])

    @property
    def has_clean(self):
        """True when every slice has a clean (3T) image; False for degrade.model none (the scan is the input)."""
        return all(row.get("clean_file") for row in self.rows)

    # -- ordering ------------------------------------------------------------------------------------------

    def __len__(self):
        if self.steps_per_epoch is not None:
            return self.steps_per_epoch
        if self._groups is not None:
            return len(self._groups)
        return math.ceil(len(self.rows) / self.batch_size)

    def order(self, epoch=None):
        """Row indices in visiting order for pass `epoch` (default: the current epoch; a pass is an epoch
        unless steps_per_epoch is set)."""
        epoch = self.epoch if epoch is None else epoch
        if not self.shuffle:
            return np.arange(len(self.rows))
        order = self._orders.get(epoch)  # once per pass, not per batch; the dict is replaced, never changed
        if order is None:
            rng = np.random.default_rng((self.seed, epoch))
            order = rng.permutation(len(self.rows)) if self.frames_per_draw == 1 else None
            if order is None:  # each position's frames in a random order, cut into runs of frames_per_draw
                runs = [run for members in self._positions.values() for members in [rng.permutation(members)]
                        for run in np.array_split(members, range(self.frames_per_draw, len(members),
                                                                 self.frames_per_draw))]
                order = np.concatenate([runs[i] for i in rng.permutation(len(runs))])  # the runs in a random order
            self._orders = {**dict(list(self._orders.items())[-2:]), epoch: order}
        return order

    def batch_rows(self, index):
        """The manifest rows of batch `index` in the current epoch, in batch order (this shard's share of it)."""
        return [self.rows[i] for _, i in self._batch_samples(index)]

    def _batch_samples(self, index):
        """(place in the global batch, row index) of each sample this dataset makes of batch `index`."""
        indices = list(enumerate(self._batch_indices(index)))
        if self.shard is None:
            return indices
        part = self.batch_size // self.shard[1]
        return indices[self.shard[0] * part:(self.shard[0] + 1) * part]

    def _sample_rng(self, index, place, stream=0):
        """The random stream of one sample of a sharded batch: a function of (seed, epoch, batch, place) alone."""
        return np.random.default_rng((self.seed, self.epoch, index, place, stream))

    def _batch_indices(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range for {len(self)} batches")
        if self._groups is not None:
            return self._groups[index]
        if self.steps_per_epoch is None:
            start = index * self.batch_size
            return self.order()[start:start + self.batch_size]
        # positions in the endless stream pass 0, pass 1, ...; a batch may straddle two passes
        start = (self.epoch * self.steps_per_epoch + index) * self.batch_size
        passes, offsets = np.divmod(np.arange(start, start + self.batch_size), len(self.rows))
        orders = {p: self.order(p) for p in np.unique(passes).tolist()}
        return np.array([orders[p][o] for p, o in zip(passes.tolist(), offsets.tolist())])

    def on_epoch_end(self):
        self.epoch += 1

    # -- batches -------------------------------------------------------------------------------------------

    def __getitem__(self, index):
        """Batch `index` as (noisy, clean): noisy float32 (B, H, W, C) (the target slice, then its context, see
        context_slices), clean float32 (B, H, W, 1) (the target), or None for data without clean images (evaluation
        of degrade.model none); B = batch_size except maybe the last. Self-supervised modes: (input, target) with
        target (B, H, W, 2), see the class docstring."""
        keep_freed_memory()
        samples = self._batch_samples(index)
        # One generator per (seed, epoch, batch): the batch does not depend on which worker makes it, or when; a
        # sharded batch has one per sample, so the shares of the workers add up to one global batch.
        rng = np.random.default_rng((self.seed, self.epoch, index))
        if self.mode != "supervised":
            pairs = [self._selfsup_sample(self.rows[i], rng if self.shard is None else self._sample_rng(index, k))
                     for k, i in samples]
            return self._stack(index, [x for x, _ in pairs], [y for _, y in pairs])
        # fresh noise has its own stream, so crops and flips are the same with and without it
        noise_rng = np.random.default_rng((self.seed, self.epoch, index, 1)) if self.fresh_noise else None
        noisy_batch, clean_batch = [], []
        for group in self._draw_groups(samples):
            if self.shard is not None:
                rng = self._sample_rng(index, group[0][0])
                noise_rng = self._sample_rng(index, group[0][0], 1) if self.fresh_noise else None
            for noisy, clean in self._supervised_group([self.rows[i] for _, i in group], rng, noise_rng):
                noisy_batch.append(noisy)
                clean_batch.append(clean)
        if any(c is None for c in clean_batch):
            return self._stack(index, noisy_batch, noisy_batch)[0], None
        return self._stack(index, noisy_batch, clean_batch)

    def _draw_groups(self, samples):
        """The batch's samples in runs that share one crop window and one noise draw: consecutive samples at the same
        slice position of one series with frames_per_draw > 1 (order() puts them together), else one each."""
        groups, keys = [], []
        for sample in samples:
            row = self.rows[sample[1]]
            key = (row["series_uid"], _layout_of(row)[1])  # as order() groups them (_positions)
            if groups and self.frames_per_draw > 1 and len(groups[-1]) < self.frames_per_draw and key == keys[-1]:
                groups[-1].append(sample)
                continue
            groups.append([sample])
            keys.append(key)
        return groups

    def _supervised_group(self, rows, rng, noise_rng):
        """(noisy (h, w, C), clean (h, w, 1) or None) of each of `rows`, frames of one slice position: one crop
        window (chosen on the first row's clean image) and, with fresh noise, one draw of every frame they need and
        one projection of it for all of them, as enhance.py projects a position once for all its frames. Each row
        then gets its own flips."""
        first = rows[0]
        position = self.position_of(first)
        projected = position if self.context.projection else []
        # whole slices of the stored draw: one projection per position (_stored_projection); else drawn here
        stored = bool(projected) and not self.fresh_noise and self.patch_size is None
        drawn = [] if stored else projected
        contexts = [self.context_of(row) for row in rows]
        # every distinct frame once: a frame repeated by reflection is one image at inference, with one noise
        frames, which = np.unique([i for c, g in contexts for i in c + g] + drawn, return_inverse=True)
        has_clean = bool(first.get("clean_file"))
        clean_all = self.array(first["clean_file"]) if has_clean else None
        window = (slice(None), slice(None))
        if self.patch_size is not None:  # only training crops, and training has clean images (checked)
            y, x = self._crop_position(clean_all[first["slice_index"]], rng)
            window = (slice(y, y + self.patch_size), slice(x, x + self.patch_size))
        region = (slice(None), slice(None)) if drawn else window  # a projection needs whole slices
        lines = None  # train.fine_structure: {slice index: its lines}, added to the 3T frames and targets alike
        if self.fine_structure:
            lines, signal = self._fine_structure(first, position, set(frames) | {r["slice_index"] for r in rows},
                                                 clean_all.shape[1:], noise_rng)
        if self.fresh_noise:  # a new draw of the recorded degradation for every frame, independently
            frames_3t = np.asarray(clean_all[frames][(slice(None),) + region], np.float32)
            if lines is not None:
                frames_3t += np.stack([lines[i][region] for i in frames]) * (signal[frames][(slice(None),) + region]
                                                                             - _zero(first))
            noisy = add_noise(frames_3t, first["degrade_model"], first["sigma_added"], noise_rng, zero=_zero(first),
                              spectrum=self.noise_spectrum(first))
        else:
            noisy = np.asarray(self.array(first["noisy_file"])[frames][(slice(None),) + region], np.float32)
        noisy = noisy[which]
        if drawn:  # read whole, now cropped like the target
            projection = self._projection_at(rows, projected, window, "noisy_file", self.context,
                                             noisy[-len(drawn):])
            noisy = noisy[:, window[0], window[1]]
        elif projected:
            projection = self._projection_at(rows, projected, window, "noisy_file", self.context)
        targets = None
        if has_clean and self.target == "projected" and len(position) >= 3:  # the 3T frames' own projection
            # kept once per position; a training set too large to keep projects the window, once for the group
            kept = self.patch_size is None or self._clean_projections_fit
            targets = self._projection_at(rows, position, window, "clean_file", Context([], 0, "registered"),
                                          None if kept else np.asarray(clean_all[position], np.float32))[:, 0]
        out, start = [], 0
        for j, (row, (channels, guide)) in enumerate(zip(rows, contexts)):
            n, g = len(channels), len(guide)
            mine, start = noisy[start:start + n + g], start + n + g
            parts = [mine[:n]] + ([mine[n:].mean(0, keepdims=True)] if guide else [])
            if projected:
                parts.append(projection[j])
            inputs = np.concatenate(parts)
            clean = None
            if targets is not None:
                clean = targets[j]
            elif has_clean:
                source = self.array(row["truth_file"]) if self.target in ("truth", "expected") else clean_all
                clean = np.asarray(source[row["slice_index"]][window], np.float32)
                if lines is not None:
                    i = row["slice_index"]
                    clean = clean + lines[i][window] * (np.asarray(signal[i][window], np.float32) - _zero(row))
                if self.target == "expected":
                    clean = expected_target(clean, row["sigma_source"], row["noise_channels"], _zero(row))
            if self.target == "decorrelated" and clean is not None:  # channel 0 is the target frame's input
                clean = decorrelated_target(clean, inputs[0], row["sigma_source"], row["sigma_added"])
            inputs = np.moveaxis(inputs, 0, -1)  # (h, w, C)
            if self.augment:
                inputs, clean = symmetry(inputs, clean, rng)
            out.append((np.ascontiguousarray(inputs, dtype=np.float32),
                        None if clean is None else np.ascontiguousarray(clean, dtype=np.float32)[..., None]))
        return out

    def _fine_structure(self, row, position, indices, shape, rng):
        """({slice index: (H, W) lines s}, signal) for train.fine_structure, or (None, None) where the series' noise
        spectrum (its k-space window) was not measured. One pattern (crops.fine_structure, band-limited by
        that window) drawn where the position's first frame is and moved with each frame's anatomy (the
        registration of `signal`, the truth where there is one, else the 3T image); a frame gets s times its
        signal, so the lines are anatomy, moving with it and absent from air, never its noise floor."""
        spectrum = self.noise_spectrum(row)
        if spectrum is None:
            return None, None
        gain = np.sqrt(spectrum_power(spectrum, shape))
        gain = np.minimum(gain / max(float(gain[0, 0]), 1e-12), 1.0)  # 1 at the centre, never above
        s = fine_structure(rng, shape, self.fine_structure, gain)
        source = "truth_file" if row.get("truth_file") else "clean_file"
        layout = self.series_layout(row)  # a neighbouring slice's frame moves as this position's at its time
        onto_first = {layout[i][0]: shift for i, shift in zip(position, self._stored_shifts(row, position, source))}
        indices = sorted(indices)
        moved = shift_frames(np.repeat(s[None], len(indices), 0),
                             [-onto_first.get(layout[i][0], np.zeros(2, np.float32)) for i in indices])
        return dict(zip(indices, moved)), self.array(row[source])

    def _projection_at(self, rows, position, window, array, context, frames=None):
        """(len(rows), C, h, w): the rows' frames of a Context's projection channels (projection_channels) of their
        position's frames, on `window`. Without `frames`, the kept whole-slice ones of `array` (the stored draw's
        "noisy_file", the 3T image's "clean_file"), cropped; with them (a fresh draw, or frames too many to keep),
        those of the window alone, registered with the stored `array`'s shifts (the whole ones cropped, tested)."""
        t, row = [_layout_of(r)[0] for r in rows], rows[0]
        if frames is None:
            return self._stored_projection(row, position, array, context)[t][(Ellipsis,) + tuple(window)]
        shifts = self._stored_shifts(row, position, array) if context.projection in REGISTERED else None
        return projection_channels(frames, context, window, shifts, which=t)

    def _stored_projection(self, row, projected, array, context):
        """The projection channels of a position's frames `projected` of `array`, kept for its other frames;
        each array has its own STORED_PROJECTION_BYTES, oldest out first."""
        key = (array, row[array], tuple(projected), context.projection, context.noise_map)
        value = self._projections.get(key)  # single dict operations (list() too): safe with threaded workers
        if value is None:
            frames = np.asarray(self.array(row[array])[projected], np.float32)
            value = self._projections[key] = projection_channels(frames, context)
            same = [k for k in list(self._projections) if k[0] == array]
            total = sum(getattr(self._projections.get(k), "nbytes", 0) for k in same)
            for old in same[:-1]:  # oldest first
                if total <= STORED_PROJECTION_BYTES:
                    break
                total -= getattr(self._projections.pop(old, None), "nbytes", 0)
        return value

    def _stored_shifts(self, row, projected, array):
        """The registration of a position's frames `projected` of `array` (registration.register_shifts), for a
        registered projection of a new draw of them or of a window: the motion is the anatomy's, and estimating it
        again on every sample would cost as much as the projection of a crop. Kept beside the arrays (ShiftCache)."""
        return self._position_shifts.get(row[array], projected,
                                         lambda: register_shifts(np.asarray(self.array(row[array])[projected],
                                                                            np.float32)))

    @staticmethod
    def _stack(index, inputs, targets):
        shapes = {a.shape[:2] for a in inputs}
        if len(shapes) > 1:
            raise ValueError(f"batch {index} mixes slice shapes {sorted(shapes)}; all arrays of one preprocessing "
                             "run should share preprocess.image_size (rerun preprocessing.py into a fresh folder)")
        return np.stack(inputs), np.stack(targets)

    def partners(self, row):
        """noise2noise: slice indices of the other frames t' < noise2noise_frames at the row's slice position in its
        series (its possible targets); [] when the row's own frame is not one of them."""
        t, k, _, _ = _layout_of(row)
        if t >= self.noise2noise_frames:
            return []
        lookup = self._lookup[row["series_uid"]]
        return [lookup[(f, k)] for f in range(self.noise2noise_frames) if f != t and (f, k) in lookup]

    def _selfsup_sample(self, row, rng):
        """(input, target) of one row in a self-supervised mode: selfsup.selfsup_sample."""
        return selfsup_sample(self, row, rng)

    def position_of(self, row):
        """Slice indices of every time point at the row's position (the stack of its projection channel)."""
        _, k, n_times, _ = _layout_of(row)
        return position_frames(self._lookup[row["series_uid"]], k, n_times, row["slice_index"])

    def position_inputs(self, row):
        """Float32 (T, H, W, C): the whole-slice inputs of every frame present at a row's slice position (a row of a
        manifest with the layout columns), in time order, as a batch gives them (the stored draw, no crop, no
        flips): what the network's change common to the position's frames is measured on (evaluation.common_maps)."""
        _, k, n_times, _ = _layout_of(row)
        lookup = self._lookup[row["series_uid"]]
        rows = [dict(row, slice_index=lookup[(t, k)], time_index=t) for t in range(n_times) if (t, k) in lookup]
        return np.stack([inputs for inputs, _ in self._supervised_group(rows, None, None)])

    def series_layout(self, row):
        """[(time_index, position_index)] of every slice of the row's series' arrays, by slice index (the layout
        enhance.py reads from the DICOM headers), for noise.series_sigma."""
        lookup = self._lookup[row["series_uid"]]
        layout = [None] * (1 + max(lookup.values()))
        for place, index in lookup.items():
            layout[index] = place
        return layout

    def context_of(self, row):
        """(channel slice indices, guide slice indices) of a manifest row in its series' arrays."""
        t, k, n_times, n_positions = _layout_of(row)
        if row.get("time_index") is None:
            n_positions = self._n_positions[row["series_uid"]]
        return context_slices(self._lookup[row["series_uid"]], t, k, n_times, n_positions,
                              self.context.offsets, self.context.precontrast_frames, row["slice_index"])

    def truth_batch(self, index):
        """The noise-free truth of batch `index`, float32 (B, H, W, 1) like the clean batch, or None when any of
        its slices has none (real data; only the demo generator knows the truth). Whole slices only: the truth is
        a reference for evaluation, never a training input, so crops and augmentation are refused here."""
        if self.patch_size is not None or self.augment:
            raise ValueError("truth_batch is for evaluation datasets (patch_size None, augment False)")
        rows = self.batch_rows(index)
        if not all(row.get("truth_file") for row in rows):
            return None
        return np.stack([np.asarray(self.array(r["truth_file"])[r["slice_index"]], np.float32) for r in rows])[..., None]

    @property
    def has_truth(self):
        """True when every slice of this dataset has a truth array."""
        return all(row.get("truth_file") for row in self.rows)

    def _crop_position(self, clean, rng):
        """Top-left (y, x) of a patch: the best of `crop_candidates` random positions by tissue pixel count."""
        return crop_position(clean, rng, self.patch_size, self.crop_candidates, self.tissue_threshold)
