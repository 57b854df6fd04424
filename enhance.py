"""Enhance MR series with a trained model: DICOM in, a new derived DICOM series out, at the native matrix.

    python enhance.py --input data/demo_dicom --output enhanced               # the shipped model (models/default)
    python enhance.py --model runs/unet --input data/demo_dicom --output enhanced
    python enhance.py --model runs/unet/model.keras --input path/to/series_dir --output enhanced --preview
    python enhance.py ... [--batch-size 8] [--tile 256 --force-tiling] [--overwrite]

--model is a run dir of main.py (or its model.keras); the config.yaml saved next to model.keras decides the
normalization (preprocess.norm_percentiles) and, for the thesis autoencoder, the input size, so no training
setting is repeated here. --input is one DICOM file, a series folder or a whole tree: it is indexed with
index.index under the run's own preprocess.series_filter and preprocess.include_kinds, so exactly the
series preprocessing would have used are enhanced: magnitude MR images. Everything else is skipped with a counted
reason: non-MR objects, phase / real / imaginary images, parametric maps, localizers, subtractions, projections,
mosaics (kinds.image_kinds), series the filter leaves out, and every object enhance.py wrote itself
(kinds.written_by_enhance), so a tree that holds earlier outputs is never enhanced twice.

Output layout (--output DIR):

    DIR/<PatientID>/<StudyInstanceUID>/<new SeriesInstanceUID>/0001.dcm ...   one file per input file
    DIR/<PatientID>/<StudyInstanceUID>/<new SeriesInstanceUID>/enhance.json  marker: source series, model, hashes
    DIR/<PatientID>/<StudyInstanceUID>/<new SeriesInstanceUID>.png           --preview: original | enhanced | diff
    DIR/enhance_summary.json    series done and skipped (with reasons), slices, seconds, ms per slice, model

What happens to each series, and why:
1. read_series gives modality values (RescaleSlope/Intercept applied, per frame for enhanced MR);
   robust_range of the series maps its norm_percentiles to 0 and 1, exactly as preprocessing did for training.
2. Size. The U-Net is fully convolutional: the stack is reflect-padded to a multiple of 2**depth and the output
   cropped back, so a 192x192 or 70x45 scan is enhanced at its own matrix (no resampling, no interpolation blur).
   The thesis autoencoder only takes S x S (S = preprocess.image_size): slices are padded to a square and resized
   with grid.resize_square, and the output is mapped back with unresize_square, as in training.
   Slices whose padded size exceeds a pixel budget (MAX_PIXELS, --max-pixels; or all, with --force-tiling) go
   through the network in tiles of --tile pixels whose centres are kept; the overlap on each side is the U-Net's
   receptive radius (receptive_margin: 24 px at depth 2, 56 px at depth 3), so tiled output equals whole-image
   output to float32 rounding (predict_tiled).
3. The output is mapped back to the stored values (breastmri/dicom/writer.py): undo the normalization, undo the rescale of each frame,
   round, clip to the range BitsStored allows (signed or unsigned per PixelRepresentation), same integer type;
   the values clipped at the top are counted (clipped_pixels) and named in the series' notes (CLIPPED_NOTE).
4. Each output file (writer.write_series) is the input file's header with: new SeriesInstanceUID and SOPInstanceUIDs, SeriesNumber
   + 1000 (moved up past any number already used in the study: output_series_numbers), SeriesDescription
   + " enhanced", ContentDate/Time and InstanceCreationDate/Time of the enhancement, a ContributingEquipmentSequence
   item naming enhance.py, the model's sha256 and config hash, and a private block (creator "mri-enhance", group
   0071) that marks the object as enhance.py's output for any later indexing (kinds.written_by_enhance).
   Classic MR: ImageType DERIVED\\SECONDARY (further values kept), DerivationDescription, DerivationCodeSequence
   (CID 7203 "Smoothing") and a SourceImageSequence.
   Enhanced and legacy converted MR (PS3.3 A.36 / A.71): ImageType and FrameType DERIVED\\PRIMARY (value 2 may
   only be PRIMARY there), the MR Pulse Sequence attributes removed (they belong to ORIGINAL images), empty
   Enhanced General Equipment values filled, and each frame's DerivationImageSequence naming its source frame,
   with a SourceImageEvidenceSequence. Study, patient, geometry (ImagePositionPatient, ImageOrientationPatient,
   PixelSpacing, SliceThickness, FrameOfReferenceUID, per-frame functional groups), SOP class, bit depth tags and
   WindowCenter/Width are kept: the output is in the input's units. PixelPaddingValue (and
   PixelPaddingRangeLimit) pixels are left out of the normalization, written back as padding, and no tissue
   pixel is given a padding value. Pixel data is written uncompressed, explicit VR little endian, whatever the
   input transfer syntax. tests/test_dciodvfy.py checks that dciodvfy finds no error the source did not have.

Choices:
- Multi-frame (enhanced MR) input gives multi-frame output: one output object per input object, frames in the
  stored order, per-frame functional groups (geometry, rescale, timing) untouched. Splitting into classic single
  frames would have to rewrite those groups as classic tags, which loses information.
- UIDs: root 2.25 (UUID-derived, PS3.5 B.2; needs no registered organizational root): '2.25.' + the decimal
  value of a name-based UUID (RFC 4122 version 5) of the inputs below (derived_uid; pydicom's
  generate_uid(prefix=None, entropy_srcs=...) would be random, see there). The SeriesInstanceUID is deterministic
  from (source SeriesInstanceUID, model config hash, model file sha256, the SOPInstanceUIDs the model saw: the
  series', or those of the whole dynamic it was assembled into), so a re-run on the same input with the same model
  maps to the same folder, which is then reported as "exists" and left alone unless --overwrite. The
  SOPInstanceUIDs seen are part of it so that enhancing two parts of one series (one file, then the folder), or one
  time point alone and then within its dynamic, gives distinct series; the model sha256 so that a model retrained with the same
  config is not mistaken for the old one. SOPInstanceUIDs derive from (new series UID, source SOPInstanceUID).
- A series is written into DIR/.tmp-enhance-<pid>-<uid>/ and renamed into place when complete, so a failing
  series (unreadable pixels, a write error) leaves nothing behind; it is counted in the summary with its reason.
  Run one enhance.py per output folder at a time.
"""

