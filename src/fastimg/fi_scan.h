/* fi_scan.h - the scanning kernels of fastimg (plain C99 + GCC/Clang vector
 * extensions): score rows of a float32 matrix against queries and push every
 * value into per-query bounded heaps (fi_heap.h), in one pass over the rows.
 *
 *   fi_ip_rows_q1        one query: each row streamed once (4 accumulators)
 *   fi_ip_rows_q4        four queries: 2-row x 4-query tiles
 *   fi_ip_rows_panels8   query panels (transposed, zero padded): 12 x 8 tiles
 *   fi_ip_rows_panels16  query panels: 6 x 16 tiles
 *   fi_direct_rows       the metrics without an inner-product form (fi_kind)
 *   fi_sum_rows          a plain sum, same access pattern (the read ceiling)
 *
 * Every function handles rows [r0, r1) of X (row stride d) and trusts its
 * arguments (fastimg.search validates them).  Values are "higher is better".
 * On x86-64 Linux with GCC the hot functions are compiled twice through
 * target_clones (x86-64-v3: AVX2 + FMA, and the baseline), picked at load time;
 * define FASTIMG_NO_CLONES to build the baseline only.  Never -march=native.
 *
 * Declared for Cython in _scan.pxd.  Check with: gcc -std=gnu99 -fsyntax-only fi_scan.h
 */
#ifndef FASTIMG_FI_SCAN_H
#define FASTIMG_FI_SCAN_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fi_heap.h"

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

/* what fi_direct_rows computes ("higher is better"); FI_KIND_IP is the
   inner-product family (fi_ip_rows_*), scored as query . row + bias[row] */
typedef enum {
    FI_KIND_IP = 0,
    FI_KIND_CHISQR = 1,      /* aux = 1/q (0 where |q| <= DBL_EPSILON) -> -sum d^2 * aux  */
    FI_KIND_CHISQR_ALT = 2,  /* aux unused                        -> -sum d^2 / (q + x)  */
    FI_KIND_INTERSECT = 3,   /* aux unused                        ->  sum min(q, x)      */
    FI_KIND_KL_DIV = 4,      /* aux = q over the active bins       ->  sum aux * log(x')  */
    FI_KIND_L1 = 5,          /* aux unused                        -> -sum |q - x|        */
    FI_N_KINDS = 6
} fi_kind;

/* ------------------------------------------------------------------ */
/* inner-product kernels.  Every (row, query) pair is computed with the */
/* same operation sequence: one 8-lane accumulator over j = 0, 8, ...,  */
/* a fixed-order horizontal sum, then the scalar tail; so the value of  */
/* a row never depends on the tile it was computed in.                 */
/* ------------------------------------------------------------------ */
#if defined(__GNUC__)
typedef float fi_v8 __attribute__((vector_size(32)));
typedef int32_t fi_v8i __attribute__((vector_size(32)));
/* helpers that take or return vectors are always inlined: a target_clones caller
   (AVX: vectors passed in ymm registers) must never call a baseline copy
   (vectors passed in memory), which is what an -O0 build (FASTIMG_DEBUG=1)
   would do otherwise, reading garbage */
#define FI_VEC_INLINE static inline __attribute__((always_inline))
FI_VEC_INLINE fi_v8 fi_load(const float* p) { fi_v8 r; memcpy(&r, p, sizeof(r)); return r; }
FI_VEC_INLINE float fi_hsum(fi_v8 a) {
    return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}
#define FI_HAVE_VEC 1
#else
#define FI_HAVE_VEC 0
#endif

static inline float fi_dot_tail(const float* x, const float* q, ptrdiff_t j0, ptrdiff_t d, float s) {
    for (ptrdiff_t j = j0; j < d; ++j) s += x[j] * q[j];
    return s;
}

#if FI_HAVE_VEC
#define FI_VSTEP 8
#else
#define FI_VSTEP 1
#endif

static inline float fi_dot1(const float* x, const float* q, ptrdiff_t d) {
#if FI_HAVE_VEC
    ptrdiff_t dv = d - d % 8;
    fi_v8 a = {0};
    for (ptrdiff_t j = 0; j < dv; j += 8) a += fi_load(x + j) * fi_load(q + j);
    return fi_dot_tail(x, q, dv, d, fi_hsum(a));
#else
    return fi_dot_tail(x, q, 0, d, 0.0f);
#endif
}

