"""Unit tests of the pure MOCHA learner (hmtl_mpi.learning.mocha); no MPI."""

import numpy as np
import pytest
import scipy.linalg

from hmtl_mpi.learning.datasets import Task, load_tasks
from hmtl_mpi.learning.mocha import (DEFAULT_LAMBDA, LAMBDA_GRID, MochaLearner, cross_validate_lambda, cross_validation_errors, dual_objective, duality_gap, global_update, primal_objective, refresh_task_relationship, run_in_process, sdca_local_update, sdca_local_update_reference, task_test_error)


def _random_tasks(K, n, d, seed, n_test=20):
    """Small related linear tasks: w_t = w0 + noise, labels sign(x^T w_t), unit-norm rows."""
    rng = np.random.default_rng(seed)
    w0 = rng.normal(size=d)
    tasks = []
    for _ in range(K):
        wt = w0 + 0.5 * rng.normal(size=d)
        X = rng.normal(size=(n + n_test, d))
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        y = np.where(X @ wt + 0.1 * rng.normal(size=n + n_test) >= 0, 1.0, -1.0)
        tasks.append(Task(X[:n], y[:n], X[n:], y[n:]))
    return tasks


@pytest.fixture(scope="module")
def digits10():
    return load_tasks("digits", 10, seed=0)


# ---------------------------------------------------------------- local update

def test_numba_matches_reference():
    rng = np.random.default_rng(3)
    n, d = 60, 37
    X = rng.normal(size=(n, d))
    X[7] = 0.0  # a zero feature vector takes the a = 1 branch in both
    y = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    alpha = np.zeros(n)
    w = 0.1 * rng.normal(size=d)
    for it, (sigma_tt, rho, lam, steps) in enumerate(
            [(0.25, 1.0, 1e-2, 30), (0.1, 1.7, 1e-3, 60), (0.3, 2.5, 1e-4, 95), (0.05, 1.2, 1.0, 0)]):
        perm = rng.permutation(n)
        alpha_in = alpha.copy()
        db_fast, a_fast = sdca_local_update(X, y, alpha, w, sigma_tt, rho, lam, steps, perm)
        db_ref, a_ref = sdca_local_update_reference(X, y, alpha, w, sigma_tt, rho, lam, steps, perm)
        np.testing.assert_array_equal(alpha, alpha_in)  # inputs are not modified
        np.testing.assert_allclose(db_fast, db_ref, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(a_fast, a_ref, rtol=1e-12, atol=1e-15)
        assert db_fast.dtype == np.float64 and db_fast.flags.c_contiguous and db_fast.shape == (d,)
        assert np.all(np.abs(a_fast) <= 1.0) and np.all(a_fast * y >= 0.0)  # alpha = y a, a in [0, 1]
        if steps == 0:
            assert not db_fast.any()
        alpha = a_fast
        w = w + sigma_tt * db_fast / lam


def test_local_update_is_deterministic():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(40, 9))
    y = np.sign(rng.normal(size=40))
    perm = rng.permutation(40)
    args = (X, y, np.zeros(40), np.zeros(9), 0.2, 1.3, 1e-3, 20, perm)
    a = sdca_local_update(*args)
    b = sdca_local_update(*args)
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()


def test_first_step_matches_hand_computation():
    # one point, w = 0, dw = 0: u = 0, g = lambda n / (Sigma_tt rho ||x||^2), alpha = y clip(g)
    X = np.array([[3.0, 4.0]])
    y = np.array([-1.0])
    lam, sigma_tt, rho = 0.5, 0.25, 2.0
    db, alpha = sdca_local_update(X, y, np.zeros(1), np.zeros(2), sigma_tt, rho, lam, 1, np.array([0]))
    g = lam * 1 * 1.0 / (sigma_tt * rho * 25.0)  # = 0.04
    assert alpha[0] == pytest.approx(-g)
    np.testing.assert_allclose(db, -g * X[0])


# --------------------------------------------------------------- global update

