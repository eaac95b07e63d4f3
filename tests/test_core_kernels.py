"""Direct tests of fastimg._core kernels against NumPy equivalents, and of how
the core is built (C headers, Cython directives)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastimg
from fastimg.metrics import METRICS

_core = pytest.importorskip("fastimg._core", reason="compiled core not built (run `make install`)")

PKG = Path(fastimg.__file__).parent
REPO = Path(__file__).resolve().parents[1]


def lexsort_topk(values: np.ndarray, k: int, ids=None):
    """(ids, values) of the k best: NumPy lexsort on (-value, id)."""
    ids = np.arange(len(values)) if ids is None else ids
    order = np.lexsort((ids, -values))[:k]
    return ids[order], values[order]


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (1000, 72), (333, 257)])
@pytest.mark.parametrize("threads", [1, 2])
def test_read_sum_equals_numpy_sum(shape, threads):
    x = np.random.default_rng(sum(shape)).random(shape, dtype=np.float32)
    assert _core.read_sum(x, threads, chunk_rows=50) == pytest.approx(float(x.sum(dtype=np.float64)), rel=1e-5)


def test_fused_topk_bias_mask_and_padding():
    rng = np.random.default_rng(4)
    x = rng.random((50, 9), dtype=np.float32)
    q = rng.random((3, 9), dtype=np.float32)
    bias = rng.random(50, dtype=np.float32)
    mask = np.zeros(50, np.uint8)
    mask[::2] = 1
    ids, vals = _core.fused_topk(x, q, 30, bias=bias, mask=mask, n_threads=2, chunk_rows=4)
    s = q.astype(np.float64) @ x.T.astype(np.float64) + bias
    keep = np.flatnonzero(mask == 0)  # 25 rows: 5 empty slots
    for i in range(3):
        ref_i, ref_v = lexsort_topk(s[i][keep], 25, keep)
        np.testing.assert_array_equal(ids[i, :25], ref_i)
        np.testing.assert_allclose(vals[i, :25], ref_v, rtol=1e-5)
        assert (ids[i, 25:] == -1).all() and np.isneginf(vals[i, 25:]).all()


def test_fused_topk_out_arrays_checked():
    x = np.ones((4, 2), dtype=np.float32)
    with pytest.raises(ValueError, match=r"out_ids and out_values must both have shape \(1, 2\)"):
        _core.fused_topk(x, x[:1], 2, out_ids=np.empty((1, 3), np.int64), out_values=np.empty((1, 3), np.float32))
    with pytest.raises(ValueError, match=r"out_ids and out_values must both have shape"):
        _core.fused_topk(x, x[:1], 2, out_ids=np.empty((1, 2), np.int64))


def test_kernels_reject_wrong_layout_instead_of_crashing():
    """The typed memoryviews refuse non-contiguous / wrong-dtype buffers."""
    x = np.ones((4, 6), dtype=np.float32)
    with pytest.raises(ValueError, match="contiguous"):
        _core.fused_topk(x[:, ::2], x[:1, ::2].copy(), 2)
    with pytest.raises(ValueError, match="Buffer dtype mismatch"):
        _core.fused_topk(x.astype(np.float64), x[:1], 2)


def test_direct_calls_with_inconsistent_shapes_raise():
    x = np.ones((4, 3), dtype=np.float32)
    q = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="queries must have 3 columns; got 2"):
        _core.fused_topk(x, q[:, :2].copy(), 2)
    with pytest.raises(ValueError, match="the direct kinds need aux, active and n_active"):
        _core.fused_topk(x, q, 2, kind=_core.KIND_CHISQR)
    with pytest.raises(ValueError, match=r"kind must be one of the KIND_\* constants \(0..5\); got 9"):
        _core.fused_topk(x, q, 2, kind=9)
    with pytest.raises(ValueError, match="bias must have 4 entries; got 3"):
        _core.fused_topk(x, q, 2, bias=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="active ids in"):
        _core.fused_topk(x, q, 2, kind=_core.KIND_KL_DIV, aux=q, active=np.full((2, 3), 7, np.int32),
                         n_active=np.full(2, 3, np.int64))


# ---------------------------------------------------------------------------
# the query-panel batch kernel (KIND_IP, panels of PANEL_WIDTH queries)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("n, d, nq, kk", [
    (1, 1, 6, 1),        # one row, one column
    (5, 3, 7, 9),        # kk > n: padding slots
    (97, 8, 16, 10),     # exactly one panel, n not a multiple of the 6-row tile
    (250, 17, 17, 18),   # one query into a second panel, odd d
    (1000, 72, 100, 18), # the hsv72 shape, 7 panels
])
@pytest.mark.parametrize("with_bias_mask", [False, True])
@pytest.mark.parametrize("width", [8, 16])
def test_panel_kernel_equals_numpy_lexsort_exactly(n, d, nq, kk, with_bias_mask, width):
    """Small integers make every float32 sum exact, so the oracle is exact and
    full of ties: ids must come out in (value desc, id asc) order."""
    rng = np.random.default_rng(n + d + nq)
    x = rng.integers(0, 4, size=(n, d)).astype(np.float32)
    q = rng.integers(0, 4, size=(nq, d)).astype(np.float32)
    bias = rng.integers(0, 3, size=n).astype(np.float32) if with_bias_mask else None
    mask = (rng.random(n) < 0.2).astype(np.uint8) if with_bias_mask else None
    s = q.astype(np.float64) @ x.T.astype(np.float64) + (0.0 if bias is None else bias)
    keep = np.arange(n) if mask is None else np.flatnonzero(mask == 0)
    m = min(kk, keep.size)
    for threads in (1, 2):
        ids, vals = _core.fused_topk(x, q, kk, bias=bias, mask=mask, n_threads=threads, chunk_rows=7, panels=width)
        for i in range(nq):
            ref_i, ref_v = lexsort_topk(s[i][keep], m, keep)
            np.testing.assert_array_equal(ids[i, :m], ref_i)
            np.testing.assert_array_equal(vals[i, :m], ref_v.astype(np.float32))
            assert (ids[i, m:] == -1).all() and np.isneginf(vals[i, m:]).all()


@pytest.mark.parametrize("width", [8, 16])
def test_panel_kernel_independent_of_threads_and_chunks_on_real_valued_data(width):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3001, 256)).astype(np.float32)
    q = rng.standard_normal((40, 256)).astype(np.float32)
    runs = [_core.fused_topk(x, q, 25, n_threads=t, chunk_rows=c, panels=width)
            for t, c in ((1, 3001), (2, 64), (2, 6))]
    for i, v in runs[1:]:
        np.testing.assert_array_equal(i, runs[0][0])
        np.testing.assert_array_equal(v, runs[0][1])
    # and it agrees with float64 brute force up to float32 rounding
    s = q.astype(np.float64) @ x.T.astype(np.float64)
    ref = np.sort(s, axis=1)[:, ::-1][:, :25]
    np.testing.assert_allclose(runs[0][1], ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("nq", [1, 2, 5, 8, 9, 13])
def test_every_batch_kernel_picks_the_same_rows(nq):
    """Auto choice, both panel widths and the 4-query tiles agree (exact sums)."""
    rng = np.random.default_rng(12 + nq)
    x = rng.integers(0, 5, size=(2000, 40)).astype(np.float32)
    q = rng.integers(0, 5, size=(nq, 40)).astype(np.float32)
    ref_i, ref_v = _core.fused_topk(x, q, 12, n_threads=1, panels=0)
    for panels in (-1, 8, 16):
        i, v = _core.fused_topk(x, q, 12, n_threads=2, chunk_rows=250, panels=panels)  # 8 chunks
        np.testing.assert_array_equal(i, ref_i)
        np.testing.assert_array_equal(v, ref_v)


def test_panels_argument_is_checked():
    x = np.ones((4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="panels must be -1, 0, 8 or 16; got 4"):
        _core.fused_topk(x, x[:2], 2, panels=4)


def test_huge_chunk_rows_and_empty_requests():
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    q = np.ones((7, 3), dtype=np.float32)
    for panels in (0, 8, 16):
        ids, _ = _core.fused_topk(x, q, 3, chunk_rows=2**63 - 5, panels=panels)
        assert (ids == [9, 8, 7]).all()
    oi, ov = np.empty((7, 0), np.int64), np.empty((7, 0), np.float32)
    i, v = _core.fused_topk(x, q, 0, out_ids=oi, out_values=ov)
    assert i is oi and v is ov


def test_aligned_rows_are_64_byte_aligned_whole_lines():
    a = _core._aligned_rows(3, 17, np.inf)
    assert a.shape == (3, 32) and a.ctypes.data % 64 == 0 and np.isinf(a).all()


def test_panels_used_automatically_only_where_they_run_as_avx2():
    """Without 16 ymm registers a panel tile spills (slower than the tiles), so
    the automatic choice may use panels only where PANELS_FAST; on an x86-64 Linux
    CPU with AVX2 + FMA the default build (GCC target_clones) has them."""
    import platform

    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        flags = []
    if platform.machine() == "x86_64" and {"avx2", "fma"} <= set(flags):
        assert _core.PANELS_FAST
    if not _core.PANELS_FAST:  # auto then equals the tiles, whatever the batch size
        x = np.random.default_rng(1).random((500, 16), dtype=np.float32)
        q = np.random.default_rng(2).random((20, 16), dtype=np.float32)
        np.testing.assert_array_equal(_core.fused_topk(x, q, 5)[0], _core.fused_topk(x, q, 5, panels=0)[0])


# ---------------------------------------------------------------------------
# the direct kinds (metrics without an inner-product form)
# ---------------------------------------------------------------------------

def direct_values(kind: int, q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(Q, N) float64 "higher is better" values, written from the kinds' definitions."""
    q64, x64 = q.astype(np.float64)[:, None, :], x.astype(np.float64)[None]
    eps = np.finfo(np.float64).eps
    if kind == _core.KIND_CHISQR:
        inv = np.where(np.abs(q64) > eps, 1.0 / np.where(np.abs(q64) > eps, q64, 1.0), 0.0)
        return -((x64 - q64) ** 2 * inv).sum(-1)
    if kind == _core.KIND_CHISQR_ALT:
        b = x64 + q64
        return -np.where(b > 0, (x64 - q64) ** 2 / np.where(b > 0, b, 1.0), 0.0).sum(-1)
    if kind == _core.KIND_INTERSECT:
        return np.minimum(x64, q64).sum(-1)
    if kind == _core.KIND_KL_DIV:
        keep = np.abs(q64) > eps
        return np.where(keep, q64 * np.log(np.where(x64 > eps, x64, 1e-10)), 0.0).sum(-1)
    assert kind == _core.KIND_L1
    return -np.abs(x64 - q64).sum(-1)


