"""Optical-channel helpers and information-theory primitives shared by the key-rate models.

Fibre attenuation per band (ITU-T G.652 typical values), ITU band edges (G.Sup39), DWDM
channel wavelengths (100 GHz grid), binary and thermal-state entropies, the PLOB repeaterless bound
(S. Pirandola, R. Laurenza, C. Ottaviani, L. Banchi, Nat. Commun. 8, 15043 (2017)) and a small
deterministic 1-D optimiser. Pure Python, no I/O.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable

__all__ = [
    "Band",
    "band_loss_db_per_km",
    "band_of_wavelength",
    "binary_entropy",
    "db_to_transmittance",
    "fibre_loss_db",
    "itu_channel_wavelength_nm",
    "maximise",
    "plob_bound",
    "thermal_entropy",
    "transmittance_to_db",
]

#: Typical attenuation of standard single-mode fibre (ITU-T G.652) per band, dB/km: ~0.2 dB/km at
#: 1550 nm (C) and ~0.33 dB/km at 1310 nm (O); MadQCI reports ~50 % more loss in the O band.
_BAND_LOSS_DB_PER_KM: dict[str, float] = {"O": 0.33, "E": 0.28, "S": 0.22, "C": 0.20, "L": 0.21}
#: ITU-T G-series Supplement 39 band edges in nm:
#: O 1260-1360, E 1360-1460, S 1460-1530, C 1530-1565, L 1565-1625.
_BAND_EDGES_NM: tuple[tuple[str, float, float], ...] = (
    ("O", 1260.0, 1360.0),
    ("E", 1360.0, 1460.0),
    ("S", 1460.0, 1530.0),
    ("C", 1530.0, 1565.0),
    ("L", 1565.0, 1625.0),
)
_SPEED_OF_LIGHT = 299_792_458.0


class Band(enum.StrEnum):
    """Optical telecom band of the quantum channel."""

    O = "O"  # noqa: E741 - the ITU name of the original band
    E = "E"
    S = "S"
    C = "C"
    L = "L"


def db_to_transmittance(loss_db: float) -> float:
    """Linear transmittance of a loss given in dB (``10**(-loss/10)``)."""
    return math.pow(10.0, -loss_db / 10.0)


def transmittance_to_db(eta: float) -> float:
    """Loss in dB of a linear transmittance ``eta`` in (0, 1]."""
    if eta <= 0.0:
        return math.inf
    return -10.0 * math.log10(eta)


def band_loss_db_per_km(band: Band | str) -> float:
    """Typical G.652 fibre attenuation for ``band``: 0.2 dB/km (C), 0.33 dB/km (O)."""
    return _BAND_LOSS_DB_PER_KM[Band(band).name]


def fibre_loss_db(length_km: float, band: Band | str = Band.C) -> float:
    """Propagation loss of ``length_km`` of standard fibre in ``band`` ('C' or 'O', also E/S/L)."""
    if length_km < 0:
        raise ValueError("length_km must be >= 0")
    return length_km * band_loss_db_per_km(band)


def band_of_wavelength(wavelength_nm: float) -> Band:
    """ITU-T band containing ``wavelength_nm``; raises ValueError outside 1260-1625 nm."""
    for name, lo, hi in _BAND_EDGES_NM:
        if lo <= wavelength_nm < hi:
            return Band(name)
    raise ValueError(f"{wavelength_nm} nm is outside the O..L telecom bands")


def itu_channel_wavelength_nm(channel: int) -> float:
    """Vacuum wavelength of 100 GHz DWDM channel ``channel`` (f = 190.0 THz + channel x 0.1 THz).

    E.g. C34 = 193.4 THz = 1550.12 nm, C37 = 1547.72 nm, C38 = 1546.92 nm (the MadQCI channels).
    """
    freq_hz = (190.0 + 0.1 * channel) * 1e12
    return _SPEED_OF_LIGHT / freq_hz * 1e9


def binary_entropy(p: float) -> float:
    """Shannon binary entropy H2(p) in bits; H2(0)=H2(1)=0, p clamped to [0, 1]."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -p * math.log2(p) - (1.0 - p) * math.log2(1.0 - p)


def thermal_entropy(nu: float) -> float:
    """Von Neumann entropy (bits) of a mode with symplectic eigenvalue ``nu`` >= 1 (SNU).

    ``G((nu-1)/2)`` with ``G(x) = (x+1) log2(x+1) - x log2 x``.
    """
    x = (nu - 1.0) / 2.0
    if x <= 0.0:
        return 0.0
    return (x + 1.0) * math.log2(x + 1.0) - x * math.log2(x)


def plob_bound(eta: float) -> float:
    """Repeaterless secret-key capacity ``-log2(1-eta)`` (bits per channel use), PLOB 2017."""
    if eta >= 1.0:
        return math.inf
    if eta <= 0.0:
        return 0.0
    return -math.log2(1.0 - eta)


def _golden_max(
    fn: Callable[[float], float], lo: float, hi: float, iterations: int = 60
) -> tuple[float, float]:
    """Maximise a unimodal ``fn`` on [lo, hi] by golden-section search; returns (x, fn(x))."""
    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c = b - inv_phi * (b - a)
    d = a + inv_phi * (b - a)
    fc, fd = fn(c), fn(d)
    for _ in range(iterations):
        if fc >= fd:
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = fn(c)
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = fn(d)
    x = (a + b) / 2.0
    return x, fn(x)


def maximise(
    fn: Callable[[float], float], lo: float, hi: float, points: int = 48
) -> tuple[float, float]:
    """Maximise ``fn`` on [lo, hi] (lo > 0): log-spaced grid, then golden search around the best."""
    if hi <= lo:
        return lo, fn(lo)
    log_lo, log_hi = math.log(lo), math.log(hi)
    step = (log_hi - log_lo) / (points - 1)
    best_i, best_v = 0, -math.inf
    for i in range(points):
        v = fn(math.exp(log_lo + i * step))
        if v > best_v:
            best_i, best_v = i, v
    a = max(log_lo, log_lo + (best_i - 1) * step)
    b = min(log_hi, log_lo + (best_i + 1) * step)
    x, v = _golden_max(lambda y: fn(math.exp(y)), a, b)
    if v < best_v:  # keep the grid point if the local refinement did not improve on it
        return math.exp(log_lo + best_i * step), best_v
    return math.exp(x), v
