"""Physical key-rate models of simulated QKD modules (pure functions, no I/O, no asyncio).

Three protocol families are modelled, each with the asymptotic (infinite-key) secret-key rate of the
literature it is named after; the device parameters live in :mod:`qkdnode.devices.profiles`.

* Decoy-state BB84 with weak coherent pulses: GLLP / Lo-Ma-Chen key rate
  ``R = q {-Q_mu f H2(E_mu) + Q_1 [1 - H2(e_1)]}`` with the channel model and the single-photon
  estimates (infinite-decoy limit, or vacuum + one weak decoy) of X. Ma, B. Qi, Y. Zhao, H.-K. Lo,
  "Practical decoy state for quantum key distribution", Phys. Rev. A 72, 012326 (2005); GLLP is
  D. Gottesman, H.-K. Lo, N. Luetkenhaus, J. Preskill, Quantum Inf. Comput. 4, 325 (2004), and
  H.-K. Lo, X. Ma, K. Chen, Phys. Rev. Lett. 94, 230504 (2005).
* Coherent one-way (COW): ``R = R_raw [1 - f H2(Q) - I_E]`` with Eve's information under the
  restricted collective (beam-splitting + coherence) attacks of C. Branciard, N. Gisin, V. Scarani,
  "Upper bounds for the security of two distributed-phase reference protocols of quantum
  cryptography", New J. Phys. 10, 013031 (2008), in the form used to evaluate the experiment of
  D. Stucki et al., "High rate, long-distance quantum key distribution over 250 km of ultra low loss
  fibres", New J. Phys. 11, 075003 (2009):
  ``I_E = mu(1-t) + (1 - mu(1-t)) H2((1+xi)/2)``,
  ``xi = (2V-1) exp(-mu t) - 2 sqrt(V(1-V)) sqrt(1 - exp(-2 mu t))``.
  This is an *upper* bound on the secure rate (specific attacks, large-distance regime); zero-error
  attacks later showed that plain COW scales at most ~t^2 (J. Gonzalez-Payo et al., Phys. Rev. Lett.
  125, 260510 (2020); R. Trenyi, M. Curty, New J. Phys. 23, 093005 (2021)). It is kept because it is
  the published practical expression for this device class; read COW rates as optimistic.
* CV-QKD GG02 (Gaussian-modulated coherent states), heterodyne detection, reverse reconciliation,
  trusted detector noise (efficiency eta, electronic noise v_el): mutual information ``I_AB`` and the
  Holevo bound ``chi_BE`` from the symplectic eigenvalues given by S. Fossier, E. Diamanti,
  T. Debuisschert, R. Tualle-Brouri, P. Grangier, "Improvement of continuous-variable quantum key
  distribution systems by using optical preamplifiers", J. Phys. B 42, 114014 (2009) (same formulas
  in F. Laudenbach et al., Adv. Quantum Technol. 1, 1800011 (2018)); ``K = beta I_AB - chi_BE``.

Rates are compared with the repeaterless bound ``-log2(1-eta)`` of S. Pirandola, R. Laurenza,
C. Ottaviani, L. Banchi, Nat. Commun. 8, 15043 (2017) (PLOB).

Units: losses in dB, transmittances linear, noises in shot-noise units (SNU), rates in bit/s unless
named ``*_per_use`` (bits per channel use = per clock slot for DV, per symbol for CV).
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass, field
from typing import Callable

__all__ = [
    "Band",
    "ChannelUseRate",
    "CvResult",
    "DecoyResult",
    "DeviceProfile",
    "LinkPerformance",
    "Protocol",
    "RateFluctuation",
    "band_loss_db_per_km",
    "band_of_wavelength",
    "binary_entropy",
    "cow_eve_information",
    "cow_key_rate",
    "cv_min_modulation_for_snr",
    "cv_optimal_key",
    "db_to_transmittance",
    "decoy_bb84_key_rate",
    "decoy_bb84_optimal_rate",
    "fibre_loss_db",
    "gg02_heterodyne_rr",
    "itu_channel_wavelength_nm",
    "key_rate_per_channel_use",
    "link_performance",
    "plob_bound",
    "plob_check",
    "thermal_entropy",
    "transmittance_to_db",
]

#: Typical attenuation of standard single-mode fibre (ITU-T G.652) per band, dB/km: ~0.2 dB/km at
#: 1550 nm (C) and ~0.33 dB/km at 1310 nm (O); MadQCI reports ~50 % more loss in the O band.
_BAND_LOSS_DB_PER_KM: dict[str, float] = {"O": 0.33, "E": 0.28, "S": 0.22, "C": 0.20, "L": 0.21}
#: ITU-T G.694.1 band edges in nm (O 1260-1360, E 1360-1460, S 1460-1530, C 1530-1565, L 1565-1625).
_BAND_EDGES_NM: tuple[tuple[str, float, float], ...] = (
    ("O", 1260.0, 1360.0),
    ("E", 1360.0, 1460.0),
    ("S", 1460.0, 1530.0),
    ("C", 1530.0, 1565.0),
    ("L", 1565.0, 1625.0),
)
_SPEED_OF_LIGHT = 299_792_458.0
#: COW mean photon number used for reporting when no mu yields key (Stucki et al. 2009 used 0.5).
_COW_NOMINAL_MU = 0.5


class Band(str, enum.Enum):
    """Optical telecom band of the quantum channel."""

    O = "O"
    E = "E"
    S = "S"
    C = "C"
    L = "L"


class Protocol(str, enum.Enum):
    """QKD protocol family; selects the key-rate formula."""

    DECOY_BB84 = "decoy-bb84"
    COW = "cow"
    CV_GG02_HETERODYNE = "cv-gg02-heterodyne-rr"


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def db_to_transmittance(loss_db: float) -> float:
    """Linear transmittance of a loss given in dB (``10**(-loss/10)``)."""
    return 10.0 ** (-loss_db / 10.0)


def transmittance_to_db(eta: float) -> float:
    """Loss in dB of a linear transmittance ``eta`` in (0, 1]."""
    if eta <= 0.0:
        return math.inf
    return -10.0 * math.log10(eta)


def band_loss_db_per_km(band: Band | str) -> float:
    """Typical G.652 fibre attenuation for ``band``: 0.2 dB/km (C), 0.33 dB/km (O)."""
    return _BAND_LOSS_DB_PER_KM[Band(band).value]


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


def _grid_then_golden(
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


# --------------------------------------------------------------------------------------------------
# Device profile
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceProfile:
    """All physical parameters of one QKD module technology (emitter + receiver pair).

    DV fields (decoy BB84, COW) and CV fields (GG02) coexist; the ones not used by ``protocol`` keep
    their neutral defaults. ``source`` cites where the numbers and formulas come from; parameters not
    published for the product are marked "plausible" there.
    """

    name: str
    vendor: str
    protocol: Protocol
    source: str
    #: Quantum-channel wavelength (nm) and its ITU band; ``band`` must contain ``wavelength_nm``.
    wavelength_nm: float
    band: Band
    #: Fibre attenuation used by :meth:`fibre_loss_db` for this device's wavelength.
    fibre_loss_db_per_km: float
    #: Pulse clock (DV, one channel use per slot) or symbol rate (CV), in Hz.
    repetition_rate_hz: float
    #: Single-photon detector efficiency (DV) or homodyne/heterodyne quantum efficiency (CV).
    detector_efficiency: float
    #: Optical loss inside the receiver before the detectors (dB); trusted, not Eve's.
    receiver_internal_loss_db: float
    #: Max tolerated channel loss (dB) before the module declares the link down (vendor budget).
    loss_budget_db: float
    #: Fraction of wall-clock time / symbols that ends up producing key (sifting of decoy pulses,
    #: parameter estimation, calibration pauses, frame errors), multiplies the asymptotic rate.
    duty_factor: float = 1.0
    # ---- DV -------------------------------------------------------------------------------------
    #: Background (dark + after-pulse + Raman) click probability per gate, all detectors together.
    dark_count_prob: float = 0.0
    #: Optical misalignment / intrinsic error e_d (probability a signal photon lands wrong).
    misalignment_error: float = 0.0
    #: Error-correction inefficiency f >= 1 (leak = f H2(E)).
    ec_inefficiency: float = 1.16
    #: Signal mean photon number mu; None -> optimised for each loss.
    mean_photon_number: float | None = None
    #: Weak decoy intensity nu (vacuum + weak decoy, Ma et al. 2005); None -> infinite-decoy limit.
    decoy_mean_photon_number: float | None = None
    #: Fraction of clock slots carrying the signal state (the rest: decoys/vacuum or COW decoy pairs).
    signal_fraction: float = 1.0
    #: Basis-sifting factor q (1/2 for symmetric BB84; p_Z^2 for efficient/biased BB84).
    sifting_factor: float = 0.5
    #: COW: interferometer visibility of the monitoring line.
    visibility: float = 1.0
    #: COW: fraction of the received light sent to the data (time-of-arrival) line.
    data_line_fraction: float = 1.0
    #: Detector dead time (s), non-paralysable; 0 for gated detectors without hold-off.
    dead_time_s: float = 0.0
    # ---- CV -------------------------------------------------------------------------------------
    #: Reconciliation efficiency beta of the error-correcting code.
    reconciliation_efficiency: float = 0.95
    #: Electronic noise of the coherent receiver v_el (SNU), trusted.
    electronic_noise_snu: float = 0.0
    #: Untrusted excess noise xi referred to the channel input (SNU).
    excess_noise_snu: float = 0.0
    #: Untrusted excess noise measured at the receiver (SNU, "receiver side"); referred to the
    #: channel input it adds ``xi_rx / (T eta_Bob)``, i.e. it weighs more the lossier the channel.
    receiver_excess_noise_snu: float = 0.0
    #: Allowed modulation variance V_A range (SNU); V_A = 2 x mean photons per symbol.
    modulation_variance_range: tuple[float, float] = (0.0, 0.0)
    #: Lowest SNR (linear, per quadrature) the error-correcting code decodes; None -> no limit.
    min_snr: float | None = None
    #: A single fixed-rate code designed for ``min_snr``: reconciled information per symbol is capped
    #: at ``beta log2(1 + min_snr)`` whatever the actual SNR (the code rate does not adapt).
    fixed_rate_code: bool = False
    # ---- runtime ------------------------------------------------------------------------------
    #: Relative std of slow SKR fluctuations (temperature, polarisation drift) for RateFluctuation.
    fluctuation_std: float = 0.03
    #: Correlation time (s) of those fluctuations.
    fluctuation_tau_s: float = 300.0
    #: Free-text caveats (which values are plausible rather than published).
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if band_of_wavelength(self.wavelength_nm) is not Band(self.band):
            raise ValueError(f"{self.name}: {self.wavelength_nm} nm is not in band {self.band}")
        if not 0.0 < self.detector_efficiency <= 1.0:
            raise ValueError(f"{self.name}: detector_efficiency must be in (0, 1]")
        if not 0.0 < self.duty_factor <= 1.0:
            raise ValueError(f"{self.name}: duty_factor must be in (0, 1]")
        if self.repetition_rate_hz <= 0:
            raise ValueError(f"{self.name}: repetition_rate_hz must be > 0")
        if self.protocol is Protocol.CV_GG02_HETERODYNE:
            lo, hi = self.modulation_variance_range
            if not 0.0 < lo <= hi:
                raise ValueError(f"{self.name}: modulation_variance_range must be 0 < lo <= hi")

    @property
    def receiver_transmittance(self) -> float:
        """eta_Bob: internal receiver transmission x detector efficiency (trusted losses)."""
        return self.detector_efficiency * db_to_transmittance(self.receiver_internal_loss_db)

    def fibre_loss_db(self, length_km: float) -> float:
        """Channel loss of ``length_km`` of fibre at this device's wavelength."""
        return length_km * self.fibre_loss_db_per_km


