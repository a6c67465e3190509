"""Tests of the QKD device key-rate models (qkdnode.devices.physics / profiles).

Every test is deterministic (fixed inputs, injected random.Random seeds) and pure Python.
Literature reference points state where each number comes from.
"""

from __future__ import annotations

import dataclasses
import math
import random

import pytest

from qkdnode.devices import physics
from qkdnode.devices.physics import (
    Band,
    Protocol,
    RateFluctuation,
    db_to_transmittance,
    decoy_bb84_key_rate,
    decoy_bb84_optimal_rate,
    fibre_loss_db,
    gg02_heterodyne_rr,
    key_rate_per_channel_use,
    link_performance,
    plob_bound,
    plob_check,
    thermal_entropy,
)
from qkdnode.devices.profiles import (
    AIT_CV,
    ALL_PROFILES,
    HWDU_CV,
    IDQ_COW,
    IDQ_COW_C,
    TOSHIBA_BB84,
    at_wavelength,
    profile_by_name,
)

LOSS_GRID = [i * 0.5 for i in range(81)]  # 0 .. 40 dB in 0.5 dB steps
DV_PROFILES = [p for p in ALL_PROFILES if p.protocol is not Protocol.CV_GG02_HETERODYNE]
CV_PROFILES = [p for p in ALL_PROFILES if p.protocol is Protocol.CV_GG02_HETERODYNE]


def _ids(profiles: list[physics.DeviceProfile]) -> list[str]:
    return [p.name for p in profiles]


# ------------------------------------------------------------------------------------------------
# Fibre / band helpers
# ------------------------------------------------------------------------------------------------


def test_fibre_loss_c_and_o_band() -> None:
    assert fibre_loss_db(50.0, "C") == pytest.approx(10.0)  # 0.2 dB/km
    assert fibre_loss_db(10.0, "O") == pytest.approx(3.3)  # 0.33 dB/km
    assert fibre_loss_db(0.0, Band.O) == 0.0
    # MadQCI: the O band costs ~50 % more than the C band over the same fibre
    assert fibre_loss_db(33.1, "O") / fibre_loss_db(33.1, "C") == pytest.approx(1.65)
    with pytest.raises(ValueError):
        fibre_loss_db(-1.0, "C")
    with pytest.raises(ValueError):
        fibre_loss_db(1.0, "X")
    assert TOSHIBA_BB84.fibre_loss_db(10.0) == pytest.approx(3.3)
    assert HWDU_CV.fibre_loss_db(10.0) == pytest.approx(2.0)


def test_band_and_itu_channel_helpers() -> None:
    assert physics.band_of_wavelength(1310.0) is Band.O
    assert physics.band_of_wavelength(1550.0) is Band.C
    # ITU-T G.694.1 100 GHz grid: C34 = 193.4 THz = 1550.12 nm, C37 = 1547.72 nm
    assert physics.itu_channel_wavelength_nm(34) == pytest.approx(1550.12, abs=0.01)
    assert physics.itu_channel_wavelength_nm(37) == pytest.approx(1547.72, abs=0.01)
    moved = at_wavelength(TOSHIBA_BB84, 1550.12)
    assert moved.band is Band.C and moved.fibre_loss_db_per_km == pytest.approx(0.2)
    assert IDQ_COW_C.band is Band.C and IDQ_COW.band is Band.O
    with pytest.raises(ValueError):
        dataclasses.replace(TOSHIBA_BB84, wavelength_nm=1550.0)  # band O does not contain it


def test_profiles_are_complete_and_cited() -> None:
    for p in ALL_PROFILES:
        assert p.source and ("plausible" in p.source.lower() or "PLAUSIBLE" in p.source)
        assert profile_by_name(p.name) is p
        assert 0 < p.receiver_transmittance <= 1
        if p.protocol is not Protocol.CV_GG02_HETERODYNE:
            assert 1.16 <= p.ec_inefficiency <= 1.22
    assert TOSHIBA_BB84.repetition_rate_hz == 1e9 and TOSHIBA_BB84.band is Band.O
    assert HWDU_CV.repetition_rate_hz == 12.5e6 and HWDU_CV.loss_budget_db == 23.0
    assert HWDU_CV.reconciliation_efficiency == pytest.approx(0.95)
    assert AIT_CV.protocol is Protocol.CV_GG02_HETERODYNE and "PLAUSIBLE" in AIT_CV.source
    with pytest.raises(KeyError):
        profile_by_name("nope")


