# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernels of fastimg: ``nogil`` code only, no validation.

Callers (``fastimg.search``) validate shapes, dtypes, contiguity, finiteness and
ranges first; these functions trust their arguments.

Selection keeps, per query, the ``kk`` *best* (value, id) pairs under the total
order "higher value first, then lower id", in a bounded min-heap whose root is the
worst kept pair.  Because the order is total and every row's value is computed by
the same arithmetic whatever thread processes it, results do not depend on the
thread count.  Values are "higher is better": callers negate distances.

Hot loops are plain C (GCC/Clang vector extensions) compiled twice through
``target_clones`` on x86-64 Linux (x86-64-v3: AVX2 + FMA, and a baseline), so a
portable build still runs AVX2 code where the CPU has it.
"""
cimport openmp
from cython.parallel cimport parallel, prange, threadid
from libc.stdint cimport int64_t, uint8_t, int32_t

import numpy as np

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #include <math.h>

    #if defined(__GNUC__)
    #pragma GCC diagnostic ignored "-Wpsabi"
    #endif

    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \
        && !defined(FASTIMG_NO_CLONES)
    #  define FI_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
    #  define FI_CLONES_ON 1
    #else
    #  define FI_CLONES
    #endif

    #define FI_WORST_ID INT64_MAX

    /* a better than b: higher value, then lower id (a total order on distinct ids) */
    static inline int fi_better(float va, int64_t ia, float vb, int64_t ib) {
        return va > vb || (va == vb && ia < ib);
    }

    /* restore the heap property below pos (min-heap on "goodness": root = worst) */
    static inline void fi_sift_down(float* v, int64_t* id, Py_ssize_t n, Py_ssize_t pos) {
        float nv = v[pos];
        int64_t ni = id[pos];
        for (;;) {
            Py_ssize_t l = 2 * pos + 1, r = l + 1, w;
            if (l >= n) break;
            w = l;
            if (r < n && fi_better(v[l], id[l], v[r], id[r])) w = r;  /* the worse child */
            if (!fi_better(nv, ni, v[w], id[w])) break;
            v[pos] = v[w]; id[pos] = id[w];
            pos = w;
        }
        v[pos] = nv; id[pos] = ni;
    }

    static inline void fi_heap_init(float* v, int64_t* id, Py_ssize_t n) {
        for (Py_ssize_t i = 0; i < n; ++i) { v[i] = -INFINITY; id[i] = FI_WORST_ID; }
    }

    /* keep (val, idx) if it beats the worst kept pair */
    static inline void fi_heap_push(float* v, int64_t* id, Py_ssize_t n, float val, int64_t idx) {
        if (!fi_better(val, idx, v[0], id[0])) return;
        v[0] = val; id[0] = idx;
        fi_sift_down(v, id, n, 0);
    }

    /* heapsort in place: afterwards v[0] is the best pair; empty slots get id -1 */
    static void fi_heap_sort(float* v, int64_t* id, Py_ssize_t n) {
        for (Py_ssize_t end = n - 1; end > 0; --end) {
            float tv = v[0]; int64_t ti = id[0];
            v[0] = v[end]; id[0] = id[end];
            v[end] = tv; id[end] = ti;
            fi_sift_down(v, id, end, 0);
        }
        for (Py_ssize_t i = 0; i < n; ++i) if (id[i] == FI_WORST_ID) id[i] = -1;
    }

    static inline void fi_push_row(float* hv, int64_t* hi, Py_ssize_t kk, const uint8_t* mask,
                                   Py_ssize_t r, float val) {
        if (!fi_better(val, (int64_t)r, hv[0], hi[0])) return;  /* the common case, inline */
        if (mask != NULL && mask[r]) return;
        hv[0] = val; hi[0] = (int64_t)r;
        fi_sift_down(hv, hi, kk, 0);
    }

    /* ------------------------------------------------------------------ */
    /* inner-product kernels.  Every (row, query) pair is computed with the */
    /* same operation sequence: one 8-lane accumulator over j = 0, 8, ...,  */
    /* a fixed-order horizontal sum, then the scalar tail; so the value of  */
    /* a row never depends on the tile it was computed in.                 */
    /* ------------------------------------------------------------------ */
    #if defined(__GNUC__)
    typedef float fi_v8 __attribute__((vector_size(32)));
    typedef int32_t fi_v8i __attribute__((vector_size(32)));
    static inline fi_v8 fi_load(const float* p) { fi_v8 r; memcpy(&r, p, sizeof(r)); return r; }
    static inline float fi_hsum(fi_v8 a) {
        return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
    }
    #define FI_HAVE_VEC 1
    #else
    #define FI_HAVE_VEC 0
    #endif

    static inline float fi_dot_tail(const float* x, const float* q, Py_ssize_t j0, Py_ssize_t d, float s) {
        for (Py_ssize_t j = j0; j < d; ++j) s += x[j] * q[j];
        return s;
    }

    #if FI_HAVE_VEC
    #define FI_VSTEP 8
    #else
    #define FI_VSTEP 1
    #endif

    static inline float fi_dot1(const float* x, const float* q, Py_ssize_t d) {
    #if FI_HAVE_VEC
        Py_ssize_t dv = d - d % 8;
        fi_v8 a = {0};
        for (Py_ssize_t j = 0; j < dv; j += 8) a += fi_load(x + j) * fi_load(q + j);
        return fi_dot_tail(x, q, dv, d, fi_hsum(a));
    #else
        return fi_dot_tail(x, q, 0, d, 0.0f);
    #endif
    }

    /* one query: each row is read as one forward stream with four 8-lane
       accumulators (j mod 32), combined in a fixed order, then the scalar tail */
    static inline float fi_dot1_stream(const float* x, const float* q, Py_ssize_t d) {
    #if FI_HAVE_VEC
        Py_ssize_t j = 0;
        fi_v8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        for (; j + 32 <= d; j += 32) {
            a0 += fi_load(x + j) * fi_load(q + j);
            a1 += fi_load(x + j + 8) * fi_load(q + j + 8);
            a2 += fi_load(x + j + 16) * fi_load(q + j + 16);
            a3 += fi_load(x + j + 24) * fi_load(q + j + 24);
        }
        for (; j + 8 <= d; j += 8) a0 += fi_load(x + j) * fi_load(q + j);
        return fi_dot_tail(x, q, j, d, fi_hsum((a0 + a1) + (a2 + a3)));
    #else
        return fi_dot_tail(x, q, 0, d, 0.0f);
    #endif
    }

    FI_CLONES static void fi_ip_rows_q1(const float* X, Py_ssize_t d, Py_ssize_t r0, Py_ssize_t r1,
                                        const float* q, const float* bias, const uint8_t* mask,
                                        float* hv, int64_t* hi, Py_ssize_t kk) {
        for (Py_ssize_t r = r0; r < r1; ++r) {
            const float* x = X + r * d;
    #if FI_HAVE_VEC
            __builtin_prefetch(x + 64 * 16, 0, 0);
    #endif
            float s = fi_dot1_stream(x, q, d);
            if (bias) s += bias[r];
            fi_push_row(hv, hi, kk, mask, r, s);
        }
    }

    #if FI_HAVE_VEC
    #if defined(__clang__)
    #define FI_EVENS(a, b) __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14)
    #define FI_ODDS(a, b) __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15)
    #else
    static const fi_v8i fi_even_idx = {0, 2, 4, 6, 8, 10, 12, 14};
    static const fi_v8i fi_odd_idx = {1, 3, 5, 7, 9, 11, 13, 15};
    #define FI_EVENS(a, b) __builtin_shuffle(a, b, fi_even_idx)
    #define FI_ODDS(a, b) __builtin_shuffle(a, b, fi_odd_idx)
    #endif
    /* [a0+a1, a2+a3, a4+a5, a6+a7, b0+b1, b2+b3, b4+b5, b6+b7] */
    static inline fi_v8 fi_pairsum(fi_v8 a, fi_v8 b) { return FI_EVENS(a, b) + FI_ODDS(a, b); }

    /* dot products of 2 rows x 4 queries (out[4 * row + query]); every pair is
       computed by the same operation sequence, whichever rows are paired (a lone
       tail row is paired with itself) */
    static inline void fi_tile_2x4(const float* x0, const float* x1, const float* q0, const float* q1,
                                   const float* q2, const float* q3, Py_ssize_t d, float* out) {
        Py_ssize_t dv = d - d % 8;
        fi_v8 a00 = {0}, a01 = {0}, a02 = {0}, a03 = {0};
        fi_v8 a10 = {0}, a11 = {0}, a12 = {0}, a13 = {0};
        for (Py_ssize_t j = 0; j < dv; j += 8) {
            fi_v8 xa = fi_load(x0 + j), xb = fi_load(x1 + j);
            fi_v8 v0 = fi_load(q0 + j), v1 = fi_load(q1 + j), v2 = fi_load(q2 + j), v3 = fi_load(q3 + j);
            a00 += xa * v0; a01 += xa * v1; a02 += xa * v2; a03 += xa * v3;
            a10 += xb * v0; a11 += xb * v1; a12 += xb * v2; a13 += xb * v3;
        }
        /* 8 horizontal sums at once: lane i of r = sum of lanes of the i-th accumulator */
        fi_v8 r = fi_pairsum(fi_pairsum(fi_pairsum(a00, a01), fi_pairsum(a02, a03)),
                             fi_pairsum(fi_pairsum(a10, a11), fi_pairsum(a12, a13)));
        memcpy(out, &r, sizeof(r));
        if (dv < d) {
            out[0] = fi_dot_tail(x0, q0, dv, d, out[0]); out[1] = fi_dot_tail(x0, q1, dv, d, out[1]);
            out[2] = fi_dot_tail(x0, q2, dv, d, out[2]); out[3] = fi_dot_tail(x0, q3, dv, d, out[3]);
            out[4] = fi_dot_tail(x1, q0, dv, d, out[4]); out[5] = fi_dot_tail(x1, q1, dv, d, out[5]);
            out[6] = fi_dot_tail(x1, q2, dv, d, out[6]); out[7] = fi_dot_tail(x1, q3, dv, d, out[7]);
        }
    }
    #endif

    /* four queries (rows of Q starting at q, stride d), rows [r0, r1) */
    FI_CLONES static void fi_ip_rows_q4(const float* X, Py_ssize_t d, Py_ssize_t r0, Py_ssize_t r1,
                                        const float* q, const float* bias, const uint8_t* mask,
                                        float* hv, int64_t* hi, Py_ssize_t kk) {
        const float* q0 = q; const float* q1 = q + d; const float* q2 = q + 2 * d; const float* q3 = q + 3 * d;
        float* h0 = hv; float* h1 = hv + kk; float* h2 = hv + 2 * kk; float* h3 = hv + 3 * kk;
        int64_t* i0 = hi; int64_t* i1 = hi + kk; int64_t* i2 = hi + 2 * kk; int64_t* i3 = hi + 3 * kk;
    #if FI_HAVE_VEC
        float s[8];
        for (Py_ssize_t r = r0; r < r1; r += 2) {
            const float* x0 = X + r * d;
            int two = (r + 1 < r1);
            fi_tile_2x4(x0, two ? x0 + d : x0, q0, q1, q2, q3, d, s);
            float b0 = bias ? bias[r] : 0.0f;
            fi_push_row(h0, i0, kk, mask, r, s[0] + b0);
            fi_push_row(h1, i1, kk, mask, r, s[1] + b0);
            fi_push_row(h2, i2, kk, mask, r, s[2] + b0);
            fi_push_row(h3, i3, kk, mask, r, s[3] + b0);
            if (two) {
                float b1 = bias ? bias[r + 1] : 0.0f;
                fi_push_row(h0, i0, kk, mask, r + 1, s[4] + b1);
                fi_push_row(h1, i1, kk, mask, r + 1, s[5] + b1);
                fi_push_row(h2, i2, kk, mask, r + 1, s[6] + b1);
                fi_push_row(h3, i3, kk, mask, r + 1, s[7] + b1);
            }
        }
    #else
        for (Py_ssize_t r = r0; r < r1; ++r) {
            const float* x = X + r * d;
            float b = bias ? bias[r] : 0.0f;
            fi_push_row(h0, i0, kk, mask, r, fi_dot1(x, q0, d) + b);
            fi_push_row(h1, i1, kk, mask, r, fi_dot1(x, q1, d) + b);
            fi_push_row(h2, i2, kk, mask, r, fi_dot1(x, q2, d) + b);
            fi_push_row(h3, i3, kk, mask, r, fi_dot1(x, q3, d) + b);
        }
    #endif
    }

    /* ------------------------------------------------------------------ */
    /* query panels: batches of queries, register-blocked.  Queries are    */
    /* packed transposed in panels of PW lanes (QT[p][j][l] =              */
    /* Q[p*PW+l][j], zero padded); a tile of PR rows x PW queries is       */
    /* accumulated in PR*PW/8 = 12 vector registers (outer products: one   */
    /* row value broadcast times PW query values per step j), so each row  */
    /* value loaded serves PW queries and each query value serves PR rows. */
    /* Two shapes: 6 rows x 16 queries for big batches, 12 rows x 8        */
    /* queries for small ones (half the padding work).  Every (row, query) */
    /* value is the same sequential sum over j whichever tile computes it  */
    /* (a short tail tile repeats its last row).  thr[q] holds the value   */
    /* of query q's heap root (+inf for padding lanes): a tile whose       */
    /* values are all below their roots costs a few vector compares.       */
    /* ------------------------------------------------------------------ */
    #define FI_TILE_LCM 12  /* a multiple of every PR: chunk sizes round to it */

    /* 1 if the panel kernels run as AVX2 + FMA code here: 16 ymm registers hold a
       tile.  Elsewhere (SSE2 baseline, no clones) a 6x16 tile spills and is 3-8x
       slower than the 2x4 tiles, so the automatic choice must not use panels. */
    static int fi_panels_fast(void) {
    #if FI_HAVE_VEC && defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__)
        return 1;
    #elif FI_HAVE_VEC && defined(FI_CLONES_ON)
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    #else
        return 0;
    #endif
    }
    #if FI_HAVE_VEC
    static inline int fi_any(fi_v8i m) {
        int64_t u[4];
        memcpy(u, &m, sizeof(u));
        return (u[0] | u[1] | u[2] | u[3]) != 0;
    }

    /* the rare path of a tile: push the values that reach their query's root */
    static void fi_panel_push(const float* s, Py_ssize_t pw, Py_ssize_t nr, Py_ssize_t lanes, Py_ssize_t q0,
                              Py_ssize_t r, const uint8_t* mask, float* hv, int64_t* hi, Py_ssize_t kk,
                              float* th) {
        for (Py_ssize_t i = 0; i < nr; ++i) {
            for (Py_ssize_t l = 0; l < lanes; ++l) {
                float v = s[i * pw + l];
                if (v < th[l]) continue;
                Py_ssize_t q = q0 + l;
                fi_push_row(hv + q * kk, hi + q * kk, kk, mask, r + i, v);
                th[l] = hv[q * kk];
            }
        }
    }

    /* FI_PANEL_KERNEL(name, PR, NV): PR rows x (8 * NV) queries per tile */
    #define FI_PANEL_KERNEL(NAME, PR, NV)                                                            \
    FI_CLONES static void NAME(const float* X, Py_ssize_t d, Py_ssize_t r0, Py_ssize_t r1,             \
                               const float* QT, Py_ssize_t npan, Py_ssize_t nq,                      \
                               const float* bias, const uint8_t* mask,                               \
                               float* hv, int64_t* hi, Py_ssize_t kk, float* thr) {                  \
        const Py_ssize_t pw = 8 * NV;                                                                \
        float s[PR * 8 * NV];                                                                        \
        for (Py_ssize_t r = r0; r < r1; r += PR) {                                                   \
            Py_ssize_t nr = (r1 - r < PR) ? r1 - r : PR;                                             \
            const float* x[PR];                                                                      \
            float b[PR];                                                                             \
            for (int i = 0; i < PR; ++i) {                                                           \
                Py_ssize_t ri = r + (i < nr ? i : nr - 1);                                           \
                x[i] = X + ri * d;                                                                   \
                b[i] = bias ? bias[ri] : 0.0f;                                                       \
            }                                                                                        \
            if (r + 2 * PR <= r1) {  /* the next tile's rows, while this one computes */             \
                const float* nx = X + (r + PR) * d;                                                  \
                for (Py_ssize_t j = 0; j < PR * d; j += 16) __builtin_prefetch(nx + j, 0, 3);       \
            }                                                                                        \
            for (Py_ssize_t p = 0; p < npan; ++p) {                                                  \
                const float* qt = QT + p * d * pw;                                                   \
                fi_v8 a[PR][NV];                                                                     \
                for (int i = 0; i < PR; ++i) for (int v = 0; v < NV; ++v) a[i][v] = (fi_v8){0};      \
                for (Py_ssize_t j = 0; j < d; ++j) {                                                 \
                    fi_v8 u[NV];                                                                     \
                    for (int v = 0; v < NV; ++v) u[v] = fi_load(qt + j * pw + 8 * v);                \
                    for (int i = 0; i < PR; ++i) {                                                   \
                        float w = x[i][j];                                                           \
                        for (int v = 0; v < NV; ++v) a[i][v] += w * u[v];                            \
                    }                                                                                \
                }                                                                                    \
                float* th = thr + p * pw;                                                            \
                fi_v8 t[NV];                                                                         \
                for (int v = 0; v < NV; ++v) t[v] = fi_load(th + 8 * v);                             \
                fi_v8i hit = {0};                                                                    \
                for (int i = 0; i < PR; ++i) for (int v = 0; v < NV; ++v) {                          \
                    a[i][v] += b[i];                                                                 \
                    hit |= a[i][v] >= t[v];                                                          \
                }                                                                                    \
                if (!fi_any(hit)) continue;                                                          \
                for (int i = 0; i < PR; ++i) for (int v = 0; v < NV; ++v)                            \
                    memcpy(s + i * pw + 8 * v, &a[i][v], sizeof(fi_v8));                             \
                Py_ssize_t lanes = nq - p * pw < pw ? nq - p * pw : pw;                              \
                fi_panel_push(s, pw, nr, lanes, p * pw, r, mask, hv, hi, kk, th);                    \
            }                                                                                        \
        }                                                                                            \
    }
    FI_PANEL_KERNEL(fi_ip_rows_panels16, 6, 2)
    FI_PANEL_KERNEL(fi_ip_rows_panels8, 12, 1)

    #else
    static void fi_panels_scalar(const float* X, Py_ssize_t d, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t pw,
                                 const float* QT, Py_ssize_t nq, const float* bias, const uint8_t* mask,
                                 float* hv, int64_t* hi, Py_ssize_t kk) {
        for (Py_ssize_t r = r0; r < r1; ++r) {
            const float* x = X + r * d;
            for (Py_ssize_t q = 0; q < nq; ++q) {
                const float* qt = QT + (q / pw) * d * pw + q % pw;
                float v = 0.0f;
                for (Py_ssize_t j = 0; j < d; ++j) v += x[j] * qt[j * pw];
                if (bias) v += bias[r];
                fi_push_row(hv + q * kk, hi + q * kk, kk, mask, r, v);
            }
        }
    }
    static void fi_ip_rows_panels16(const float* X, Py_ssize_t d, Py_ssize_t r0, Py_ssize_t r1,
                                    const float* QT, Py_ssize_t npan, Py_ssize_t nq, const float* bias,
                                    const uint8_t* mask, float* hv, int64_t* hi, Py_ssize_t kk, float* thr) {
        fi_panels_scalar(X, d, r0, r1, 16, QT, nq, bias, mask, hv, hi, kk);
    }
    static void fi_ip_rows_panels8(const float* X, Py_ssize_t d, Py_ssize_t r0, Py_ssize_t r1,
                                   const float* QT, Py_ssize_t npan, Py_ssize_t nq, const float* bias,
                                   const uint8_t* mask, float* hv, int64_t* hi, Py_ssize_t kk, float* thr) {
        fi_panels_scalar(X, d, r0, r1, 8, QT, nq, bias, mask, hv, hi, kk);
    }
    #endif

    /* ------------------------------------------------------------------ */
    /* direct kernels (metrics without an inner-product form).  Score is  */
    /* "higher is better"; aux is the per-query auxiliary vector:          */
    /*   1 chisqr:     aux = 1/q (0 where |q| <= DBL_EPSILON) -> -sum d^2*aux */
    /*   2 chisqr_alt: aux unused                     -> -sum d^2/(q+x)    */
    /*   3 intersect:  aux unused                     -> sum min(q, x)     */
    /*   4 kl_div:     aux = q (0 where skipped)      -> sum aux*log(x')   */
    /*   5 l1:         aux unused                     -> -sum |q - x|      */
    /* ------------------------------------------------------------------ */
    #define FI_DBL_EPS_F 2.220446049250313e-16f
    #define FI_KL_FLOOR_F 1e-10f

    static inline float fi_direct1(int kind, const float* x, const float* q, const float* aux,
                                   const int32_t* act, Py_ssize_t nact, Py_ssize_t d) {
        Py_ssize_t j = 0;
        float s = 0.0f;
        if (kind == 4) {
            for (Py_ssize_t t = 0; t < nact; ++t) {
                Py_ssize_t jj = act[t];
                float xv = x[jj];
                s += aux[jj] * logf(xv > FI_DBL_EPS_F ? xv : FI_KL_FLOOR_F);
            }
            return s;
        }
    #if FI_HAVE_VEC
        Py_ssize_t dv = d - d % 8;
        fi_v8 a = {0};
        const fi_v8i absmask = {0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff,
                                0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff};
        const fi_v8 zero = {0};
        switch (kind) {
        case 1:
            for (; j < dv; j += 8) { fi_v8 t = fi_load(x + j) - fi_load(q + j); a += t * t * fi_load(aux + j); }
            break;
        case 2:
            for (; j < dv; j += 8) {
                fi_v8 xv = fi_load(x + j), qv = fi_load(q + j);
                fi_v8 t = xv - qv, b = xv + qv;
                fi_v8i m = b > zero;
                a += (fi_v8)((fi_v8i)(t * t / b) & m);
            }
            break;
        case 3:
            for (; j < dv; j += 8) {
                fi_v8 xv = fi_load(x + j), qv = fi_load(q + j);
                fi_v8i m = xv < qv;
                a += (fi_v8)(((fi_v8i)xv & m) | ((fi_v8i)qv & ~m));
            }
            break;
        default:
            for (; j < dv; j += 8) a += (fi_v8)((fi_v8i)(fi_load(x + j) - fi_load(q + j)) & absmask);
            break;
        }
        s = fi_hsum(a);
    #endif
        switch (kind) {
        case 1: for (; j < d; ++j) { float t = x[j] - q[j]; s += t * t * aux[j]; } break;
        case 2: for (; j < d; ++j) { float t = x[j] - q[j], b = x[j] + q[j]; if (b > 0.0f) s += t * t / b; } break;
        case 3: for (; j < d; ++j) s += (x[j] < q[j] ? x[j] : q[j]); break;
        default: for (; j < d; ++j) s += fabsf(x[j] - q[j]); break;
        }
        return (kind == 3) ? s : -s;
    }

    FI_CLONES static void fi_direct_rows(int kind, const float* X, Py_ssize_t d, Py_ssize_t r0, Py_ssize_t r1,
                                         const float* Q, const float* AUX, const int32_t* ACT,
                                         const int64_t* NACT, Py_ssize_t nq, const uint8_t* mask,
                                         float* hv, int64_t* hi, Py_ssize_t kk) {
        for (Py_ssize_t r = r0; r < r1; ++r) {
            if (mask != NULL && mask[r]) continue;
            const float* x = X + r * d;
            for (Py_ssize_t qi = 0; qi < nq; ++qi) {
                float s = fi_direct1(kind, x, Q + qi * d, AUX + qi * d, ACT + qi * d, NACT[qi], d);
                fi_heap_push(hv + qi * kk, hi + qi * kk, kk, s, (int64_t)r);
            }
        }
    }

    /* sum of rows [r0, r1): the memory-read ceiling (same access pattern as the scan) */
    FI_CLONES static double fi_sum_rows(const float* X, Py_ssize_t d, Py_ssize_t r0, Py_ssize_t r1) {
        const float* p = X + r0 * d;
        Py_ssize_t n = (r1 - r0) * d, j = 0;
        float s = 0.0f;
    #if FI_HAVE_VEC
        fi_v8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        for (; j + 32 <= n; j += 32) {
            a0 += fi_load(p + j); a1 += fi_load(p + j + 8);
            a2 += fi_load(p + j + 16); a3 += fi_load(p + j + 24);
        }
        s = fi_hsum((a0 + a1) + (a2 + a3));
    #endif
        for (; j < n; ++j) s += p[j];
        return (double)s;
    }

    /* push a block of precomputed scores S (nq, c) for rows row0 .. row0+c-1 */
    static inline void fi_push_block(const float* s, Py_ssize_t c, Py_ssize_t row0, const float* bias,
                                     const uint8_t* mask, float* hv, int64_t* hi, Py_ssize_t kk) {
        for (Py_ssize_t j = 0; j < c; ++j) {
            Py_ssize_t r = row0 + j;
            fi_push_row(hv, hi, kk, mask, r, bias ? s[j] + bias[r] : s[j]);
        }
    }
    """
    int fi_better(float va, int64_t ia, float vb, int64_t ib) nogil
    void fi_heap_init(float* v, int64_t* id, Py_ssize_t n) nogil
    void fi_heap_push(float* v, int64_t* id, Py_ssize_t n, float val, int64_t idx) nogil
    void fi_heap_sort(float* v, int64_t* id, Py_ssize_t n) nogil
    void fi_ip_rows_q1(const float* X, Py_ssize_t d, Py_ssize_t r0, Py_ssize_t r1, const float* q,
                       const float* bias, const uint8_t* mask, float* hv, int64_t* hi, Py_ssize_t kk) nogil
    void fi_ip_rows_q4(const float* X, Py_ssize_t d, Py_ssize_t r0, Py_ssize_t r1, const float* q,
                       const float* bias, const uint8_t* mask, float* hv, int64_t* hi, Py_ssize_t kk) nogil
    void fi_ip_rows_panels16(const float* X, Py_ssize_t d, Py_ssize_t r0, Py_ssize_t r1, const float* QT,
                             Py_ssize_t npan, Py_ssize_t nq, const float* bias, const uint8_t* mask,
                             float* hv, int64_t* hi, Py_ssize_t kk, float* thr) nogil
    void fi_ip_rows_panels8(const float* X, Py_ssize_t d, Py_ssize_t r0, Py_ssize_t r1, const float* QT,
                            Py_ssize_t npan, Py_ssize_t nq, const float* bias, const uint8_t* mask,
                            float* hv, int64_t* hi, Py_ssize_t kk, float* thr) nogil
    int FI_TILE_LCM
    int fi_panels_fast()
    int FI_HAVE_VEC
    void fi_direct_rows(int kind, const float* X, Py_ssize_t d, Py_ssize_t r0, Py_ssize_t r1,
                        const float* Q, const float* AUX, const int32_t* ACT, const int64_t* NACT,
                        Py_ssize_t nq, const uint8_t* mask, float* hv, int64_t* hi, Py_ssize_t kk) nogil
    double fi_sum_rows(const float* X, Py_ssize_t d, Py_ssize_t r0, Py_ssize_t r1) nogil
    void fi_push_block(const float* s, Py_ssize_t c, Py_ssize_t row0, const float* bias,
                       const uint8_t* mask, float* hv, int64_t* hi, Py_ssize_t kk) nogil


