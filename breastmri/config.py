"""Every default of the project, in one commented block, and the loader that merges YAML on top.

A config file (configs/*.yaml) holds only what it changes. An unknown key is an error that names
the key, so a typo never silently falls back to a default. The resolved config is saved next to
every output (summary.json of preprocessing, config.yaml of a training run), so any result can be
traced to the exact settings that produced it.

    cfg = load_config("configs/demo.yaml", overrides=["train.epochs=2"])
    cfg["train"]["epochs"]  # -> 2
"""

import copy
import hashlib
import json
from pathlib import Path

import yaml

from breastmri.files import write_text_atomic

DEFAULTS = {
    # Global seed: patient split, per-series noise, shuffling, crops, weight init. Recorded everywhere.
    "seed": 0,
    # The embedded demo DICOM tree (demo_data.py), used when preprocessing gets no --dicom-root.
    "demo": {
        "out": "data/demo_dicom",
        "patients": 12,          # 12 gives train/val/test 5/2/5 patients with the default split and seed
        "slices": 8,             # sagittal slices per DCE series (the real series has 20; --full gives it)
        "time_points": 8,        # temporal positions per DCE series (the real series has 25; 4 before contrast,
                                 # protocol.PRE_CONTRAST_FRAMES)
        "matrix": 192,           # rows = columns of the MR images (the real series: 192x192)
        "seed": 0,
        "texture_beta": 1.8,     # power-law exponent of the gland/fat texture (Chen 2012: 1.7-1.9, thin slices)
        "motion_mm": 4.5,        # largest in-plane displacement between DCE frames, mm (0: none; simulate/motion.py)
        "kspace": "protocol",    # what each visit acquires: protocol | full | mixed (demo_tree.KSPACE_MODES)
    },
    # preprocessing.py: DICOM tree -> paired (clean, noisy) arrays + manifest.csv
    "preprocess": {
        # null: keep each series' acquisition matrix (the U-Net is fully convolutional; enhance.py applies it on that
        # grid, so training sees the same pixels and noise). An int: pad to a square and resize to it (the thesis:
        # 512x512; its autoencoder needs a fixed size); enhance.py then resizes in and out the same way.
        "image_size": None,
        "dtype": "float32",      # float32 | float16 for the saved arrays
        "series_filter": "",     # regex searched in SeriesDescription; "" keeps every MR series
        # Only magnitude anatomy is degraded, trained on and enhanced: phase/real/imaginary images, parametric maps,
        # localizers, subtractions and projections (MIP) are skipped with a counted reason (preprocessing.py, "Which
        # MR images are magnitude anatomy", says how each is recognized). Name kinds here to keep them deliberately,
        # e.g. ["localizer"]. Choices: phase, real, imaginary, parametric_map, localizer, subtraction, projection,
        # mosaic (kinds.IMAGE_KINDS).
        # enhance.py applies the run's value too; its own output is always skipped.
        "include_kinds": [],
        # auto: series of one study stored one per time point (Siemens TWIST/VIBE, GE DISCO, split archives) that
        # share geometry, sequence, TR, TE and flip angle are read as one dynamic (breastmri/dicom/dynamics.py), so
        # the temporal context runs on them; off: every series alone. enhance.py applies the run's value.
        "assemble_dynamics": "auto",
        "norm_percentiles": [0.5, 99.5],  # robust lo/hi of the *degraded* series (what inference has) -> 0 and 1
        # fractions of *patients* in train / val / test, decided per patient by a hash threshold (stable when
        # patients are added); the checkpoint is selected on val, the headline is reported on test
        "split": [0.6, 0.2, 0.2],
    },
    # breastmri/simulate/degrade.py: how a 3T image becomes a simulated lower-field image (applied before resizing)
    "degrade": {
        "model": "field",        # field (Rician, SNR scaled with B0) | gaussian (the thesis)
        "source_field_t": 3.0,   # field strength of the input scans, tesla
        "target_field_t": 1.5,   # field strength to simulate, tesla
        "field_exponent": 1.0,   # SNR ~ B0**exponent; near-linear in the torso at these fields
        "snr_ratio": None,       # target/source SNR; None derives it from the fields and exponent
        "resolution_scale": 1.0,  # <1 keeps only this central fraction of k-space per axis
        # measured: the field model's added noise takes the spatial spectrum of the series' own noise, measured from
        # its repeated frames (scanners zero-fill and filter k-space, so real noise is correlated between
        # neighbouring pixels); white: independent pixels. Series without repeated frames get white noise.
        "noise_spectrum": "measured",
        "sigma": 0.05,           # gaussian model: noise std in normalized [0, 1] units
    },
    # model.py: get_model(config)
    "model": {
        "name": "unet",          # unet (residual U-Net, the default) | thesis_autoencoder
        "depth": 3,              # unet: number of 2x downsamplings; input sides must divide 2**depth
        "filters": 16,           # unet: filters at full resolution, doubled at each level
        # unet: what the network sees besides the target slice (model.context_offsets): neighbouring time points
        # of the same slice position (+-time, reflected at the ends of the series), neighbouring slices of the same
        # time point (+-slices), and with precontrast_frames N > 0 the mean of the first N frames at the same
        # position as a guide (QIN-BREAST: 4 frames before contrast); projection guarded | registered | local |
        # global adds the target frame projected onto the principal time courses of its position (all its frames;
        # of 8x8 blocks around each pixel, registered: after moving the frames onto the first, guarded: registered
        # and put back towards the frame where it took off more than noise, or of the whole slice;
        # context.temporal_projection), and the network then starts from that channel (model.unet); false: none
        # (true: global starting from the frame, what run configs saved before "local" meant). All zero and false:
        # a single-slice denoiser. The frame and its local projection had the best validation PSNR of the
        # ablation and is within 0.07 dB of the best test PSNR (docs/results.md, breastmri/studies/ablation.py); registering the frames
        # first added 2 dB to the projection on the demo's moving frames, the guard (the default) 0.11 dB on
        # average and 2.6 dB on the worst frame (context.py). noise_map: true adds a last channel, the projection
        # channel's noise level per pixel (context.temporal_projection's noise); it needs a projection. At the full
        # budget neither it nor +-1 slices changed the validation PSNR (docs/results.md#context-at-the-full-budget).
        # The thesis autoencoder ignores model.context (one slice in).
        "context": {"time": 0, "slices": 0, "precontrast_frames": 0, "projection": "guarded", "noise_map": False},
        # unet with a projection channel: projection (the default) takes back what the network changed alike in
        # every frame of a slice position, less what follows the signal level alone (predict.common_change: the
        # anatomy the frames share, nearly free of noise in their mean, stays the projection's; the noise floor the
        # network learned stays its own), wherever it is applied (evaluation, the benchmark, enhance.py); network:
        # its output as it is. Longer phantom training rewrote real anatomy alike in every frame; taken back, the
        # 4000-step model gained +2.04 dB against a real pCASL series' held-back frames (as it is +1.35) for 0.05 dB
        # of the phantom's validation PSNR (docs/real_data.md#the-anatomy-common-to-every-frame).
        "common_anatomy": "projection",
        # thesis_autoencoder: 2x2 max-pools in the encoder (each mirrored by a 2x upsampling in the decoder), spread
        # evenly over its 8 convolutions: 8 = after every conv (the thesis text taken literally; a 512 slice is
        # squeezed to 2x2), 4 = after every pair of convs, 2 = after every fourth. Input sides: multiples of
        # 2**pools. The thesis' wording allows all three (docs/thesis.md).
        "pools": 8,
        # thesis_autoencoder: sigmoid (output in (0, 1), as the thesis' [0, 1] images) | linear (no squashing:
        # values above 1 survive and a saturated sigmoid cannot collapse the output to 0)
        "output_activation": "sigmoid",
    },
    # main.py: training and evaluation
    "train": {
        # supervised: learn the clean (3T) image from its simulated degradation. Self-supervised, from the noisy
        # images alone (degrade.model none: a user's own 1.5T scans; never reads a clean or truth array):
        # noise2noise: input one pre-contrast frame, target another frame of the same slice position (their noise
        # is independent, the anatomy the same up to motion); noise2void: blind-spot pixels of the frame itself.
        # Both learn E[magnitude]; the Rician mean is inverted on their output (denoisers.correct_rician_mean).
        "mode": "supervised",
        # supervised target: projected (the default: the 3T frame of the registered temporal projection of its
        # position's 3T frames, 39.1 dB against the truth on the demo's validation patients where the 3T frame has
        # 33.9: a target with a fraction of the 3T image's noise; series of fewer than 3 time points keep the 3T
        # image) | 3t (the 3T image, as the thesis) | decorrelated (the 3T image with its noise made uncorrelated with
        # the input's: degrade.decorrelated_target) | truth (the phantom's noise-free image, which real data never
        # has) | expected (the truth's expected 3T magnitude, its noise floor kept: degrade.expected_target; the
        # shipped model's). data.paired.PairedSlices; self-supervised modes ignore it.
        "target": "projected",
        "noise2noise_frames": 4,  # noise2noise pairs frames among the first N time points (QIN-BREAST: 4 pre-contrast)
        "noise2noise_register": True,  # shift each noise2noise target onto its input frame (rigid, phase correlation)
        "mask_fraction": 0.02,    # noise2void: blind-spot pixels per patch (N2V: 0.2%; more gives more signal per step)
        "epochs": 10,
        "batch_size": 8,
        "learning_rate": 1e-3,   # Adam's peak rate (the thesis used 1e-4, constant; configs/thesis.yaml sets it)
        # cosine: a linear warm-up from 0 over warmup_steps, then a cosine decay to 0 at the last step of epochs x
        # steps | constant (the thesis)
        "lr_schedule": "cosine",
        "warmup_steps": 100,
        # an exponential moving average of the weights (Adam's use_ema), swapped in for validation, checkpoints and
        # the saved model; 0: none. The average spans about 1 / (1 - momentum) steps.
        "ema_momentum": 0.99,
        # mse (what PSNR scores) | mae | mse+mae (the thesis summed both: at errors near 0.02 the MAE term's
        # gradient is ~25x the MSE term's, so it optimizes the median)
        "loss": "mse",
        "patch_size": 128,       # int: train on random tissue crops (as CARE does); None: whole slices
        "augment": True,         # random flips and 90-degree rotations of training batches
        "steps_per_epoch": None,  # None: one pass over the training slices per epoch
        # supervised: N frames of one slice position share one crop window, one fresh noise draw and one projection
        # (data.paired.PairedSlices), which makes the batches N times cheaper; 1: every sample its own
        "frames_per_draw": 1,
        # in [0, 2/3): add thin bright and dark lines, this fraction of the signal, to every training crop's 3T
        # frames and target alike, moving with each frame's anatomy (crops.fine_structure, filtered by the series'
        # measured k-space window; none where it was not measured; data.paired.PairedSlices._fine_structure);
        # 0: off (docs/results.md#fine-structure-in-the-training-crops: tried, not adopted)
        "fine_structure": 0.0,
        # a trained run (its dir or model.keras) whose weights training starts from, e.g. the shipped models/default
        # (restore/shipped.py); it must share the model section and never have trained on this data's validation or
        # test patients. The start is validated first and kept unless an epoch beats it. null: fresh weights.
        "init_from": None,
        # auto: draw new noise for every training sample (the recorded degradation) when the arrays are at the
        # acquisition matrix; stored pairs otherwise (resized, e.g. the thesis). true: required. false: stored.
        "fresh_noise": "auto",
        "max_val_slices": None,  # None: validate on every validation slice; N: N evenly spaced (also for val figures)
        "max_eval_slices": None,  # None: report on every test slice; N: N evenly spaced (quick studies only)
        "mixed_precision": False,  # mixed float16 on GPU (ignored on CPU)
        # auto: MirroredStrategy when >1 GPU | mirrored: always | none | multi_worker: MultiWorkerMirroredStrategy
        # over the workers TF_CONFIG lists (main.py --worker-hosts/--task-index write it; breastmri/restore/
        # multiworker.py, docs/training.md)
        "distribute": "auto",
        "shard": "sample",       # multi_worker: each worker makes its share of every global batch (multiworker.py)
        "cpu_devices": 1,        # split the CPU into N logical devices (tests the multi-device path)
        # PyDataset worker threads building training batches (a batch is the same whichever thread builds it). 2
        # on a 2-core CPU: pipeline cost 5% and 9% of the in-memory throughput against 12% and 28% with 1 (benchmark.py
        # --parts speed --methods unet on runs/demo, alternating; docs/benchmark.md)
        "workers": 2,
        "use_multiprocessing": False,
    },
}


