"""Asymptotic secret-key-rate formulas of the three protocol families (pure functions).

See :mod:`qkdnode.devices.physics` for the literature behind each formula; every function cites it
again in its docstring. Rates are per pulse (decoy BB84), per second (COW, because of dead time) or
per symbol (CV).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .optics import binary_entropy, maximise, thermal_entropy

__all__ = [
    "CvResult",
    "DecoyResult",
    "cow_eve_information",
    "cow_key_rate",
    "cv_min_modulation_for_snr",
    "cv_optimal_key",
    "decoy_bb84_key_rate",
    "decoy_bb84_optimal_rate",
    "gg02_heterodyne_rr",
]

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
    ``E_mu Q_mu = e0 Y0 + e_d (1 - exp(-eta mu))`` with e0 = 1/2. With ``nu=None`` the
    infinite-decoy limit is used (``Y1 = Y0 + eta``, ``e1 = (e0 Y0 + e_d eta)/Y1``); otherwise the
    vacuum + weak-decoy bounds
    ``Y1 >= mu/(mu nu - nu^2) (Q_nu e^nu - Q_mu e^mu nu^2/mu^2 - (mu^2-nu^2)/mu^2 Y0)`` and
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

    mu_opt, _ = maximise(rate, lo, mu_max)
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
    ``signal_fraction`` of the pairs carries key, the rest are decoy sequences. Raw clicks per key
    pair ``p = 1 - exp(-mu t eta_B d) + 2 p_dark`` (d = data-line fraction, p_dark per slot); a dark
    count in the wrong slot or an optical error e_d gives a bit error. A non-paralysable dead time
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
    """Symplectic eigenvalues ``sqrt((a +- sqrt(a^2 - 4b))/2)`` of a two-mode state (clamped >= 1).

    The smaller root is taken as ``b / larger`` (Vieta), which avoids catastrophic cancellation at
    large modulation variance.
    """
    disc = math.sqrt(max(a * a - 4.0 * b, 0.0))
    big = (a + disc) / 2.0
    small = b / big if big > 0 else 0.0
    return math.sqrt(max(big, 1.0)), math.sqrt(max(small, 1.0))


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
    ``C = [A chi_het^2 + B + 1 + 2 chi_het (V sqrt(B) + T(V + chi_line)) + 2T(V^2-1)]``
    ``/ (T(V+chi_tot))^2``,
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

    v_a, _ = maximise(lambda v: evaluate(v).key_per_symbol, lo, hi)
    return v_a, evaluate(v_a)
