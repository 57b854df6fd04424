"""Patient-level train / val / test split (preprocessing.py step 6): a seeded hash threshold per patient, so a
patient is in one split only and adding patients never moves anyone; and the check that refuses a leak.
"""

import hashlib
import json
from collections import defaultdict
from pathlib import Path

from breastmri.config import ConfigError


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
        can_train = counts["train"] and counts["val"]
        notes.append(f"only {len(split)} patient(s): a train/val/test split needs at least 3; "
                     + ("main.py can train and validate but cannot report held-out test numbers" if can_train
                        else "main.py cannot train on these (it needs a train and a val patient); use the tree for "
                        "enhance.py or benchmark.py --parts real, or add patients"))
    for name, fraction in zip(SPLITS, check_split_fractions(fractions)):
        if fraction > 0 and counts[name] == 0:
            consequence = {"train": "nothing to train on", "val": "no checkpoint selection: main.py refuses to "
                           "train", "test": "main.py reports on val and says so"}[name]
            notes.append(f"no {name} patients ({consequence}); add patients, or change preprocess.split or seed (the "
                         "patients' hash decides their split)")
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


# -----------------------------------------------------------------------------
# data

class SplitMismatch(Exception):
    """The data's patient split differs from the one a run was trained and selected on."""


def split_record(data_dir):
    """{"patients": {split: sorted patient ids}, "manifest_sha256": ...} of a preprocessing output."""
    from breastmri.data.manifest import read_manifest

    rows = read_manifest(data_dir)
    check_patient_split(rows)  # one patient in two splits would inflate every held-out number
    patients = {name: sorted({r["patient_id"] for r in rows if r["split"] == name}) for name in SPLITS}
    digest = hashlib.sha256((Path(data_dir) / "manifest.csv").read_bytes()).hexdigest()
    return {"patients": patients, "manifest_sha256": digest}


def patients_seen(run_dir, splits=("train", "val")):
    """The patients a run's weights learned from (its split.json's `splits`) and, through train.init_from (a run dir
    or its model.keras, as main.py reads it), those of every run it started from; None when a run of that chain
    has no split.json, so nothing can be said."""
    from breastmri.config import load_run_config

    seen, run = set(), Path(run_dir)
    for _ in range(16):  # a chain of fine-tunes; a loop of init_from would be a broken tree
        if not (run / "split.json").is_file():
            return None
        recorded = json.loads((run / "split.json").read_text())["patients"]
        seen |= {patient for name in splits for patient in recorded.get(name, [])}
        source = load_run_config(run / "config.yaml")["train"].get("init_from") \
            if (run / "config.yaml").is_file() else None
        if not source:
            break
        run = Path(source) if Path(source).is_dir() else Path(source).parent
    return seen


def check_split_record(run_dir, data_dir):
    """Raise SplitMismatch when the run recorded another patient split than the data has now. A run without a
    record (older than split.json) is evaluated with a printed warning; another manifest hash with the same
    patients (arrays rebuilt, e.g. another dtype) only prints a note."""
    path = Path(run_dir) / "split.json"
    current = split_record(data_dir)
    if not path.is_file():
        print(f"warning: {path} does not exist (a run from before split records); cannot check that "
              f"{data_dir} holds the patients this model was trained and selected on")
        return current
    recorded = json.loads(path.read_text())
    changed = [name for name in SPLITS if recorded["patients"].get(name, []) != current["patients"][name]]
    if changed:
        details = "; ".join(
            f"{name}: recorded {len(recorded['patients'].get(name, []))} patients, data has "
            f"{len(current['patients'][name])}" for name in changed)
        raise SplitMismatch(f"{data_dir} splits its patients differently from the data {run_dir} was trained and "
                            f"selected on ({details}). Scoring it would mix training or selection patients into "
                            "the held-out numbers; preprocess with the run's config (same seed and "
                            "preprocess.split), or train a new run on this data.")
    if recorded.get("manifest_sha256") != current["manifest_sha256"]:
        print(f"note: {data_dir}/manifest.csv changed since training (same patients in every split)")
    return current