def direct_aux(kind: int, q: np.ndarray):
    """aux, active, n_active as fastimg.search passes them (all bins active)."""
    eps = np.finfo(np.float64).eps
    aux = q.copy()
    if kind == _core.KIND_CHISQR:
        aux = np.where(np.abs(q) > eps, 1.0 / np.where(np.abs(q) > eps, q, 1.0), 0.0).astype(np.float32)
    active = np.tile(np.arange(q.shape[1], dtype=np.int32), (q.shape[0], 1))
    return aux, active, np.full(q.shape[0], q.shape[1], np.int64)


@pytest.mark.parametrize("name", ["chisqr", "chisqr_alt", "intersect", "kl_div", "l1"])
@pytest.mark.parametrize("d", [5, 8, 19, 72])
def test_direct_kinds_equal_numpy(name, d):
    kind = getattr(_core, METRICS[name].kernel)
    rng = np.random.default_rng(d)
    x = rng.random((500, d), dtype=np.float32)
    x[x < 0.2] = 0  # empty bins: the skipped-bin rules
    q = rng.random((3, d), dtype=np.float32)
    q[q < 0.2] = 0
    mask = (rng.random(500) < 0.1).astype(np.uint8)
    keep = np.flatnonzero(mask == 0)
    s = direct_values(kind, q, x)
    aux, active, n_active = direct_aux(kind, q)
    for threads, chunk in ((1, 500), (2, 37)):
        ids, vals = _core.fused_topk(x, q, 15, kind=kind, aux=aux, active=active, n_active=n_active, mask=mask,
                                     n_threads=threads, chunk_rows=chunk)
        for i in range(3):
            ref_i, ref_v = lexsort_topk(s[i][keep], 15, keep)
            np.testing.assert_array_equal(ids[i], ref_i)
            np.testing.assert_allclose(vals[i], ref_v, rtol=1e-5, atol=1e-5)