def test_global_update_equals_formula():
    W = np.array([[1.0, 2.0, 0.0],
                  [0.0, -1.0, 4.0]])
    dB = np.array([[1.0, 0.0, 2.0],
                   [-2.0, 1.0, 0.0]])
    Sigma = np.array([[0.5, 0.25, 0.0],
                      [0.25, 0.25, 0.0],
                      [0.0, 0.0, 0.25]])
    lam = 0.5
    # dB @ Sigma = [[0.5, 0.25, 0.5], [-0.75, -0.25, 0]]; / 0.5 doubles it
    expected = np.array([[2.0, 2.5, 1.0],
                         [-1.5, -1.5, 4.0]])
    np.testing.assert_array_equal(global_update(W, dB, Sigma, lam), expected)


def test_learner_global_update_uses_formula():
    tasks = _random_tasks(3, 20, 4, seed=1)
    learner = MochaLearner(tasks, lam=0.1, inner=100)
    ivs = np.arange(12, dtype=float).reshape(3, 4) / 10
    models = learner.global_update(0, ivs)
    W = ivs.T @ (np.eye(3) / 3) / 0.1
    np.testing.assert_allclose(models[:, :4], W.T, rtol=1e-15)
    np.testing.assert_array_equal(models[:, 4], np.full(3, 1 / 3))
    np.testing.assert_array_equal(models[:, 5], np.ones(3))


# ------------------------------------------------------ task relationship

@pytest.mark.parametrize("d,K", [(6, 4), (3, 7)])  # full rank and rank-deficient (d < K)
def test_refresh_gives_valid_sigma_and_rho(d, K):
    W = np.random.default_rng(d * K).normal(size=(d, K))
    Sigma, rho = refresh_task_relationship(W)
    assert Sigma.shape == (K, K)
    np.testing.assert_array_equal(Sigma, Sigma.T)
    assert np.trace(Sigma) == pytest.approx(1.0, abs=1e-12)
    assert np.linalg.eigvalsh(Sigma).min() > 0
    assert isinstance(rho, float)
    assert rho == pytest.approx(max(np.abs(Sigma[t]).sum() / Sigma[t, t] for t in range(K)))
    assert rho >= 1.0
    if d >= K:  # no clamping: Sigma = sqrtm(W^T W) / trace
        sq = scipy.linalg.sqrtm(W.T @ W).real
        np.testing.assert_allclose(Sigma, sq / np.trace(sq), atol=1e-10)


def test_refresh_of_zero_model_is_initial_state():
    Sigma, rho = refresh_task_relationship(np.zeros((5, 4)))
    np.testing.assert_allclose(Sigma, np.eye(4) / 4, atol=1e-15)
    assert rho == pytest.approx(1.0)


def test_refresh_happens_every_inner_iterations():
    tasks = _random_tasks(3, 30, 5, seed=2)
    learner = MochaLearner(tasks, lam=1e-2, inner=3)
    models = np.stack([learner.initial_model(k) for k in range(3)])
    for it in range(6):
        ivs = np.stack([learner.local_update(k, it, models[k]) for k in range(3)])
        models = learner.global_update(it, ivs)
        refreshed = (it + 1) % 3 == 0
        if it < 2:
            np.testing.assert_array_equal(learner.Sigma, np.eye(3) / 3)
        if refreshed:
            Sigma, rho = refresh_task_relationship(learner.W)
            np.testing.assert_array_equal(learner.Sigma, Sigma)
            assert learner.rho == rho
            np.testing.assert_array_equal(models[:, 6], np.full(3, rho))
            np.testing.assert_array_equal(models[:, 5], np.diag(Sigma))


# -------------------------------------------------------------- convergence

def test_dual_ascent_and_gap_with_fixed_identity_sigma():
    tasks = _random_tasks(4, 40, 6, seed=4)
    learner = MochaLearner(tasks, lam=1e-2, inner=10**6)
    models = np.stack([learner.initial_model(k) for k in range(4)])
    duals, gaps = [], []
    for it in range(30):
        ivs = np.stack([learner.local_update(k, it, models[k]) for k in range(4)])
        models = learner.global_update(it, ivs)
        p, d = learner.objectives()
        duals.append(d)
        gaps.append(p - d)
    assert all(b >= a - 1e-12 for a, b in zip(duals, duals[1:]))
    assert min(gaps) >= -1e-10
    assert gaps[-1] < 0.1 * gaps[0]