# ------------------------------------------------------------------------------------------------
# PLOB, monotonicity, budgets
# ------------------------------------------------------------------------------------------------


def test_plob_bound_values() -> None:
    assert plob_bound(0.5) == pytest.approx(1.0)
    assert plob_bound(0.0) == 0.0
    assert math.isinf(plob_bound(1.0))
    # high-loss limit: -log2(1-eta) ~ 1.44 eta
    assert plob_bound(1e-4) == pytest.approx(1e-4 / math.log(2), rel=1e-3)


@pytest.mark.parametrize("profile", ALL_PROFILES, ids=_ids(list(ALL_PROFILES)))
def test_no_profile_exceeds_plob(profile: physics.DeviceProfile) -> None:
    for loss in LOSS_GRID:
        ok, bits, bound = plob_check(profile, loss)
        assert ok, f"{profile.name} at {loss} dB: {bits} > PLOB {bound}"
        # per channel use, the duty-free physics rate is what is compared
        assert bits == key_rate_per_channel_use(profile, loss).bits_per_use


@pytest.mark.parametrize("profile", ALL_PROFILES, ids=_ids(list(ALL_PROFILES)))
def test_rate_decreases_monotonically_with_loss(profile: physics.DeviceProfile) -> None:
    skr = [link_performance(profile, loss).skr_bps for loss in LOSS_GRID]
    bits = [max(0.0, key_rate_per_channel_use(profile, loss).bits_per_use) for loss in LOSS_GRID]
    for a, b in zip(skr, skr[1:], strict=False):
        assert b <= a * (1 + 1e-9)
    for a, b in zip(bits, bits[1:], strict=False):
        assert b <= a * (1 + 1e-9)
    assert skr[0] > 0 and skr[-1] == 0.0


@pytest.mark.parametrize("profile", ALL_PROFILES, ids=_ids(list(ALL_PROFILES)))
def test_link_performance_fields_and_budget(profile: physics.DeviceProfile) -> None:
    inside = link_performance(profile, 2.0)
    assert inside.up and inside.skr_bps > 0
    assert inside.eta == pytest.approx(db_to_transmittance(2.0))
    use = key_rate_per_channel_use(profile, 2.0)
    expected = use.bits_per_use * profile.repetition_rate_hz * profile.duty_factor
    assert inside.skr_bps == pytest.approx(expected)
    past = link_performance(profile, profile.loss_budget_db + 0.5)
    assert not past.up and past.skr_bps == 0.0
    if profile.protocol is Protocol.CV_GG02_HETERODYNE:
        assert inside.qber is None and inside.snr is not None and inside.excess_noise is not None
    else:
        assert inside.qber is not None and inside.snr is None and inside.excess_noise is None
        assert inside.snr_db is None


@pytest.mark.parametrize("profile", DV_PROFILES, ids=_ids(DV_PROFILES))
def test_dv_qber_plausible_and_down_past_budget(profile: physics.DeviceProfile) -> None:
    loss = 0.0
    while loss <= profile.loss_budget_db:
        perf = link_performance(profile, loss)
        assert perf.qber is not None and 0.01 <= perf.qber <= 0.06, (loss, perf.qber)
        assert perf.up, f"{profile.name} down at {loss} dB inside its budget"
        loss += 0.5
    assert not link_performance(profile, profile.loss_budget_db + 0.1).up
    assert not link_performance(profile, 40.0).up