# --------------------------------------------------------------------------------------------------
# Decoy-state BB84 (GLLP + Ma, Qi, Zhao, Lo 2005)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecoyResult:
    """Decoy-BB84 quantities of Ma et al. 2005 for one intensity choice (all per pulse)."""

    rate_per_pulse: float  #: R, may be negative (no key)
    gain: float  #: Q_mu, detection probability of a signal pulse
    qber: float  #: E_mu
    y1: float  #: single-photon yield used (exact, or vacuum+weak lower bound)
    e1: float  #: single-photon error rate used (exact, or upper bound)


def decoy_bb84_key_rate(
    eta: float,
    mu: float,
    *,
    y0: float,
    e_d: float,
    f: float,
    nu: float | None = None,
    q: float = 0.5,
) -> DecoyResult:
    """GLLP key rate per pulse ``q{-Q_mu f H2(E_mu) + Q_1[1-H2(e_1)]}`` (Ma et al. 2005).

    ``eta`` is the overall transmittance (channel x eta_Bob). Channel model (Ma et al. Sec. II):
    ``Y_i = Y0 + 1 - (1-eta)^i``, ``Q_mu = Y0 + 1 - exp(-eta mu)``,
    ``E_mu Q_mu = e0 Y0 + e_d (1 - exp(-eta mu))`` with e0 = 1/2. With ``nu=None`` the infinite-decoy
    limit is used (``Y1 = Y0 + eta``, ``e1 = (e0 Y0 + e_d eta)/Y1``); otherwise the vacuum + weak-decoy
    bounds ``Y1 >= mu/(mu nu - nu^2) (Q_nu e^nu - Q_mu e^mu nu^2/mu^2 - (mu^2-nu^2)/mu^2 Y0)`` and
    ``e1 <= (E_nu Q_nu e^nu - e0 Y0)/(Y1 nu)``. Q_1 = Y1 mu exp(-mu).
    """
    e0 = 0.5
    detect_mu = 1.0 - math.exp(-eta * mu)
    q_mu = y0 + detect_mu
    qber = (e0 * y0 + e_d * detect_mu) / q_mu if q_mu > 0 else 0.5
    if nu is None:
        y1 = y0 + eta
        e1 = (e0 * y0 + e_d * eta) / y1 if y1 > 0 else 0.5
    else:
        if not 0.0 < nu < mu:
            raise ValueError("vacuum+weak decoy needs 0 < nu < mu")
        detect_nu = 1.0 - math.exp(-eta * nu)
        q_nu = y0 + detect_nu
        eq_nu = e0 * y0 + e_d * detect_nu
        y1 = (mu / (mu * nu - nu * nu)) * (
            q_nu * math.exp(nu)
            - q_mu * math.exp(mu) * nu * nu / (mu * mu)
            - (mu * mu - nu * nu) / (mu * mu) * y0
        )
        y1 = max(y1, 0.0)
        e1 = min(0.5, (eq_nu * math.exp(nu) - e0 * y0) / (y1 * nu)) if y1 > 0 else 0.5
    q1 = y1 * mu * math.exp(-mu)
    rate = q * (-q_mu * f * binary_entropy(qber) + q1 * (1.0 - binary_entropy(e1)))
    return DecoyResult(rate_per_pulse=rate, gain=q_mu, qber=qber, y1=y1, e1=e1)


