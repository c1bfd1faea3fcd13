"""Full-batch gradient descent on one shared model with fixed-point partial gradients.

Pure module (no MPI). :class:`GradientLearner` holds the data, the P training
partitions and the current model; the runtime's workers call
:meth:`GradientLearner.partition_gradient` for their partitions, the coded or
uncoded scheme delivers the (int64) sum over all partitions, and every rank
that needs the model calls :meth:`GradientLearner.update` with that sum.

Model and loss
--------------
Multinomial logistic (softmax) regression. A point is x in R^(F+1): the F
pixels scaled as :mod:`hmtl_mpi.learning.datasets` scales them (digits / 16, MNIST /
255, then the row L2-normalised), followed by a constant bias feature ``BIAS =
0.25``. The labels are the 10 digits. The model is W of shape (F + 1, C),
C = 10, stored as a float64 vector of length ``dim = (F + 1) * C`` (row-major,
``W.ravel()``). With S = softmax(X W) row by row and Y the one-hot labels, the
loss of a set of points is the *unnormalised* cross-entropy
sum_i -log S[i, y_i]; its gradient is

    G = X^T (S - Y)                       (entry (f, c) = sum_i x_if (S_ic - Y_ic)).

Why 0.25 and not 1: the pixels of a unit-norm row are small (root mean square
of a digits pixel: 1/8), so a bias of 1 dominates the curvature and makes the
bias direction oscillate at the step sizes the pixels need. Measured on
digits, seed 0, lr = 16: 58 % test accuracy after 10 iterations with bias 1,
88 % with bias 0.25; with lr = 32, 34 % and 88 %. Any value <= 1 keeps the
fixed-point bound below.

One iteration is the plain full-batch step (N = number of training points)

    W <- W - lr * (G_total / N + l2 * W),     G_total = sum_p G_p,

i.e. gradient descent on mean cross-entropy + (l2 / 2) ||W||^2 (the bias row is
regularised too).

Fixed point and its bound
-------------------------
Partition p sends ``rint(G_p * 2^s)`` as int64 (``scale = 2^s``, ``s =
scale_bits``); the update uses ``sum_p rint(G_p * 2^s) / 2^s``. The coding works
over GF(2^31 - 1), whose elements stand for the signed integers of magnitude
< 2^30, so every entry of the decoded sum (and of any partial sum of partitions)
must stay in that range. Bound: after row normalisation every pixel feature has
|x_f| <= 1, and the bias feature is BIAS <= 1 (it is appended *after* the
normalisation, so it neither shrinks the pixels nor is shrunk), so |x_f| <= 1
for *every* feature, bias included. (A pixel that is the only non-zero one of
its image is exactly 1, so N, not BIAS * N, is the worst case.) Softmax values
lie in [0, 1] and one-hot values in {0, 1}, so |S_ic - Y_ic| <= 1. Hence
|G_p[f, c]| <= n_p (points of partition p) and, since n_p 2^s is an integer,
|rint(G_p[f, c] 2^s)| <= n_p 2^s: rounding never crosses an integer bound.
(The float computation keeps these bounds: every rounding step is monotone and
the bounds are representable integers.) Summed over any set of partitions:

    |sum_p rint(G_p[f, c] 2^s)| <= sum_p n_p 2^s <= N 2^s  =: ``grad_bound``.

``scale_bits`` is the largest s with N 2^s < 2^30 - 1. It does not depend on P
(the rounding cannot overshoot, see above). Training sets of the two data sets:
digits N = 1,347 -> s = 19; MNIST N = 3,750 -> s = 18. The bound is attained
only in a degenerate worst case (every point confidently predicted as a class it
is not, with a feature equal to 1); in practice the entries are far smaller:
with P = 12 and seed 0 the largest |entry| of the sum is 1.6 % of the bound at
the zero model and 0.08 % after 100 iterations on digits (MNIST: 0.9 %, 0.06 %).
:meth:`GradientLearner.update` refuses a sum outside ``[-grad_bound,
grad_bound]``: it can only come from a decoding error.

What exactness buys
-------------------
Integer sums are associative: however a scheme groups, codes and decodes the
partial gradients (uncoded at the server, coded through relays, any set of
workers in any order), the update receives the *same* int64 vector, and the
update is elementwise IEEE arithmetic on (current model, that vector) only.
So every scheme yields bit-identical models at every iteration, and a final
model digest compares schemes exactly. Float64 partial sums would differ in the
last bits with the order of summation.

Determinism: the split and the partitions come from ``np.random.default_rng``
seeded with ``[seed, ...]``. :meth:`partition_gradient` uses NumPy's matmul
(BLAS) and ``exp``, bitwise reproducible for the same libraries on the same
kind of CPU; rounding to 2^-s absorbs last-bit differences between hosts except
when they straddle a rounding boundary (probability of order 2^(s - 52) |G| per
entry and unit in the last place of difference), so
heterogeneous hosts should pin the BLAS kernel as for :mod:`hmtl_mpi.learning.mocha`.

Defaults and measured cost of the fixed point
---------------------------------------------
``DEFAULT_LR = 32.0``, ``DEFAULT_L2 = 0.0``, ``DEFAULT_ITERATIONS = 100``.
Chosen from sweeps of BIAS in {1, 0.5, 0.25, 0.1} (seed 0) and of lr in {0.5,
1, 2, 4, 8, 16, 24, 32, 40, 48, 64} (P = 12, seeds 0, 1, 2): lr = 32 is the largest step of the
sweep whose mean training loss decreases at every one of 100 iterations on both
data sets and all three seeds; with lr = 40-64 the digits loss rises in 1-17
iterations, and lr <= 8 needs 22-89 iterations (or more than 100) to pass 90 %
on digits. No regularisation is needed for 100 iterations (l2 = 0).

Measured with P = 12 (seeds 0 / 1 / 2; fixed point and float64 give the same
accuracies to every printed digit):

=========  ==========  ========================  ========================
data set   scale_bits  test accuracy after 50     test accuracy after 100
=========  ==========  ========================  ========================
digits     19          0.9489 / 0.9578 / 0.9089   0.9600 / 0.9533 / 0.9267
MNIST      18          0.8720 / 0.8808 / 0.8632   0.8832 / 0.8952 / 0.8800
=========  ==========  ========================  ========================

Digits passes 90 % test accuracy at iteration 17 / 8 / 16, MNIST 85 % at 19 /
14 / 29. Cost of the fixed point: the mean training cross-entropy of fixed point
and float64 differs by at most 2.5e-9 (digits, loss 0.26 after 50 iterations)
and 2.4e-9 (MNIST, loss 0.35 after 100); the largest model entry differs by at
most 1.5e-6 after 100 iterations (entries up to 8). The sum of the P rounded
partition gradients is within 4 units (2^-s) of the rounded float64 gradient.
Cost in time: ``partition_gradient`` takes 0.03 ms per partition on digits
(0.4 ms for all 12) and 0.4 ms per partition on MNIST (5.7 ms for all 12).
"""