def test_every_metric_names_a_kernel_kind():
    kinds = [_core.KIND_IP, _core.KIND_CHISQR, _core.KIND_CHISQR_ALT, _core.KIND_INTERSECT, _core.KIND_KL_DIV,
             _core.KIND_L1]
    assert sorted(kinds) == list(range(6))  # distinct, and what fused_topk accepts (0..5)
    for m in METRICS.values():
        assert getattr(_core, m.kernel) in kinds
        assert (getattr(_core, m.kernel) == _core.KIND_IP) == m.ip_form


# ---------------------------------------------------------------------------
# the build: C headers, Cython declarations, directives
# ---------------------------------------------------------------------------

C_HEADERS = ["fi_heap.h", "fi_scan.h", "fi_lowp.h"]


def test_c_sources_ship_with_the_package():
    """Headers and .pxd declarations sit next to the module (package data), so
    another Cython extension can cimport fastimg._heap / fastimg._scan."""
    for name in C_HEADERS + ["_heap.pxd", "_scan.pxd", "_lowp.pxd", "_core.pyx", "_core.pyi"]:
        assert (PKG / name).is_file(), name
    assert 'cdef extern from "fi_heap.h"' in (PKG / "_heap.pxd").read_text()
    assert 'cdef extern from "fi_scan.h"' in (PKG / "_scan.pxd").read_text()
    assert 'cdef extern from "fi_lowp.h"' in (PKG / "_lowp.pxd").read_text()


