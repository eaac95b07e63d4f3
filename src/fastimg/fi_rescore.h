/* fi_rescore.h: float64 re-scoring of candidate rows, bit-identical to NumPy.
 *
 * fastimg.metrics._exact_block defines the exact scores of the searches with
 * NumPy: float32 rows and queries converted to float64, element-wise products,
 * then `.sum(axis=-1)` of C-contiguous float64 rows.  NumPy reduces a contiguous
 * float64 row with its pairwise sum (numpy/_core/src/umath/loops_utils.h.src,
 * `DOUBLE_pairwise_sum`), added to the reduction's initial value 0.0:
 *
 *   n < 8:     res = 0.0; res += a[i] in order
 *   n <= 128:  8 accumulators r[j] = a[j], then r[j] += a[i + j] for each whole
 *              block of 8; res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7));
 *              then res += a[i] for the n % 8 rest
 *   n > 128:   n2 = n / 2 rounded down to a multiple of 8;
 *              pairwise(a, n2) + pairwise(a + n2, n - n2)
 *
 * The functions below follow that order term by term, several sums of the same
 * length at once (the split points depend on n only), and evaluate the formulas
 * of _exact_block operation by operation.  Contracting a multiply and an add into
 * one FMA would change roundings (e.g. 1 - bc * inv), so contraction is off here.
 * tests/test_rescore_kernel.py checks the values against _exact_block bit for bit.
 */
#ifndef FI_RESCORE_H
#define FI_RESCORE_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif

/* what fi_rescore_rows computes (fastimg._core exports them as RESCORE_*) */
enum { FI_RS_COSINE = 0, FI_RS_PEARSON = 1, FI_RS_L2 = 2, FI_RS_BHATTACHARYYA = 3, FI_RS_N = 4 };

#define FI_RS_BLOCK 128 /* NumPy's PW_BLOCKSIZE */

/* The terms summed per metric, for element i of row x against query q:
 *   COSINE:        t0 = x*x, t1 = x*q
 *   PEARSON:       t0 = x,   t1 = x*x, t2 = x*q
 *   L2:            t0 = (x-q)*(x-q)
 *   BHATTACHARYYA: t0 = sqrt(x*q), t1 = x
 * Products of two float32 values are exact in float64. */
#define FI_RS_TERMS(KIND, x, q, i, t)                                              \
    do {                                                                           \
        const double xv_ = (double)(x)[i], qv_ = (double)(q)[i];                   \
        if ((KIND) == FI_RS_COSINE) { t[0] = xv_ * xv_; t[1] = xv_ * qv_; }        \
        else if ((KIND) == FI_RS_PEARSON) { t[0] = xv_; t[1] = xv_ * xv_; t[2] = xv_ * qv_; } \
        else if ((KIND) == FI_RS_L2) { const double d_ = xv_ - qv_; t[0] = d_ * d_; } \
        else { t[0] = sqrt(xv_ * qv_); t[1] = xv_; }                               \
    } while (0)

#define FI_RS_NS(KIND) ((KIND) == FI_RS_PEARSON ? 3 : (KIND) == FI_RS_L2 ? 1 : 2)

/* out[s] = NumPy's pairwise sum of term s over elements [0, n) (without the
 * initial 0.0 of the reduction: fi_rs_sums adds it) */