def decoy_bb84_optimal_rate(
    eta: float,
    *,
    y0: float,
    e_d: float,
    f: float,
    nu: float | None = None,
    q: float = 0.5,
    mu_max: float = 1.5,
) -> tuple[float, DecoyResult]:
    """Maximise :func:`decoy_bb84_key_rate` over the signal intensity mu in (nu, mu_max].

    Returns ``(mu_opt, result)``, as in the optimised-mu curves of Ma et al. 2005.
    """
    lo = (nu * 1.01) if nu is not None else 1e-4

    def rate(mu: float) -> float:
        return decoy_bb84_key_rate(eta, mu, y0=y0, e_d=e_d, f=f, nu=nu, q=q).rate_per_pulse

    mu_opt, _ = _grid_then_golden(rate, lo, mu_max)
    return mu_opt, decoy_bb84_key_rate(eta, mu_opt, y0=y0, e_d=e_d, f=f, nu=nu, q=q)


# --------------------------------------------------------------------------------------------------
# Coherent one-way (Branciard et al. 2008 bound as used by Stucki et al. 2009)
# --------------------------------------------------------------------------------------------------


def cow_eve_information(mu: float, t: float, visibility: float) -> float:
    """Eve's information per raw bit for COW, Branciard et al. 2008 / Stucki et al. 2009.

    ``I_E = mu(1-t) + (1-mu(1-t)) H2((1+xi)/2)``, with
    ``xi = (2V-1) exp(-mu t) - 2 sqrt(V(1-V)) sqrt(1-exp(-2 mu t))``; ``t`` = channel transmittance.
    """
    bs = min(1.0, mu * (1.0 - t))
    xi = (2.0 * visibility - 1.0) * math.exp(-mu * t) - 2.0 * math.sqrt(
        visibility * (1.0 - visibility)
    ) * math.sqrt(1.0 - math.exp(-2.0 * mu * t))
    xi = max(-1.0, min(1.0, xi))
    return bs + (1.0 - bs) * binary_entropy((1.0 + xi) / 2.0)


