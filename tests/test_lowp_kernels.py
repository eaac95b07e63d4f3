"""The reduced-precision kernels (fastimg._core.i8_topk / f16_topk, fi_lowp.h):
against a float64 NumPy oracle, every dispatch target this CPU runs bit-for-bit
against the portable scalar target, and every target compiled with its own
target attributes (the ones this CPU cannot run included)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import fastimg

_core = pytest.importorskip("fastimg._core", reason="compiled core not built (run `make install`)")

PKG = Path(fastimg.__file__).parent
INFO = _core.lowp_target_info()
RUNNABLE = [i for i, name in enumerate(_core.LOWP_TARGETS) if INFO[name][1]]
SCALAR = _core.LOWP_TARGETS.index("scalar")


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as fh:
            return set(next((line for line in fh if line.startswith("flags")), "").split())
    except OSError:
        return set()


def i8_case(n=1500, d=72, nq=9, seed=0, bias=True, err=True):
    rng = np.random.default_rng(seed)
    ld = (d + 3) // 4 * 4
    codes = rng.integers(0, 256, (n, ld), dtype=np.uint8)
    q = np.zeros((nq, ld), np.int8)
    q[:, :d] = rng.integers(-127, 128, (nq, d))
    z = 128
    args = dict(
        qscale=rng.uniform(0.5, 2, nq).astype(np.float32) / 127,
        qoff=(z * q.astype(np.int64).sum(1)).astype(np.int32),
        alpha=rng.uniform(0.5, 1.5, nq).astype(np.float32),
        rscale=rng.uniform(0.5, 2, n).astype(np.float32) / 127,
        err=rng.uniform(0, 1e-2, n).astype(np.float32) if err else None,
        bias=rng.standard_normal(n).astype(np.float32) if bias else None,
    )
    return codes, q, args


def i8_oracle(codes, q, a):
    """float64 values of the int8 kernels' formula (exact integer sums)."""
    acc = codes.astype(np.int64) @ q.T.astype(np.int64)  # (n, nq)
    t = (acc - a["qoff"]).astype(np.float64)
    w = a["qscale"].astype(np.float64)[None] * a["rscale"].astype(np.float64)[:, None]
    v = t * w
    if a["bias"] is not None:
        v += a["bias"][:, None]
    if a["err"] is not None:
        v += a["alpha"][None].astype(np.float64) * a["err"][:, None]
    return v.T  # (nq, n)


def check_topk(ids, vals, oracle, kk, mask=None, rtol=2e-6):
    """ids/values against oracle values (Q, N): the right values, best first, and
    no dropped row clearly better than the last kept (near-ties either way)."""
    n = oracle.shape[1]
    keep = np.ones(n, bool) if mask is None else mask == 0
    for i in range(oracle.shape[0]):
        avail = np.flatnonzero(keep)
        m = min(kk, avail.size)
        got = ids[i, :m]
        assert len(set(got.tolist())) == m and keep[got].all()
        scale = np.abs(oracle[i]).max() + 1.0
        np.testing.assert_allclose(vals[i, :m], oracle[i, got], rtol=0, atol=rtol * scale)
        assert np.all(np.diff(vals[i, :m]) <= 0)
        dropped = np.setdiff1d(avail, got)
        if dropped.size and m:
            assert oracle[i, dropped].max() <= vals[i, m - 1] + rtol * scale
        assert (ids[i, m:] == -1).all() and np.isneginf(vals[i, m:]).all()


