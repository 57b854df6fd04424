"""The receive chain of the phantom's scanner: what happens to the signal between the tissue and the stored image.

Real breast DCE noise is correlated between neighbouring pixels (0.68 and 0.56 on a real QIN-BREAST slice), the
background is not Rayleigh, and the chest throws ghosts across the breast. A scanner does that:

1. Motion ghosts. The blood pool pulsates, so k-space lines acquired at different cardiac phases disagree: each
   phase-encoding line of the pulsating part carries a random complex error, and its inverse transform spreads
   copies of the heart along the phase-encoding direction (image columns, anterior-posterior, here), different in
   every frame.
2. A small acquisition matrix. Only the central protocol.ACQUIRED_FRACTION of k-space is acquired, through a
   k-space filter (protocol.KSPACE_TAPER), and the rest is zero-filled: the signal is band-limited (with its Gibbs ringing) and the noise correlated exactly as a
   zero-filled acquisition correlates it (noise.zero_filled_spectrum).
3. Several receive channels. Each channel sees the image weighted by its sensitivity (phantom's coils, unit weights)
   plus its own complex Gaussian noise; the magnitude image is their root sum of squares. In tissue the noise is
   ~Gaussian with the per-channel sigma; in air it follows a chi distribution with 2 N_COILS degrees of freedom.
4. Storage: 12-bit unsigned integers with a rescale slope.

The truth is the signal before noise: the band-limited image with its ghosts, channels combined noise-free (the
sum of squares of noise-free channels is the magnitude of the image itself, the weights' squares summing to 1).
"""

import numpy as np
import scipy.fft

from breastmri.simulate.noise import acquired_lines, shaped_noise, zero_filled_spectrum
from breastmri.simulate.phantom import BITS_STORED, MAX_STORED, RESCALE_INTERCEPT, RESCALE_SLOPE
from breastmri.simulate.protocol import ACQUIRED_FRACTION, KSPACE_TAPER

PHASE_ENCODING_AXIS = -1   # image columns (anterior-posterior): DICOM InPlanePhaseEncodingDirection "ROW"


def acquisition_matrix(rows, cols, fractions=ACQUIRED_FRACTION):
    """(frequency samples along the image's column direction, phase-encoding steps along its rows) of a
    rows x cols reconstruction that acquired `fractions` of k-space (None: all of it)."""
    fractions = (1.0, 1.0) if fractions is None else fractions
    return acquired_lines(rows, fractions[0]), acquired_lines(cols, fractions[1])


def _kspace_window(rows, cols, fractions):
    """float32 (rows, cols), unshifted FFT order: the k-space filter, 1 at the centre, 0 on the zero-filled
    frequencies; the square root of the noise's zero_filled_spectrum, scaled to peak 1."""
    spectrum = _spectrum(rows, cols, fractions)
    axes = [np.sqrt(np.asarray(spectrum[name]) / max(spectrum[name])) for name in ("rows", "cols")]
    return (axes[0][:, None] * axes[1][None, :]).astype(np.float32)


def _spectrum(rows, cols, fractions):
    return zero_filled_spectrum(rows, cols, fractions, KSPACE_TAPER)


def ghosts(pulsating, strength, rng):
    """Complex ghost images of the pulsating signal (..., H, W): every phase-encoding line (a column frequency) of
    every image gets an independent complex Gaussian error of rms `strength` (relative to the line itself).
    -> complex64, same shape: what the acquisition adds to the image."""
    spectrum = scipy.fft.fft(pulsating, axis=PHASE_ENCODING_AXIS, workers=-1)
    shape = pulsating.shape[:-2] + (1, pulsating.shape[-1])
    error = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    return scipy.fft.ifft(spectrum * (error * np.float32(strength / np.sqrt(2))), axis=PHASE_ENCODING_AXIS,
                          workers=-1).astype(np.complex64)


def band_limit(image, fractions):
    """The image (..., H, W), real or complex, as a zero-filled acquisition of `fractions` of k-space gives it
    back (None, the full matrix: unchanged): complex64."""
    if fractions is None:
        return np.asarray(image, np.complex64)
    window = _kspace_window(*image.shape[-2:], fractions)
    return scipy.fft.ifft2(scipy.fft.fft2(np.asarray(image, np.complex64), workers=-1) * window,
                           workers=-1).astype(np.complex64)


def receive(image, coils, sigma, rng, fractions):
    """Sum-of-squares magnitude of the channels' noisy images.

    image: complex (T, slices, H, W), the band-limited image; coils: (N, slices, H, W) unit channel weights; sigma:
    noise per channel and per real/imaginary part (modality units); fractions: the acquired k-space (the noise is
    band-limited like the signal: noise.zero_filled_spectrum), None for white noise.
    -> float32 (T, slices, H, W)."""
    spectrum = None if fractions is None else _spectrum(*image.shape[-2:], fractions)
    total = np.zeros(image.shape, np.float32)
    for weight in coils:
        real, imag = shaped_noise(image.shape, spectrum, rng)
        channel = image * weight[None]
        total += (channel.real + sigma * real) ** 2 + (channel.imag + sigma * imag) ** 2
    return np.sqrt(total)


def store(magnitude):
    """Magnitude (modality units) -> uint16 stored values of BITS_STORED bits (same shape)."""
    stored = np.rint((magnitude - RESCALE_INTERCEPT) / RESCALE_SLOPE)
    if stored.max() > MAX_STORED:  # cannot happen with phantom._signal_gain(); a changed constant would clip silently
        raise RuntimeError(f"simulated signal exceeds {BITS_STORED} bits ({stored.max():.0f}); lower the gain")
    return stored.astype(np.uint16)