#: panel widths of the batch kernel; ``fused_topk`` (``panels=-1``) uses narrow
#: panels for batches of ``PANEL_MIN_QUERIES`` .. ``PANEL_NARROW_MAX`` queries and
#: wide panels above (measured in bench/search.md)
PANEL_WIDTHS = (8, 16)
#: True when the panel kernels run as AVX2 + FMA code on this CPU; otherwise the
#: automatic choice keeps the 2 x 4 tiles (the panels spill without 16 ymm registers)
PANELS_FAST = bool(fi_panels_fast())
PANEL_MIN_QUERIES = 6
PANEL_NARROW_MAX = 8

# kind codes shared with fastimg.search
KIND_IP = 0
KIND_CHISQR = 1
KIND_CHISQR_ALT = 2
KIND_INTERSECT = 3
KIND_KL_DIV = 4
KIND_L1 = 5


def openmp_max_threads() -> int:
    """Number of threads OpenMP would use by default (1 if built without OpenMP)."""
    return openmp.omp_get_max_threads()


def openmp_num_procs() -> int:
    """Number of processors OpenMP sees."""
    return openmp.omp_get_num_procs()


def _aligned_rows(Py_ssize_t nrows, Py_ssize_t ncols, float fill):
    """float32 (nrows, >= ncols) filled with ``fill``, each row whole 64-byte lines
    starting on a 64-byte boundary."""
    cdef Py_ssize_t stride = (ncols + 15) // 16 * 16
    buf = np.full(nrows * stride + 16, fill, dtype=np.float32)
    off = (-buf.ctypes.data % 64) // 4
    return buf[off:off + nrows * stride].reshape(nrows, stride)