def test_targets_are_reported_and_the_best_one_runs_here():
    assert set(INFO) == set(_core.LOWP_TARGETS)
    assert INFO["scalar"] == (True, True)
    assert INFO[_core.LOWP_BEST][1]
    flags = _cpu_flags()
    import platform
    if platform.machine() == "x86_64" and flags:
        assert INFO["avx2"][1] == ({"avx2", "fma", "f16c"} <= flags)
        assert INFO["avx512"][1] == ({"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                                      "avx512_vnni"} <= flags)
        if INFO["avxvnni"][0]:
            assert INFO["avxvnni"][1] == ({"avx2", "fma", "f16c", "avx_vnni"} <= flags)


@pytest.mark.parametrize("d", [72, 256, 13])
@pytest.mark.parametrize("bias_err", [True, False])
def test_i8_kernel_equals_the_oracle_and_every_target_equals_scalar(d, bias_err):
    codes, q, a = i8_case(d=d, bias=bias_err, err=bias_err, seed=d)
    oracle = i8_oracle(codes, q, a)
    mask = (np.random.default_rng(1).random(codes.shape[0]) < 0.05).astype(np.uint8)
    ref = _core.i8_topk(codes, q, 25, mask=mask, target=SCALAR, panels=0, **a)
    check_topk(*ref, oracle, 25, mask)
    for t in RUNNABLE:
        for panels in (0, 16):
            for threads, chunk in ((1, 4096), (2, 97)):
                ids, vals = _core.i8_topk(codes, q, 25, mask=mask, target=t, panels=panels, n_threads=threads,
                                          chunk_rows=chunk, **a)
                np.testing.assert_array_equal(ids, ref[0], err_msg=f"target {_core.LOWP_TARGETS[t]} panels {panels}")
                np.testing.assert_array_equal(vals, ref[1])


@pytest.mark.parametrize("d", [72, 64, 61, 100, 128, 129, 4])
@pytest.mark.parametrize("nq,panels", [(3, 0), (37, 16)])
def test_i8_every_rows_value_equals_scalar_for_short_and_odd_rows(d, nq, panels):
    """kk = N: every row's value, not only the top ones, is bit-identical to the
    scalar target's and right against the oracle: short rows (AVX-512 holds the
    query in registers for L <= 128 with masked tails), odd D, N not a multiple
    of the 16-row blocks or the 12-row panel tiles, chunks that split blocks,
    a last panel of 5 queries; small kk too (selective heap pushes)."""
    n = 16 * 7 + 5
    codes, q, a = i8_case(n=n, d=d, nq=nq, seed=d + nq)
    oracle = i8_oracle(codes, q, a)
    for kk in (n, 4):
        ref = _core.i8_topk(codes, q, kk, target=SCALAR, panels=panels, **a)
        check_topk(*ref, oracle, kk)
        for t in RUNNABLE:
            for threads, chunk in ((1, 4096), (2, 37)):
                ids, vals = _core.i8_topk(codes, q, kk, target=t, panels=panels, n_threads=threads,
                                          chunk_rows=chunk, **a)
                np.testing.assert_array_equal(ids, ref[0], err_msg=f"target {_core.LOWP_TARGETS[t]} kk {kk}")
                np.testing.assert_array_equal(vals, ref[1])


def test_i8_integer_sums_are_exact_at_the_largest_dimension():
    """The extreme codes (255 x 127 over D = INT8_MAX_DIM) neither overflow nor
    saturate (the AVX2 path widens to 16 bits; no vpmaddubsw saturation)."""
    from fastimg.precision import INT8_MAX_DIM

    d = INT8_MAX_DIM
    codes = np.full((3, d), 255, np.uint8)
    codes[1] = 0
    codes[2, ::2] = 0
    q = np.full((2, d), 127, np.int8)
    q[1] = -127
    a = dict(qscale=np.ones(2, np.float32), qoff=(128 * q.astype(np.int64).sum(1)).astype(np.int32),
             alpha=np.zeros(2, np.float32), rscale=np.ones(3, np.float32))
    exact = (codes.astype(np.int64) @ q.T.astype(np.int64) - a["qoff"]).T  # (2, 3)
    for t in RUNNABLE:
        for panels in (0, 16):
            ids, vals = _core.i8_topk(codes, q, 3, target=t, panels=panels, **a)
            got = np.empty((2, 3))
            for i in range(2):
                got[i, ids[i]] = vals[i]
            np.testing.assert_array_equal(got, exact.astype(np.float32))


def f16_case(n=1200, d=77, nq=7, seed=0):
    rng = np.random.default_rng(seed)
    codes = rng.standard_normal((n, d)).astype(np.float16)
    codes[5] = 0
    codes[6, :3] = np.float16(6e-8)  # subnormal halves
    q = rng.standard_normal((nq, d)).astype(np.float32)
    a = dict(alpha=rng.uniform(0.5, 1.5, nq).astype(np.float32),
             rscale=np.ldexp(1.0, rng.integers(-3, 4, n)).astype(np.float32),
             err=rng.uniform(0, 1e-3, n).astype(np.float32), bias=rng.standard_normal(n).astype(np.float32))
    return codes, q, a


def f16_oracle(codes, q, a):
    v = (codes.astype(np.float64) @ q.T.astype(np.float64)) * a["rscale"][:, None]
    return (v + a["bias"][:, None] + a["alpha"][None] * a["err"][:, None]).T


@pytest.mark.parametrize("d", [77, 256, 8, 3])
def test_f16_kernel_equals_the_oracle_and_every_target_equals_scalar(d):
    codes, q, a = f16_case(d=d, seed=d)
    oracle = f16_oracle(codes, q, a)
    for panels in (0, 16):
        ref = _core.f16_topk(codes.view(np.uint16), q, 20, target=SCALAR, panels=panels, **a)
        check_topk(*ref, oracle, 20, rtol=1e-5)
        for t in RUNNABLE:
            for threads, chunk in ((1, 4096), (2, 101)):
                ids, vals = _core.f16_topk(codes.view(np.uint16), q, 20, target=t, panels=panels,
                                           n_threads=threads, chunk_rows=chunk, **a)
                np.testing.assert_array_equal(ids, ref[0], err_msg=f"target {_core.LOWP_TARGETS[t]} panels {panels}")
                np.testing.assert_array_equal(vals, ref[1])


@pytest.mark.parametrize("d", [72, 80, 77, 3, 8, 33])
def test_f16_one_query_every_rows_value_equals_scalar(d):
    """kk = N, one query at a time: every row's value is bit-identical to the
    scalar target's (the SIMD targets reduce 8 rows at once, in the same order)
    and right against the oracle; N not a multiple of 8, odd D (scalar tails),
    chunks splitting blocks."""
    n = 8 * 13 + 3
    codes, q, a = f16_case(n=n, d=d, nq=3, seed=d + 5)
    oracle = f16_oracle(codes, q, a)
    for kk in (n, 3):
        ref = _core.f16_topk(codes.view(np.uint16), q, kk, target=SCALAR, panels=0, **a)
        check_topk(*ref, oracle, kk, rtol=1e-5)
        for t in RUNNABLE:
            for threads, chunk in ((1, 4096), (2, 29)):
                ids, vals = _core.f16_topk(codes.view(np.uint16), q, kk, target=t, panels=0, n_threads=threads,
                                           chunk_rows=chunk, **a)
                np.testing.assert_array_equal(ids, ref[0], err_msg=f"target {_core.LOWP_TARGETS[t]} kk {kk}")
                np.testing.assert_array_equal(vals, ref[1])


def test_kernels_pad_empty_slots_and_handle_empty_requests():
    codes, q, a = i8_case(n=5, d=8, nq=2)
    ids, vals = _core.i8_topk(codes, q, 9, **a)
    assert (ids[:, 5:] == -1).all() and np.isneginf(vals[:, 5:]).all()
    assert sorted(ids[0, :5].tolist()) == list(range(5))
    ids, vals = _core.i8_topk(codes, q, 0, **a)
    assert ids.shape == (2, 0)
    ids, vals = _core.i8_topk(codes[:0], q, 3, **{**a, "rscale": a["rscale"][:0], "err": None, "bias": None})
    assert (ids == -1).all()


def test_kernels_reject_bad_arguments_instead_of_crashing():
    codes, q, a = i8_case(n=50, d=8, nq=2)
    with pytest.raises(ValueError, match="columns"):
        _core.i8_topk(codes, q[:, :4].copy(), 3, **a)
    with pytest.raises(ValueError, match="multiple of 4"):
        _core.i8_topk(codes[:, :6].copy(), q[:, :6].copy(), 3, **a)
    with pytest.raises(ValueError, match="rscale must have 50"):
        _core.i8_topk(codes, q, 3, **{**a, "rscale": a["rscale"][:10]})
    with pytest.raises(ValueError, match="qscale must have 2"):
        _core.i8_topk(codes, q, 3, **{**a, "qscale": a["qscale"][:1]})
    with pytest.raises(ValueError, match="panels"):
        _core.i8_topk(codes, q, 3, panels=8, **a)
    with pytest.raises(ValueError, match="target 99"):
        _core.i8_topk(codes, q, 3, target=99, **a)
    for t, name in enumerate(_core.LOWP_TARGETS):
        if not INFO[name][1]:  # a target this CPU cannot run is refused, never executed
            with pytest.raises(ValueError, match=f"target {t} is not one this CPU runs"):
                _core.i8_topk(codes, q, 3, target=t, **a)
            with pytest.raises(ValueError, match=f"target {t} is not one this CPU runs"):
                _core.f16_topk(np.zeros((4, 8), np.uint16), np.zeros((1, 8), np.float32), 2,
                               np.ones(1, np.float32), np.ones(4, np.float32), target=t)
    with pytest.raises(ValueError):
        _core.i8_topk(codes, q.astype(np.int16), 3, **a)  # wrong dtype: Cython's buffer check


def test_every_target_compiles_with_its_own_attributes(tmp_path):
    """Code is generated for every target (also those this CPU cannot run, e.g.
    AVX-VNNI here) from plain C with no -m flag, and a build without SIMD
    (FASTIMG_NO_SIMD) compiles the scalar kernels alone."""
    cc = shutil.which("gcc") or shutil.which("cc") or shutil.which("clang")
    if cc is None:
        pytest.fail("no C compiler on PATH (the extension itself needs one)")
    src = tmp_path / "all_targets.c"
    src.write_text('''#include "fi_lowp.h"
int run(int t, ptrdiff_t d, ptrdiff_t n, ptrdiff_t nq, const uint8_t* X, const int8_t* q, const int16_t* q16,
        const uint16_t* H, const float* f, const int32_t* o, float* hv, int64_t* hi, float* thr, void* scratch) {
    fi_i8_rows_q1(t, X, d, 0, n, q, q16, 0, 1.0f, 1.0f, f, f, f, 0, hv, hi, 4);
    fi_i8_rows_panels(t, X, d, 0, n, q, (nq + 15) / 16, nq, f, o, f, f, f, f, 0, hv, hi, 4, thr, scratch);
    fi_f16_rows_q1(t, H, d, 0, n, f, f, 1.0f, f, f, 0, hv, hi, 4);
    fi_f16_rows_panels(t, H, d, 0, n, f, (nq + 15) / 16, nq, f, f, f, f, 0, hv, hi, 4, thr, scratch);
    return fi_lp_best() + fi_lp_compiled(t) + fi_lp_cpu_has(t);
}
''')
    for extra in ([], ["-DFASTIMG_NO_SIMD"]):
        out = subprocess.run([cc, "-std=gnu99", "-O2", "-Wall", "-Werror", "-Wno-unused-function", "-c", f"-I{PKG}",
                              *extra, str(src),
                              "-o", str(tmp_path / "o.o")], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
    if "gcc" in Path(cc).name or "cc" == Path(cc).name:
        asm = subprocess.run([cc, "-std=gnu99", "-O2", "-S", f"-I{PKG}", str(src), "-o", "-"],
                             capture_output=True, text=True).stdout
        if INFO["avx512"][0]:
            assert "vpdpbusd" in asm and "zmm" in asm
        if INFO["avxvnni"][0]:
            assert "{vex} vpdpbusd" in asm or "vpdpbusd\t%ymm" in asm
        assert "vcvtph2ps" in asm and "vpmaddwd" in asm
