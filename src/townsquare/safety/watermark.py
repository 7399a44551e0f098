"""Invisible, keyed image watermark with a detector: a self-synchronising periodic mark.

The method (docs/watermark.md explains it at length):

* **Canonical frame.** Every image is looked at on a grid whose long side is
  ``CANONICAL`` pixels, so a uniform resize of the whole image changes nothing.
* **Periodic tile.** The mark is one ``PERIOD``-pixel tile, repeated over the canonical
  frame (Kutter 1998; Voloshynovskiy et al. 2001, "self-reference"). The tile is a grid of
  ``CELL``-pixel cells: a fifth of them carry a key-derived synchronisation pattern, the
  rest carry the payload, convolutionally coded and spread with key-derived signs. The tile
  is band-limited to the frequencies that survive JPEG, blur and downscaling.
* **Perceptual shaping.** The tile is scaled by a local-activity mask (more in texture,
  less in flat areas) and added to the luminance, with a global gain that fixes the PSNR.
  Coded bits that the image itself pushes the wrong way get more amplitude (informed
  embedding, Malvar and Florencio's improved spread spectrum).
* **Synchronisation.** The detector whitens the luminance and computes its autocorrelation;
  the repeated tile shows as a lattice of peaks whose spacing and angle give the scale and
  rotation (crops, resizes, rotations). It folds the image onto one tile along that lattice
  (averaging all repetitions) and finds the tile's translation by correlating with the sync
  pattern.
* **Decision.** Soft Viterbi decoding gives the payload; how well the soft coded bits agree
  with the re-encoded payload gives a p-value under the null hypothesis that an unmarked
  image yields fair coin flips (binomial and Hoeffding bounds, times the number of codewords,
  statistics and hypotheses tried; see :func:`p_value`). ``found`` means
  p <= ``FALSE_POSITIVE_BOUND`` (1e-6).

Only numpy, scipy and Pillow are used.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from scipy import ndimage
from scipy.special import gammaln

from townsquare.errors import InvalidImage

log = logging.getLogger("townsquare.watermark")

Array = NDArray[Any]  # float arrays; numpy's stubs lose the dtype through FFTs

CANONICAL = 512
PERIOD = 128
CELL = 4
GRID = PERIOD // CELL
SYNC_FRACTION = 0.2
PAYLOAD_BITS = 48
CONSTRAINT = 7
GENERATORS = (0o133, 0o171, 0o165)  # rate 1/3, K = 7 (the LTE / 3GPP code)
BAND = (0.05, 0.2)  # cycles per canonical pixel: the frequencies the tile lives in
TARGET_PSNR = 41.5
VERIFY_ATTEMPTS = 3  # embeds tried before refusing an image whose mark cannot be read back
VERIFY_STEP_DB = 1.5  # each retry's mark is this much stronger (lower PSNR)
FALSE_POSITIVE_BOUND = 1e-6
SYNC_GAIN = 1.0
SHIFTS = 1  # translations (sync peaks) kept per lattice; more lowers the error threshold
HYPOTHESES = 6  # (lattice, translation) pairs decoded at most; enters the p-value
SCALES = (0.6, 2.2)  # lattice scale searched (crop without resizing back enlarges it)
MAX_ANGLE = 8.0  # degrees, rotation searched either way
MASK_POWER = 0.7  # activity mask: (local std / median) ** power, clipped to the range
MASK_RANGE = (0.35, 2.5)
INFORMED_ROUNDS = 2  # host-compensation passes
INFORMED_CAP = 4.0  # most a coded bit's amplitude may be raised
LATTICE_PEAKS = 12  # autocorrelation lattice hypotheses checked against the sync pattern
SWEEP_STEP = 0.01  # log-scale step of the unrotated sweeps (at half resolution)
SWEEP_PEAKS = 3  # lattice hypotheses from each of the three sweeps
ACF_DECODES = 3  # of the HYPOTHESES decodes, those given to autocorrelation lattices
ASPECTS = (0.5, 2.0)  # one axis's scale against the other's, swept (non-uniform resizes)
# Width / height of the original image tried when the image as it is shows no mark: a whole
# image resized to another aspect ratio (512 x 512 -> 512 x 400) is stretched back to each
# common one and searched again, which restores the tile exactly when the original had
# that shape (the sweep above finds other stretches, less surely).
ASPECT_RATIOS = (1.0, 4 / 3, 3 / 4, 3 / 2, 2 / 3, 16 / 10, 10 / 16, 16 / 9, 9 / 16, 5 / 4, 4 / 5)
FLIPS = 2  # the image as is, and mirrored left to right
# (lattice, translation) pairs decoded at most, over both orientations and every aspect ratio
# tried; enters the p-value
DECODES = FLIPS * (HYPOTHESES + len(ASPECT_RATIOS))

CODED_BITS = len(GENERATORS) * (PAYLOAD_BITS + CONSTRAINT - 1)


@dataclass(frozen=True)
class Detection:
    """What :func:`detect` found.

    ``found`` is true when ``p_value`` is at most 1e-6: the probability that an unmarked image
    decodes this close to some valid payload. ``payload`` is only set when found.
    """

    found: bool
    payload: int | None
    bit_errors: int
    coded_bits: int
    p_value: float
    scale: float = 1.0
    angle: float = 0.0
    decoded: int | None = None  # best-guess payload even when not found (for diagnostics)

    def as_dict(self) -> dict[str, object]:
        """The detection as JSON-ready values."""
        return {
            "found": self.found,
            "payload": None if self.payload is None else payload_hex(self.payload),
            "bit_errors": self.bit_errors,
            "coded_bits": self.coded_bits,
            "p_value": self.p_value,
        }


def payload_hex(payload: int) -> str:
    """A payload as fixed-width hex, the form the provenance registry stores."""
    return f"{payload:0{PAYLOAD_BITS // 4}x}"


# --------------------------------------------------------------------------- key material


@dataclass(frozen=True)
class _Keyed:
    sync_cells: NDArray[np.intp]
    sync_signs: Array
    data_cells: NDArray[np.intp]
    data_bit: NDArray[np.intp]  # coded bit index carried by each data cell
    data_signs: Array
    sync_tile: Array  # band-limited sync-only tile (PERIOD x PERIOD), unit energy per cell


def _rng(key: bytes, label: str) -> np.random.Generator:
    digest = hashlib.sha256(key + b"\x00townsquare-watermark\x00" + label.encode()).digest()
    return np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))


def _band(shape: tuple[int, int]) -> Array:
    h, w = shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    r = np.sqrt(fx**2 + fy**2)
    lo, hi = BAND
    return (1.0 - np.exp(-((r / lo) ** 2))) * np.exp(-((r / hi) ** 2))


def _bandpass(plane: Array) -> Array:
    return np.fft.irfft2(np.fft.rfft2(plane) * _band(plane.shape), s=plane.shape)


def _cells_to_tile(values: Array) -> Array:
    """G x G cell values -> band-limited PERIOD x PERIOD tile (cyclic)."""
    return _bandpass(np.kron(values.reshape(GRID, GRID), np.ones((CELL, CELL))))


@lru_cache(maxsize=8)
def _keyed(key: bytes) -> _Keyed:
    rng = _rng(key, "layout")
    order = rng.permutation(GRID * GRID)
    n_sync = round(SYNC_FRACTION * GRID * GRID)
    sync_cells = np.sort(order[:n_sync])
    data_cells = order[n_sync:]
    data_bit = np.arange(len(data_cells)) % CODED_BITS
    sync_signs = rng.choice([-1.0, 1.0], size=n_sync)
    data_signs = rng.choice([-1.0, 1.0], size=len(data_cells))
    grid = np.zeros(GRID * GRID)
    grid[sync_cells] = sync_signs
    return _Keyed(sync_cells, sync_signs, data_cells, data_bit, data_signs, _cells_to_tile(grid))


# --------------------------------------------------------------------------- the code


@lru_cache(maxsize=1)
def _trellis() -> tuple[NDArray[np.intp], Array]:
    """For every register value (K bits): the next state and the +-1 output symbols."""
    regs = np.arange(1 << CONSTRAINT)
    out = np.array(
        [[bin(int(r) & g).count("1") & 1 for g in GENERATORS] for r in regs], dtype=np.float64
    )
    return regs & ((1 << (CONSTRAINT - 1)) - 1), 2.0 * out - 1.0


def _bits(payload: int) -> NDArray[np.int64]:
    return np.array([(payload >> (PAYLOAD_BITS - 1 - i)) & 1 for i in range(PAYLOAD_BITS)])


def _from_bits(bits: NDArray[np.int64]) -> int:
    value = 0
    for b in bits:
        value = (value << 1) | int(b)
    return value


def encode_bits(payload: int) -> Array:
    """The +-1 codeword of a payload (tail-terminated convolutional code)."""
    _, out = _trellis()
    reg = 0
    symbols = []
    for b in list(_bits(payload)) + [0] * (CONSTRAINT - 1):
        reg = ((reg << 1) | int(b)) & ((1 << CONSTRAINT) - 1)
        symbols.append(out[reg])
    return np.concatenate(symbols)


def _viterbi(soft: Array) -> int:
    """Maximum-likelihood payload for soft symbols (positive means bit 1)."""
    _, out = _trellis()
    rate = len(GENERATORS)
    steps = soft.reshape(-1, rate)
    n_states = 1 << (CONSTRAINT - 1)
    states = np.arange(n_states)
    # predecessor p of next state s with input bit (s & 1): register = (p << 1) | (s & 1)
    prev0 = states >> 1
    prev1 = prev0 | (1 << (CONSTRAINT - 2))
    reg0 = (prev0 << 1) | (states & 1)
    reg1 = (prev1 << 1) | (states & 1)
    metric = np.full(n_states, -np.inf)
    metric[0] = 0.0
    choices = np.zeros((len(steps), n_states), dtype=bool)
    for t, sym in enumerate(steps):
        branch = out @ sym
        m0 = metric[prev0] + branch[reg0]
        m1 = metric[prev1] + branch[reg1]
        choices[t] = m1 > m0
        metric = np.where(choices[t], m1, m0)
    state = 0
    bits = []
    for t in range(len(steps) - 1, -1, -1):
        bits.append(state & 1)
        state = (prev1 if choices[t, state] else prev0)[state]
    decoded = np.array(bits[::-1][:PAYLOAD_BITS])
    return _from_bits(decoded)


def _log_binom_cdf(k: int, n: int) -> float:
    """log P(Binomial(n, 1/2) <= k)."""
    i = np.arange(k + 1)
    logs = gammaln(n + 1) - gammaln(i + 1) - gammaln(n - i + 1) - n * math.log(2.0)
    top = float(np.max(logs))
    return top + math.log(float(np.sum(np.exp(logs - top))))


def p_value(bit_errors: int, score: float) -> float:
    """Probability that an unmarked image decodes this well against some payload.

    Two statistics of the soft coded bits ``s`` against the re-encoded payload ``c`` are
    tested, and the better one counts twice (Bonferroni):

    * ``bit_errors``, the signs of ``s`` that disagree with ``c``. On an unmarked image the
      signs are fair, independent coins (every cell's sign comes from the key), so one
      codeword is this close with probability ``P(Binomial(n, 1/2) <= bit_errors)``.
    * ``score = sum(s_j c_j) / sqrt(sum(s_j^2))``: given the magnitudes, a sum of
      fair-sign terms, so ``P(score >= t) <= exp(-t^2 / 2)`` (Hoeffding).

    Each is multiplied by the ``2**PAYLOAD_BITS`` codewords and the ``DECODES`` (lattice,
    translation) pairs that could have been decoded, over both orientations and every aspect
    ratio tried (union bound).
    """
    log_union = _log_union()
    log_hard = _log_binom_cdf(bit_errors, CODED_BITS)
    log_soft = -0.5 * score * score if score > 0 else 0.0
    return min(1.0, math.exp(min(log_hard, log_soft) + log_union))


def _log_union() -> float:
    """log of the number of (codeword, hypothesis, orientation, statistic) tests made."""
    return (
        PAYLOAD_BITS * math.log(2.0) + math.log(DECODES) + math.log(2.0)  # two statistics
    )


def error_threshold() -> int:
    """The most coded-bit errors that alone keep the false-positive bound."""
    k = 0
    while p_value(k + 1, 0.0) <= FALSE_POSITIVE_BOUND:
        k += 1
    return k


def score_threshold() -> float:
    """The smallest correlation score that alone keeps the false-positive bound."""
    return math.sqrt(2.0 * (_log_union() - math.log(FALSE_POSITIVE_BOUND)))


# --------------------------------------------------------------------------- pixels


def _luma(rgb: Array) -> Array:
    return np.asarray(rgb @ np.array([0.299, 0.587, 0.114]))


def _resize_plane(plane: Array, size: tuple[int, int]) -> Array:
    """Resize a float plane to (width, height) with Pillow's antialiased bicubic filter."""
    if plane.shape[1] == size[0] and plane.shape[0] == size[1]:
        return plane
    img = Image.fromarray(plane.astype(np.float32), mode="F")
    return np.asarray(img.resize(size, Image.Resampling.BICUBIC), dtype=np.float64)


def _canonical_size(width: int, height: int) -> tuple[int, int]:
    scale = CANONICAL / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _activity_mask(luma: Array) -> Array:
    """Local standard deviation (5 x 5 canonical pixels), normalised: > 1 in texture."""
    mean = ndimage.uniform_filter(luma, 5)
    var = np.maximum(ndimage.uniform_filter(luma * luma, 5) - mean * mean, 0.0)
    act = np.sqrt(var) + 2.0
    mask = act / float(np.median(act))
    return np.asarray(np.clip(mask, MASK_RANGE[0], MASK_RANGE[1]) ** MASK_POWER)


def _cell_signs(key: bytes, payload: int) -> Array:
    """The +-1 sign of every cell of the tile (G x G): sync pattern and spread codeword."""
    keyed = _keyed(key)
    grid = np.zeros(GRID * GRID)
    grid[keyed.sync_cells] = keyed.sync_signs
    grid[keyed.data_cells] = keyed.data_signs * encode_bits(payload)[keyed.data_bit]
    return grid.reshape(GRID, GRID)


@dataclass(frozen=True)
class _Whitening:
    """The detector's front end, frozen on one image so it can be applied linearly."""

    spectral: Array  # rfft2-domain weights: band / local spectral magnitude
    spatial: Array  # per-pixel divisor flattening local contrast

    @classmethod
    def of(cls, luma: Array) -> _Whitening:
        spec = np.fft.rfft2(luma - luma.mean())
        # divide by the locally averaged magnitude, so the host's strong low frequencies and
        # its periodic structures weigh no more than the rest of the band
        mag = ndimage.gaussian_filter(np.abs(spec), 2.0, mode="wrap")
        spectral = _band(luma.shape) / (mag + 1e-9)
        out = np.fft.irfft2(spec * spectral, s=luma.shape)
        local = np.sqrt(ndimage.uniform_filter(out * out, 15)) + 1e-6
        return cls(spectral, local + float(np.median(local)))

    def __call__(self, plane: Array) -> Array:
        spec = np.fft.rfft2(plane - plane.mean())
        return np.fft.irfft2(spec * self.spectral, s=plane.shape) / self.spatial


def _cell_sums(plane: Array) -> Array:
    h, w = plane.shape
    cropped = plane[: h - h % CELL, : w - w % CELL]
    return np.asarray(cropped.reshape(h // CELL, CELL, w // CELL, CELL).sum(axis=(1, 3)))


def embed_array(
    rgb: NDArray[np.uint8],
    key: bytes,
    payload: int,
    *,
    psnr: float = TARGET_PSNR,
    offset: tuple[int, int] | None = None,
    informed: float = 1.0,
) -> NDArray[np.uint8]:
    """Mark an H x W x 3 uint8 array; returns a new array of the same shape.

    ``informed`` scales the host-interference compensation (0 turns it off): each cell's
    amplitude is raised where the image itself would push the detector the wrong way
    (improved spread spectrum, Malvar and Florencio 2003), cell by cell, so every tile
    decodes on its own and crops keep working.
    """
    if not 0 <= payload < (1 << PAYLOAD_BITS):
        raise ValueError(f"payload must be an integer in [0, 2**{PAYLOAD_BITS})")
    height, width = rgb.shape[:2]
    if offset is None:
        # a fresh cyclic offset per image: averaging many marked images blurs the tile away
        drawn = np.random.default_rng().integers(0, GRID, 2)
        offset = (int(drawn[0]), int(drawn[1]))
    signs = np.roll(_cell_signs(key, payload), offset, axis=(0, 1))
    cw, ch = _canonical_size(width, height)
    rows, cols = -(-ch // CELL), -(-cw // CELL)
    sign_map = np.tile(signs, (rows // GRID + 1, cols // GRID + 1))[:rows, :cols]
    pixels = rgb.astype(np.float64)
    luma = _luma(pixels)
    canon = _resize_plane(luma, (cw, ch))
    pad = ((0, rows * CELL - ch), (0, cols * CELL - cw))
    canon = np.pad(canon, pad, mode="reflect")
    mask = _activity_mask(canon)
    white = _Whitening.of(canon)

    def render(amp: Array) -> Array:
        return mask * _bandpass(np.kron(sign_map * amp, np.ones((CELL, CELL))))

    def response(plane: Array) -> Array:
        return sign_map * _cell_sums(_bandpass(white(plane)))

    target_rms = 255.0 / 10 ** (psnr / 20.0)
    amp = np.ones_like(sign_map)
    if informed > 0:
        # which coded bit (or -1: sync) each cell instance carries, and in which tile
        keyed = _keyed(key)
        cell_bit = np.full(GRID * GRID, -1)
        cell_bit[keyed.data_cells] = keyed.data_bit
        r = (np.arange(rows)[:, None] - offset[0]) % GRID
        c = (np.arange(cols)[None, :] - offset[1]) % GRID
        bit_map = cell_bit[r * GRID + c]
        # each coded bit is one group (its cells, in every tile), and so is each sync cell:
        # the sync pattern is host-compensated too, so the detector finds the tile's position
        # on textures that would otherwise drown it
        sync_index = np.full(GRID * GRID, -1)
        sync_index[keyed.sync_cells] = np.arange(len(keyed.sync_cells))
        group = np.where(bit_map >= 0, bit_map, CODED_BITS + sync_index[r * GRID + c])
        data = np.ones_like(bit_map, dtype=bool)
        host = np.bincount(group[data], weights=response(canon)[data])
        for _ in range(INFORMED_ROUNDS):
            plane = render(amp)
            gain = target_rms / float(np.sqrt(np.mean(plane**2)))
            unit = np.bincount(group[data], weights=(response(gain * plane) / amp)[data])
            deficit = np.maximum(0.0, -host) / np.maximum(unit, 1e-12)
            amp = np.where(data, np.clip(1.0 + informed * deficit[group], 0.0, INFORMED_CAP), 1.0)
    plane = render(amp)[:ch, :cw]
    plane = _resize_plane(plane, (width, height))
    plane *= target_rms / float(np.sqrt(np.mean(plane**2)))
    out = pixels + plane[:, :, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- detection


def _whiten(luma: Array) -> Array:
    """Band-pass the canonical luminance and flatten its local contrast."""
    return _Whitening.of(luma)(luma)


def _acf(noise: Array) -> tuple[Array, Array]:
    """The whitened image's autocorrelation, high-passed and as per-radius z-scores.

    Returns it as is and slightly smoothed (for the coarse search), centred on lag 0 and
    cropped to the lags the lattice search can use. Both filters are applied to the power
    spectrum, which is cheaper than filtering the autocorrelation itself.
    """
    h, w = noise.shape
    ph, pw = 2 * h, 2 * w
    power = np.abs(np.fft.rfft2(noise, s=(ph, pw))) ** 2
    reach = int(0.85 * min(h, w)) + 4
    if not float(power.sum()) > 1e-12:
        flat = np.zeros((2 * reach + 1, 2 * reach + 1))
        return flat, flat  # a flat image: nothing to synchronise on
    fy = np.fft.fftfreq(ph)[:, None]
    fx = np.fft.rfftfreq(pw)[None, :]
    f2 = fx**2 + fy**2
    # acf - gaussian(acf, 6): removes the host's broad correlations
    highpass = power * (1.0 - np.exp(-2.0 * np.pi**2 * 36.0 * f2))
    smoothing = np.exp(-2.0 * np.pi**2 * f2)  # gaussian, sigma 1 lag

    def lags(spectrum: Array) -> Array:
        acf = np.fft.fftshift(np.fft.irfft2(spectrum, s=(ph, pw)))
        cy, cx = ph // 2, pw // 2
        return np.asarray(acf[cy - reach : cy + reach + 1, cx - reach : cx + reach + 1])

    acf = lags(highpass)
    smooth = lags(highpass * smoothing)
    # express every lag as a z-score among the lags at the same distance, so that the host's
    # strong short-range correlations do not outweigh the tile's far, regular peaks
    yy, xx = np.ogrid[-reach : reach + 1, -reach : reach + 1]
    ring = np.hypot(yy, xx).astype(np.int64)
    count = np.maximum(np.bincount(ring.ravel()), 1)
    rms = np.sqrt(np.bincount(ring.ravel(), weights=(acf * acf).ravel()) / count) + 1e-12
    rms_smooth = np.sqrt(np.bincount(ring.ravel(), weights=(smooth * smooth).ravel()) / count)
    return acf / rms[ring], smooth / (rms_smooth + 1e-12)[ring]


_LATTICE = np.array(
    [(1, 0), (0, 1), (1, 1), (1, -1), (2, 0), (0, 2), (2, 1), (1, 2), (2, -1), (1, -2)]
)


def _lattice_scores(acf: Array, scales: Array, angles: Array, limit: float) -> Array:
    """Mean autocorrelation at the lattice points of every (scale, angle) hypothesis."""
    cy, cx = acf.shape[0] // 2, acf.shape[1] // 2
    s = scales[:, None, None]
    a = np.deg2rad(angles)[None, :, None]
    k1 = _LATTICE[None, None, :, 0]
    k2 = _LATTICE[None, None, :, 1]
    # lattice vectors v1 = sP(cos a, sin a), v2 = sP(-sin a, cos a) in (x, y)
    x = s * PERIOD * (k1 * np.cos(a) - k2 * np.sin(a))
    y = s * PERIOD * (k1 * np.sin(a) + k2 * np.cos(a))
    inside = np.sqrt(x * x + y * y) <= limit
    vals = ndimage.map_coordinates(acf, [(y + cy).ravel(), (x + cx).ravel()], order=1).reshape(
        x.shape
    )
    count = inside.sum(axis=-1)
    total = np.where(inside, vals, 0.0).sum(axis=-1)
    # lags are z-scores, so a hypothesis scores the combined z of its lattice points
    return np.where(count >= 4, total / np.sqrt(np.maximum(count, 1)), -np.inf)


def _lattice_candidates(noise: Array, n: int) -> list[tuple[float, float]]:
    acf, smooth = _acf(noise)
    limit = 0.85 * min(noise.shape)
    scales = np.exp(np.arange(math.log(SCALES[0]), math.log(SCALES[1]), 0.008))
    angles = np.arange(-MAX_ANGLE, MAX_ANGLE + 1e-9, 0.4)
    coarse = _lattice_scores(smooth, scales, angles, limit)
    peaks = coarse == ndimage.maximum_filter(coarse, size=5, mode="nearest")
    order = np.argsort(np.where(peaks, coarse, -np.inf), axis=None)[::-1]
    found: list[tuple[float, float]] = []
    for flat in order[: 3 * n]:
        i, j = np.unravel_index(flat, coarse.shape)
        if not np.isfinite(coarse[i, j]):
            break
        s0, a0 = float(scales[i]), float(angles[j])
        fine_s = s0 * np.exp(np.linspace(-0.008, 0.008, 17))
        fine_a = a0 + np.linspace(-0.4, 0.4, 17)
        fine = _lattice_scores(acf, fine_s, fine_a, limit)
        fi, fj = np.unravel_index(int(np.argmax(fine)), fine.shape)
        found.append((float(fine_s[fi]), float(fine_a[fj])))
        if len(found) >= n:
            break
    return found


Lattice = tuple[float, float, float]  # scale (x), angle in degrees, aspect (y scale / x scale)


def _sweeps(noise: Array, keyed: _Keyed, n: int) -> list[Lattice]:
    """Unrotated lattices found by matching the sync pattern directly, swept at half
    resolution: one scale for both axes (a crop that is not resized back), and each axis's
    scale with the other kept (the whole image resized to another aspect ratio). On strongly
    textured photos the autocorrelation misses these lattices while the host-compensated sync
    pattern still shows them. The ``n`` best of each sweep, refined at full resolution."""
    h, w = noise.shape
    half = noise[: h - h % 2, : w - w % 2].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    period = PERIOD // 2
    pattern = np.conj(np.fft.fft2(keyed.sync_tile.reshape(period, 2, period, 2).mean(axis=(1, 3))))

    def z(folded: Array, spectrum: Array) -> float:
        score = np.real(np.fft.ifft2(np.fft.fft2(folded) * spectrum))
        return float((score.max() - score.mean()) / (score.std() + 1e-12))

    # each sweep: a lattice as a function of the one value it sweeps, and that value's range
    sweeps: list[tuple[Any, tuple[float, float]]] = [
        (lambda v: (v, 0.0, 1.0), SCALES),  # both axes alike
        (lambda v: (1.0, 0.0, v), ASPECTS),  # the height stretched
        (lambda v: (v, 0.0, 1.0 / v), ASPECTS),  # the width stretched
    ]
    sync_full = np.conj(np.fft.fft2(keyed.sync_tile))
    steps = np.exp(np.linspace(-SWEEP_STEP, SWEEP_STEP, 7))
    found: list[Lattice] = []
    for lattice, (low, high) in sweeps:
        values = np.exp(np.arange(math.log(low), math.log(high), SWEEP_STEP))
        zs = np.array([z(_fold(half, *lattice(float(v)), period=period), pattern) for v in values])
        peaks = zs == ndimage.maximum_filter(zs, size=5, mode="nearest")
        for i in np.argsort(np.where(peaks, zs, -np.inf))[::-1][:n]:
            # the swept value refined at full resolution
            fine = [lattice(float(values[i] * k)) for k in steps]
            found.append(max(fine, key=lambda lat: z(_fold(noise, *lat), sync_full)))
    return found


def _fold(
    noise: Array, scale: float, angle: float, aspect: float = 1.0, *, period: int = PERIOD
) -> Array:
    """Average the noise onto one tile along the lattice (scale, angle, aspect)."""
    h, w = noise.shape
    a = math.radians(angle)
    ys = np.arange(h, dtype=np.float64)[:, None]
    xs = np.arange(w, dtype=np.float64)[None, :]
    u = (math.cos(a) / scale) * xs + (math.sin(a) / scale) * ys
    v = ((-math.sin(a) / scale) * xs + (math.cos(a) / scale) * ys) / aspect
    idx = (np.rint(v).astype(np.int64) % period) * period + np.rint(u).astype(np.int64) % period
    idx = idx.ravel()
    total = np.bincount(idx, weights=noise.ravel(), minlength=period * period)
    count = np.bincount(idx, minlength=period * period)
    folded = total / np.maximum(count, 1)
    return folded.reshape(period, period)


def _sync_map(folded: Array, keyed: _Keyed) -> Array:
    """Correlation of the folded tile with the sync pattern, for every cyclic shift."""
    spec = np.fft.fft2(folded)
    return np.real(np.fft.ifft2(spec * np.conj(np.fft.fft2(keyed.sync_tile))))


def _align(folded: Array, score: Array) -> list[tuple[Array, float]]:
    """Undo the tile's cyclic shift at the ``SHIFTS`` best peaks of ``score``.

    Returns (aligned tile, peak z-score) pairs, best first; the shift is refined to a
    fraction of a pixel (a parabola through the neighbours) and applied as a phase ramp.
    """
    spec = np.fft.fft2(folded)
    mean, std = float(score.mean()), float(score.std()) + 1e-12
    peaks = score == ndimage.maximum_filter(score, size=5, mode="wrap")
    order = np.argsort(np.where(peaks, score, -np.inf), axis=None)[::-1][:SHIFTS]
    fy = np.fft.fftfreq(PERIOD)[:, None]
    fx = np.fft.fftfreq(PERIOD)[None, :]
    out = []
    for flat in order:
        peak = np.unravel_index(int(flat), score.shape)
        shifts = []
        for axis in (0, 1):
            prev = list(peak)
            nxt = list(peak)
            prev[axis] = (peak[axis] - 1) % PERIOD
            nxt[axis] = (peak[axis] + 1) % PERIOD
            c0, cm, cp = score[peak], score[tuple(prev)], score[tuple(nxt)]
            denom = cm - 2 * c0 + cp
            frac = 0.5 * (cm - cp) / denom if denom < 0 else 0.0
            shifts.append(peak[axis] + float(np.clip(frac, -0.5, 0.5)))
        ramp = np.exp(2j * np.pi * (fy * shifts[0] + fx * shifts[1]))
        out.append((np.real(np.fft.ifft2(spec * ramp)), float((score[peak] - mean) / std)))
    return out


def _soft_bits(tile: Array, keyed: _Keyed) -> Array:
    filtered = _bandpass(tile)
    cells = filtered.reshape(GRID, CELL, GRID, CELL).sum(axis=(1, 3)).ravel()
    contrib = cells[keyed.data_cells] * keyed.data_signs
    soft = np.bincount(keyed.data_bit, weights=contrib, minlength=CODED_BITS)
    return soft


def detect_array(rgb: NDArray[np.uint8], key: bytes) -> Detection:
    """Look for a mark in an H x W x 3 uint8 array. Never raises on an unmarked image."""
    height, width = rgb.shape[:2]
    luma = _luma(rgb.astype(np.float64))
    return detect_canonical(_resize_plane(luma, _canonical_size(width, height)), key)


def canonical_luma(image: Image.Image) -> Array:
    """The luminance at the canonical size, computed by Pillow in float32 on the image itself:
    never a float64 copy of a full-size image (a 4096 x 4096 upload would take 400 MB)."""
    rgb = image if image.mode in ("RGB", "L") else image.convert("RGB")
    plane = rgb.convert("F")  # ITU-R 601 luma (the weights of ``_luma``), float32
    size = _canonical_size(*image.size)
    if plane.size != size:
        plane = plane.resize(size, Image.Resampling.BICUBIC)
    return np.asarray(plane, dtype=np.float64)


def detect_canonical(luma: Array, key: bytes) -> Detection:
    """Look for a mark in a luminance plane already at the canonical size.

    First the image as it is, searching rotations, scales, stretches and translations; then
    mirrored (a horizontally flipped copy); then, in both orientations, stretched back to each
    common aspect ratio, where only the translation is searched. Marked images are almost
    always found by the first pass; the others cost time only when it fails (and on unmarked
    images)."""
    keyed = _keyed(key)
    best = Detection(False, None, CODED_BITS, CODED_BITS, 1.0)
    planes = (luma, np.ascontiguousarray(luma[:, ::-1]))
    for plane in planes:
        best = _detect_noise(_whiten(plane), keyed, best, search=True)
        if best.found:
            return best
    height, width = luma.shape
    for plane in planes:
        for ratio in ASPECT_RATIOS:
            if abs(math.log(ratio * height / width)) < 0.02:
                continue  # the shape it has now: searched above
            stretched = _resize_plane(plane, _canonical_size(round(1000 * ratio), 1000))
            best = _detect_noise(_whiten(stretched), keyed, best, search=False)
            if best.found:
                return best
    return best


def _detect_noise(noise: Array, keyed: _Keyed, best: Detection, *, search: bool) -> Detection:
    """Decode the likeliest (lattice, translation) hypotheses of a whitened plane, cheapest
    first, stopping at the first mark found; ``best`` is the detection so far.

    The untouched geometry (most edits keep the pixel grid) is decoded first; with ``search``
    then the best ``ACF_DECODES`` autocorrelation lattices (rotations, uniform scales) by
    sync strength, then the best of the direct sweeps (crops, stretches): ``HYPOTHESES``
    decodes in all. Without ``search`` only the untouched geometry is tried."""
    stages: list[Any] = [lambda: [(1.0, 0.0, 1.0)]]
    if search:
        stages.append(lambda: [(s, a, 1.0) for s, a in _lattice_candidates(noise, LATTICE_PEAKS)])
        stages.append(lambda: _sweeps(noise, keyed, SWEEP_PEAKS))
    budgets = (1, ACF_DECODES, HYPOTHESES - 1 - ACF_DECODES)
    for stage, budget in zip(stages, budgets, strict=False):
        scored = []
        for scale, angle, aspect in stage():
            folded = _fold(noise, scale, angle, aspect)
            for tile, z in _align(folded, _sync_map(folded, keyed)):
                scored.append((z, scale, angle, tile))
        scored.sort(key=lambda item: -item[0])
        for _z, scale, angle, tile in scored[:budget]:
            best = _decode(tile, keyed, best, scale, angle)
            if best.found:
                return best
    return best


def _decode(tile: Array, keyed: _Keyed, best: Detection, scale: float, angle: float) -> Detection:
    """Decode an aligned tile; the better of it and ``best``."""
    soft = _soft_bits(tile, keyed)
    payload = _viterbi(soft)
    code = encode_bits(payload)
    errors = int(np.sum(soft * code <= 0))  # a zero is no evidence: count it wrong
    score = float(soft @ code / (np.sqrt(soft @ soft) + 1e-12))
    p = p_value(errors, score)
    if p < best.p_value or (best.payload is None and errors < best.bit_errors):
        found = p <= FALSE_POSITIVE_BOUND
        return Detection(
            found, payload if found else None, errors, CODED_BITS, p, scale, angle, payload
        )
    return best


# --------------------------------------------------------------------------- images

MIN_SIDE = 256
DETECT_MIN_SIDE = 128


MAX_ASPECT = CANONICAL // (PERIOD // 4)  # 16:1; narrower strips leave no room for the tile


class WatermarkError(InvalidImage):
    """An image the watermark cannot work on (too small, too narrow, too large); the message
    says why. Part of the project's error tree: the API answers it with a 422."""


def check_size(width: int, height: int, *, min_side: int = MIN_SIDE, max_pixels: int) -> None:
    """Refuse images under ``min_side`` on the long side or over ``max_pixels`` pixels."""
    if max(width, height) < min_side:
        raise WatermarkError(
            f"The image is {width}x{height} pixels; watermarking needs at least {min_side} "
            "pixels on the long side. Use a larger image."
        )
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise WatermarkError(
            f"The image is {width}x{height} pixels; the watermark needs the long side at most "
            f"{MAX_ASPECT} times the short side. Send the image uncropped."
        )
    if width * height > max_pixels:
        raise WatermarkError(
            f"The image is {width}x{height} = {width * height} pixels; the limit is "
            f"{max_pixels} (watermark.max_pixels). Resize it first, or raise the limit."
        )


def _split(image: Image.Image) -> tuple[NDArray[np.uint8], Image.Image | None]:
    """RGB pixels and, if the image has one, its alpha channel."""
    alpha = image.getchannel("A") if image.mode in ("RGBA", "LA") else None
    return np.asarray(image.convert("RGB")), alpha


def embed(
    image: Image.Image,
    payload: int,
    *,
    key: bytes,
    psnr: float = TARGET_PSNR,
    min_side: int = MIN_SIDE,
    max_pixels: int = 4096 * 4096,
    verify: bool = True,
) -> Image.Image:
    """Return a marked copy of ``image`` carrying ``payload`` (PAYLOAD_BITS bits).

    The size is kept; RGB, RGBA, L and LA keep their mode (alpha untouched, a grey image
    stays grey), any other mode comes back as RGB. With ``verify`` (the default) the mark is
    read back before the image is returned; if it cannot be, it is embedded again with a new
    tile offset and a stronger amplitude, and after ``VERIFY_ATTEMPTS`` tries
    ``WatermarkError`` says so: a mark is never reported that cannot be found.
    """
    marked, _ = embed_counted(
        image,
        payload,
        key=key,
        psnr=psnr,
        min_side=min_side,
        max_pixels=max_pixels,
        verify=verify,
    )
    return marked


def embed_counted(
    image: Image.Image,
    payload: int,
    *,
    key: bytes,
    psnr: float = TARGET_PSNR,
    min_side: int = MIN_SIDE,
    max_pixels: int = 4096 * 4096,
    verify: bool = True,
) -> tuple[Image.Image, int]:
    """:func:`embed`, also saying how many embeds it took (1 when the first mark read back)."""
    check_size(*image.size, min_side=min_side, max_pixels=max_pixels)
    rgb, alpha = _split(image)
    grey = image.mode in ("L", "LA")
    source = np.repeat(np.asarray(image.convert("L"))[:, :, None], 3, axis=2) if grey else rgb
    attempt = 0
    for attempt in range(VERIFY_ATTEMPTS if verify else 1):
        # each retry: a fresh tile offset and a stronger mark (VERIFY_STEP_DB lower PSNR)
        strength = psnr - attempt * VERIFY_STEP_DB
        array = embed_array(source, key, payload, psnr=strength)
        marked = Image.fromarray(array).convert("L") if grey else Image.fromarray(array)
        if not verify:
            break
        found = detect_canonical(canonical_luma(marked), key)
        if found.found and found.payload == payload:
            if attempt:
                log.info("mark readable on try %s (PSNR %.1f dB)", attempt + 1, strength)
            break
    else:
        raise WatermarkError(
            f"The mark could not be read back from this image after {VERIFY_ATTEMPTS} tries "
            f"(down to {psnr - (VERIFY_ATTEMPTS - 1) * VERIFY_STEP_DB:.1f} dB PSNR): its "
            "texture hides it. The image was not marked; nothing was recorded as made here."
        )
    if alpha is not None:
        marked.putalpha(alpha)
    return marked, attempt + 1


def detect(image: Image.Image, *, key: bytes, max_pixels: int = 4096 * 4096) -> Detection:
    """Look for a mark made with ``key``; an unmarked image gives ``found=False``.

    Downscaled copies are accepted down to ``DETECT_MIN_SIDE`` pixels on the long side.
    """
    check_size(*image.size, min_side=DETECT_MIN_SIDE, max_pixels=max_pixels)
    return detect_canonical(canonical_luma(image), key)