def test_hwdu_cv_goes_down_around_23_db() -> None:
    # MadQCI (Martin et al. 2024): "a single sender-receiver pair supports up to 23 dB".
    cutoff = None
    loss = 15.0
    while loss < 30.0:
        if not link_performance(HWDU_CV, loss).up:
            cutoff = loss
            break
        loss = round(loss + 0.1, 1)
    assert cutoff is not None and 21.5 <= cutoff <= 23.1
    assert link_performance(HWDU_CV, 20.0).up
    assert not link_performance(HWDU_CV, 23.5).up
    perf = link_performance(HWDU_CV, 10.0)
    # the fixed-rate code works at its threshold SNR of -19.5 dB (MadQCI)
    assert perf.snr_db is not None and perf.snr_db == pytest.approx(-19.5, abs=0.05)


# ------------------------------------------------------------------------------------------------
# Decoy BB84: Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005), GYS parameter set
# ------------------------------------------------------------------------------------------------

# Parameters of the GYS experiment (C. Gobby, Z. L. Yuan, A. J. Shields, APL 84, 3762 (2004)) as
# used by Ma et al. 2005 for their key-rate simulations: alpha = 0.21 dB/km, e_detector = 3.3 %,
# Y0 = 1.7e-6, eta_Bob = 0.045, f(E) = 1.22, BB84 sifting q = 1/2.
GYS = {"alpha": 0.21, "e_d": 0.033, "y0": 1.7e-6, "eta_bob": 0.045, "f": 1.22, "q": 0.5}


def _gys_best_rate(length_km: float, nu: float | None) -> float:
    eta = GYS["eta_bob"] * 10 ** (-GYS["alpha"] * length_km / 10)
    _, res = decoy_bb84_optimal_rate(
        eta, y0=GYS["y0"], e_d=GYS["e_d"], f=GYS["f"], nu=nu, q=GYS["q"]
    )
    return res.rate_per_pulse


def _gys_cutoff_km(nu: float | None) -> float:
    lo, hi = 50.0, 250.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if _gys_best_rate(mid, nu) > 0:
            lo = mid
        else:
            hi = mid
    return lo


def test_ma_2005_infinite_decoy_cutoff_gys() -> None:
    # Ma et al. 2005: with the GYS parameters and mu optimised at each distance, the asymptotic
    # GLLP + infinite-decoy key rate vanishes at ~142 km.
    cutoff = _gys_cutoff_km(None)
    assert 138.0 <= cutoff <= 146.0, cutoff


def test_ma_2005_vacuum_weak_decoy_approaches_infinite_decoy() -> None:
    # Ma et al. 2005: vacuum + one weak decoy asymptotically approaches the infinite-decoy limit as
    # nu -> 0, and a larger nu costs distance.
    inf = _gys_cutoff_km(None)
    small = _gys_cutoff_km(0.01)
    large = _gys_cutoff_km(0.1)
    assert large < small <= inf
    assert inf - small < 1.0
    assert inf - large < 6.0


def test_ma_2005_optimal_mu_is_order_one_and_channel_model() -> None:
    eta = GYS["eta_bob"] * 10 ** (-GYS["alpha"] * 50 / 10)
    mu, res = decoy_bb84_optimal_rate(eta, y0=GYS["y0"], e_d=GYS["e_d"], f=GYS["f"])
    # Ma et al. 2005: with decoys the optimal signal intensity is O(1) (~0.5), not O(eta)
    assert 0.3 < mu < 0.7
    # channel model of Ma et al. Sec. II: Q_mu = Y0 + 1 - exp(-eta mu), Y1 = Y0 + eta
    assert res.gain == pytest.approx(GYS["y0"] + 1 - math.exp(-eta * mu))
    assert res.y1 == pytest.approx(GYS["y0"] + eta)
    # the weak-decoy Y1 is a lower bound, e1 an upper bound, of the exact (infinite-decoy) values
    weak = decoy_bb84_key_rate(eta, 0.5, y0=GYS["y0"], e_d=GYS["e_d"], f=GYS["f"], nu=0.1)
    exact = decoy_bb84_key_rate(eta, 0.5, y0=GYS["y0"], e_d=GYS["e_d"], f=GYS["f"])
    assert weak.y1 <= exact.y1 and weak.e1 >= exact.e1
    assert weak.rate_per_pulse < exact.rate_per_pulse
    assert exact.qber == pytest.approx(0.033, abs=0.002)  # E_mu ~ e_detector at short distance