/* one query: each row is read as one forward stream with four 8-lane
   accumulators (j mod 32), combined in a fixed order, then the scalar tail */
static inline float fi_dot1_stream(const float* x, const float* q, ptrdiff_t d) {
#if FI_HAVE_VEC
    ptrdiff_t j = 0;
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

FI_CLONES static void fi_ip_rows_q1(const float* X, ptrdiff_t d, ptrdiff_t r0, ptrdiff_t r1,
                                    const float* q, const float* bias, const uint8_t* mask,
                                    float* hv, int64_t* hi, ptrdiff_t kk) {
    for (ptrdiff_t r = r0; r < r1; ++r) {
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
FI_VEC_INLINE fi_v8 fi_pairsum(fi_v8 a, fi_v8 b) { return FI_EVENS(a, b) + FI_ODDS(a, b); }

/* dot products of 2 rows x 4 queries (out[4 * row + query]); every pair is
   computed by the same operation sequence, whichever rows are paired (a lone
   tail row is paired with itself) */
static inline void fi_tile_2x4(const float* x0, const float* x1, const float* q0, const float* q1,
                               const float* q2, const float* q3, ptrdiff_t d, float* out) {
    ptrdiff_t dv = d - d % 8;
    fi_v8 a00 = {0}, a01 = {0}, a02 = {0}, a03 = {0};
    fi_v8 a10 = {0}, a11 = {0}, a12 = {0}, a13 = {0};
    for (ptrdiff_t j = 0; j < dv; j += 8) {
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
FI_CLONES static void fi_ip_rows_q4(const float* X, ptrdiff_t d, ptrdiff_t r0, ptrdiff_t r1,
                                    const float* q, const float* bias, const uint8_t* mask,
                                    float* hv, int64_t* hi, ptrdiff_t kk) {
    const float* q0 = q; const float* q1 = q + d; const float* q2 = q + 2 * d; const float* q3 = q + 3 * d;
    float* h0 = hv; float* h1 = hv + kk; float* h2 = hv + 2 * kk; float* h3 = hv + 3 * kk;
    int64_t* i0 = hi; int64_t* i1 = hi + kk; int64_t* i2 = hi + 2 * kk; int64_t* i3 = hi + 3 * kk;
#if FI_HAVE_VEC
    float s[8];
    for (ptrdiff_t r = r0; r < r1; r += 2) {
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
    for (ptrdiff_t r = r0; r < r1; ++r) {
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
   tile.  Elsewhere (SSE2 baseline, no clones) a tile spills to memory and the
   2x4 tiles are faster (bench/search.md), so the automatic choice must not use
   panels. */
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
FI_VEC_INLINE int fi_any(fi_v8i m) {
    int64_t u[4];
    memcpy(u, &m, sizeof(u));
    return (u[0] | u[1] | u[2] | u[3]) != 0;
}

/* FI_PANEL_KERNEL(name, PR, NV): PR rows x (8 * NV) queries per tile */
#define FI_PANEL_KERNEL(NAME, PR, NV)                                                                \
FI_CLONES static void NAME(const float* X, ptrdiff_t d, ptrdiff_t r0, ptrdiff_t r1,                  \
                           const float* QT, ptrdiff_t npan, ptrdiff_t nq,                            \
                           const float* bias, const uint8_t* mask,                                   \
                           float* hv, int64_t* hi, ptrdiff_t kk, float* thr) {                       \
    const ptrdiff_t pw = 8 * NV;                                                                     \
    float s[PR * 8 * NV];                                                                            \
    for (ptrdiff_t r = r0; r < r1; r += PR) {                                                        \
        ptrdiff_t nr = (r1 - r < PR) ? r1 - r : PR;                                                  \
        const float* x[PR];                                                                          \
        float b[PR];                                                                                 \
        for (int i = 0; i < PR; ++i) {                                                               \
            ptrdiff_t ri = r + (i < nr ? i : nr - 1);                                                \
            x[i] = X + ri * d;                                                                       \
            b[i] = bias ? bias[ri] : 0.0f;                                                           \
        }                                                                                            \
        if (r + 2 * PR <= r1) {  /* the next tile's rows, while this one computes */                 \
            const float* nx = X + (r + PR) * d;                                                      \
            for (ptrdiff_t j = 0; j < PR * d; j += 16) __builtin_prefetch(nx + j, 0, 3);             \
        }                                                                                            \
        for (ptrdiff_t p = 0; p < npan; ++p) {                                                       \
            const float* qt = QT + p * d * pw;                                                       \
            fi_v8 a[PR][NV];                                                                         \
            for (int i = 0; i < PR; ++i) for (int v = 0; v < NV; ++v) a[i][v] = (fi_v8){0};          \
            for (ptrdiff_t j = 0; j < d; ++j) {                                                      \
                fi_v8 u[NV];                                                                         \
                for (int v = 0; v < NV; ++v) u[v] = fi_load(qt + j * pw + 8 * v);                    \
                for (int i = 0; i < PR; ++i) {                                                       \
                    float w = x[i][j];                                                               \
                    for (int v = 0; v < NV; ++v) a[i][v] += w * u[v];                                \
                }                                                                                    \
            }                                                                                        \
            float* th = thr + p * pw;                                                                \
            fi_v8 t[NV];                                                                             \
            for (int v = 0; v < NV; ++v) t[v] = fi_load(th + 8 * v);                                 \
            fi_v8i hit = {0};                                                                        \
            for (int i = 0; i < PR; ++i) for (int v = 0; v < NV; ++v) {                              \
                a[i][v] += b[i];                                                                     \
                hit |= a[i][v] >= t[v];                                                              \
            }                                                                                        \
            if (!fi_any(hit)) continue;                                                              \
            for (int i = 0; i < PR; ++i) for (int v = 0; v < NV; ++v)                                \
                memcpy(s + i * pw + 8 * v, &a[i][v], sizeof(fi_v8));                                 \
            ptrdiff_t lanes = nq - p * pw < pw ? nq - p * pw : pw;                                   \
            fi_panel_push(s, pw, nr, lanes, p * pw, r, mask, hv, hi, kk, th);                        \
        }                                                                                            \
    }                                                                                                \
}
FI_PANEL_KERNEL(fi_ip_rows_panels16, 6, 2)
FI_PANEL_KERNEL(fi_ip_rows_panels8, 12, 1)

#else
static void fi_panels_scalar(const float* X, ptrdiff_t d, ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t pw,
                             const float* QT, ptrdiff_t nq, const float* bias, const uint8_t* mask,
                             float* hv, int64_t* hi, ptrdiff_t kk) {
    for (ptrdiff_t r = r0; r < r1; ++r) {
        const float* x = X + r * d;
        for (ptrdiff_t q = 0; q < nq; ++q) {
            const float* qt = QT + (q / pw) * d * pw + q % pw;
            float v = 0.0f;
            for (ptrdiff_t j = 0; j < d; ++j) v += x[j] * qt[j * pw];
            if (bias) v += bias[r];
            fi_push_row(hv + q * kk, hi + q * kk, kk, mask, r, v);
        }
    }
}
static void fi_ip_rows_panels16(const float* X, ptrdiff_t d, ptrdiff_t r0, ptrdiff_t r1,
                                const float* QT, ptrdiff_t npan, ptrdiff_t nq, const float* bias,
                                const uint8_t* mask, float* hv, int64_t* hi, ptrdiff_t kk, float* thr) {
    fi_panels_scalar(X, d, r0, r1, 16, QT, nq, bias, mask, hv, hi, kk);
}
static void fi_ip_rows_panels8(const float* X, ptrdiff_t d, ptrdiff_t r0, ptrdiff_t r1,
                               const float* QT, ptrdiff_t npan, ptrdiff_t nq, const float* bias,
                               const uint8_t* mask, float* hv, int64_t* hi, ptrdiff_t kk, float* thr) {
    fi_panels_scalar(X, d, r0, r1, 8, QT, nq, bias, mask, hv, hi, kk);
}
#endif

/* ------------------------------------------------------------------ */
/* direct kernels (metrics without an inner-product form): the score  */
/* of each kind is in the fi_kind enum; aux is the per-query auxiliary */
/* vector, act[0 .. nact) the active bins of FI_KIND_KL_DIV.           */
/* ------------------------------------------------------------------ */
#define FI_DBL_EPS_F 2.220446049250313e-16f
#define FI_KL_FLOOR_F 1e-10f

static inline float fi_direct1(fi_kind kind, const float* x, const float* q, const float* aux,
                               const int32_t* act, ptrdiff_t nact, ptrdiff_t d) {
    ptrdiff_t j = 0;
    float s = 0.0f;
    if (kind == FI_KIND_KL_DIV) {
        for (ptrdiff_t t = 0; t < nact; ++t) {
            ptrdiff_t jj = act[t];
            float xv = x[jj];
            s += aux[jj] * logf(xv > FI_DBL_EPS_F ? xv : FI_KL_FLOOR_F);
        }
        return s;
    }
#if FI_HAVE_VEC
    ptrdiff_t dv = d - d % 8;
    fi_v8 a = {0};
    const fi_v8i absmask = {0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff,
                            0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff};
    const fi_v8 zero = {0};
    switch (kind) {
    case FI_KIND_CHISQR:
        for (; j < dv; j += 8) { fi_v8 t = fi_load(x + j) - fi_load(q + j); a += t * t * fi_load(aux + j); }
        break;
    case FI_KIND_CHISQR_ALT:
        for (; j < dv; j += 8) {
            fi_v8 xv = fi_load(x + j), qv = fi_load(q + j);
            fi_v8 t = xv - qv, b = xv + qv;
            fi_v8i m = b > zero;
            a += (fi_v8)((fi_v8i)(t * t / b) & m);
        }
        break;
    case FI_KIND_INTERSECT:
        for (; j < dv; j += 8) {
            fi_v8 xv = fi_load(x + j), qv = fi_load(q + j);
            fi_v8i m = xv < qv;
            a += (fi_v8)(((fi_v8i)xv & m) | ((fi_v8i)qv & ~m));
        }
        break;
    default:  /* FI_KIND_L1 */
        for (; j < dv; j += 8) a += (fi_v8)((fi_v8i)(fi_load(x + j) - fi_load(q + j)) & absmask);
        break;
    }
    s = fi_hsum(a);
#endif
    switch (kind) {
    case FI_KIND_CHISQR: for (; j < d; ++j) { float t = x[j] - q[j]; s += t * t * aux[j]; } break;
    case FI_KIND_CHISQR_ALT: for (; j < d; ++j) { float t = x[j] - q[j], b = x[j] + q[j]; if (b > 0.0f) s += t * t / b; } break;
    case FI_KIND_INTERSECT: for (; j < d; ++j) s += (x[j] < q[j] ? x[j] : q[j]); break;
    default: for (; j < d; ++j) s += fabsf(x[j] - q[j]); break;
    }
    return (kind == FI_KIND_INTERSECT) ? s : -s;
}

FI_CLONES static void fi_direct_rows(fi_kind kind, const float* X, ptrdiff_t d, ptrdiff_t r0, ptrdiff_t r1,
                                     const float* Q, const float* AUX, const int32_t* ACT,
                                     const int64_t* NACT, ptrdiff_t nq, const uint8_t* mask,
                                     float* hv, int64_t* hi, ptrdiff_t kk) {
    for (ptrdiff_t r = r0; r < r1; ++r) {
        if (mask != NULL && mask[r]) continue;
        const float* x = X + r * d;
        for (ptrdiff_t qi = 0; qi < nq; ++qi) {
            float s = fi_direct1(kind, x, Q + qi * d, AUX + qi * d, ACT + qi * d, NACT[qi], d);
            fi_heap_push(hv + qi * kk, hi + qi * kk, kk, s, (int64_t)r);
        }
    }
}

/* sum of rows [r0, r1): the memory-read ceiling (same access pattern as the scan) */
FI_CLONES static double fi_sum_rows(const float* X, ptrdiff_t d, ptrdiff_t r0, ptrdiff_t r1) {
    const float* p = X + r0 * d;
    ptrdiff_t n = (r1 - r0) * d, j = 0;
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

#endif /* FASTIMG_FI_SCAN_H */