from __future__ import annotations

import math

import numpy as np

# The data sets' readers are private helpers of hmtl_mpi.learning.datasets; they are
# imported (not copied) so that the pixels are read and scaled exactly as there.
from .datasets import _mnist_path, _normalise_rows, _read_digits, _read_mnist

__all__ = [
    "GD_DATASETS",
    "DEFAULT_LR",
    "DEFAULT_L2",
    "DEFAULT_ITERATIONS",
    "FIELD_LIMIT",
    "N_CLASSES",
    "BIAS",
    "GradientLearner",
    "fixed_point_bits",
    "run_in_process",
]

GD_DATASETS = ("digits", "mnist")
DEFAULT_LR = 32.0
DEFAULT_L2 = 0.0
DEFAULT_ITERATIONS = 100
FIELD_LIMIT = 2**30 - 1        # decoded entries must satisfy |v| < FIELD_LIMIT (GF(2^31 - 1), signed)
N_CLASSES = 10
BIAS = 0.25                    # the constant bias feature (<= 1, see "Model and loss")
_TAG = {"digits": 10, "mnist": 11, "arrays": 12}   # RNG stream tags, distinct from datasets.py's


def fixed_point_bits(n_train: int) -> int:
    """Largest s >= 0 with ``n_train * 2**s < FIELD_LIMIT`` (see the module docstring).

    ``n_train`` is the bound on |sum over all partitions| of a gradient entry
    (every |x_f| <= 1 and |softmax - onehot| <= 1).
    """
    n_train = int(n_train)
    if n_train < 1:
        raise ValueError(f"n_train must be >= 1, got {n_train}")
    if n_train >= FIELD_LIMIT:
        raise ValueError(f"{n_train} training points: the gradient bound {n_train} does not fit "
                         f"below 2^30 - 1 even without fractional bits")
    s = 0
    while n_train * 2 ** (s + 1) < FIELD_LIMIT:
        s += 1
    return s