@pytest.mark.parametrize("header", C_HEADERS)
def test_c_headers_compile_on_their_own(header, tmp_path):
    """Each header is plain C that a C compiler reads without Python or Cython."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler on PATH")
    src = tmp_path / "use.c"
    src.write_text(f'#include "{header}"\nint main(void) {{ return 0; }}\n')
    out = subprocess.run([cc, "-std=gnu99", "-Wall", "-Werror", "-Wno-unused-function", "-fsyntax-only",
                          f"-I{PKG}", str(src)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def _cythonize_with_setup_py(tmp_path: Path, env_debug: str) -> str:
    """Run the repository's setup.py (which cythonizes before any command) on a
    copy of the sources, with FASTIMG_DEBUG=env_debug; return the generated C."""
    pytest.importorskip("Cython", reason="Cython (a build requirement) is not installed")
    setup_py = REPO / "setup.py"
    if not setup_py.is_file():
        pytest.skip("tests run outside the source tree")
    work = tmp_path / f"debug{env_debug}"
    pkg = work / "src" / "fastimg"
    pkg.mkdir(parents=True)
    for name in ["_core.pyx", "_heap.pxd", "_scan.pxd", "_lowp.pxd", "__init__.py", "_version.py"] + C_HEADERS:
        shutil.copy(PKG / name, pkg / name)
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, work / name)
    env = {"PATH": "/usr/bin:/bin", "FASTIMG_DEBUG": env_debug, "HOME": str(work)}
    out = subprocess.run([sys.executable, "setup.py", "--version"], cwd=work, env=env, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    return (pkg / "_core.c").read_text()


@pytest.mark.slow
def test_fastimg_debug_turns_bounds_checks_on(tmp_path):
    """FASTIMG_DEBUG=1 reaches Cython: the generated C checks memoryview indices
    (no directive in _core.pyx overrides setup.py's); the default build does not."""
    assert "__Pyx_RaiseBufferIndexError" in _cythonize_with_setup_py(tmp_path, "1")
    assert "__Pyx_RaiseBufferIndexError" not in _cythonize_with_setup_py(tmp_path, "0")


def test_type_stubs_match_the_module():
    """_core.pyi declares exactly what the compiled module defines (no stale stub)."""
    import ast

    tree = ast.parse((PKG / "_core.pyi").read_text())
    stubbed = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    stubbed |= {n.target.id for n in tree.body if isinstance(n, ast.AnnAssign)}
    defined = {name for name in vars(_core) if not name.startswith("__") and name not in ("np",)}
    assert stubbed == defined