import argparse
import sys
from pathlib import Path

from breastmri.enhance.pipeline import UNFORESEEN_REASON, run
from breastmri.restore.predict import DEFAULT_TILE, MAX_PIXELS, EnhanceError
from breastmri.restore.shipped import DEFAULT_MODEL, resolve_model
from breastmri.runtime import add_verbose_flag, quiet_start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL),
                   help="run dir of main.py (with model.keras + config.yaml) or model.keras (default: the shipped "
                        "models/default, trained at the full budget; breastmri/restore/shipped.py)")
    p.add_argument("--input", required=True, help="a DICOM file, a series folder or a whole DICOM tree")
    p.add_argument("--output", required=True, help="folder for the derived series and enhance_summary.json")
    p.add_argument("--batch-size", type=int, default=8, help="slices (or tiles) per forward pass (default 8)")
    p.add_argument("--preview", action="store_true", help="write a PNG per series: original | enhanced | difference")
    p.add_argument("--overwrite", action="store_true", help="replace derived series that already exist")
    p.add_argument("--tile", type=int, default=None,
                   help=f"tile side in pixels when tiling (default {DEFAULT_TILE}); tiles overlap by the U-Net's "
                        "receptive radius")
    p.add_argument("--force-tiling", action="store_true",
                   help=f"tile every slice (default: only slices above {MAX_PIXELS} pixels)")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help=f"pixels per forward pass, batch x H x W (default {MAX_PIXELS})")
    add_verbose_flag(p)
    args = p.parse_args(argv)
    try:
        resolve_model(args.model)  # fail fast, before TensorFlow is imported
        if not Path(args.input).exists():
            raise EnhanceError(f"--input {args.input} does not exist")
        if args.max_pixels < 1:
            raise EnhanceError(f"--max-pixels {args.max_pixels}: give a positive number")
        summary = run(args.model, args.input, args.output, batch_size=args.batch_size, preview=args.preview,
                      overwrite=args.overwrite, tile=args.tile, force_tiling=args.force_tiling,
                      max_pixels=args.max_pixels)
    except EnhanceError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # every series written so far is complete; the next run skips them ("exists")
        print("\ninterrupted: the series written so far are complete; run the same command again to go on",
              file=sys.stderr)
        sys.exit(130)
    failed = summary["series_skipped"].get(UNFORESEEN_REASON, 0)
    if failed:  # the other series are written, but a bug must not pass for a clean run (exit status 1)
        print(f"error: {failed} series failed in a way enhance.py does not foresee ({UNFORESEEN_REASON}); "
              "the exception of each is in enhance_summary.json", file=sys.stderr)
        sys.exit(1)
    return summary


if __name__ == "__main__":
    quiet_start()
    main()
