"""Summarize the paired slices of a preprocessing output and time reading a few batches.

    python data_factory.py --data data/processed_demo --split train --patch-size 96

The dataset itself is breastmri.data.paired.PairedSlices (its docstring: what a batch holds, how it is seeded).
"""

import argparse
import time

from breastmri.runtime import add_verbose_flag, quiet_start


def describe(ds):
    """A one-line summary of a dataset for logs."""
    patients = sorted({row["patient_id"] for row in ds.rows})
    series = {row["series_uid"] for row in ds.rows}
    h, w = ds.image_shape
    crop = f"patches {ds.patch_size}px" if ds.patch_size else f"whole slices {h}x{w}"
    epoch = "one pass" if ds.steps_per_epoch is None else f"{ds.steps_per_epoch} steps"
    return (f"{ds.split or 'all'}: {len(ds.rows)} slices, {len(series)} series, {len(patients)} patients, "
            f"{len(ds)} batches of {ds.batch_size} per epoch ({epoch}), {crop}, shuffle={ds.shuffle}, "
            f"augment={ds.augment}")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Summarize the paired slices of a preprocessing output and "
                                                 "time reading a few batches.")
    parser.add_argument("--data", default="data/processed", help="the --out folder of preprocessing.py")
    parser.add_argument("--split", default="train")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--patch-size", type=int, default=None)
    parser.add_argument("--batches", type=int, default=5, help="batches to read for the timing")
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    from breastmri.data.paired import PairedSlices

    dataset = PairedSlices(args.data, args.split, batch_size=args.batch_size, shuffle=True, augment=True,
                           patch_size=args.patch_size)
    print(describe(dataset))
    start = time.perf_counter()
    count = min(args.batches, len(dataset))
    for i in range(count):
        noisy, clean = dataset[i]
    elapsed = time.perf_counter() - start
    print(f"read {count} batches in {elapsed:.3f} s; last batch noisy {noisy.shape} {noisy.dtype}, "
          f"clean range [{clean.min():.3f}, {clean.max():.3f}]")


if __name__ == "__main__":
    quiet_start()
    main()