#define FI_RS_DEFINE_PW(KIND, NAME)                                                \
static void NAME(const float* x, const float* q, ptrdiff_t n, double* out)         \
{                                                                                  \
    enum { NS = FI_RS_NS(KIND) };                                                  \
    double t[3];                                                                   \
    if (n < 8) {                                                                   \
        double res[3] = {0.0, 0.0, 0.0};                                           \
        for (ptrdiff_t i = 0; i < n; ++i) {                                        \
            FI_RS_TERMS(KIND, x, q, i, t);                                         \
            for (int s = 0; s < NS; ++s) res[s] += t[s];                           \
        }                                                                          \
        for (int s = 0; s < NS; ++s) out[s] = res[s];                              \
    } else if (n <= FI_RS_BLOCK) {                                                 \
        double r[3][8];                                                            \
        ptrdiff_t i;                                                               \
        for (int j = 0; j < 8; ++j) {                                              \
            FI_RS_TERMS(KIND, x, q, j, t);                                         \
            for (int s = 0; s < NS; ++s) r[s][j] = t[s];                           \
        }                                                                          \
        for (i = 8; i < n - (n % 8); i += 8) {                                     \
            for (int j = 0; j < 8; ++j) {                                          \
                FI_RS_TERMS(KIND, x, q, i + j, t);                                 \
                for (int s = 0; s < NS; ++s) r[s][j] += t[s];                      \
            }                                                                      \
        }                                                                          \
        for (int s = 0; s < NS; ++s)                                               \
            out[s] = ((r[s][0] + r[s][1]) + (r[s][2] + r[s][3])) +                 \
                     ((r[s][4] + r[s][5]) + (r[s][6] + r[s][7]));                  \
        for (; i < n; ++i) {                                                       \
            FI_RS_TERMS(KIND, x, q, i, t);                                         \
            for (int s = 0; s < NS; ++s) out[s] += t[s];                           \
        }                                                                          \
    } else {                                                                       \
        ptrdiff_t n2 = n / 2;                                                      \
        double a[3], b[3];                                                         \
        n2 -= n2 % 8;                                                              \
        NAME(x, q, n2, a);                                                         \
        NAME(x + n2, q + n2, n - n2, b);                                           \
        for (int s = 0; s < NS; ++s) out[s] = a[s] + b[s];                         \
    }                                                                              \
}

FI_RS_DEFINE_PW(FI_RS_COSINE, fi_rs_pw_cosine)
FI_RS_DEFINE_PW(FI_RS_PEARSON, fi_rs_pw_pearson)
FI_RS_DEFINE_PW(FI_RS_L2, fi_rs_pw_l2)
FI_RS_DEFINE_PW(FI_RS_BHATTACHARYYA, fi_rs_pw_bhatt)

/* NumPy's `a.sum(axis=-1)` of the terms: the reduction starts from 0.0 */
static inline void fi_rs_sums(int kind, const float* x, const float* q, ptrdiff_t d, double* out)
{
    switch (kind) {
    case FI_RS_COSINE: fi_rs_pw_cosine(x, q, d, out); break;
    case FI_RS_PEARSON: fi_rs_pw_pearson(x, q, d, out); break;
    case FI_RS_L2: fi_rs_pw_l2(x, q, d, out); break;
    default: fi_rs_pw_bhatt(x, q, d, out); break;
    }
    for (int s = 0; s < FI_RS_NS(kind); ++s) out[s] = 0.0 + out[s];
}

/* Per-query sums the formulas need (from the query alone), qs[0..1]:
 *   COSINE: sum q*q; PEARSON: sum q, sum q*q; BHATTACHARYYA: sum q; L2: none */
static inline void fi_rs_query(int kind, const float* q, ptrdiff_t d, double* qs)
{
    double t[3] = {0.0, 0.0, 0.0};
    qs[0] = qs[1] = 0.0;
    if (kind == FI_RS_COSINE) {
        fi_rs_sums(FI_RS_COSINE, q, q, d, t); /* t[0] = sum q*q */
        qs[0] = t[0];
    } else if (kind == FI_RS_PEARSON) {
        fi_rs_sums(FI_RS_PEARSON, q, q, d, t); /* t[0] = sum q, t[1] = sum q*q */
        qs[0] = t[0];
        qs[1] = t[1];
    } else if (kind == FI_RS_BHATTACHARYYA) {
        fi_rs_sums(FI_RS_BHATTACHARYYA, q, q, d, t); /* t[1] = sum q */
        qs[0] = t[1];
    }
}