def cow_key_rate(
    t: float,
    mu: float,
    *,
    eta_bob: float,
    p_dark: float,
    e_d: float,
    f: float,
    visibility: float,
    data_line_fraction: float,
    signal_fraction: float,
    clock_hz: float,
    dead_time_s: float = 0.0,
) -> tuple[float, float]:
    """COW secret-key rate in bit/s and data-line QBER.

    A logical bit is a pair of clock slots (``|sqrt(mu)>|0>`` or ``|0>|sqrt(mu)>``); a fraction
    ``signal_fraction`` of the pairs carries key, the rest are decoy sequences. Raw clicks per key pair
    ``p = 1 - exp(-mu t eta_B d) + 2 p_dark`` (d = data-line fraction, p_dark per slot); a dark count
    in the wrong slot or an optical error e_d gives a bit error. A non-paralysable dead time
    multiplies the raw rate by ``1/(1 + rate * dead_time)``. Key = raw x ``[1 - f H2(Q) - I_E]``.
    """
    signal = 1.0 - math.exp(-mu * t * eta_bob * data_line_fraction)
    p_click = signal + 2.0 * p_dark
    qber = (e_d * signal + p_dark) / p_click if p_click > 0 else 0.5
    raw_in = clock_hz / 2.0 * signal_fraction * p_click
    raw = raw_in / (1.0 + raw_in * dead_time_s) if dead_time_s > 0 else raw_in
    secret_fraction = 1.0 - f * binary_entropy(qber) - cow_eve_information(mu, t, visibility)
    return raw * secret_fraction, qber


