"""Differential privacy of the aggregate (issue 26, protocol/privacy.py): clipping and noise by hand,
the privacy spent against the exact Gaussian mechanism, and the strategy's round with DP."""

import math

import numpy as np
import pytest
from flwr.common import parameters_to_ndarrays

from protocol.checks import ConfigError
from protocol.privacy import dp_mean, gaussian_epsilon
from strategies import FedPav, FederatedAveraging, Standalone
from tests.test_strategy import make, result, upd


def test_clipped_sum_over_the_selected_clients_by_hand():
    g = [np.zeros(2, np.float32), np.array([4], np.int64)]
    ups = [[np.array([3.0, 4.0], np.float32), np.array([6], np.int64)],  # norm 5: scaled to 1 -> [0.6, 0.8]
           [np.array([0.5, 0.0], np.float32), np.array([8], np.int64)]]  # norm 0.5: kept
    out, info = dp_mean(ups, g, clip=1.0, noise_multiplier=0.0, denominator=4, rng=np.random.default_rng(0))
    assert np.allclose(out[0], [(0.6 + 0.5) / 4, 0.8 / 4])  # divided by the 4 selected, not the 2 that answered
    assert out[1].dtype == np.int64 and out[1][0] == 7 and info["clip_scales"] == [0.2, 1.0]


def test_the_noise_has_std_z_clip_over_the_denominator():
    g = [np.zeros(200_000, np.float32)]
    out, _ = dp_mean([[np.zeros(200_000, np.float32)]], g, clip=2.0, noise_multiplier=1.5, denominator=5,
                     rng=np.random.default_rng(1))
    assert float(np.std(out[0])) == pytest.approx(1.5 * 2.0 / 5, rel=0.01)


def exact_gaussian_epsilon(sigma: float, delta: float) -> float:
    """The tightest epsilon of one Gaussian mechanism with sensitivity 1 (Balle and Wang 2018, Thm. 8):
    delta(eps) = Phi(1/(2 sigma) - eps sigma) - e^eps Phi(-1/(2 sigma) - eps sigma), solved by bisection."""
    phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    d = lambda e: phi(1 / (2 * sigma) - e * sigma) - math.exp(e) * phi(-1 / (2 * sigma) - e * sigma)  # noqa: E731
    lo, hi = 0.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if d(mid) > delta else (lo, mid)
    return hi


@pytest.mark.parametrize("sigma", [0.8, 1.0, 2.0, 5.0])
def test_the_reported_epsilon_bounds_the_exact_one_and_beats_the_plain_conversion(sigma):
    delta = 1e-5
    eps, order = gaussian_epsilon(1, sigma, delta)
    plain = min(a / (2 * sigma ** 2) + math.log(1 / delta) / (a - 1) for a in np.linspace(1.01, 500, 50000))
    assert exact_gaussian_epsilon(sigma, delta) <= eps <= plain  # an upper bound, tighter than Mironov's
    assert eps < 1.25 * exact_gaussian_epsilon(sigma, delta) + 0.5  # and not a loose one


def test_privacy_spent_grows_with_rounds_and_shrinks_with_noise():
    eps = [gaussian_epsilon(t, 1.0, 1e-5)[0] for t in (1, 10, 100)]
    assert eps[0] < eps[1] < eps[2]
    assert gaussian_epsilon(10, 2.0, 1e-5)[0] < eps[1]
    assert gaussian_epsilon(0, 1.0, 1e-5)[0] == 0.0


def test_a_round_with_dp_is_clipped_noised_seeded_and_reports_epsilon():
    def one_round():
        strategy, cm, proxies, _ = make(FederatedAveraging, dp_noise_multiplier=1.0, dp_clip=0.5, seed=4)
        strategy.configure_fit(1, strategy.initial_parameters, cm)
        params, _ = strategy.aggregate_fit(1, [result(proxies[0], upd(1, 1), 10), result(proxies[1], upd(2, 2), 99),
                                               result(proxies[2], upd(9, 9), 10)], [])
        return parameters_to_ndarrays(params), strategy

    first, strategy = one_round()
    again, _ = one_round()
    assert all(np.array_equal(a, b) for a, b in zip(first, again))  # the noise is seeded by (seed, round)
    rec = strategy.record
    assert rec["dp_epsilon"] == pytest.approx(gaussian_epsilon(1, 1.0, 1e-5)[0]) and rec["dp"]["clipped"] == [0, 1, 2]
    # every update clipped to norm 0.5 along (1, ..., 1)/sqrt(7): the mean without noise is 0.5/sqrt(7) per coordinate
    noise = first[0] - 0.5 / math.sqrt(7)
    assert np.all(np.abs(noise) < 5 * 1.0 * 0.5 / 3)  # within 5 std of the noise on the mean
    assert strategy.state_dict()["dp_rounds"] == 1


def test_dp_is_refused_where_it_cannot_bound_a_client():
    with pytest.raises(ConfigError, match="cannot be combined with strategy.robust"):
        make(FederatedAveraging, dp_noise_multiplier=1.0, robust="median")
    with pytest.raises(ConfigError, match="standalone aggregates nothing"):
        make(Standalone, dp_noise_multiplier=1.0)
    with pytest.raises(ConfigError, match="turn them off for DP"):
        make(FedPav, dp_noise_multiplier=1.0, cdw=True)
