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
  cryptography", New J. Phys. 10, 013031 (2008), in the practical form used to evaluate COW
  experiments such as D. Stucki et al., "High rate, long-distance quantum key distribution over
  250 km of ultra low loss fibres", New J. Phys. 11, 075003 (2009):
  ``I_E = mu(1-t) + (1 - mu(1-t)) H2((1+xi)/2)``,
  ``xi = (2V-1) exp(-mu t) - 2 sqrt(V(1-V)) sqrt(1 - exp(-2 mu t))``.
  This is an *upper* bound on the secure rate (specific attacks, large-distance regime); zero-error
  attacks later showed that plain COW scales at most ~t^2 (J. Gonzalez-Payo et al., Phys. Rev. Lett.
  125, 260510 (2020); R. Trenyi, M. Curty, New J. Phys. 23, 093005 (2021)). It is kept because it is
  the published practical expression for this device class; read COW rates as optimistic.
* CV-QKD GG02 (Gaussian-modulated coherent states), heterodyne detection, reverse reconciliation,
  trusted detector noise (efficiency eta, electronic noise v_el): mutual information ``I_AB`` and
  the Holevo bound ``chi_BE`` from the symplectic eigenvalues given by S. Fossier, E. Diamanti,
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

from .optics import (
    Band,
    band_loss_db_per_km,
    band_of_wavelength,
    binary_entropy,
    db_to_transmittance,
    fibre_loss_db,
    itu_channel_wavelength_nm,
    maximise,
    plob_bound,
    thermal_entropy,
    transmittance_to_db,
)
from .protocols import (
    CvResult,
    DecoyResult,
    cow_eve_information,
    cow_key_rate,
    cv_min_modulation_for_snr,
    cv_optimal_key,
    decoy_bb84_key_rate,
    decoy_bb84_optimal_rate,
    gg02_heterodyne_rr,
)

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

#: COW mean photon number at which the QBER is reported when no mu yields key (typical COW value).
_COW_NOMINAL_MU = 0.5


class Protocol(enum.StrEnum):
    """QKD protocol family; selects the key-rate formula."""

    DECOY_BB84 = "decoy-bb84"
    COW = "cow"
    CV_GG02_HETERODYNE = "cv-gg02-heterodyne-rr"


# --------------------------------------------------------------------------------------------------
# Device profile
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceProfile:
    """All physical parameters of one QKD module technology (emitter + receiver pair).

    DV fields (decoy BB84, COW) and CV fields (GG02) coexist; the ones not used by ``protocol`` keep
    their neutral defaults. ``source`` cites where the numbers and formulas come from; parameters
    not published for the product are marked "plausible" there.
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
    #: Fraction of wall-clock time / symbols that ends up producing key (calibration pauses,
    #: parameter estimation, frame errors); multiplies the asymptotic rate. Basis sifting and
    #: decoy/signal fractions are separate fields.
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
    #: Fraction of slots carrying the signal state (the rest: decoys/vacuum, or COW decoy pairs).
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
    #: A single fixed-rate code designed for ``min_snr``: reconciled information per symbol is
    #: capped at ``beta log2(1 + min_snr)`` whatever the actual SNR (the code rate does not adapt).
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


def _decoy_use(profile: DeviceProfile, t: float) -> ChannelUseRate:
    """Decoy BB84 bits per clock slot (GLLP + Ma et al. 2005)."""
    eta = t * profile.receiver_transmittance

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
        mu, _ = maximise(lambda m: decoy(m).rate_per_pulse, lo * 1.01, 1.5)
    else:
        mu = profile.mean_photon_number
    res = decoy(mu)
    bits = res.rate_per_pulse * profile.signal_fraction
    if profile.dead_time_s > 0 and bits > 0:
        clicks = res.gain * profile.repetition_rate_hz
        bits /= 1.0 + clicks * profile.dead_time_s
    return ChannelUseRate(bits, t, qber=res.qber, mean_photon_number=mu)


def _cow_use(profile: DeviceProfile, t: float) -> ChannelUseRate:
    """COW bits per clock slot (Branciard et al. 2008 / Stucki et al. 2009 bound)."""

    def cow(mu_: float) -> tuple[float, float]:
        return cow_key_rate(
            t,
            mu_,
            eta_bob=profile.receiver_transmittance,
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
        # Optimise the photon number reaching Bob, x = mu t, with mu <= 1: for fixed x the bracket
        # of the Branciard bound only decreases with loss, so the optimised rate is monotone.
        x, best_bps = maximise(lambda x_: cow(x_ / t)[0], 1e-4 * t, 1.0 * t)
        mu = x / t if best_bps > 0 else _COW_NOMINAL_MU  # no key: report QBER at a nominal mu
    else:
        mu = profile.mean_photon_number
    rate_bps, qber = cow(mu)
    return ChannelUseRate(
        rate_bps / profile.repetition_rate_hz, t, qber=qber, mean_photon_number=mu
    )


def _cv_use(profile: DeviceProfile, t: float) -> ChannelUseRate:
    """GG02 heterodyne RR bits per symbol (Fossier et al. 2009), V_A optimised within limits."""
    eta_bob = profile.receiver_transmittance
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
    if best is None:  # SNR below the code threshold at every allowed modulation: no key
        v_a = profile.modulation_variance_range[1]
        cv = gg02_heterodyne_rr(
            t,
            v_a,
            xi=xi,
            eta=eta_bob,
            v_el=profile.electronic_noise_snu,
            beta=profile.reconciliation_efficiency,
        )
        bits = 0.0
    else:
        v_a, cv = best
        bits = cv.key_per_symbol
    return ChannelUseRate(bits, t, snr=cv.snr, excess_noise=xi, mean_photon_number=v_a / 2.0)


def key_rate_per_channel_use(profile: DeviceProfile, loss_db: float) -> ChannelUseRate:
    """Asymptotic secret bits per channel use of ``profile`` at channel loss ``loss_db``.

    Pure physics: ignores the loss budget and the duty factor but includes sifting, the signal/decoy
    fraction and detector dead time (as the average over one second of operation). This is the
    quantity to compare with :func:`plob_bound` of the channel transmittance.
    """
    if loss_db < 0:
        raise ValueError("loss_db must be >= 0")
    t = db_to_transmittance(loss_db)
    if profile.protocol is Protocol.DECOY_BB84:
        return _decoy_use(profile, t)
    if profile.protocol is Protocol.COW:
        return _cow_use(profile, t)
    return _cv_use(profile, t)


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