# --------------------------------------------------------------------------------------------------
# CV-QKD GG02, heterodyne, reverse reconciliation, trusted detector (Fossier et al. 2009)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CvResult:
    """GG02 heterodyne/RR quantities per symbol (SNU, bits)."""

    key_per_symbol: float  #: beta I_AB - chi_BE (may be negative)
    i_ab: float
    chi_be: float
    snr: float  #: per-quadrature SNR, I_AB = log2(1 + snr)


def _sym_pair(a: float, b: float) -> tuple[float, float]:
    """Symplectic eigenvalues ``sqrt((a +- sqrt(a^2 - 4b))/2)`` of a two-mode state (clamped >= 1)."""
    disc = math.sqrt(max(a * a - 4.0 * b, 0.0))
    l1 = math.sqrt(max((a + disc) / 2.0, 1.0))
    l2 = math.sqrt(max((a - disc) / 2.0, 1.0))
    return l1, l2


def gg02_heterodyne_rr(
    t: float,
    v_a: float,
    *,
    xi: float,
    eta: float,
    v_el: float,
    beta: float,
) -> CvResult:
    """Asymptotic GG02 key per symbol, heterodyne, RR, trusted (eta, v_el) - Fossier et al. 2009.

    ``V = V_A + 1``, ``chi_line = 1/T - 1 + xi``, ``chi_het = (2 - eta + 2 v_el)/eta``,
    ``chi_tot = chi_line + chi_het/T``, ``I_AB = log2((V + chi_tot)/(1 + chi_tot))``;
    ``chi_BE = G(l1) + G(l2) - G(l3) - G(l4)`` with ``l1,2`` from
    ``A = V^2(1-2T) + 2T + T^2 (V + chi_line)^2``, ``B = T^2 (V chi_line + 1)^2`` and ``l3,4`` from
    ``C = [A chi_het^2 + B + 1 + 2 chi_het (V sqrt(B) + T(V + chi_line)) + 2T(V^2-1)]/(T(V+chi_tot))^2``,
    ``D = [(V + sqrt(B) chi_het)/(T(V + chi_tot))]^2``; l5 = 1.
    """
    v = v_a + 1.0
    chi_line = 1.0 / t - 1.0 + xi
    chi_het = (2.0 - eta + 2.0 * v_el) / eta
    chi_tot = chi_line + chi_het / t
    i_ab = math.log2((v + chi_tot) / (1.0 + chi_tot))
    a = v * v * (1.0 - 2.0 * t) + 2.0 * t + t * t * (v + chi_line) ** 2
    b = t * t * (v * chi_line + 1.0) ** 2
    sqrt_b = math.sqrt(b)
    den = (t * (v + chi_tot)) ** 2
    c = (
        a * chi_het**2
        + b
        + 1.0
        + 2.0 * chi_het * (v * sqrt_b + t * (v + chi_line))
        + 2.0 * t * (v * v - 1.0)
    ) / den
    d = ((v + sqrt_b * chi_het) / (t * (v + chi_tot))) ** 2
    l1, l2 = _sym_pair(a, b)
    l3, l4 = _sym_pair(c, d)
    chi_be = thermal_entropy(l1) + thermal_entropy(l2) - thermal_entropy(l3) - thermal_entropy(l4)
    snr = v_a / (1.0 + chi_tot)
    return CvResult(key_per_symbol=beta * i_ab - chi_be, i_ab=i_ab, chi_be=chi_be, snr=snr)


