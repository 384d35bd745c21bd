"""Counter-based random numbers (nlattn._rng): determinism, uniformity, independence, bounds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from nlattn._jit import jit
from nlattn._rng import hash3, randint, randint2, uniform


@jit
def _uniforms(seed, index0, round0, step_index, step_round, out):
    for t in range(out.shape[0]):
        out[t] = uniform(seed, index0 + t * step_index, round0 + t * step_round)


@jit
def _randints(seed, n, out):
    for t in range(out.shape[0]):
        out[t] = randint(seed, t, 7, n)


@jit
def _randint_pairs(seed, n_hi, n_lo, out):
    for t in range(out.shape[0]):
        a, b = randint2(seed, t, 3, n_hi, n_lo)
        out[t, 0] = a
        out[t, 1] = b


N = 100_000


def _draws(seed=0, index0=0, round0=0, step_index=1, step_round=0):
    out = np.empty(N, np.float64)
    _uniforms(seed, index0, round0, step_index, step_round, out)
    return out


def test_same_counters_give_the_same_numbers():
    a = _draws(seed=5)
    b = _draws(seed=5)
    np.testing.assert_array_equal(a, b)
    # the jitted helpers also run from Python and agree with the kernels
    assert uniform(5, 17, 0) == a[17]
    assert hash3(5, 17, 0) == hash3(5, 17, 0)


def test_every_counter_matters():
    base = _draws(seed=1, index0=0, round0=0)
    assert not np.array_equal(base, _draws(seed=2, index0=0, round0=0))
    assert not np.array_equal(base, _draws(seed=1, index0=0, round0=1))
    assert not np.array_equal(base, _draws(seed=1, index0=N, round0=0))
    assert hash3(1, 2, 3) != hash3(1, 3, 2) != hash3(2, 1, 3)


def test_large_counters_are_accepted():
    assert 0.0 <= uniform(2**63 - 1, 2**62, 2**63 - 1) < 1.0
    assert 0 <= randint(2**63 - 1, 2**40, 5, 10) < 10


@pytest.mark.parametrize(("step_index", "step_round"), [(1, 0), (0, 1), (1, 1)])
def test_uniform_on_zero_one(step_index, step_round):
    u = _draws(seed=3, step_index=step_index, step_round=step_round)
    assert u.min() >= 0.0 and u.max() < 1.0
    counts = np.histogram(u, bins=100, range=(0.0, 1.0))[0]
    assert stats.chisquare(counts).pvalue > 1e-3
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    assert len(np.unique(u)) == N


def test_neighbouring_counters_are_uncorrelated():
    # consecutive indices, consecutive rounds, consecutive seeds
    by_index = _draws(seed=0)
    assert abs(np.corrcoef(by_index[:-1], by_index[1:])[0, 1]) < 0.02
    round0 = _draws(seed=0, round0=0)
    round1 = _draws(seed=0, round0=1)
    assert abs(np.corrcoef(round0, round1)[0, 1]) < 0.02
    seed1 = _draws(seed=1)
    assert abs(np.corrcoef(by_index, seed1)[0, 1]) < 0.02
    # pairs of consecutive draws fill the unit square evenly (no lattice structure)
    pairs = np.histogram2d(by_index[:-1:2], by_index[1::2], bins=10, range=[[0, 1], [0, 1]])[0]
    assert stats.chisquare(pairs.ravel()).pvalue > 1e-3


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 2**31 + 11])
def test_randint_bounds(n):
    out = np.empty(N, np.int64)
    _randints(9, n, out)
    assert out.min() >= 0 and out.max() < n
    if n == 1:
        assert np.all(out == 0)
    elif n <= 1000:
        counts = np.bincount(out, minlength=n)
        assert np.all(counts > 0)
        assert stats.chisquare(counts).pvalue > 1e-3
    else:
        assert stats.kstest(out / n, "uniform").pvalue > 1e-3


def test_randint2_gives_two_independent_bounded_integers():
    out = np.empty((N, 2), np.int64)
    _randint_pairs(4, 5, 3, out)
    assert out[:, 0].min() == 0 and out[:, 0].max() == 4
    assert out[:, 1].min() == 0 and out[:, 1].max() == 2
    table = np.zeros((5, 3))
    np.add.at(table, (out[:, 0], out[:, 1]), 1)
    assert stats.chisquare(table.ravel()).pvalue > 1e-3
    one = np.empty((100, 2), np.int64)
    _randint_pairs(4, 1, 1, one)
    assert np.all(one == 0)
