"""Embedded demo data: a synthetic QIN-BREAST-like DICOM tree (3T breast DCE-MRI plus PET/CT decoys).

    python demo_data.py --preview                             # data/demo_dicom, the `make demo` tree
    python demo_data.py --out data/demo_full --full           # the real protocol's size
    python demo_data.py --out data/demo --patients 8 --seed 0 --time-points 8

The tree, its layout and the physics of the phantom: breastmri/simulate/demo_tree.py and phantom.py.
"""

import argparse
import shutil
from pathlib import Path

from breastmri.runtime import add_verbose_flag, quiet_start
from breastmri.simulate.demo_tree import (
    KSPACE_MODES,
    _check_params,
    _read_record,
    ensure_demo_tree,
    make_demo_tree,
    save_preview,
)
from breastmri.simulate.phantom import DEMO_DEFAULTS, patient_id
from breastmri.simulate.protocol import FULL_SIZE

REALISM_PATIENTS = 4

# ---------------------------------------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=DEMO_DEFAULTS["out"], help=f"output folder (default {DEMO_DEFAULTS['out']})")
    parser.add_argument("--patients", type=int, default=DEMO_DEFAULTS["patients"],
                        help=f"number of patients (default {DEMO_DEFAULTS['patients']})")
    parser.add_argument("--seed", type=int, default=DEMO_DEFAULTS["seed"],
                        help=f"seed; the same seed gives identical files (default {DEMO_DEFAULTS['seed']})")
    parser.add_argument("--slices", type=int, default=None,
                        help=f"slices per DCE series (default {DEMO_DEFAULTS['slices']})")
    parser.add_argument("--time-points", type=int, default=None,
                        help=f"temporal positions per DCE series (default {DEMO_DEFAULTS['time_points']})")
    parser.add_argument("--matrix", type=int, default=192, help="image side in pixels (default 192, as QIN-BREAST)")
    parser.add_argument("--full", action="store_true",
                        help=f"the real series size: {FULL_SIZE['slices']} slices x {FULL_SIZE['time_points']} "
                             "time points (~10x the default tree)")
    parser.add_argument("--extras", action="store_true", help="also a multi-flip T1-map and a DWI series per visit")
    parser.add_argument("--texture-beta", type=float, default=DEMO_DEFAULTS["texture_beta"],
                        help=f"power-law exponent of the gland/fat texture (default {DEMO_DEFAULTS['texture_beta']})")
    parser.add_argument("--motion-mm", type=float, default=DEMO_DEFAULTS["motion_mm"],
                        help=f"largest in-plane motion between DCE frames, mm; 0 turns it off "
                             f"(default {DEMO_DEFAULTS['motion_mm']})")
    parser.add_argument("--split-dynamics", action="store_true",
                        help="write each DCE as one series per time point, as Siemens and many archives store it")
    parser.add_argument("--mask-background", action="store_true",
                        help="set the air of every DCE frame to 0, as Philips and anonymised archives do")
    parser.add_argument("--kspace", choices=KSPACE_MODES, default=DEMO_DEFAULTS["kspace"],
                        help="what each visit acquires: protocol (the default: the QIN-BREAST protocol's part of "
                             "k-space, zero-filled, whose noise is correlated between neighbouring pixels as a "
                             "scanner's), full (the full matrix: white noise), mixed (one of several band limits "
                             "per visit, as a training cohort's)")
    parser.add_argument("--realism", metavar="SERIES_DIR",
                        help="print the realism statistics of generated DCE series (--realism-patients patients "
                             "with these options, in a temporary folder, and their median) next to those of a real "
                             "DCE series folder; writes no tree (breastmri/evaluate/realism.py)")
    parser.add_argument("--realism-patients", type=int, default=REALISM_PATIENTS,
                        help=f"generated patients --realism compares (default {REALISM_PATIENTS})")
    parser.add_argument("--preview", nargs="?", const="", default=None, metavar="PNG",
                        help="save a preview figure (default <out>/preview.png)")
    parser.add_argument("--force", action="store_true", help="regenerate even if a matching tree exists")
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    if args.full and (args.slices is not None or args.time_points is not None):
        parser.error("--full sets --slices and --time-points; give one or the other")
    size = FULL_SIZE if args.full else {
        "slices": DEMO_DEFAULTS["slices"] if args.slices is None else args.slices,
        "time_points": DEMO_DEFAULTS["time_points"] if args.time_points is None else args.time_points}
    params = dict(patients=args.patients, seed=args.seed, matrix=args.matrix, extras=args.extras,
                  texture_beta=args.texture_beta, motion_mm=args.motion_mm, split_dynamics=args.split_dynamics,
                  mask_background=args.mask_background, kspace=args.kspace, **size)
    try:
        _check_params(**params)
    except ValueError as err:
        parser.error(str(err))
    if args.realism:
        if not Path(args.realism).is_dir():
            parser.error(f"--realism {args.realism} is not a folder; give the folder that holds a DCE series (or "
                         "every time point's series of one)")
        try:
            print(realism_table(args.realism, params, args.realism_patients))
        except ValueError as err:  # no dynamic of at least 3 time points there
            parser.error(f"{err} (a DCE stored one series per time point: give the folder holding them all)")
        return

    out = Path(args.out)
    before = _read_record(out)
    if args.force and before is not None:
        shutil.rmtree(out)
        before = None
    ensure_demo_tree(out, **params)
    summary = _read_record(out)["summary"]
    reused = before is not None and before == _read_record(out)
    series = ", ".join(f"{n} {m}" for m, n in summary["series"].items())
    print(f"{'reused' if reused else 'wrote'} {out}: {summary['patients']} patients, {summary['studies']} studies, "
          f"series {series}, {summary['files']} files, {summary['mb']} MB"
          f"{', generated' if reused else ''} in {summary['seconds']} s")
    print(f"  DCE {params['slices']} slices x {params['time_points']} time points of {params['matrix']}^2, "
          f"3T, noise sigma {summary['noise_sigma_stored']:g} stored = {summary['noise_sigma_modality']:g} "
          f"modality units (RescaleSlope {summary['rescale_slope']:g}), seed {params['seed']}")
    if args.preview is not None:
        print(f"  preview: {save_preview(out, args.preview or None)}")


def realism_table(series_dir, params, patients=REALISM_PATIENTS):
    """The realism statistics of a real DCE series folder next to those of generated ones (the first visit of
    `patients` patients of a tree made with params of make_demo_tree), as a markdown table: each generated patient
    in a column, then their median. One generated series is one draw of a patient; the median says what the
    phantom is."""
    import tempfile

    from breastmri.evaluate.realism import dynamic_frames, median_statistics, statistics, table

    frames, times, description = dynamic_frames(series_dir)
    columns = {f"{series_dir} ({description})": statistics(frames, times)}
    generated = []
    with tempfile.TemporaryDirectory(prefix="realism-") as tmp:
        make_demo_tree(Path(tmp) / "tree", **dict(params, patients=patients))
        for index in range(patients):
            first = sorted(Path(tmp, "tree", "QIN-BREAST", patient_id(index)).rglob("*dynamic*"))[0]
            generated.append(statistics(*dynamic_frames(first)[:2]))
    for index, stats in enumerate(generated):
        columns[f"patient {index + 1}"] = stats
    size = f"{params['slices']} slices x {params['time_points']} time points"
    columns[f"demo_data.py median ({size})"] = median_statistics(generated)
    return table(columns)


if __name__ == "__main__":
    quiet_start()
    main()
