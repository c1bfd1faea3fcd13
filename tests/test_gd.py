"""Unit tests of the fixed-point gradient-descent learner (hmtl_mpi.learning.gd); no MPI."""

import numpy as np
import pytest

from hmtl_mpi.learning.gd import (BIAS, DEFAULT_ITERATIONS, FIELD_LIMIT, GradientLearner, fixed_point_bits, run_in_process)


@pytest.fixture(scope="module")
def digits():
    return GradientLearner("digits", P=12, seed=0)


@pytest.fixture(scope="module")
def mnist():
    return GradientLearner("mnist", P=12, seed=0)


def _sum_gradients(learner, model):
    total = np.zeros(learner.dim, dtype=np.int64)
    for p in range(learner.P):
        total += learner.partition_gradient(p, model)
    return total


def _tiny(P=1, seed=0, n=9, n_test=4, d=3):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1.0, 1.0, size=(n + n_test, d))
    y = rng.integers(0, 10, size=n + n_test)
    return GradientLearner.from_arrays(X[:n], y[:n], X[n:], y[n:], P=P, seed=seed)


# ---------------------------------------------------------------- data and shapes

def test_shapes_split_and_scale(digits, mnist):
    assert (digits.n_train, digits.n_test) == (1347, 450)          # floor(0.75 * 1797)
    assert (mnist.n_train, mnist.n_test) == (3750, 1250)
    assert (digits.n_features, digits.dim, digits.model_len) == (65, 650, 650)
    assert (mnist.n_features, mnist.dim, mnist.model_len) == (785, 7850, 7850)
    assert (digits.scale_bits, mnist.scale_bits) == (19, 18)
    for L in (digits, mnist):
        assert L.scale == 2 ** L.scale_bits and L.grad_bound == L.n_train * L.scale
        assert np.all(L.X_train[:, -1] == BIAS)
        np.testing.assert_allclose(np.linalg.norm(L.X_train[:, :-1], axis=1), 1.0, rtol=1e-12)
        assert np.abs(L.X_train).max() <= 1.0
        assert sorted(np.unique(L.y_train)) == list(range(10))
        m = L.initial_model()
        assert m.dtype == np.float64 and m.shape == (L.dim,) and not m.any()
    # train + test is exactly the data set, each image once (a split, not a resampling)
    from hmtl_mpi.learning.datasets import _normalise_rows, _read_digits
    pixels, labels = _read_digits()
    full = np.column_stack([_normalise_rows(pixels / 16.0), labels])
    ours = np.vstack([np.column_stack([digits.X_train[:, :-1], digits.y_train]),
                      np.column_stack([digits.X_test[:, :-1], digits.y_test])])
    assert np.array_equal(full[np.lexsort(full.T)], ours[np.lexsort(ours.T)])


def test_scale_bits_is_largest_below_field_limit():
    for n in (1, 9, 1347, 3750, 2**20, FIELD_LIMIT - 1):
        s = fixed_point_bits(n)
        assert n * 2**s < FIELD_LIMIT <= n * 2 ** (s + 1)
    assert fixed_point_bits(1347) == 19 and fixed_point_bits(3750) == 18
    with pytest.raises(ValueError, match="does not fit"):
        fixed_point_bits(FIELD_LIMIT)
    # the scale does not depend on P
    assert {GradientLearner("digits", P=P).scale_bits for P in (1, 5, 12, 1347)} == {19}


# ---------------------------------------------------------------- partitions

@pytest.mark.parametrize("P", [1, 5, 12, 13, 1347])
def test_partitions_balanced_disjoint_covering(P):
    L = GradientLearner("digits", P=P, seed=3)
    sizes = [len(p) for p in L.partitions]
    assert len(sizes) == P and max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    allidx = np.concatenate(L.partitions)
    assert len(allidx) == L.n_train
    assert np.array_equal(np.sort(allidx), np.arange(L.n_train))   # disjoint and covering


def test_partitions_deterministic_per_seed():
    a, b, c = (GradientLearner("digits", P=12, seed=s) for s in (4, 4, 5))
    assert all(np.array_equal(x, y) for x, y in zip(a.partitions, b.partitions))
    assert a.X_train.tobytes() == b.X_train.tobytes()
    assert not all(np.array_equal(x, y) for x, y in zip(a.partitions, c.partitions))
    assert a.X_train.tobytes() != c.X_train.tobytes()


@pytest.mark.parametrize("P, msg", [(0, "between 1 and the number of training points"),
                                    (-3, "between 1 and"),
                                    (1348, r"\(1347\), got P=1348"),
                                    (2.5, "must be an integer")])
