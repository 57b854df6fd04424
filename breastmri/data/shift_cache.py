"""The registration of each slice position's stored frames, kept beside the arrays, so that a position is registered
once for every training run, worker and process that reads the same preprocessed data.

    cache = ShiftCache(data_dir)
    shifts = cache.get("arrays/<series>_noisy.npy", [0, 8, 16, ...], lambda: register_shifts(frames))

A registered projection of a fresh noise draw (or of a training crop's window) moves the frames by the shifts of the
position's stored draw (PairedSlices._stored_shifts): the motion is the anatomy's. Registering a position costs
about 0.1 s (phase correlation refined to 1/20 px, 8 frames of 192^2) and a run of 800 steps on the cohort visits
most of its 1096 training positions only once or twice, so kept in memory alone it was computed anew in every run.

Each array gets a sidecar `<array>.shifts.json`: the array file's size and modification time (a rewritten array
invalidates it) and the shifts of every position computed so far, keyed by its frames' slice indices. Shifts are
float32 and JSON keeps them exactly. The sidecar is replaced atomically (files.write_text_atomic); two writers
adding positions at once may drop one's entry (or, threads of one process sharing a temporary name, leave a file
that does not parse), which is then computed again, never read wrong. A data folder that cannot be written keeps
them in memory only.
"""

import json
from pathlib import Path

import numpy as np

from breastmri.files import write_text_atomic


class ShiftCache:
    def __init__(self, data_dir):
        self.data_dir = Path(data_dir)
        self._tables = {}  # array path -> {frames key: (T, 2) float32}; replaced, never changed in place

    def get(self, array, frames, compute):
        """The shifts of the position whose frames are `frames` (slice indices) of `array` (a path relative to the
        data folder): kept, else compute() kept and written to the sidecar."""
        key = ",".join(map(str, frames))
        table = self._tables.get(array)
        if table is None:
            table = self._tables[array] = self._read(array)
        shifts = table.get(key)
        if shifts is None:
            shifts = np.asarray(compute(), np.float32)
            table = self._tables[array] = {**self._read(array), **self._tables.get(array, {}), key: shifts}
            self._write(array, table)
        return shifts

    def _stamp(self, array):
        stat = (self.data_dir / array).stat()
        return [stat.st_size, stat.st_mtime_ns]

    def _sidecar(self, array):
        return self.data_dir / f"{array}.shifts.json"

    def _read(self, array):
        try:
            saved = json.loads(self._sidecar(array).read_text())
            if saved.get("array") != self._stamp(array):
                return {}
            return {key: np.asarray(value, np.float32).reshape(-1, 2) for key, value in saved["shifts"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):  # none yet, or unreadable: start anew
            return {}

    def _write(self, array, table):
        try:
            write_text_atomic(self._sidecar(array), json.dumps({
                "array": self._stamp(array), "shifts": {key: value.tolist() for key, value in table.items()}}))
        except OSError:  # a read-only data folder: kept in memory only
            pass
