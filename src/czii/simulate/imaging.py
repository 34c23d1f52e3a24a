"""Imaging model of the simulator: a scene's density volume → tomograms of each type.

Every tomogram type is a different linear recipe applied to the same scene spectrum and the
same noise realisation ``Z`` (complex Gaussian, as the types of one real run come from one
tilt series), inverted so that protein is darker than solvent as in the real tomograms, and
mapped to an arbitrary per-run intensity scale and offset::

    tomogram = offset − scale · IFFT[ H_type(k) · FFT(density) + σ_type · G_type(k) · Z(k) ]

``σ_type`` is set so that var(signal) / var(noise) over the volume ≈ ``snr · snr_factor``
(variances from Parseval's theorem on the half spectrum; the mean is not counted).

Missing wedge. The tilt axis is y and the beam runs along z at 0° tilt. By the central-slice
theorem a projection at tilt θ fills the Fourier plane spanned by ky and (kx, kz) ∝ (cos θ,
−sin θ). Tilts within ±θmax therefore fill |kz| ≤ tan(θmax)·|kx| and the missing wedge is
``|kz| > tan(θmax)·|kx|`` for every ky: with θmax = 60° a double wedge of half-angle 30° around
the kz axis, which elongates objects along z as in real tomograms. A tilt axis turned by β in
the y-x plane (``tilt_axis_deg``) puts k⊥ = cos β·kx + sin β·ky in place of kx.

Recipes, with T = sin(πλΔf·k² + φ) the phase-contrast CTF at 300 kV (λ = 0.0197 Å, amplitude
contrast 0.07), E = exp(−B·k²/4) the envelope, W = T / (T² + 1/SSNR(k)) a Wiener CTF
correction with SSNR(k) = 1000·exp(−100 Å·k), L(σ) = exp(−2π²σ²k²) a Gaussian low-pass of
real-space width σ and R = 0.3 + 0.7·k/k_Nyquist the back-projection ramp:

=================  ===================================  ===========================  ==========
type               signal H                             noise G                      SNR factor
=================  ===================================  ===========================  ==========
wbp                E·T (oscillating, uncorrected)       R                            0.1
ctfdeconvolved     E·T·W (phase-flipped, restored)      R·|W|                        0.25
isonetcorrected    E·T·W·L(6 Å), wedge 60 % refilled    R·|W|·L(8 Å), wedge 60 %     0.5
denoised           E·T·W·L(9 Å)                         L(14 Å)                      1
=================  ===================================  ===========================  ==========

A smooth random "cytosol texture" (std ``texture_std``, correlation ~50 Å) is added to the
scene spectrum before imaging. An ice thickness gradient (``ice_gradient`` > 0) adds, after
imaging and before the intensity mapping, a linear ramp across the y-x field of ± ``ice_gradient``
times the tomogram's standard deviation.

Per-run variations of the table (:class:`Imaging`, all off by default): denoised and
isonetcorrected may keep their phase flips (``ctf_corrected`` false: W left out, as in a
reconstruction without CTF correction); their low-pass widths are scaled by ``filter_scale``
(0: none, from a raw-looking back-projection to a strongly denoised one); every noise colour is
multiplied by ((k + k0) / (k_Nyquist + k0))^``noise_exponent`` with k0 = 0.1·k_Nyquist (blue for
positive exponents, red for negative ones); ``sign`` −1 makes protein brighter than solvent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import scipy.fft

WAVELENGTH_A = 0.01969  # electrons at 300 kV
AMPLITUDE_PHASE = float(np.arcsin(0.07))
TEXTURE_CORRELATION_A = 50.0
SLAB = 8  # kz planes per block when building filters (bounds temporary memory)


@dataclass(frozen=True)
class Recipe:
    """How one tomogram type treats signal and noise (see the module table); ``ctf_corrected`` None: as the
    run's imaging says (:attr:`Imaging.ctf_corrected`)."""

    ctf_corrected: bool | None
    signal_lowpass_A: float
    noise_ramp: bool
    noise_wiener: bool
    noise_lowpass_A: float
    wedge_fill: float
    snr_factor: float


RECIPES: dict[str, Recipe] = {
    "denoised": Recipe(None, 9.0, False, False, 14.0, 0.0, 1.0),
    "wbp": Recipe(False, 0.0, True, False, 0.0, 0.0, 0.1),
    "ctfdeconvolved": Recipe(True, 0.0, True, True, 0.0, 0.0, 0.25),
    "isonetcorrected": Recipe(None, 6.0, True, True, 8.0, 0.6, 0.5),
}
TOMO_TYPES: tuple[str, ...] = tuple(RECIPES)