# ------------------------------------------------------------------------------------------------
# CV GG02 heterodyne RR (Fossier et al. 2009)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0.5, 0.1, 0.01, 0.001])
def test_gg02_het_rr_pure_loss_large_modulation_closed_form(t: float) -> None:
    # Well-known GG02 heterodyne/RR curve: ideal detector, pure-loss channel, beta = 1, V_A -> inf
    # (no-switching protocol, C. Weedbrook et al., PRL 93, 170504 (2004); RR, F. Grosshans et al.,
    # Nature 421, 238 (2003)). With V = V_A + 1: I_AB = log2((TV + 2 - T)/2), S(E) = S(AB) =
    # G((1-T)(V-1)/2), and Eve's mode conditioned on Bob's heterodyne outcome has variance
    # ((2-T)V + T)/(TV + 2 - T) -> (2-T)/T, so K -> log2[T/(e(1-T))] + G((1-T)/T), i.e.
    # log2[T/(e(1-T))] + h(nu) with symplectic eigenvalue nu = (2-T)/T. It lies strictly below PLOB.
    closed = math.log2(t / (math.e * (1 - t))) + thermal_entropy((2 - t) / t)
    # V_A = 1e6 approximates the limit to ~1e-6 relative (approached from below as 1/V_A).
    res = gg02_heterodyne_rr(t, 1e6, xi=0.0, eta=1.0, v_el=0.0, beta=1.0)
    assert res.key_per_symbol == pytest.approx(closed, rel=2e-5)
    assert 0 < res.key_per_symbol < plob_bound(t)


@pytest.mark.parametrize("t,v_a,xi", [(0.5, 2.0, 0.0), (0.5, 10.0, 0.05), (0.1, 4.0, 0.01)])
def test_gg02_ideal_detector_matches_covariance_matrix(t: float, v_a: float, xi: float) -> None:
    # With eta = 1 and v_el = 0 the Fossier et al. (2009) C, D expressions must reduce to the direct
    # computation from the covariance matrix of the EPR-equivalent state (Grosshans et al., Nature
    # 421, 238 (2003)): S(E) = S(AB), S(E|b) = S(A|b_het), gamma_A|b = V - c^2 / (V_B + 1).
    v = v_a + 1
    chi_line = 1 / t - 1 + xi
    v_b = t * (v + chi_line)
    c2 = t * (v * v - 1)
    delta = v * v + v_b * v_b - 2 * c2
    det = (v * v_b - c2) ** 2
    disc = math.sqrt(delta * delta - 4 * det)
    l1, l2 = math.sqrt((delta + disc) / 2), math.sqrt((delta - disc) / 2)
    chi = thermal_entropy(l1) + thermal_entropy(l2) - thermal_entropy(v - c2 / (v_b + 1))
    i_ab = math.log2((v_b + 1) / (t * (1 + chi_line) + 1))
    res = gg02_heterodyne_rr(t, v_a, xi=xi, eta=1.0, v_el=0.0, beta=1.0)
    assert res.chi_be == pytest.approx(chi, rel=1e-9)
    assert res.i_ab == pytest.approx(i_ab, rel=1e-12)


