"""Patient-level train / val / test split (preprocessing.py step 6): a seeded hash threshold per patient, so a
patient is in one split only and adding patients never moves anyone; and the check that refuses a leak.
"""

import hashlib
from collections import defaultdict

from config import ConfigError


class SplitError(ValueError):
    """A train/val split in which a patient appears on both sides (refused: it would leak the patient)."""


SPLITS = ("train", "val", "test")


def check_split_fractions(fractions):
    """[train, val, test] fractions of patients -> tuple of floats; ConfigError unless they are >= 0, sum to 1
    and give training some patients."""
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1) > 1e-6 or values[0] <= 0:
        raise ConfigError(f"preprocess.split is {fractions!r}; give three fractions [train, val, test] >= 0 that "
                          "sum to 1, with train > 0 (e.g. [0.6, 0.2, 0.2]; the thesis: [0.7, 0.3, 0.0])")
    return values


def patient_hash(patient_id, seed):
    """sha256(seed:patient_id) mapped to [0, 1): a patient's fixed place on the split line."""
    digest = hashlib.sha256(f"{seed}:{patient_id}".encode()).hexdigest()
    return int(digest, 16) / 16 ** len(digest)


def split_patients(patient_ids, fractions, seed):
    """patient_id -> "train" | "val" | "test", by a hash threshold.

    Each patient sits at patient_hash(id, seed) in [0, 1); [0, f_train) is train, [f_train, f_train + f_val)
    val, the rest test. A patient's split depends only on its own id, the seed and the fractions: adding
    patients never moves anyone, and moving a boundary moves only the patients between its old and new place.
    The price is that small cohorts get only roughly the requested proportions (10 patients may give 4/1/5);
    summary.json lists the counts and `split_warnings` says what a cohort cannot support.
    """
    train, val, _ = check_split_fractions(fractions)
    out = {}
    for p in sorted({str(p) for p in patient_ids}):
        u = patient_hash(p, seed)
        out[p] = "train" if u < train else "val" if u < train + val else "test"
    return out


def split_warnings(split, fractions):
    """What a split cannot support, in words (empty when it has train, val and test patients as asked)."""
    counts = {name: sum(v == name for v in split.values()) for name in SPLITS}
    notes = []
    if len(split) < 3:
        notes.append(f"only {len(split)} patient(s): a train/val/test split needs at least 3; "
                     "main.py can train and validate but cannot report held-out test numbers")
    for name, fraction in zip(SPLITS, check_split_fractions(fractions)):
        if fraction > 0 and counts[name] == 0:
            consequence = {"train": "nothing to train on", "val": "no checkpoint selection: main.py refuses to "
                           "train", "test": "main.py reports on val and says so"}[name]
            notes.append(f"no {name} patients ({consequence}); add patients or change preprocess.split")
    return notes


def check_patient_split(rows):
    """Raise SplitError if any patient_id appears with more than one split in `rows` (dicts with
    "patient_id" and "split"). Run on the manifest rows before they are written."""
    splits = defaultdict(set)
    for row in rows:
        splits[row["patient_id"]].add(row["split"])
    leaked = sorted(p for p, s in splits.items() if len(s) > 1)
    if leaked:
        raise SplitError(f"patients in more than one split (refused, it would leak them): {leaked[:10]}"
                         f"{' ...' if len(leaked) > 10 else ''}")