/* The score of row x against query q (qs: fi_rs_query), as _exact_block computes it */
static inline double fi_rs_score(int kind, const float* x, const float* q, ptrdiff_t d, const double* qs)
{
    double t[3] = {0.0, 0.0, 0.0};
    fi_rs_sums(kind, x, q, d, t);
    if (kind == FI_RS_COSINE) {
        /* den = sqrt(sum q*q) * sqrt(sum x*x); where(den > 0, dot / den, 0) */
        const double den = sqrt(qs[0]) * sqrt(t[0]);
        return den > 0 ? t[1] / den : 0.0;
    }
    if (kind == FI_RS_PEARSON) {
        const double s1 = qs[0], s11 = qs[1], s2 = t[0], s22 = t[1], s12 = t[2];
        const double scale = 1.0 / (double)d;
        const double num = s12 - s1 * s2 * scale;
        const double denom2 = (s11 - s1 * s1 * scale) * (s22 - s2 * s2 * scale);
        return fabs(denom2) > 2.220446049250313e-16 ? num / sqrt(fabs(denom2)) : 1.0;
    }
    if (kind == FI_RS_L2) return sqrt(t[0]);
    {
        /* sqrt(max(1 - bc * inv, 0)), inv = 1 / sqrt(|sum q * sum x|) (1 when <= FLT_EPS) */
        const double s = qs[0] * t[1];
        const double inv = fabs(s) > 1.1920928955078125e-07 ? 1.0 / sqrt(fabs(s)) : 1.0;
        const double v = 1.0 - t[0] * inv;
        return sqrt(v < 0.0 ? 0.0 : v); /* np.maximum keeps a NaN: so does this */
    }
}

/* One (score, id) pair of a query's candidates. */
typedef struct { double s; int64_t id; } fi_rs_pair;

/* "a before b": the better score first (NaN last), then the lower id; the order
 * of NumPy's stable argsort of (-)scores over candidates sorted by id. */
static int fi_rs_cmp_hi(const void* pa, const void* pb)
{
    const fi_rs_pair* a = (const fi_rs_pair*)pa;
    const fi_rs_pair* b = (const fi_rs_pair*)pb;
    const int na = a->s != a->s, nb = b->s != b->s;
    if (na != nb) return na - nb;
    if (!na) {
        if (a->s > b->s) return -1;
        if (a->s < b->s) return 1;
    }
    return (a->id > b->id) - (a->id < b->id);
}

static int fi_rs_cmp_lo(const void* pa, const void* pb)
{
    const fi_rs_pair* a = (const fi_rs_pair*)pa;
    const fi_rs_pair* b = (const fi_rs_pair*)pb;
    const int na = a->s != a->s, nb = b->s != b->s;
    if (na != nb) return na - nb;
    if (!na) {
        if (a->s < b->s) return -1;
        if (a->s > b->s) return 1;
    }
    return (a->id > b->id) - (a->id < b->id);
}

/* The k best of query q's nc candidates cand (ids in [0, n): checked by the
 * caller), best first: out_ids / out_scores (float32 of the float64 values).
 * scratch: nc pairs. */
static void fi_rs_topk(int kind, int higher, const float* X, ptrdiff_t d, const float* q, const int64_t* cand,
                       ptrdiff_t nc, ptrdiff_t k, int64_t* out_ids, float* out_scores, fi_rs_pair* scratch)
{
    double qs[2];
    fi_rs_query(kind, q, d, qs);
    for (ptrdiff_t j = 0; j < nc; ++j) {
        scratch[j].id = cand[j];
        scratch[j].s = fi_rs_score(kind, X + cand[j] * d, q, d, qs);
    }
    qsort(scratch, (size_t)nc, sizeof(fi_rs_pair), higher ? fi_rs_cmp_hi : fi_rs_cmp_lo);
    for (ptrdiff_t j = 0; j < k; ++j) {
        out_ids[j] = scratch[j].id;
        out_scores[j] = (float)scratch[j].s;
    }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

#endif /* FI_RESCORE_H */