def test_gg02_trusted_detector_properties() -> None:
    # Lossless, noiseless channel: Eve holds nothing, chi_BE = 0 even with a noisy trusted detector.
    # (abs 1e-6: near nu = 1 the entropy has infinite slope, so rounding of the double root shows.)
    res = gg02_heterodyne_rr(1.0, 5.0, xi=0.0, eta=0.6, v_el=0.1, beta=1.0)
    assert res.chi_be == pytest.approx(0.0, abs=1e-6)
    # Trusting the detector loss beats giving it to Eve (Fossier et al. 2009 motivation).
    trusted = gg02_heterodyne_rr(0.1, 4.0, xi=0.01, eta=0.6, v_el=0.0, beta=0.95)
    untrusted = gg02_heterodyne_rr(0.06, 4.0, xi=0.01 / 0.6, eta=1.0, v_el=0.0, beta=0.95)
    assert trusted.key_per_symbol > untrusted.key_per_symbol
    # Reverse reconciliation beats the 3 dB limit (Grosshans et al. 2003): key at 20 dB, beta = 1.
    assert gg02_heterodyne_rr(0.01, 10.0, xi=0.0, eta=1.0, v_el=0.0, beta=1.0).key_per_symbol > 0
    # SNR definition: I_AB = log2(1 + SNR)
    r = gg02_heterodyne_rr(0.2, 3.0, xi=0.02, eta=0.5, v_el=0.05, beta=0.95)
    assert r.i_ab == pytest.approx(math.log2(1 + r.snr))


# ------------------------------------------------------------------------------------------------
# COW (Branciard et al. 2008 bound as used by Stucki et al. 2009)
# ------------------------------------------------------------------------------------------------


def test_cow_eve_information_limits() -> None:
    # perfect visibility, lossless: xi = exp(-mu), no beam-splitting share
    ie = physics.cow_eve_information(0.1, 1.0, 1.0)
    assert ie == pytest.approx(physics.binary_entropy((1 + math.exp(-0.1)) / 2))
    # high loss: the beam-splitting term tends to mu
    assert physics.cow_eve_information(0.3, 1e-6, 1.0) == pytest.approx(0.3, abs=1e-3)
    # lower visibility leaks more
    assert physics.cow_eve_information(0.3, 0.1, 0.95) > physics.cow_eve_information(0.3, 0.1, 0.99)


# ------------------------------------------------------------------------------------------------
# Fluctuation
# ------------------------------------------------------------------------------------------------


def test_rate_fluctuation_is_reproducible_with_injected_rng() -> None:
    a = RateFluctuation(0.05, 60.0, rng=random.Random(7))
    b = RateFluctuation(0.05, 60.0, rng=random.Random(7))
    seq_a = [a.apply(1000.0, 10.0) for _ in range(50)]
    seq_b = [b.apply(1000.0, 10.0) for _ in range(50)]
    assert seq_a == seq_b
    assert all(x > 0 for x in seq_a)


def test_rate_fluctuation_statistics() -> None:
    fl = RateFluctuation(0.04, 30.0, rng=random.Random(12345))
    samples = [fl.step(60.0) for _ in range(20000)]  # dt = 2 tau: nearly independent samples
    mean = sum(samples) / len(samples)
    std = math.sqrt(sum((s - mean) ** 2 for s in samples) / len(samples))
    assert mean == pytest.approx(1.0, abs=0.005)
    assert std == pytest.approx(0.04, rel=0.1)


def test_rate_fluctuation_misc() -> None:
    flat = RateFluctuation(0.0, 10.0, rng=random.Random(1))
    assert flat.step(5.0) == 1.0 and flat.apply(10.0, 1.0) == 10.0
    fl = RateFluctuation.for_profile(IDQ_COW, rng=random.Random(3))
    assert fl.std == IDQ_COW.fluctuation_std and fl.tau_s == IDQ_COW.fluctuation_tau_s
    assert fl.step(0.0) == fl.factor  # no time, no change
    assert RateFluctuation().step(1.0) > 0  # default SystemRandom source
    with pytest.raises(ValueError):
        RateFluctuation(-0.1)
    with pytest.raises(ValueError):
        fl.step(-1.0)


def test_cv_profiles_report_snr_and_noise() -> None:
    for p in CV_PROFILES:
        perf = link_performance(p, 5.0)
        assert perf.up and perf.snr is not None and perf.snr > 0
        assert perf.excess_noise is not None and perf.excess_noise >= 0
