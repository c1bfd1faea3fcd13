"""The compiled GF(65537) kernel of combine_mod_p against its NumPy path, Python
integers and galois: bit for bit, escapes in and out, adversarial inputs, and the
auto policy that keeps numba out of processes that code little."""

import subprocess
import sys

import numpy as np
import pytest

from hmtl_mpi.codes import coding
from hmtl_mpi.codes.coding import P, combine_mod_p


@pytest.fixture
def paths(monkeypatch):
    """combine(kernel: bool, ...) runs combine_mod_p on one path or the other."""
    monkeypatch.setattr(coding, "KERNEL_MIN_SYMBOLS", 0)

    def combine(kernel, *args, **kw):
        monkeypatch.setattr(coding, "KERNEL", kernel)
        before = coding._compiled_combine
        got = combine_mod_p(*args, **kw)
        if kernel:
            assert coding._compiled_combine is not None
        else:
            assert coding._compiled_combine is before
        return got
    return combine


def _case(rng, r, c, L, n_esc):
    coeffs = rng.integers(1, P, size=(r, c))
    coeffs[0, 0] = P - 1                      # -1: with a 1 in row 0, column 0 of a zero
    rows = rng.integers(0, 65536, size=(c, L)).astype(np.uint16)
    rows[:, 0] = 0                            # column, output (0, 0) is 65536: an escape
    rows[0, 0] = 1
    pos = np.unique(rng.integers(0, c * L, n_esc))
    pos = pos[pos % L != 0]
    er, ec = pos // L, pos % L
    rows[er, ec] = 0
    return coeffs, rows, (er, ec)


def _exact(coeffs, rows, esc, add=None, add_esc=None):
    full = rows.astype(object)
    full[esc] = 65536
    want = np.asarray(coeffs, dtype=object) @ full
    if add is not None:
        a = add.astype(object)
        if add_esc is not None:
            a[add_esc] = 65536
        want = want + a
    return (want % P).astype(np.int64)


@pytest.mark.parametrize("r,c,L", [(8, 10, 9000), (7, 7, 4097), (12, 20, 4096), (1, 10, 4095),
                                   (4, 3, 8193), (2, 1, 300), (3, 4, 12_000), (5, 2, 1),
                                   (6, 5, 5000), (1, 1, 77)])