def _load_pixels(dataset: str, data_dir):
    """(X, labels) of ``dataset``, scaled and row-normalised as :mod:`hmtl_mpi.learning.datasets` does."""
    if dataset == "digits":
        pixels, labels = _read_digits()
        return _normalise_rows(pixels / 16.0), labels
    if dataset == "mnist":
        pixels, labels = _read_mnist(_mnist_path(data_dir))
        return _normalise_rows(pixels / 255.0), labels
    raise ValueError(f"unknown data set {dataset!r} for gradient descent; choose 'digits' or 'mnist'")


def _with_bias(X: np.ndarray) -> np.ndarray:
    """X with a last column of constant ``BIAS``."""
    out = np.empty((X.shape[0], X.shape[1] + 1))
    out[:, :-1] = X
    out[:, -1] = BIAS
    return out


def _softmax_minus_onehot(Z: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """S - Y for logits Z (n, C): S = row softmax (max-shifted), Y = one-hot(labels)."""
    Z = Z - Z.max(axis=1, keepdims=True)
    E = np.exp(Z)
    E /= E.sum(axis=1, keepdims=True)
    E[np.arange(len(labels)), labels] -= 1.0
    return E


def _mean_cross_entropy(Z: np.ndarray, labels: np.ndarray) -> float:
    m = Z.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(Z - m).sum(axis=1))
    return float(np.mean(lse - Z[np.arange(len(labels)), labels]))