def cv_min_modulation_for_snr(t: float, snr: float, *, xi: float, eta: float, v_el: float) -> float:
    """Smallest V_A giving per-quadrature SNR ``snr`` (inverse of ``snr = V_A/(1 + chi_tot)``)."""
    chi_tot = 1.0 / t - 1.0 + xi + (2.0 - eta + 2.0 * v_el) / (eta * t)
    return snr * (1.0 + chi_tot)


def cv_optimal_key(
    t: float,
    *,
    xi: float,
    eta: float,
    v_el: float,
    beta: float,
    v_a_range: tuple[float, float],
    min_snr: float | None = None,
    fixed_rate_code: bool = False,
) -> tuple[float, CvResult] | None:
    """Best GG02 key per symbol over the modulation variance V_A.

    V_A is restricted to ``v_a_range`` and, if ``min_snr`` is set, to values for which the code's
    SNR threshold is met (``V_A >= min_snr (1 + chi_tot)``). With ``fixed_rate_code`` the reconciled
    information is capped at ``beta log2(1 + min_snr)`` (one code, designed for ``min_snr``).
    Returns ``(V_A, result)`` or None when no V_A is feasible (the code cannot decode: link down).
    """
    lo, hi = v_a_range
    cap = math.inf
    if min_snr is not None:
        lo = max(lo, cv_min_modulation_for_snr(t, min_snr, xi=xi, eta=eta, v_el=v_el))
        if fixed_rate_code:
            cap = beta * math.log2(1.0 + min_snr)
    if lo > hi:
        return None

    def evaluate(v_a: float) -> CvResult:
        res = gg02_heterodyne_rr(t, v_a, xi=xi, eta=eta, v_el=v_el, beta=beta)
        if beta * res.i_ab > cap:
            res = CvResult(cap - res.chi_be, res.i_ab, res.chi_be, res.snr)
        return res

    v_a, _ = _grid_then_golden(lambda v: evaluate(v).key_per_symbol, lo, hi)
    return v_a, evaluate(v_a)


# --------------------------------------------------------------------------------------------------
# Profile-level API
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelUseRate:
    """Physics-only result at one channel loss, before the loss budget and the duty factor."""

    bits_per_use: float  #: secret bits per clock slot (DV) or symbol (CV); <= 0 means no key
    transmittance: float  #: channel transmittance eta (fibre + connectors, excluding the receiver)
    qber: float | None = None  #: DV: QBER of the key (signal pulses / data line)
    snr: float | None = None  #: CV: per-quadrature SNR at the receiver (linear)
    excess_noise: float | None = None  #: CV: excess noise at channel input (SNU)
    mean_photon_number: float | None = None  #: DV signal mu used (CV: V_A/2 photons per symbol)