@dataclass(frozen=True)
class Imaging:
    """Per-run imaging parameters."""

    defocus_A: float
    bfactor_A2: float
    snr: float
    tilt_range_deg: float
    texture_std: float
    intensity_scale: float
    intensity_offset: float
    ice_gradient: float = 0.0
    ice_angle_rad: float = 0.0
    tilt_axis_deg: float = 0.0  # in-plane angle of the tilt axis from y
    ctf_corrected: bool = True  # whether denoised and isonetcorrected have their phase flips corrected
    noise_exponent: float = 0.0  # noise colour: amplitude × ((k + k0) / (k_Nyquist + k0))^exponent
    filter_scale: float = 1.0  # low-pass widths of denoised and isonetcorrected times this (0: none)
    sign: float = 1.0  # −1: protein brighter than solvent


class _Spectrum:
    """Frequency axes (1/Å) of an rfftn half spectrum and the Parseval weights of its kx planes."""

    def __init__(self, shape_zyx: Sequence[int], spacing_zyx_A: Sequence[float]):
        nz, ny, nx = shape_zyx
        sz, sy, sx = spacing_zyx_A
        self.shape = tuple(shape_zyx)
        self.n_voxels = float(nz * ny * nx)
        self.kz = np.fft.fftfreq(nz, d=sz).astype(np.float32)
        self.ky = np.fft.fftfreq(ny, d=sy).astype(np.float32)
        self.kx = np.fft.rfftfreq(nx, d=sx).astype(np.float32)
        self.half_shape = (nz, ny, self.kx.size)
        self.k_nyquist = float(0.5 / max(spacing_zyx_A))
        self.weights_x = np.full(self.kx.size, 2.0, dtype=np.float32)
        self.weights_x[0] = 1.0
        if nx % 2 == 0:
            self.weights_x[-1] = 1.0

    def slabs(self) -> Iterator[slice]:
        for z0 in range(0, self.half_shape[0], SLAB):
            yield slice(z0, min(z0 + SLAB, self.half_shape[0]))

    def k2(self, zs: slice) -> np.ndarray:
        return self.kz[zs, None, None] ** 2 + self.ky[None, :, None] ** 2 + self.kx[None, None, :] ** 2

    def wedge(self, zs: slice, tilt_range_deg: float, tilt_axis_deg: float = 0.0) -> np.ndarray:
        """True inside the missing wedge, shape (slab, 1 or ny, nkx): ``|kz| > tan(θmax)·|k⊥|`` with k⊥ the
        in-plane frequency across the tilt axis (kx for a tilt axis along y)."""
        across = self.kx[None, None, :]
        if tilt_axis_deg:
            beta = np.radians(tilt_axis_deg)
            across = np.float32(np.cos(beta)) * across + np.float32(np.sin(beta)) * self.ky[None, :, None]
        return np.abs(self.kz[zs, None, None]) > np.tan(np.radians(tilt_range_deg)) * np.abs(across)

    def power(self, half_spectrum_block: np.ndarray) -> float:
        """Σ over the full spectrum of |F|² for this block of the half spectrum."""
        return float(np.sum(np.abs(half_spectrum_block) ** 2 * self.weights_x, dtype=np.float64))


def _lowpass(k2: np.ndarray, sigma_A: float) -> np.ndarray:
    return np.exp(np.float32(-2.0 * np.pi**2 * sigma_A**2) * k2)