cdef inline const float* _fptr(const float[::1] a) noexcept nogil:
    return &a[0] if a.shape[0] > 0 else NULL


cdef inline const uint8_t* _mptr(const uint8_t[::1] a) noexcept nogil:
    return &a[0] if a.shape[0] > 0 else NULL


def fused_topk(
    const float[:, ::1] data,
    const float[:, ::1] queries,
    Py_ssize_t kk,
    int kind=0,
    const float[::1] bias=None,
    const uint8_t[::1] mask=None,
    const float[:, ::1] aux=None,
    const int32_t[:, ::1] active=None,
    const int64_t[::1] n_active=None,
    int n_threads=1,
    Py_ssize_t chunk_rows=2048,
    float[:, ::1] out_values=None,
    int64_t[:, ::1] out_ids=None,
    int panels=-1,
):
    """Top-``kk`` rows per query in one fused scoring + selection pass.

    Parameters
    ----------
    data : float32 (N, D), C-contiguous (read-only memmaps accepted)
        Rows (prepared rows for ``kind == KIND_IP``).
    queries : float32 (Q, D), C-contiguous
        Queries (prepared queries for ``kind == KIND_IP``).
    kk : int
        Number of results per query, ``0 <= kk``; slots beyond the available rows
        come back with id -1 and value -inf.
    kind : int
        ``KIND_IP`` (value = query . row + bias[row]) or one of the direct kinds.
    bias : float32 (N,) or None
    mask : uint8 (N,) or None
        Rows with a non-zero mask are skipped.
    aux, active, n_active
        Per-query auxiliary data of the direct kinds (see ``fastimg.search``).
    n_threads : int
        OpenMP threads; the rows are cut into ``chunk_rows`` chunks, statically
        distributed, each thread keeping its own heaps (merged at the end).
    chunk_rows : int
    out_values, out_ids : (Q, kk) arrays, optional
        Written in place (at the very end) and returned instead of new arrays.
    panels : int
        ``KIND_IP`` only: the register-blocked query-panel kernel with panels of
        8 or 16 queries (12 x 8 or 6 x 16 tiles), 0 for the older 4-query tiles,
        -1 (default) to choose by batch size (``PANEL_MIN_QUERIES``,
        ``PANEL_NARROW_MAX``; a single query streams each row once), panels only
        where ``PANELS_FAST``.

    Returns
    -------
    values : float32 (Q, kk)
        Best first ("higher is better" surrogate values).
    ids : int64 (Q, kk)

    Notes
    -----
    NumPy equivalent for ``KIND_IP`` (up to float32 rounding)::

        s = queries @ data.T + bias; s[:, mask != 0] = -inf
        order = np.lexsort((ids, -s)) per query, first kk
    """
    cdef Py_ssize_t n = data.shape[0], d = data.shape[1], nq = queries.shape[0]
    # shape checks only (O(1)): they keep a direct call from crashing the process
    if queries.shape[1] != d:
        raise ValueError(f"queries must have {d} columns; got {queries.shape[1]}")
    if kk < 0 or chunk_rows < 1 or n_threads < 1:
        raise ValueError(f"need kk >= 0, chunk_rows >= 1, n_threads >= 1; got {kk}, {chunk_rows}, {n_threads}")
    if kind < 0 or kind > 5:
        raise ValueError(f"kind must be in 0..5; got {kind}")
    if bias is not None and bias.shape[0] < n:
        raise ValueError(f"bias must have {n} entries; got {bias.shape[0]}")
    if mask is not None and mask.shape[0] < n:
        raise ValueError(f"mask must have {n} entries; got {mask.shape[0]}")
    if kind != 0:
        if aux is None or active is None or n_active is None:
            raise ValueError("the direct kinds need aux, active and n_active")
        if aux.shape[0] != nq or aux.shape[1] != d or active.shape[0] != nq or active.shape[1] != d \
                or n_active.shape[0] != nq:
            raise ValueError(f"aux and active must have shape ({nq}, {d}) and n_active ({nq},)")
        if kind == 4 and nq > 0:
            na = np.asarray(n_active)
            act = np.asarray(active)
            if na.min() < 0 or na.max() > d or act.min() < 0 or act.max() >= d:
                raise ValueError(f"n_active must be in [0, {d}] and active ids in [0, {d - 1}]")
    chunk_rows = min(chunk_rows, max(n, 1))  # no overflow below, whatever was passed
    cdef Py_ssize_t n_chunks = (n + chunk_rows - 1) // chunk_rows if n > 0 else 0
    cdef int nt = <int>max(1, min(<Py_ssize_t>n_threads, n_chunks))
    cdef Py_ssize_t c, r0, r1, t, qi, e, qb
    cdef int tid = 0
    cdef const float* pbias = _fptr(bias) if bias is not None else NULL
    cdef const uint8_t* pmask = _mptr(mask) if mask is not None else NULL
    cdef const float* paux = NULL
    cdef const int32_t* pact = NULL
    cdef const int64_t* pnact = NULL
    if kind != 0:
        paux = &aux[0, 0]
        pact = &active[0, 0]
        pnact = &n_active[0]

    if panels not in (-1, 0, 8, 16):
        raise ValueError(f"panels must be -1, 0, 8 or 16; got {panels}")
    cdef int pw = panels
    if panels < 0:
        pw = 0 if nq < PANEL_MIN_QUERIES or not PANELS_FAST else (8 if nq <= PANEL_NARROW_MAX else 16)
    if kind != 0 or nq == 0 or not FI_HAVE_VEC:
        pw = 0
    cdef Py_ssize_t npan = (nq + pw - 1) // pw if pw else 0
    cdef float[:, :, ::1] qt
    cdef float[:, ::1] thr
    if pw:
        # queries transposed into zero-padded panels: qt[p, j, l] = queries[p * pw + l, j]
        qpad = np.zeros((npan * pw, d), dtype=np.float32)
        qpad[:nq] = queries
        qt = np.ascontiguousarray(qpad.reshape(npan, pw, d).transpose(0, 2, 1))
        # per-thread heap-root values; padding lanes never admit a row (rows of
        # whole 64-byte lines from a 64-byte boundary: threads share no line)
        thr_arr = _aligned_rows(nt, npan * pw, np.inf)
        thr_arr[:, :nq] = -np.inf
        thr = thr_arr
        if chunk_rows % FI_TILE_LCM:  # whole tiles per chunk
            chunk_rows += FI_TILE_LCM - chunk_rows % FI_TILE_LCM
            n_chunks = (n + chunk_rows - 1) // chunk_rows if n > 0 else 0
            nt = <int>max(1, min(<Py_ssize_t>n_threads, n_chunks))
    heap_v_arr = np.empty((nt, nq, kk), dtype=np.float32)
    heap_i_arr = np.empty((nt, nq, kk), dtype=np.int64)
    cdef float[:, :, ::1] hv = heap_v_arr
    cdef int64_t[:, :, ::1] hi = heap_i_arr
    cdef const float* X = &data[0, 0] if n > 0 else NULL
    cdef const float* Qp = &queries[0, 0] if nq > 0 else NULL
    cdef bint has_out = out_values is not None
    if has_out:
        if out_ids is None or out_values.shape[0] != nq or out_values.shape[1] != kk \
                or out_ids.shape[0] != nq or out_ids.shape[1] != kk:
            raise ValueError(f"out_values and out_ids must both have shape ({nq}, {kk})")
    if nq == 0 or kk == 0:
        if has_out:
            return out_values.base, out_ids.base
        return heap_v_arr[0], heap_i_arr[0]

    with nogil:
        for t in range(nt):
            for qi in range(nq):
                fi_heap_init(&hv[t, qi, 0], &hi[t, qi, 0], kk)
        with parallel(num_threads=nt):
            tid = threadid()
            for c in prange(n_chunks, schedule="static"):
                r0 = c * chunk_rows
                r1 = min(n, r0 + chunk_rows)
                if pw == 16:
                    fi_ip_rows_panels16(X, d, r0, r1, &qt[0, 0, 0], npan, nq, pbias, pmask,
                                        &hv[tid, 0, 0], &hi[tid, 0, 0], kk, &thr[tid, 0])
                elif pw == 8:
                    fi_ip_rows_panels8(X, d, r0, r1, &qt[0, 0, 0], npan, nq, pbias, pmask,
                                       &hv[tid, 0, 0], &hi[tid, 0, 0], kk, &thr[tid, 0])
                elif kind == 0:
                    qb = 0
                    while qb + 4 <= nq:
                        fi_ip_rows_q4(X, d, r0, r1, Qp + qb * d, pbias, pmask,
                                      &hv[tid, qb, 0], &hi[tid, qb, 0], kk)
                        qb = qb + 4
                    while qb < nq:
                        fi_ip_rows_q1(X, d, r0, r1, Qp + qb * d, pbias, pmask,
                                      &hv[tid, qb, 0], &hi[tid, qb, 0], kk)
                        qb = qb + 1
                else:
                    fi_direct_rows(kind, X, d, r0, r1, Qp, paux, pact, pnact, nq, pmask,
                                   &hv[tid, 0, 0], &hi[tid, 0, 0], kk)
        # merge the per-thread heaps into thread 0's, then sort
        for qi in prange(nq, num_threads=nt, schedule="static"):
            for t in range(1, nt):
                for e in range(kk):
                    fi_heap_push(&hv[0, qi, 0], &hi[0, qi, 0], kk, hv[t, qi, e], hi[t, qi, e])
            fi_heap_sort(&hv[0, qi, 0], &hi[0, qi, 0], kk)
            if has_out:
                for e in range(kk):
                    out_values[qi, e] = hv[0, qi, e]
                    out_ids[qi, e] = hi[0, qi, e]
    if has_out:
        return out_values.base, out_ids.base
    return heap_v_arr[0], heap_i_arr[0]