@dataclass(frozen=True)
class LinkPerformance:
    """What a simulated module reports for one link at a given channel loss."""

    skr_bps: float  #: secret-key rate in bit/s (0 when down)
    qber: float | None  #: DV only
    snr: float | None  #: CV only, linear per-quadrature SNR
    excess_noise: float | None  #: CV only, SNU at channel input
    up: bool  #: False past the loss budget or when the rate is <= 0
    eta: float  #: channel transmittance

    @property
    def snr_db(self) -> float | None:
        """CV SNR in dB (None for DV)."""
        if self.snr is None or self.snr <= 0:
            return None
        return 10.0 * math.log10(self.snr)


def key_rate_per_channel_use(profile: DeviceProfile, loss_db: float) -> ChannelUseRate:
    """Asymptotic secret bits per channel use of ``profile`` at channel loss ``loss_db``.

    Pure physics: ignores the loss budget and the duty factor but includes sifting, the signal/decoy
    fraction and detector dead time (as the average over one second of operation). This is the
    quantity to compare with :func:`plob_bound` of the channel transmittance.
    """
    if loss_db < 0:
        raise ValueError("loss_db must be >= 0")
    t = db_to_transmittance(loss_db)
    eta_bob = profile.receiver_transmittance
    if profile.protocol is Protocol.DECOY_BB84:
        eta = t * eta_bob

        def decoy(mu_: float) -> DecoyResult:
            return decoy_bb84_key_rate(
                eta,
                mu_,
                y0=profile.dark_count_prob,
                e_d=profile.misalignment_error,
                f=profile.ec_inefficiency,
                nu=profile.decoy_mean_photon_number,
                q=profile.sifting_factor,
            )

        if profile.mean_photon_number is None:
            lo = 1e-4 if profile.decoy_mean_photon_number is None else profile.decoy_mean_photon_number
            mu, _ = _grid_then_golden(lambda m: decoy(m).rate_per_pulse, lo * 1.01, 1.5)
        else:
            mu = profile.mean_photon_number
        res = decoy(mu)
        bits = res.rate_per_pulse * profile.signal_fraction
        if profile.dead_time_s > 0 and bits > 0:
            clicks = res.gain * profile.repetition_rate_hz
            bits /= 1.0 + clicks * profile.dead_time_s
        return ChannelUseRate(bits, t, qber=res.qber, mean_photon_number=mu)
    if profile.protocol is Protocol.COW:

        def cow(mu: float) -> tuple[float, float]:
            return cow_key_rate(
                t,
                mu,
                eta_bob=eta_bob,
                p_dark=profile.dark_count_prob,
                e_d=profile.misalignment_error,
                f=profile.ec_inefficiency,
                visibility=profile.visibility,
                data_line_fraction=profile.data_line_fraction,
                signal_fraction=profile.signal_fraction,
                clock_hz=profile.repetition_rate_hz,
                dead_time_s=profile.dead_time_s,
            )

        if profile.mean_photon_number is None:
            # Optimise the photon number reaching Bob, x = mu t, with mu <= 1: for fixed x the
            # bracket of the Branciard bound only decreases with loss, so the optimum is monotone.
            x, best = _grid_then_golden(lambda x_: cow(x_ / t)[0], 1e-4 * t, 1.0 * t)
            mu = x / t if best > 0 else _COW_NOMINAL_MU  # no key: report QBER at a nominal mu
        else:
            mu = profile.mean_photon_number
        rate_bps, qber = cow(mu)
        return ChannelUseRate(
            rate_bps / profile.repetition_rate_hz, t, qber=qber, mean_photon_number=mu
        )
    # CV GG02 heterodyne RR
    xi = profile.excess_noise_snu + profile.receiver_excess_noise_snu / (t * eta_bob)
    best = cv_optimal_key(
        t,
        xi=xi,
        eta=eta_bob,
        v_el=profile.electronic_noise_snu,
        beta=profile.reconciliation_efficiency,
        v_a_range=profile.modulation_variance_range,
        min_snr=profile.min_snr,
        fixed_rate_code=profile.fixed_rate_code,
    )
    if best is None:  # SNR below the code threshold at every allowed modulation
        v_a = profile.modulation_variance_range[1]
        res = gg02_heterodyne_rr(
            t,
            v_a,
            xi=xi,
            eta=eta_bob,
            v_el=profile.electronic_noise_snu,
            beta=profile.reconciliation_efficiency,
        )
        bits = 0.0
    else:
        v_a, res = best
        bits = res.key_per_symbol
    return ChannelUseRate(bits, t, snr=res.snr, excess_noise=xi, mean_photon_number=v_a / 2.0)