def test_dual_ascent_with_correlated_sigma_uses_rho_safely():
    """With a non-diagonal Sigma and rho > 1 each MOCHA round still increases the dual (W = B Sigma / lambda)."""
    tasks = _random_tasks(4, 40, 6, seed=6)
    Xs = [t.X_train for t in tasks]
    ys = [t.y_train for t in tasks]
    Sigma, rho = refresh_task_relationship(np.random.default_rng(0).normal(size=(6, 4)))
    assert rho > 1.0
    lam = 1e-2
    W = np.zeros((6, 4))
    alphas = [np.zeros(len(y)) for y in ys]
    rngs = [np.random.default_rng([0, k]) for k in range(4)]
    duals, gaps = [dual_objective(alphas, Xs, ys, Sigma, lam)], []
    for _ in range(40):
        dB = np.zeros((6, 4))
        for k in range(4):
            perm = rngs[k].permutation(len(ys[k]))
            dB[:, k], alphas[k] = sdca_local_update(Xs[k], ys[k], alphas[k], W[:, k], Sigma[k, k], rho,
                                                    lam, len(ys[k]) // 2, perm)
        W = global_update(W, dB, Sigma, lam)
        duals.append(dual_objective(alphas, Xs, ys, Sigma, lam))
        gaps.append(duality_gap(W, alphas, Xs, ys, Sigma, lam))
    B = np.column_stack([X.T @ a / len(a) for X, a in zip(Xs, alphas)])
    np.testing.assert_allclose(W, B @ Sigma / lam, atol=1e-10)  # primal-dual map holds
    assert all(b >= a - 1e-12 for a, b in zip(duals, duals[1:]))
    assert min(gaps) >= -1e-10
    assert gaps[-1] < 0.1 * gaps[0]


def test_objectives_at_zero():
    tasks = _random_tasks(3, 10, 4, seed=7)
    Xs = [t.X_train for t in tasks]
    ys = [t.y_train for t in tasks]
    Sigma = np.eye(3) / 3
    assert primal_objective(np.zeros((4, 3)), Xs, ys, Sigma, 0.1) == pytest.approx(3.0)
    assert dual_objective([np.zeros(10)] * 3, Xs, ys, Sigma, 0.1) == 0.0


def test_task_test_error_counts_sign_zero_as_wrong():
    X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    y = np.array([1.0, 1.0, -1.0, -1.0])
    assert task_test_error(np.array([1.0, 0.0]), X, y) == 0.5  # x2 scores 0, x3 is wrong
    assert task_test_error(np.zeros(2), X, y) == 1.0


# ------------------------------------------------------ learner interface

def test_learner_interface_and_shapes():
    tasks = _random_tasks(3, 25, 5, seed=8)
    learner = MochaLearner(tasks)
    assert learner.lam == DEFAULT_LAMBDA
    assert (learner.K, learner.dim, learner.model_len) == (3, 5, 7)
    m0 = learner.initial_model(1)
    np.testing.assert_array_equal(m0, np.r_[np.zeros(5), 1 / 3, 1.0])
    iv = learner.local_update(1, 0, m0)
    assert iv.shape == (5,) and iv.dtype == np.float64 and iv.flags.c_contiguous
    models = learner.global_update(0, np.zeros((3, 5)))
    assert models.shape == (3, 7) and models.dtype == np.float64
    assert learner.test_error(0, m0) == 1.0
    with pytest.raises(ValueError):
        learner.local_update(1, 5, m0)  # the permutation stream is sequential
    with pytest.raises(ValueError):
        learner.global_update(1, np.zeros((2, 5)))
    with pytest.raises(IndexError):
        learner.initial_model(3)


def test_ranks_agree_bitwise():
    """Users on their own objects, the global update on another: identical to one in-process learner."""
    tasks = _random_tasks(4, 30, 6, seed=9)
    kwargs = dict(lam=1e-3, inner=4, frac=0.5, seed=11)
    solo = MochaLearner(tasks, **kwargs)
    twin = MochaLearner(tasks, **kwargs)
    server = MochaLearner(tasks, **kwargs)
    users = [MochaLearner(tasks, **kwargs) for _ in range(4)]
    m_solo = np.stack([solo.initial_model(k) for k in range(4)])
    m_twin = m_solo.copy()
    m_dist = np.stack([users[k].initial_model(k) for k in range(4)])
    for it in range(10):
        iv_solo = np.stack([solo.local_update(k, it, m_solo[k]) for k in range(4)])
        iv_twin = np.stack([twin.local_update(k, it, m_twin[k]) for k in range(4)])
        iv_dist = np.stack([users[k].local_update(k, it, m_dist[k]) for k in range(4)])
        assert iv_solo.tobytes() == iv_twin.tobytes() == iv_dist.tobytes()
        m_solo = solo.global_update(it, iv_solo)
        m_twin = twin.global_update(it, iv_twin)
        m_dist = server.global_update(it, iv_dist)
        assert m_solo.tobytes() == m_twin.tobytes() == m_dist.tobytes()
    assert solo.rho > 1.0  # the refreshes happened and coupled the tasks


def test_digits_mocha_reaches_local_baseline(digits10):
    learner = MochaLearner(digits10)
    history = run_in_process(learner, 40)
    base = learner.baselines()
    assert set(base) >= {"baseline_local_error", "baseline_global_error", "per_task_local"}
    assert len(base["per_task_local"]) == 10
    assert base["baseline_local_error"] == pytest.approx(np.mean(base["per_task_local"]))
    assert base["baseline_local_error"] < base["baseline_global_error"]  # digit-vs-rest tasks conflict
    assert history[-1] <= base["baseline_local_error"] + 0.02
    assert history[-1] < 0.08


def test_cross_validation_returns_grid_member():
    tasks = _random_tasks(3, 30, 5, seed=10)
    grid = (1e-3, 1e-2, 10.0)
    scores = cross_validation_errors(tasks, grid=grid, folds=3, iterations=8)
    assert set(scores) == set(grid)
    best = cross_validate_lambda(tasks, grid=grid, folds=3, iterations=8)
    assert best in grid and scores[best] == min(scores.values())
    assert set(LAMBDA_GRID) == {1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0}


def test_numpy_and_numba_learners_give_identical_ivs():
    """--local-kernel numpy and numba are one computation: the same IVs, bit for bit."""
    tasks = load_tasks("digits", 4, seed=1)
    a = MochaLearner(tasks, kernel="numpy")
    b = MochaLearner(tasks, kernel="numba")
    b.warm_up()
    models = [a.initial_model(k) for k in range(4)]
    for it in range(3):
        ivs_a = np.stack([a.local_update(k, it, models[k]) for k in range(4)])
        ivs_b = np.stack([b.local_update(k, it, models[k]) for k in range(4)])
        assert ivs_a.tobytes() == ivs_b.tobytes()
        models = a.global_update(it, ivs_a)
        assert models.tobytes() == b.global_update(it, ivs_b).tobytes()


def test_a_learner_holding_only_its_share_computes_the_same():
    """A user holding only its task (the runtime sends each rank its share) and a relay
    holding none agree with a learner holding every task."""
    tasks = load_tasks("digits", 3, seed=2)
    full = MochaLearner(tasks)
    user = MochaLearner({1: tasks[1]}, K=3, dim=tasks[0].dim)
    relay = MochaLearner({}, K=3, dim=tasks[0].dim)
    m = full.initial_model(1)
    assert full.local_update(1, 0, m).tobytes() == user.local_update(1, 0, m).tobytes()
    ivs = np.stack([full.local_update(k, 0, full.initial_model(k)) if k != 1 else
                    full.local_update(1, 1, m) for k in range(3)])
    assert full.global_update(0, ivs).tobytes() == relay.global_update(0, ivs).tobytes()
    with pytest.raises(KeyError):
        relay.local_update(0, 0, m)
    with pytest.raises(ValueError, match="needs K and dim"):
        MochaLearner({0: tasks[0]})
    with pytest.raises(ValueError, match="kernel"):
        MochaLearner(tasks, kernel="fortran")


def test_auto_kernel_takes_numba_only_for_long_runs():
    from hmtl_mpi.learning.mocha import choose_kernel

    assert choose_kernel("auto", 30, 130, 64) == "numpy"          # the default job
    assert choose_kernel("auto", 100_000, 187, 784) == "numba"
    assert choose_kernel("numba", 1, 1, 1) == "numba"
    assert choose_kernel("numpy", 10**9, 10**3, 10**3) == "numpy"