def test_kernel_equals_numpy_path_and_python_integers(paths, r, c, L):
    rng = np.random.default_rng([r, c, L])
    coeffs, rows, esc = _case(rng, r, c, L, 1 + L // 40)
    add = rng.integers(0, 65536, size=(r, L)).astype(np.uint16)
    apos = np.unique(rng.integers(0, r * L, 1 + L // 40))
    add_esc = (apos // L, apos % L)
    add[add_esc] = 0
    for kw in ({}, {"add": add, "add_escapes": add_esc}):
        outs = []
        for kernel in (False, True):
            out = np.full((r, L), 7, dtype=np.uint16)
            found = paths(kernel, coeffs, rows, out, esc, **kw)
            assert found.dtype == np.uint32 and np.all(np.diff(found.astype(np.int64)) > 0)
            outs.append((out, found))
        (o1, f1), (o2, f2) = outs
        assert np.array_equal(o1, o2) and np.array_equal(f1, f2)
        full = o2.astype(np.int64)
        full.reshape(-1)[f2.astype(np.int64)] = 65536
        assert np.array_equal(full, _exact(coeffs, rows, esc, kw.get("add"), kw.get("add_escapes")))
        if not kw:
            assert 0 in f2                    # the forced escape at (0, 0)
        # field elements out (uint32): 65536 written as itself, no escapes
        o32 = [np.zeros((r, L), dtype=np.uint32) for _ in range(2)]
        for kernel, o in zip((False, True), o32):
            assert paths(kernel, coeffs, rows, o, esc, **kw).size == 0
        assert np.array_equal(o32[0], o32[1]) and np.array_equal(o32[1], full)



@pytest.mark.parametrize("readonly", ["none", "all", "some"])
def test_rows_as_a_list_equal_the_stacked_rows(paths, readonly):
    """Rows (and ``add``, and ``out``) given one by one (views into separate arrays: the
    decoders' way, no stacked copy) give the arrays' results on both paths, escapes
    included; rows numba cannot type as one list (some read-only) are stacked first."""
    rng = np.random.default_rng(11)
    r, c, L = 5, 9, 9001
    coeffs, rows, esc = _case(rng, r, c, L, 300)
    add = rng.integers(0, 65536, size=(r, L)).astype(np.uint16)
    pools = [np.concatenate([np.zeros(3, np.uint16), row, np.zeros(5, np.uint16)]) for row in rows]
    for m, pool in enumerate(pools):
        if readonly == "all" or (readonly == "some" and m % 2):
            pool.flags.writeable = False
    row_list = [pool[3: 3 + L] for pool in pools]
    apos = np.unique(rng.integers(0, r * L, 40))
    add_esc = (apos // L, apos % L)
    add[add_esc] = 0
    for kw in ({}, {"add": add, "add_escapes": add_esc}):
        want = np.empty((r, L), dtype=np.uint16)
        want_found = paths(False, coeffs, rows, want, esc, **kw)
        assert want_found.size or kw          # (0, 0): the forced escape
        if kw:                                # add given row by row too
            kw = dict(kw, add=[x for x in add])
        for kernel in (False, True):
            out = np.full((r, L), 7, dtype=np.uint16)
            found = paths(kernel, coeffs, row_list, out, esc, **kw)
            assert np.array_equal(out, want) and np.array_equal(found, want_found)
            # out row by row: rows of a larger buffer, written in place
            buf = np.full((r + 2, L), 7, dtype=np.uint16)
            found = paths(kernel, coeffs, row_list, [buf[m + 1] for m in range(r)], esc, **kw)
            assert np.array_equal(buf[1:-1], want) and np.array_equal(found, want_found)
            assert np.all(buf[0] == 7) and np.all(buf[-1] == 7)
    with pytest.raises(ValueError, match="rows: rows of shapes"):
        combine_mod_p(coeffs, row_list[:-1] + [row_list[-1][:-1]], np.empty((r, L), np.uint16))
    with pytest.raises(ValueError, match="9 rows"):
        combine_mod_p(coeffs[:, :-1], row_list, np.empty((r, L), np.uint16))


@pytest.mark.parametrize("dim,D", [(1000, 2), (1001, 3), (7, 5)])
def test_unit_rows_and_decoded_views(dim, D):
    """iv_unit_rows: an IV's units as rows (views, padded copies at its end), the same as
    iv_units; decoded_ivs: float64 views of a decoded array when aligned, else copies,
    equal to units_to_iv either way."""
    rng = np.random.default_rng(dim)
    iv = rng.standard_normal(dim)
    u = coding.unit_symbols(dim, D)
    rows = coding.iv_unit_rows(iv, D, u)
    assert np.array_equal(np.stack(rows), coding.iv_units(iv, D))
    ivs = rng.standard_normal((3, dim))
    x = np.concatenate([coding.iv_units(v, D) for v in ivs])
    got = coding.decoded_ivs(x, 3, dim)
    for v, g in zip(ivs, got):
        assert g.dtype == np.float64 and g.view(np.uint64).tobytes() == v.view(np.uint64).tobytes()
    assert all(np.shares_memory(g, x) for g in got) == ((D * u) % 4 == 0)

@pytest.mark.parametrize("c,L", [(coding.KERNEL_MAX_TERMS, 3), (coding.KERNEL_MAX_TERMS, 9000),
                                 (coding.KERNEL_MAX_TERMS + 1, 50)])
def test_kernel_many_terms_and_few_columns(paths, monkeypatch, c, L):
    """Blocks narrow to L (and to KERNEL_BLOCK_BYTES for large c); more than
    KERNEL_MAX_TERMS terms stay on the NumPy path."""
    rng = np.random.default_rng([c, L])
    coeffs, rows, esc = _case(rng, 5, c, L, 1 + c * L // 100)
    out = np.empty((5, L), dtype=np.uint16)
    if c <= coding.KERNEL_MAX_TERMS:
        found = paths(True, coeffs, rows, out, esc)
    else:
        monkeypatch.setattr(coding, "KERNEL", True)
        monkeypatch.setattr(coding, "_compiled_combine", None)    # as if not loaded yet
        found = combine_mod_p(coeffs, rows, out, esc)
        assert coding._compiled_combine is None                  # not even loaded
    full = out.astype(np.int64)
    full.reshape(-1)[found.astype(np.int64)] = 65536
    assert np.array_equal(full, _exact(coeffs, rows, esc))


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_kernel_no_terms_only_add(paths, dtype):
    """c = 0 with ``add``: out = add mod p (the structured broadcast's systematic rows)."""
    rng = np.random.default_rng(23)
    r, L = 6, 7000
    add = rng.integers(0, 65536, size=(r, L)).astype(dtype)
    esc = None
    if dtype == np.uint16:
        pos = np.unique(rng.integers(0, r * L, 40))
        esc = (pos // L, pos % L)
        add[esc] = 0
    else:
        add[:, :9] = 65536
    outs = []
    for kernel in (False, True):
        out = np.empty((r, L), dtype=np.uint16)
        found = paths(kernel, np.zeros((r, 0), dtype=np.int64), np.zeros((0, L), dtype=dtype),
                      out, add=add, add_escapes=esc)
        outs.append((out, found))
    assert np.array_equal(outs[0][0], outs[1][0]) and np.array_equal(outs[0][1], outs[1][1])
    full = outs[1][0].astype(np.int64)
    full.reshape(-1)[outs[1][1].astype(np.int64)] = 65536
    want = add.astype(np.int64)
    if esc is not None:
        want[esc] = 65536
    assert np.array_equal(full, want)


def test_kernel_uint32_field_elements(paths):
    """The structured code's in-between form: uint32 rows holding 65536 itself, uint32 add."""
    rng = np.random.default_rng(3)
    r, c, L = 3, 4, 10_001
    coeffs = rng.integers(1, P, size=(r, c))
    rows = rng.integers(0, P, size=(c, L)).astype(np.uint32)
    rows[:, :50] = 65536
    add = rng.integers(0, P, size=(r, L)).astype(np.uint32)
    outs = [np.empty((r, L), dtype=np.uint32) for _ in range(2)]
    for kernel, o in zip((False, True), outs):
        paths(kernel, coeffs, rows, o, add=add)
    want = (coeffs.astype(object) @ rows.astype(object) + add.astype(object)) % P
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[1], want.astype(np.int64))


@pytest.mark.parametrize("value,coeff", [(65535, P - 1), (65535, 65535), (65536, P - 1),
                                         (65536, 1), (0, P - 1), (1, P - 1)])
def test_kernel_adversarial_constants(paths, value, coeff):
    """Every input the same extreme value (65536: every input escaped) with extreme
    coefficients: maximal sums, every output 65536 (more escapes than the kernel keeps:
    it hands the call back to NumPy), sums at multiples of p."""
    r, c, L = 5, 20, 6000
    coeffs = np.full((r, c), coeff, dtype=np.int64)
    coeffs[1, :] = np.arange(1, c + 1) * 3277 % P
    coeffs[2, :] = 0
    if value:                                 # row 2 is 65536 in every column
        coeffs[2, 0] = 65536 * pow(value, P - 2, P) % P
    rows = np.full((c, L), value % 65536, dtype=np.uint16)
    esc = np.nonzero(np.full((c, L), value == 65536))
    res = []
    for kernel in (False, True):
        out = np.empty((r, L), dtype=np.uint16)
        res.append((out, paths(kernel, coeffs, rows, out, esc)))
    assert np.array_equal(res[0][0], res[1][0]) and np.array_equal(res[0][1], res[1][1])
    full = res[1][0].astype(np.int64)
    full.reshape(-1)[res[1][1].astype(np.int64)] = 65536
    assert np.array_equal(full, _exact(coeffs, rows, esc))
    if value:
        assert res[1][1].size >= L


def test_kernel_sums_near_multiples_of_p(paths):
    """Sums y = n p + j for j in {-1, 0, 1} across the range (the reduction's edge)."""
    rng = np.random.default_rng(11)
    c, L = 20, 8192
    coeffs = np.full((1, c), P - 1, dtype=np.int64)     # -x summed: multiples of p nearby
    coeffs = np.vstack([coeffs, rng.integers(1, P, size=(3, c))])
    rows = rng.integers(0, 65536, size=(c, L)).astype(np.uint16)
    rows[:, : L // 2] = 65535
    rows[0, :3] = (0, 1, 2)
    outs = [np.empty((4, L), dtype=np.uint32) for _ in range(2)]
    for kernel, o in zip((False, True), outs):
        paths(kernel, coeffs, rows, o)
    assert np.array_equal(outs[0], outs[1])
    assert np.array_equal(outs[1], _exact(coeffs, rows, (np.zeros(0, int), np.zeros(0, int))))


def test_kernel_against_galois(paths):
    galois = pytest.importorskip("galois")
    GF = galois.GF(P)
    rng = np.random.default_rng(17)
    coeffs = rng.integers(1, P, size=(8, 10))
    rows = rng.integers(0, 65536, size=(10, 5000)).astype(np.uint16)
    out = np.empty((8, 5000), dtype=np.uint32)
    paths(True, coeffs, rows, out)
    want = np.asarray(GF(coeffs) @ GF(rows.astype(np.int64)), dtype=np.int64)
    assert np.array_equal(out.astype(np.int64), want)


def test_kernel_leaves_bad_escape_positions_to_numpy(paths):
    """The kernel does not check indices; positions outside the rows go to the NumPy path
    (which raises), never to an unchecked write."""
    coeffs = np.ones((2, 3), dtype=np.int64)
    rows = np.zeros((3, 5000), dtype=np.uint16)
    out = np.empty((2, 5000), dtype=np.uint16)
    with pytest.raises(IndexError):
        paths(True, coeffs, rows, out, (np.array([3]), np.array([0])))


def test_schemes_wire_bytes_identical_on_both_paths(monkeypatch):
    """relay_encode, server_combine and relay_decode of the coded (structured and random)
    and joint codes: the same wire bytes and the same IVs, bit for bit, on both paths."""
    from hmtl_mpi.planning.topology import paper_fig2
    from hmtl_mpi.schemes.coded import Coded
    from hmtl_mpi.schemes.joint import Joint
    monkeypatch.setattr(coding, "KERNEL_MIN_SYMBOLS", 0)
    dim = 3001
    codes = [Coded.plan(paper_fig2()).code, Coded.plan(paper_fig2(), construction="random").code,
             Joint.plan(paper_fig2()).code]
    ivs = coding.special_ivs(codes[0].K, dim, seed=4)
    for code in codes:
        got = []
        for kernel in (False, True):
            monkeypatch.setattr(coding, "KERNEL", kernel)
            G = code.G
            mine = [{int(k): ivs[k] for k in np.flatnonzero(G[i])} for i in range(code.H)]
            up = {i: coding.relay_encode(code, i, mine[i]) for i in range(code.H)}
            down = [coding.server_combine(code, b, {i: up[i][b] for i in range(code.H)}, dim)
                    for b in range(len(code.blocks))]
            dec = [coding.relay_decode(code, i, mine[i], down, dim) for i in range(code.H)]
            got.append((up, down, dec))
        (u1, d1, x1), (u2, d2, x2) = got
        for i in u1:
            assert all((a is None and b is None) or a.tobytes() == b.tobytes()
                       for a, b in zip(u1[i], u2[i]))
        assert all(a.tobytes() == b.tobytes() for a, b in zip(d1, d2))
        for i in range(code.H):
            for k in range(code.K):
                assert x2[i][k].view(np.uint64).tobytes() == ivs[k].view(np.uint64).tobytes()


def test_auto_loads_numba_only_after_enough_coding():
    """Auto mode: a process that codes small messages never imports numba; one that has
    combined KERNEL_LOAD_SYMBOLS symbols in NumPy loads the kernel and uses it."""
    script = r"""
import sys, numpy as np
from hmtl_mpi.codes import coding
rows = np.ones((10, 5000), np.uint16); out = np.empty((8, 5000), np.uint16); C = np.ones((8, 10))
for _ in range(200):
    coding.combine_mod_p(C, rows, out)
print("numba" in sys.modules, coding._compiled_combine is None)
coding.KERNEL_LOAD_SYMBOLS = 200 * 10 * 5000 + 1
for _ in range(2):
    coding.combine_mod_p(C, rows, out)
print("numba" in sys.modules, coding._compiled_combine is None, int(out[0, 0]))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, check=True)
    assert proc.stdout.split() == ["False", "True", "True", "False", "10"]