def link_performance(profile: DeviceProfile, loss_db: float) -> LinkPerformance:
    """Secret-key rate and link indicators of ``profile`` over a channel of ``loss_db`` dB.

    ``skr_bps = bits_per_use x repetition_rate x duty_factor``; ``up`` is False (and skr 0) when the
    loss exceeds ``profile.loss_budget_db`` or the asymptotic rate is not positive.
    """
    use = key_rate_per_channel_use(profile, loss_db)
    skr = use.bits_per_use * profile.repetition_rate_hz * profile.duty_factor
    up = loss_db <= profile.loss_budget_db and skr > 0.0
    return LinkPerformance(
        skr_bps=skr if up else 0.0,
        qber=use.qber,
        snr=use.snr,
        excess_noise=use.excess_noise,
        up=up,
        eta=use.transmittance,
    )


def plob_check(profile: DeviceProfile, loss_db: float) -> tuple[bool, float, float]:
    """Whether ``profile`` respects PLOB at ``loss_db``: ``(ok, bits_per_use, plob_bits_per_use)``.

    The bound is evaluated for the channel transmittance only (the receiver's trusted losses are
    not granted to Eve, so this is the loosest legitimate comparison).
    """
    use = key_rate_per_channel_use(profile, loss_db)
    bound = plob_bound(use.transmittance)
    return use.bits_per_use <= bound, use.bits_per_use, bound


# --------------------------------------------------------------------------------------------------
# Temporal fluctuation
# --------------------------------------------------------------------------------------------------


class RateFluctuation:
    """Slow multiplicative SKR fluctuation: exp of an Ornstein-Uhlenbeck process, mean factor 1.

    ``x(t+dt) = x(t) e^{-dt/tau} + sigma sqrt(1 - e^{-2 dt/tau}) N(0,1)`` (exact OU update), factor
    ``exp(x - sigma^2/2)`` so that E[factor] = 1 and the relative std is ~sigma for small sigma.
    Randomness comes from ``random.SystemRandom`` unless an ``rng`` is injected (tests).
    """

    def __init__(
        self,
        std: float = 0.03,
        tau_s: float = 300.0,
        rng: random.Random | None = None,
    ) -> None:
        if std < 0 or tau_s <= 0:
            raise ValueError("std must be >= 0 and tau_s > 0")
        self.std = std
        self.tau_s = tau_s
        self._rng: random.Random = rng if rng is not None else random.SystemRandom()
        # start in the stationary distribution
        self._x = self._rng.gauss(0.0, std) if std > 0 else 0.0

    @classmethod
    def for_profile(
        cls, profile: DeviceProfile, rng: random.Random | None = None
    ) -> RateFluctuation:
        """Fluctuation with the profile's ``fluctuation_std`` and ``fluctuation_tau_s``."""
        return cls(profile.fluctuation_std, profile.fluctuation_tau_s, rng)

    @property
    def factor(self) -> float:
        """Current multiplicative factor (> 0)."""
        return math.exp(self._x - self.std * self.std / 2.0)

    def step(self, dt_s: float) -> float:
        """Advance by ``dt_s`` seconds and return the new factor."""
        if dt_s < 0:
            raise ValueError("dt_s must be >= 0")
        if self.std > 0 and dt_s > 0:
            decay = math.exp(-dt_s / self.tau_s)
            noise = self.std * math.sqrt(1.0 - decay * decay)
            self._x = self._x * decay + noise * self._rng.gauss(0.0, 1.0)
        return self.factor

    def apply(self, skr_bps: float, dt_s: float) -> float:
        """Advance by ``dt_s`` and return ``skr_bps`` times the fluctuation factor."""
        return skr_bps * self.step(dt_s)