def read_sum(const float[:, ::1] data, int n_threads=1, Py_ssize_t chunk_rows=4096) -> float:
    """Sum of all elements, read like :func:`fused_topk` reads rows (OpenMP over
    row chunks, vector loads).  The memory-read ceiling of the benchmarks.

    NumPy equivalent: ``float(data.sum(dtype=np.float64))`` (up to float32 rounding).
    """
    cdef Py_ssize_t n = data.shape[0], d = data.shape[1], c, r0
    cdef Py_ssize_t n_chunks = (n + chunk_rows - 1) // chunk_rows
    cdef int nt = <int>max(1, min(<Py_ssize_t>n_threads, n_chunks))
    cdef double total = 0.0
    if n == 0 or d == 0:
        return 0.0
    cdef const float* X = &data[0, 0]
    with nogil:
        for c in prange(n_chunks, num_threads=nt, schedule="static"):
            r0 = c * chunk_rows
            total += fi_sum_rows(X, d, r0, min(n, r0 + chunk_rows))
    return total


def heap_new(Py_ssize_t nq, Py_ssize_t kk):
    """Empty heaps for :func:`heap_push_block`: ``(values float32 (nq, kk), ids int64 (nq, kk))``."""
    vals = np.full((nq, kk), -np.inf, dtype=np.float32)
    ids = np.full((nq, kk), np.iinfo(np.int64).max, dtype=np.int64)
    return vals, ids