def test_partition_count_refused(P, msg):
    with pytest.raises(ValueError, match=msg):
        GradientLearner("digits", P=P)


def test_bad_arguments_refused():
    with pytest.raises(ValueError, match="unknown data set 'har'"):
        GradientLearner("har")
    with pytest.raises(ValueError, match="lr must be"):
        GradientLearner("digits", lr=0.0)
    with pytest.raises(ValueError, match="l2 must be"):
        GradientLearner("digits", l2=-1.0)
    with pytest.raises(ValueError, match="test_fraction"):
        GradientLearner("digits", test_fraction=1.0)
    with pytest.raises(ValueError, match=r"in \[-1, 1\]"):
        GradientLearner.from_arrays(np.full((3, 2), 1.5), [0, 1, 2], np.zeros((1, 2)), [0])
    with pytest.raises(ValueError, match="labels must be integers in 0..9"):
        GradientLearner.from_arrays(np.zeros((3, 2)), [0, 1, 10], np.zeros((1, 2)), [0])


# ---------------------------------------------------------------- gradients

def test_partition_gradient_type_and_errors(digits):
    g = digits.partition_gradient(0, digits.initial_model())
    assert g.dtype == np.int64 and g.shape == (digits.dim,)
    with pytest.raises(IndexError, match=r"\[0, 12\)"):
        digits.partition_gradient(12, digits.initial_model())
    with pytest.raises(ValueError, match=r"shape \(650,\)"):
        digits.partition_gradient(0, np.zeros(649))


def test_fixed_point_sum_matches_rounded_reference(digits):
    rng = np.random.default_rng(0)
    for model in (digits.initial_model(), rng.normal(0.0, 2.0, digits.dim)):
        total = _sum_gradients(digits, model)
        ref = np.rint(digits.reference_gradient(model) * digits.scale).astype(np.int64)
        diff = total - ref
        assert np.abs(diff).max() <= digits.P / 2 + 1       # P + 1 roundings of at most 1/2 each
        assert abs(diff.mean()) < 0.5                       # round to nearest: no bias
        assert np.abs(ref).max() > 10**5                    # the comparison is not vacuous
        # the un-rounded partition gradients sum to the reference (float round-off only)
        assert np.allclose(total / digits.scale, digits.reference_gradient(model),
                           rtol=0.0, atol=digits.P / digits.scale)


def test_reference_gradient_finite_differences():
    L = _tiny()
    rng = np.random.default_rng(1)
    model = rng.normal(0.0, 1.0, L.dim)
    g = L.reference_gradient(model)
    h = 1e-6
    for j in range(L.dim):
        e = np.zeros(L.dim)
        e[j] = h
        fd = (L.train_loss(model + e) - L.train_loss(model - e)) / (2 * h) * L.n_train
        assert abs(fd - g[j]) <= 1e-6 * max(1.0, abs(g[j])), (j, fd, g[j])
    assert np.abs(g).max() > 0.1


def test_bound_holds_in_practice():
    L = GradientLearner("digits", P=12, seed=0)
    for it in range(30):
        parts = [L.partition_gradient(p, L.model) for p in range(L.P)]
        for p, g in enumerate(parts):
            assert np.abs(g).max() <= len(L.partitions[p]) * L.scale
        total = np.sum(parts, axis=0)
        assert np.abs(total).max() <= L.grad_bound < 2**30 - 1
        if it in (0, 29):
            assert np.abs(total).max() < 0.05 * L.grad_bound     # measured: 1.6 % and below
        L.update(it, total)


def test_bound_holds_mnist(mnist):
    total = _sum_gradients(mnist, mnist.initial_model())
    assert 0 < np.abs(total).max() <= mnist.grad_bound < 2**30 - 1


def test_bound_attained_in_worst_case_and_never_exceeded():
    # Every feature 1 (the largest allowed), every point labelled 0, a model that is
    # certain of class 1: each entry (f, 1) is sum_i 1 * (1 - 0) = n exactly.
    n, d, P = 10, 3, 3
    X = np.ones((n, d))
    L = GradientLearner.from_arrays(X, np.zeros(n, int), X[:1], [0], P=P)
    W = np.zeros((L.n_features, 10))
    W[:, 1] = 1e3
    model = W.ravel()
    parts = [L.partition_gradient(p, model) for p in range(P)]
    total = np.sum(parts, axis=0).reshape(L.n_features, 10)
    assert np.all(total[:d, 1] == L.grad_bound)                  # pixel features reach the bound
    assert total[d, 1] == round(BIAS * L.grad_bound)             # the bias feature: BIAS * bound
    assert np.all(total[:d, 0] == -L.grad_bound)
    assert L.grad_bound < 2**30 - 1 <= 2 * L.grad_bound          # scale is the largest that fits
    for p, g in enumerate(parts):
        assert np.abs(g).max() == len(L.partitions[p]) * L.scale
    L.update(0, total.ravel())                                   # the extreme sum is accepted