def _filters(recipe: Recipe, imaging: Imaging, spec: _Spectrum, zs: slice) -> tuple[np.ndarray, np.ndarray]:
    """Signal transfer H and noise colour G on one block of the half spectrum."""
    k2 = spec.k2(zs)
    k = np.sqrt(k2)
    ctf = np.sin(np.float32(np.pi * WAVELENGTH_A * imaging.defocus_A) * k2 + np.float32(AMPLITUDE_PHASE))
    signal = np.exp(np.float32(-imaging.bfactor_A2 / 4.0) * k2) * ctf
    noise = np.ones_like(k2)
    if imaging.noise_exponent:
        k0 = np.float32(0.1 * spec.k_nyquist)
        noise *= ((k + k0) / (np.float32(spec.k_nyquist) + k0)) ** np.float32(imaging.noise_exponent)
    if imaging.ctf_corrected if recipe.ctf_corrected is None else recipe.ctf_corrected:
        wiener = ctf / (ctf**2 + np.exp(np.float32(100.0) * k) / np.float32(1000.0))
        signal *= wiener
        if recipe.noise_wiener:
            noise *= np.abs(wiener)
    if recipe.noise_ramp:
        noise *= 0.3 + 0.7 * k / np.float32(spec.k_nyquist)
    if recipe.signal_lowpass_A and imaging.filter_scale:
        signal *= _lowpass(k2, recipe.signal_lowpass_A * imaging.filter_scale)
    if recipe.noise_lowpass_A and imaging.filter_scale:
        noise *= _lowpass(k2, recipe.noise_lowpass_A * imaging.filter_scale)
    in_wedge = spec.wedge(zs, imaging.tilt_range_deg, imaging.tilt_axis_deg)
    wedge = np.where(in_wedge, np.float32(recipe.wedge_fill), np.float32(1.0))
    return signal * wedge, noise * wedge


def _complex_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Complex Gaussian noise (real and imaginary parts N(0, 1)) as complex64."""
    return rng.standard_normal((*shape, 2), dtype=np.float32).view(np.complex64)[..., 0]


def _ice_ramp(shape_zyx: Sequence[int], angle_rad: float, amplitude: float) -> np.ndarray:
    """A linear ramp from −amplitude to +amplitude across the y-x field along ``angle_rad`` (constant in z)."""
    _, ny, nx = shape_zyx
    y = np.linspace(-1.0, 1.0, ny, dtype=np.float32)[:, None]
    x = np.linspace(-1.0, 1.0, nx, dtype=np.float32)[None, :]
    along = np.float32(np.cos(angle_rad)) * x + np.float32(np.sin(angle_rad)) * y
    return (np.float32(amplitude) * along / max(float(np.abs(along).max()), 1e-6))[None]


def image_tomograms(
    density_zyx: np.ndarray,
    spacing_zyx_A: Sequence[float],
    imaging: Imaging,
    types: Sequence[str],
    rng: np.random.Generator,
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(type, tomogram float32 z, y, x)`` for each of ``types`` (keys of :data:`RECIPES`).

    Only the spectrum of ``density_zyx`` is kept: hand the volume over without another reference to save memory.
    """
    spec = _Spectrum(density_zyx.shape, spacing_zyx_A)
    workers = os.cpu_count() or 1
    scene = scipy.fft.rfftn(density_zyx, workers=workers)
    del density_zyx  # the caller hands the volume over; free it before the big buffers
    texture_power = sum(spec.power(_lowpass(spec.k2(zs), TEXTURE_CORRELATION_A)) for zs in spec.slabs())
    texture_amp = imaging.texture_std * spec.n_voxels / np.sqrt(2.0 * texture_power)
    for zs in spec.slabs():
        scene[zs] += np.float32(texture_amp) * _lowpass(spec.k2(zs), TEXTURE_CORRELATION_A) * _complex_noise(
            rng, (zs.stop - zs.start, *spec.half_shape[1:])
        )
    noise = _complex_noise(rng, spec.half_shape)
    for tomo_type in types:
        recipe = RECIPES[tomo_type]
        signal_power, noise_power = 0.0, 0.0
        for zs in spec.slabs():
            h, g = _filters(recipe, imaging, spec, zs)
            signal_power += spec.power(scene[zs] * h)
            noise_power += 2.0 * spec.power(g)
            if zs.start == 0:
                signal_power -= float(np.abs(scene[0, 0, 0] * h[0, 0, 0]) ** 2)  # the mean is not signal
        sigma = np.sqrt(signal_power / (noise_power * imaging.snr * recipe.snr_factor))
        spectrum = np.empty(spec.half_shape, dtype=np.complex64)
        for zs in spec.slabs():
            h, g = _filters(recipe, imaging, spec, zs)
            spectrum[zs] = scene[zs] * h + np.float32(sigma) * g * noise[zs]
        volume = scipy.fft.irfftn(spectrum, s=spec.shape, workers=workers, overwrite_x=True)
        del spectrum
        if imaging.ice_gradient:
            volume += _ice_ramp(volume.shape, imaging.ice_angle_rad, imaging.ice_gradient * float(volume.std()))
        volume *= np.float32(-imaging.intensity_scale * imaging.sign)
        volume += np.float32(imaging.intensity_offset)
        yield tomo_type, volume