class GradientLearner:
    """Softmax regression on one shared model, trained by full-batch gradient descent.

    ``GradientLearner(dataset="digits" | "mnist", P=12, seed=0, lr=DEFAULT_LR,
    l2=DEFAULT_L2, test_fraction=0.25, data_dir=None)``. The data set is split
    at random (``default_rng([seed, tag, 0])``) into ``n_train =
    floor((1 - test_fraction) n)`` training and ``n_test`` test points; the
    training set is cut into P partitions (``default_rng([seed, tag, 1])``
    permutes it, ``np.array_split`` cuts it, so sizes differ by at most one;
    each partition lists its training indices in increasing order).

    State: the learner holds the current model ``model`` (float64, ``dim``),
    like :class:`hmtl_mpi.learning.mocha.MochaLearner` holds W; :meth:`update` advances
    it and returns a copy. Every rank builds the same learner from the same
    arguments; a worker calls :meth:`partition_gradient` for its partitions
    with the model it received, a rank that owns the model calls
    :meth:`update` once per iteration with the int64 sum over all partitions.

    Attributes: ``dataset``, ``P``, ``seed``, ``lr``, ``l2``, ``n_features``
    (F + 1, bias included), ``n_classes``, ``dim = model_len``, ``n_train``,
    ``n_test``, ``partitions`` (list of int64 index arrays into the training
    set), ``scale_bits``, ``scale = 2**scale_bits``, ``grad_bound = n_train *
    scale`` (largest possible |entry| of a sum of partition gradients),
    ``model``, ``iteration`` (number of updates applied).

    Runtime conveniences shared with :mod:`hmtl_mpi.learning.learners`: ``extra_len =
    0`` and :meth:`extras_changed` (the model message is the whole model),
    :meth:`warm_up` (nothing to compile) and ``evaluates = False``: the
    runtime's per-user evaluation ``test_error(k, model)`` does not apply to one
    shared model; use :meth:`test_accuracy` / :meth:`test_error` on it instead.
    """

    extra_len = 0
    evaluates = False

    def __init__(self, dataset: str = "digits", P: int = 12, seed: int = 0, lr: float = DEFAULT_LR,
                 l2: float = DEFAULT_L2, test_fraction: float = 0.25, data_dir=None):
        key = str(dataset).lower()
        if key not in GD_DATASETS:
            raise ValueError(f"unknown data set {dataset!r} for gradient descent; "
                             f"choose one of {', '.join(GD_DATASETS)}")
        _check_fraction(test_fraction)
        X, labels = _load_pixels(key, data_dir)
        n_train = int(math.floor((1.0 - float(test_fraction)) * len(labels)))
        if not 1 <= n_train < len(labels):
            raise ValueError(f"test_fraction={test_fraction} leaves {n_train} of {len(labels)} "
                             "points for training; both sides of the split must be non-empty")
        perm = np.random.default_rng([int(seed), _TAG[key], 0]).permutation(len(labels))
        tr, te = perm[:n_train], perm[n_train:]
        self._setup(key, X[tr], labels[tr], X[te], labels[te], P, seed, lr, l2)

    @classmethod
    def from_arrays(cls, X_train, y_train, X_test, y_test, P: int = 1, seed: int = 0,
                    lr: float = DEFAULT_LR, l2: float = DEFAULT_L2) -> "GradientLearner":
        """A learner on given features (|x_f| <= 1, the bias is appended) and labels 0..9.

        For tests and small experiments; the fixed-point bound needs every
        feature in [-1, 1], which is checked.
        """
        X_train = np.asarray(X_train, dtype=np.float64)
        X_test = np.asarray(X_test, dtype=np.float64)
        for name, X in (("X_train", X_train), ("X_test", X_test)):
            if X.ndim != 2 or X.shape[1] < 1:
                raise ValueError(f"{name} must be 2-D (points x features), got shape {X.shape}")
            if not np.all(np.isfinite(X)) or (X.size and np.abs(X).max() > 1.0):
                raise ValueError(f"{name}: every feature must be finite and in [-1, 1] "
                                 "(the fixed-point bound relies on it)")
        if X_train.shape[1] != X_test.shape[1]:
            raise ValueError(f"X_train has {X_train.shape[1]} features, X_test {X_test.shape[1]}")
        labels = []
        for name, y, X in (("y_train", y_train, X_train), ("y_test", y_test, X_test)):
            y = np.asarray(y)
            if y.shape != (X.shape[0],):
                raise ValueError(f"{name} must have shape ({X.shape[0]},), got {y.shape}")
            if y.size and (not np.all(y == np.round(y)) or y.min() < 0 or y.max() >= N_CLASSES):
                raise ValueError(f"{name}: labels must be integers in 0..{N_CLASSES - 1}")
            labels.append(y.astype(np.int64))
        if X_train.shape[0] < 1:
            raise ValueError("X_train must hold at least one point")
        self = cls.__new__(cls)
        self._setup("arrays", X_train, labels[0], X_test, labels[1], P, seed, lr, l2)
        return self

    def _setup(self, dataset, X_tr, y_tr, X_te, y_te, P, seed, lr, l2):
        if not (isinstance(P, (int, np.integer)) and not isinstance(P, bool)):
            raise ValueError(f"P must be an integer, got {P!r}")
        P = int(P)
        n_train = int(len(y_tr))
        if not 1 <= P <= n_train:
            raise ValueError(f"P must be between 1 and the number of training points ({n_train}), "
                             f"got P={P}: every partition needs at least one point")
        lr, l2 = float(lr), float(l2)
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {lr}")
        if not (math.isfinite(l2) and l2 >= 0):
            raise ValueError(f"l2 must be a finite number >= 0, got {l2}")
        self.dataset = dataset
        self.P, self.seed, self.lr, self.l2 = P, int(seed), lr, l2
        self.X_train = np.ascontiguousarray(_with_bias(X_tr))
        self.y_train = np.ascontiguousarray(y_tr, dtype=np.int64)
        self.X_test = np.ascontiguousarray(_with_bias(X_te))
        self.y_test = np.ascontiguousarray(y_te, dtype=np.int64)
        self.n_train, self.n_test = n_train, int(len(y_te))
        self.n_features = int(self.X_train.shape[1])
        self.n_classes = N_CLASSES
        self.dim = self.model_len = self.n_features * self.n_classes
        order = np.random.default_rng([self.seed, _TAG[dataset], 1]).permutation(n_train)
        self.partitions = [np.sort(part).astype(np.int64) for part in np.array_split(order, P)]
        self._parts = [(np.ascontiguousarray(self.X_train[idx]), self.y_train[idx])
                       for idx in self.partitions]
        self.scale_bits = fixed_point_bits(n_train)
        self.scale = 2 ** self.scale_bits
        self.grad_bound = n_train * self.scale
        self.model = self.initial_model()
        self.iteration = 0

    def warm_up(self) -> None:
        """Nothing to compile (NumPy only)."""

    def extras_changed(self, iteration) -> bool:
        """Always False: the model message has no extras."""
        return False

    # -- model ------------------------------------------------------------
    def initial_model(self) -> np.ndarray:
        """The all-zero model (float64, ``dim``)."""
        return np.zeros(self.dim)

    def state(self) -> dict:
        """The model and the number of updates applied (checkpoints)."""
        return {"model": self.model, "iteration": np.array(self.iteration)}

    def load_state(self, state: dict) -> None:
        self.model = np.array(state["model"], dtype=np.float64)
        self.iteration = int(state["iteration"])

    def _W(self, model) -> np.ndarray:
        model = np.asarray(model, dtype=np.float64)
        if model.shape != (self.dim,):
            raise ValueError(f"model must have shape ({self.dim},), got {model.shape}")
        if not np.all(np.isfinite(model)):
            raise ValueError("model holds non-finite values")
        return model.reshape(self.n_features, self.n_classes)

    # -- gradients ----------------------------------------------------------
    def partition_gradient(self, p: int, model) -> np.ndarray:
        """Fixed-point gradient of partition p's summed cross-entropy at ``model``.

        ``rint(X_p^T (softmax(X_p W) - Y_p) * scale)`` as int64 (``dim``,
        row-major like the model). Every entry satisfies |v| <= n_p * scale.
        """
        if not (isinstance(p, (int, np.integer)) and not isinstance(p, bool)) or not 0 <= p < self.P:
            raise IndexError(f"partition index {p!r} out of range [0, {self.P})")
        W = self._W(model)
        X, y = self._parts[int(p)]
        G = X.T @ _softmax_minus_onehot(X @ W, y)
        G *= self.scale                        # exact: a power of two
        return np.rint(G).astype(np.int64).ravel()

    def reference_gradient(self, model) -> np.ndarray:
        """Float64 gradient of the summed cross-entropy over the whole training set (no fixed point)."""
        W = self._W(model)
        return (self.X_train.T @ _softmax_minus_onehot(self.X_train @ W, self.y_train)).ravel()

    # -- update -------------------------------------------------------------
    def _check_iteration(self, iteration):
        iteration = int(iteration)
        if iteration != self.iteration:
            raise ValueError(f"update for iteration {iteration}, but {self.iteration} updates have "
                             f"been applied: the next one is iteration {self.iteration}")
        return iteration

    def _step(self, G: np.ndarray) -> np.ndarray:
        W = self.model
        self.model = W - self.lr * (G / self.n_train + self.l2 * W)
        self.iteration += 1
        return self.model.copy()

    def update(self, iteration: int, grad_sum) -> np.ndarray:
        """One gradient step with the int64 sum over all partitions; returns the new model.

        ``W <- W - lr * (grad_sum / scale / n_train + l2 * W)``, elementwise on
        the held model and ``grad_sum`` only, so equal integers give
        bit-identical models. ``iteration`` must be the number of updates
        applied so far (0, 1, 2, ...). A sum of the wrong shape, a non-integer
        dtype or an entry beyond ``grad_bound`` (a decoding error) is refused.
        """
        grad_sum = np.asarray(grad_sum)
        if grad_sum.shape != (self.dim,):
            raise ValueError(f"grad_sum must have shape ({self.dim},), got {grad_sum.shape}")
        if not np.issubdtype(grad_sum.dtype, np.integer):
            raise ValueError(f"grad_sum must hold integers (fixed point), got dtype {grad_sum.dtype}")
        grad_sum = grad_sum.astype(np.int64)
        worst = int(np.abs(grad_sum).max())
        if worst > self.grad_bound:
            raise ValueError(f"grad_sum entry of magnitude {worst} exceeds the bound n_train * scale "
                             f"= {self.grad_bound}: not a sum of partition gradients (decoding error?)")
        self._check_iteration(iteration)
        return self._step(grad_sum.astype(np.float64) / self.scale)

    def update_reference(self, iteration: int, gradient) -> np.ndarray:
        """The float64 counterpart of :meth:`update`, fed :meth:`reference_gradient` (measurements)."""
        gradient = np.asarray(gradient, dtype=np.float64)
        if gradient.shape != (self.dim,):
            raise ValueError(f"gradient must have shape ({self.dim},), got {gradient.shape}")
        self._check_iteration(iteration)
        return self._step(gradient)

    # -- evaluation ---------------------------------------------------------
    def test_accuracy(self, model) -> float:
        """Fraction of test points whose argmax class (first on ties) is their label."""
        W = self._W(model)
        return float(np.mean(np.argmax(self.X_test @ W, axis=1) == self.y_test))

    def test_error(self, model) -> float:
        """1 - :meth:`test_accuracy`."""
        return 1.0 - self.test_accuracy(model)

    def train_loss(self, model) -> float:
        """Mean cross-entropy over the training set (without the l2 term)."""
        return _mean_cross_entropy(self.X_train @ self._W(model), self.y_train)


def _check_fraction(test_fraction):
    f = float(test_fraction)
    if not (0.0 < f < 1.0):
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")


def run_in_process(learner: GradientLearner, iterations: int, fixed_point: bool = True) -> list[float]:
    """Train in one process from the learner's current model; test accuracy after each iteration.

    With ``fixed_point`` the int64 partition gradients are summed exactly and
    fed to :meth:`GradientLearner.update` (what every scheme computes); without
    it the float64 :meth:`GradientLearner.reference_gradient` is used.
    """
    iterations = int(iterations)
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    accuracies = []
    for _ in range(iterations):
        model = learner.model
        if fixed_point:
            total = np.zeros(learner.dim, dtype=np.int64)
            for p in range(learner.P):
                total += learner.partition_gradient(p, model)
            new = learner.update(learner.iteration, total)
        else:
            new = learner.update_reference(learner.iteration, learner.reference_gradient(model))
        accuracies.append(learner.test_accuracy(new))
    return accuracies