def heap_push_block(
    const float[:, ::1] scores,
    Py_ssize_t row0,
    float[:, ::1] heap_values,
    int64_t[:, ::1] heap_ids,
    const float[::1] bias=None,
    const uint8_t[::1] mask=None,
    int n_threads=1,
):
    """Offer a block of precomputed scores to per-query heaps (GEMM path).

    Parameters
    ----------
    scores : float32 (Q, C)
        ``scores[q, j]`` is the value of row ``row0 + j`` for query ``q`` (before bias).
    row0 : int
        Id of the block's first row.
    heap_values, heap_ids : (Q, kk)
        Heaps from :func:`heap_new`, updated in place.
    bias : float32 (N,) or None
        Added to each score (indexed by row id).
    mask : uint8 (N,) or None
        Rows with non-zero mask are skipped.
    n_threads : int
        Threads over queries.
    """
    cdef Py_ssize_t nq = scores.shape[0], c = scores.shape[1], kk = heap_values.shape[1], qi
    if heap_values.shape[0] != nq or heap_ids.shape[0] != nq or heap_ids.shape[1] != kk:
        raise ValueError(f"heaps must have shape ({nq}, {kk}) like heap_new({nq}, kk)")
    if row0 < 0 or (bias is not None and bias.shape[0] < row0 + c) or (mask is not None and mask.shape[0] < row0 + c):
        raise ValueError(f"bias and mask must cover rows {row0}..{row0 + c - 1}")
    cdef const float* pbias = _fptr(bias) if bias is not None else NULL
    cdef const uint8_t* pmask = _mptr(mask) if mask is not None else NULL
    cdef int nt = <int>max(1, min(<Py_ssize_t>n_threads, nq))
    if nq == 0 or c == 0 or kk == 0:
        return
    with nogil:
        for qi in prange(nq, num_threads=nt, schedule="static"):
            fi_push_block(&scores[qi, 0], c, row0, pbias, pmask, &heap_values[qi, 0], &heap_ids[qi, 0], kk)