class ConfigError(ValueError):
    """A config file or override names a key that does not exist, or has an unusable value."""


def _merge(base, update, prefix=""):
    for key, value in update.items():
        name = prefix + key
        if key not in base:
            raise ConfigError(f"unknown config key '{name}' (known: {', '.join(prefix + k for k in base)})")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{name}' is a section; give it a mapping, not {value!r}")
            _merge(base[key], value, name + ".")
        else:
            base[key] = _coerce(name, base[key], value)


def _coerce(name, default, value):
    """Give a numeric setting the type of its default: YAML reads `1e-4` (no dot) as a string."""
    if isinstance(default, bool) or value is None or not isinstance(default, (int, float)):
        return value
    try:
        return float(value) if isinstance(default, float) else _integer(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key '{name}' must be a number like {default!r}, not {value!r}") from None


def _integer(value):
    number = float(value)
    if not number.is_integer():
        raise ValueError(value)
    return int(number)


def parse_override(text):
    """'train.epochs=3' -> {'train': {'epochs': 3}} (the value is parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    dotted, raw = text.split("=", 1)
    value = yaml.safe_load(raw)
    for part in reversed(dotted.strip().split(".")):
        value = {part: value}
    return value


def load_config(path=None, overrides=()):
    """DEFAULTS, then the YAML file at `path` (if any), then each override (dict or 'a.b=value')."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        _merge(cfg, yaml.safe_load(path.read_text()) or {})
    for override in overrides:
        _merge(cfg, parse_override(override) if isinstance(override, str) else override)
    return cfg


# Keys added after run dirs were first saved, with the value that a saved run config without them meant (the
# behaviour before the key existed): a run trained before model.context.projection had no projection channel
# (and one saved with projection: true has the global kind, see model.context_offsets); a noise2noise run saved
# before train.noise2noise_register was trained on unregistered targets; a run saved before model.common_anatomy
# was evaluated on the network's output as it is.
ADDED_LATER = {("model", "context", "projection"): False, ("model", "context", "noise_map"): False,
               ("model", "common_anatomy"): "network",
               ("train", "noise2noise_register"): False}


def load_run_config(path):
    """The config.yaml of a run dir (complete, as save_config wrote it). A key it lacks was added to DEFAULTS
    later: it takes the value that reproduces the run (ADDED_LATER), not today's default, so an old run loads
    with the inputs its model was trained on."""
    if not Path(path).is_file():
        raise ConfigError(f"config file {path} does not exist")
    saved = yaml.safe_load(Path(path).read_text()) or {}
    cfg = load_config(overrides=[saved])
    for keys, value in ADDED_LATER.items():
        node = saved
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            section = cfg
            for key in keys[:-1]:
                section = section[key]
            section[keys[-1]] = value
    return cfg


def config_hash(cfg, sections=None):
    """Short stable hash of the whole config, or of only `sections` (e.g. the ones an output depends on)."""
    part = cfg if sections is None else {s: cfg[s] for s in sections}
    return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:12]


def save_config(cfg, path):
    write_text_atomic(path, yaml.safe_dump(cfg, sort_keys=False))