# ---------------------------------------------------------------- update

def test_update_refuses_bad_sums():
    L = GradientLearner("digits", P=12)
    ok = np.zeros(L.dim, dtype=np.int64)
    bad = ok.copy()
    bad[3] = L.grad_bound + 1
    with pytest.raises(ValueError, match="exceeds the bound"):
        L.update(0, bad)
    with pytest.raises(ValueError, match="integers"):
        L.update(0, ok.astype(np.float64))
    with pytest.raises(ValueError, match=r"shape \(650,\)"):
        L.update(0, ok[:-1])
    with pytest.raises(ValueError, match="the next one is iteration 0"):
        L.update(1, ok)
    L.update(0, ok)
    with pytest.raises(ValueError, match="the next one is iteration 1"):
        L.update(0, ok)


def test_update_is_the_plain_step():
    L = GradientLearner("digits", P=4, lr=0.5, l2=0.1)
    g = _sum_gradients(L, L.model)
    new = L.update(0, g)
    assert np.array_equal(new, 0.0 - 0.5 * (g / L.scale / L.n_train))
    g2 = _sum_gradients(L, new)
    new2 = L.update(1, g2)
    expected = new - 0.5 * (g2.astype(np.float64) / L.scale / L.n_train + 0.1 * new)
    assert np.array_equal(new2, expected) and np.array_equal(L.model, new2)
    new2[0] = 99.0                                                 # a copy is returned
    assert L.model[0] != 99.0


# ---------------------------------------------------------------- determinism

def test_same_arguments_same_bits():
    a, b = (GradientLearner("digits", P=12, seed=7) for _ in range(2))
    for it in range(5):
        ga = [a.partition_gradient(p, a.model) for p in range(a.P)]
        gb = [b.partition_gradient(p, b.model) for p in range(b.P)]
        assert all(x.tobytes() == y.tobytes() for x, y in zip(ga, gb))
        ma, mb = a.update(it, np.sum(ga, axis=0)), b.update(it, np.sum(gb, axis=0))
        assert ma.tobytes() == mb.tobytes()
    assert ma.any()


def test_any_grouping_of_partitions_gives_identical_models():
    """What exactness buys: every summation order feeds update the same integers."""
    a, b = (GradientLearner("digits", P=12, seed=2) for _ in range(2))
    rng = np.random.default_rng(0)
    for it in range(5):
        parts = [a.partition_gradient(p, a.model) for p in range(a.P)]
        order = rng.permutation(a.P)
        grouped = np.sum([np.sum([parts[p] for p in order[i::3]], axis=0) for i in range(3)], axis=0)
        ma = a.update(it, np.sum(parts, axis=0))
        mb = b.update(it, grouped)
        assert ma.tobytes() == mb.tobytes()


# ---------------------------------------------------------------- learning

def test_digits_learns_within_default_iterations():
    L = GradientLearner("digits", P=12, seed=0)
    assert L.test_accuracy(L.model) < 0.2
    loss0 = L.train_loss(L.model)
    acc = run_in_process(L, DEFAULT_ITERATIONS)
    assert len(acc) == DEFAULT_ITERATIONS and L.iteration == DEFAULT_ITERATIONS
    assert max(acc) > 0.9 and acc[-1] > 0.9                       # measured: 0.96
    assert L.train_loss(L.model) < 0.25 < loss0                    # measured: 0.183, from log(10)
    assert L.test_error(L.model) == pytest.approx(1.0 - acc[-1])


def test_fixed_point_costs_nothing_measurable_after_50():
    fixed, exact = (GradientLearner("digits", P=12, seed=1) for _ in range(2))
    acc_f = run_in_process(fixed, 50, fixed_point=True)
    acc_e = run_in_process(exact, 50, fixed_point=False)
    assert abs(acc_f[-1] - acc_e[-1]) <= 0.01                     # measured: identical
    assert abs(fixed.train_loss(fixed.model) - exact.train_loss(exact.model)) < 1e-7   # measured 5e-10
    assert 0 < np.abs(fixed.model - exact.model).max() < 1e-4      # measured 9e-7: not bitwise equal


def test_mnist_learns(mnist):
    L = mnist                                  # other tests use only initial_model(), not L.model
    acc = run_in_process(L, DEFAULT_ITERATIONS)
    assert acc[-1] > 0.85                                          # measured: 0.8832