def heap_finish(float[:, ::1] heap_values, int64_t[:, ::1] heap_ids, int n_threads=1):
    """Sort heaps in place, best first (higher value, then lower id); empty slots get id -1."""
    cdef Py_ssize_t nq = heap_values.shape[0], kk = heap_values.shape[1], qi
    cdef int nt = <int>max(1, min(<Py_ssize_t>n_threads, nq))
    if heap_ids.shape[0] != nq or heap_ids.shape[1] != kk:
        raise ValueError(f"heap_ids must have shape ({nq}, {kk}); got ({heap_ids.shape[0]}, {heap_ids.shape[1]})")
    if nq == 0 or kk == 0:
        return
    with nogil:
        for qi in prange(nq, num_threads=nt, schedule="static"):
            fi_heap_sort(&heap_values[qi, 0], &heap_ids[qi, 0], kk)


def _heap_topk_test(const float[::1] values, Py_ssize_t k, const int64_t[::1] ids=None):
    """Test hook: push every ``(values[i], ids[i])`` (ids default to ``i``) through a
    bounded heap of size ``k`` and return its sorted content.

    Returns
    -------
    values : float32 (k,)
        Best first; NumPy equivalent: ``order = np.lexsort((ids, -values))[:k]``.
    ids : int64 (k,)
        Slots beyond ``len(values)`` have id -1 and value -inf.
    """
    cdef Py_ssize_t n = values.shape[0], i
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    if ids is not None and ids.shape[0] != n:
        raise ValueError(f"ids must have the length of values ({n}); got {ids.shape[0]}")
    out_v = np.empty(k, dtype=np.float32)
    out_i = np.empty(k, dtype=np.int64)
    cdef float[::1] hv = out_v
    cdef int64_t[::1] hi = out_i
    cdef bint has_ids = ids is not None
    with nogil:
        fi_heap_init(&hv[0], &hi[0], k)
        for i in range(n):
            fi_heap_push(&hv[0], &hi[0], k, values[i], ids[i] if has_ids else i)
        fi_heap_sort(&hv[0], &hi[0], k)
    return out_v, out_i
