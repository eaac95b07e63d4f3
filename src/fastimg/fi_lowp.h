/* fi_lowp.h - reduced-precision scanning kernels of fastimg (plain C99 + x86
 * intrinsics behind target attributes): score 8-bit or float16 rows against
 * queries and push each row's value into per-query bounded heaps (fi_heap.h).
 * Used by fastimg.precision / fastimg.search for *candidate* selection only:
 * the values are approximations whose error the caller bounds, and every
 * returned row is re-scored exactly afterwards.
 *
 * Row formats (built by fastimg.precision.reduce_rows):
 *   int8     codes u (uint8, row stride ld = D rounded up to 4, padding = z),
 *            row r stands for  rscale[r] * (u - z)  with zero point z = 128
 *            (signed rows) or 0 (non-negative rows);
 *   float16  IEEE half codes h (uint16, stride d), row r stands for rscale[r] * h.
 * Queries: int8 kernels take s8 codes q (stride ld, zero padded) with
 * qoff = z * sum(q) per query; float16 kernels take float32 queries.
 *
 * The value pushed for (row r, query i), "higher is better":
 *   int8:    fmaf(alpha_i, err[r], fmaf((float)(acc - qoff_i), qscale_i * rscale[r], bias[r]))
 *            acc = sum_j u[r][j] * q_i[j]  (exact int32)
 *   float16: fmaf(alpha_i, err[r], fmaf(dot, rscale[r], bias[r]))
 *            dot = float32 FMA sum of h2f(h[r][j]) * q_i[j] in a fixed order:
 *            row streams (fi_f16_rows_q1): 32 lanes (j mod 32), then j + 8 steps
 *            into lanes 0-7, lanes combined as ((l + l+8) + (l+16 + l+24)), the 8
 *            sums as ((0+4)+(2+6))+((1+5)+(3+7)), then the scalar tail;
 *            panels (fi_f16_rows_panels): a sequential FMA over j.
 * bias may be NULL (0); err may be NULL (0).  Every target computes exactly
 * these values (integer sums are exact; the float steps are the same correctly
 * rounded operations), so a scan's result does not depend on the CPU.
 *
 * Targets (FI_LP_*), chosen at run time by fi_lp_best() or forced by the caller:
 *   SCALAR   portable C (the reference; slow fmaf on x86 CPUs without FMA)
 *   AVX2     AVX2 + FMA + F16C: int8 as u8->s16 widening + vpmaddwd,
 *            float16 via vcvtph2ps
 *   AVX512   AVX-512 F/BW/VL + VNNI: int8 with zmm vpdpbusd (u8 x s8);
 *            float16 as AVX2
 *   AVXVNNI  AVX2 + AVX-VNNI (VEX ymm vpdpbusd); float16 as AVX2
 * Never -march=native: each function carries its own target attribute.
 *
 * Declared for Cython in _lowp.pxd.  Check with: gcc -std=gnu99 -fsyntax-only fi_lowp.h
 */
#ifndef FASTIMG_FI_LOWP_H
#define FASTIMG_FI_LOWP_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fi_heap.h"

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && !defined(FASTIMG_NO_SIMD)
#  include <immintrin.h>
#  define FI_LP_X86 1
#  if (defined(__clang__) && __clang_major__ >= 13) || (!defined(__clang__) && __GNUC__ >= 11)
#    define FI_LP_HAVE_AVXVNNI 1
#  else
#    define FI_LP_HAVE_AVXVNNI 0
#  endif
#  define FI_LP_T2 __attribute__((target("avx2,fma,f16c")))
#  define FI_LP_T512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
#  define FI_LP_TVNNI __attribute__((target("avx2,fma,f16c,avxvnni")))
#else
#  define FI_LP_X86 0
#  define FI_LP_HAVE_AVXVNNI 0
#endif

enum { FI_LP_SCALAR = 0, FI_LP_AVX2 = 1, FI_LP_AVX512 = 2, FI_LP_AVXVNNI = 3, FI_LP_N_TARGETS = 4 };

/* the panel width (queries per panel) of every panel kernel */
#define FI_LP_PW 16
/* a multiple of every panel tile height: panel chunk sizes are rounded to it */
#define FI_LP_TILE_LCM 48
/* rows per tile of the scratch-using panel kernels (scratch: FI_LP_TILE_ROWS * ld
   elements of 4 bytes per thread) */
#define FI_LP_TILE_ROWS 6

/* 1 if target t is compiled in and this CPU (and OS) can run it */
static int fi_lp_cpu_has(int t) {
    if (t == FI_LP_SCALAR) return 1;
#if FI_LP_X86
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (t == FI_LP_AVX2) return avx2;
    if (t == FI_LP_AVX512)
        return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
            && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#if FI_LP_HAVE_AVXVNNI
    if (t == FI_LP_AVXVNNI) return avx2 && __builtin_cpu_supports("avxvnni");
#endif
#endif
    return 0;
}

/* 1 if target t is compiled in (whatever this CPU can run) */
static int fi_lp_compiled(int t) {
    if (t == FI_LP_SCALAR) return 1;
#if FI_LP_X86
    if (t == FI_LP_AVX2 || t == FI_LP_AVX512) return 1;
    if (t == FI_LP_AVXVNNI) return FI_LP_HAVE_AVXVNNI;
#endif
    return 0;
}

/* the fastest target this CPU runs */
static int fi_lp_best(void) {
    if (fi_lp_cpu_has(FI_LP_AVX512)) return FI_LP_AVX512;
    if (fi_lp_cpu_has(FI_LP_AVXVNNI)) return FI_LP_AVXVNNI;
    if (fi_lp_cpu_has(FI_LP_AVX2)) return FI_LP_AVX2;
    return FI_LP_SCALAR;
}

/* half -> float (exact: every half is a float) */
static inline float fi_h2f(uint16_t h) {
    uint32_t s = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, u;
    if (e == 0) {
        float f = (float)m * 0x1p-24f;  /* zero or subnormal: exact */
        return s ? -f : f;
    }
    if (e == 31) u = s | 0x7f800000u | (m << 13);
    else u = s | ((e + 112u) << 23) | (m << 13);
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

#define FI_LP_I8_VALUE(acc, qoff, qs, rs, b, alpha, e) \
    fmaf((alpha), (e), fmaf((float)((acc) - (qoff)), (qs) * (rs), (b)))
#define FI_LP_F16_VALUE(dot, gs, b, alpha, e) fmaf((alpha), (e), fmaf((dot), (gs), (b)))

/* ================================================================== */
/* int8: one query, each row streamed once                             */
/* ================================================================== */
static inline int32_t fi_i8_dot_scalar(const uint8_t* x, const int8_t* q, ptrdiff_t ld) {
    int32_t s = 0;
    for (ptrdiff_t j = 0; j < ld; ++j) s += (int32_t)x[j] * (int32_t)q[j];
    return s;
}

/* the row loop of a one-query int8 kernel; DOT(x) is the target's dot product */
#define FI_I8_Q1_LOOP(DOT)                                                                       \
    for (ptrdiff_t r = r0; r < r1; ++r) {                                                        \
        const uint8_t* x = X + r * ld;                                                           \
        int32_t acc = DOT(x);                                                                    \
        float v = FI_LP_I8_VALUE(acc, qoff, qscale, rscale[r], bias ? bias[r] : 0.0f, alpha,     \
                                 err ? err[r] : 0.0f);                                           \
        fi_push_row(hv, hi, kk, mask, r, v);                                                     \
    }

#define FI_I8_Q1_ARGS                                                                            \
    const uint8_t* X, ptrdiff_t ld, ptrdiff_t r0, ptrdiff_t r1, const int8_t* q, const int16_t* q16, \
    int32_t qoff, float qscale, float alpha, const float* rscale, const float* err, const float* bias, \
    const uint8_t* mask, float* hv, int64_t* hi, ptrdiff_t kk

static void fi_i8_q1_scalar(FI_I8_Q1_ARGS) {
    (void)q16;
#define FI_DOT_S(x) fi_i8_dot_scalar(x, q, ld)
    FI_I8_Q1_LOOP(FI_DOT_S)
#undef FI_DOT_S
}

#if FI_LP_X86
FI_LP_T2 static inline int32_t fi_hsum8_epi32(__m256i a) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* lane i of the result = the sum of the 8 lanes of a[i] */
FI_LP_T2 static inline __m256i fi_red8_epi32(const __m256i* a) {
    __m256i h0 = _mm256_hadd_epi32(_mm256_hadd_epi32(a[0], a[1]), _mm256_hadd_epi32(a[2], a[3]));
    __m256i h1 = _mm256_hadd_epi32(_mm256_hadd_epi32(a[4], a[5]), _mm256_hadd_epi32(a[6], a[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(h0, h1, 0x20), _mm256_permute2x128_si256(h0, h1, 0x31));
}

/* the values of 8 rows [r, r + 8) from their exact sums s, pushed where they may
   reach the root (the same correctly rounded steps as FI_LP_I8_VALUE, lane-wise) */
#define FI_LP_I8_PUSH8(s, r)                                                                      \
    do {                                                                                          \
        __m256 t_ = _mm256_cvtepi32_ps(_mm256_sub_epi32(s, _mm256_set1_epi32(qoff)));             \
        __m256 w_ = _mm256_mul_ps(_mm256_set1_ps(qscale), _mm256_loadu_ps(rscale + (r)));          \
        __m256 b_ = bias ? _mm256_loadu_ps(bias + (r)) : _mm256_setzero_ps();                     \
        __m256 e_ = err ? _mm256_loadu_ps(err + (r)) : _mm256_setzero_ps();                       \
        __m256 v_ = _mm256_fmadd_ps(_mm256_set1_ps(alpha), e_, _mm256_fmadd_ps(t_, w_, b_));      \
        int m_ = _mm256_movemask_ps(_mm256_cmp_ps(v_, _mm256_set1_ps(hv[0]), _CMP_GE_OQ));        \
        if (m_) {                                                                                 \
            float vs_[8];                                                                         \
            _mm256_storeu_ps(vs_, v_);                                                            \
            while (m_) {                                                                          \
                int i_ = __builtin_ctz((unsigned)m_);                                             \
                m_ &= m_ - 1;                                                                     \
                fi_push_row(hv, hi, kk, mask, (r) + i_, vs_[i_]);                                 \
            }                                                                                     \
        }                                                                                         \
    } while (0)

/* rows in blocks of 8: unreduced dot products, one transposing reduction, the
   8 values at once; the last r1 - r0 mod 8 rows one by one */
#define FI_I8_Q1_BLOCKS8(DOTV, DOT)                                                               \
    ptrdiff_t r = r0;                                                                             \
    for (; r + 8 <= r1; r += 8) {                                                                 \
        __m256i a[8];                                                                             \
        for (int i = 0; i < 8; ++i) a[i] = DOTV(X + (r + i) * ld);                                \
        __m256i s = fi_red8_epi32(a);                                                             \
        FI_LP_I8_PUSH8(s, r);                                                                     \
    }                                                                                             \
    r0 = r;                                                                                       \
    FI_I8_Q1_LOOP(DOT)

/* unreduced: 8 int32 partial sums whose total is the dot product */
FI_LP_T2 static inline __m256i fi_i8_dotv_avx2(const uint8_t* x, const int8_t* q, const int16_t* q16,
                                               ptrdiff_t ld) {
    __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
    ptrdiff_t j = 0;
    for (; j + 32 <= ld; j += 32) {
        __m256i x0 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(x + j)));
        __m256i x1 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(x + j + 16)));
        a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(x0, _mm256_loadu_si256((const __m256i*)(q16 + j))));
        a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(x1, _mm256_loadu_si256((const __m256i*)(q16 + j + 16))));
    }
    if (j + 16 <= ld) {
        __m256i x0 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(x + j)));
        a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(x0, _mm256_loadu_si256((const __m256i*)(q16 + j))));
        j += 16;
    }
    if (j + 8 <= ld) {
        __m128i x0 = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i*)(x + j)));
        __m128i p = _mm_madd_epi16(x0, _mm_loadu_si128((const __m128i*)(q16 + j)));
        a1 = _mm256_add_epi32(a1, _mm256_zextsi128_si256(p));
        j += 8;
    }
    if (j < ld) {  /* ld % 8 == 4 */
        int32_t w;
        memcpy(&w, x + j, 4);
        __m128i x0 = _mm_cvtepu8_epi16(_mm_cvtsi32_si128(w));
        __m128i p = _mm_madd_epi16(x0, _mm_loadl_epi64((const __m128i*)(q16 + j)));
        a1 = _mm256_add_epi32(a1, _mm256_zextsi128_si256(p));
    }
    (void)q;
    return _mm256_add_epi32(a0, a1);
}

/* u8 rows widened to s16, times the s16 query: exact (no saturation) */
FI_LP_T2 static inline int32_t fi_i8_dot_avx2(const uint8_t* x, const int8_t* q, const int16_t* q16,
                                              ptrdiff_t ld) {
    return fi_hsum8_epi32(fi_i8_dotv_avx2(x, q, q16, ld));
}

FI_LP_T2 static void fi_i8_q1_avx2(FI_I8_Q1_ARGS) {
#define FI_DOT_A(x) fi_i8_dot_avx2(x, q, q16, ld)
#define FI_DOTV_A(x) fi_i8_dotv_avx2(x, q, q16, ld)
    FI_I8_Q1_BLOCKS8(FI_DOTV_A, FI_DOT_A)
#undef FI_DOTV_A
#undef FI_DOT_A
}

/* unreduced: 16 int32 partial sums whose total is the dot product (tm: the mask
   of the ld % 64 tail bytes) */
FI_LP_T512 static inline __m512i fi_i8_dotv_512(const uint8_t* x, const int8_t* q, ptrdiff_t ld, __mmask64 tm) {
    __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512();
    ptrdiff_t j = 0;
    for (; j + 128 <= ld; j += 128) {
        a0 = _mm512_dpbusd_epi32(a0, _mm512_loadu_si512(x + j), _mm512_loadu_si512(q + j));
        a1 = _mm512_dpbusd_epi32(a1, _mm512_loadu_si512(x + j + 64), _mm512_loadu_si512(q + j + 64));
    }
    if (j + 64 <= ld) {
        a0 = _mm512_dpbusd_epi32(a0, _mm512_loadu_si512(x + j), _mm512_loadu_si512(q + j));
        j += 64;
    }
    if (tm) a1 = _mm512_dpbusd_epi32(a1, _mm512_maskz_loadu_epi8(tm, x + j), _mm512_maskz_loadu_epi8(tm, q + j));
    return _mm512_add_epi32(a0, a1);
}

/* zmm vpdpbusd: 64 u8 x s8 products per instruction; masked tail loads */
FI_LP_T512 static inline int32_t fi_i8_dot_512(const uint8_t* x, const int8_t* q, ptrdiff_t ld) {
    ptrdiff_t tail = ld % 64;
    return _mm512_reduce_add_epi32(fi_i8_dotv_512(x, q, ld, tail ? (((__mmask64)1 << tail) - 1) : 0));
}

/* block k (128 bits) of the result = [a_k, b_k, c_k, d_k], x_k = the sum of block k of x */
FI_LP_T512 static inline __m512i fi_red4_512(__m512i a, __m512i b, __m512i c, __m512i d) {
    __m512i ab = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
    __m512i cd = _mm512_add_epi32(_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
    return _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
}

/* lane i of the result = the sum of the 16 lanes of a[i] */
FI_LP_T512 static inline __m512i fi_red16_512(const __m512i* a) {
    __m512i v0 = fi_red4_512(a[0], a[1], a[2], a[3]), v1 = fi_red4_512(a[4], a[5], a[6], a[7]);
    __m512i v2 = fi_red4_512(a[8], a[9], a[10], a[11]), v3 = fi_red4_512(a[12], a[13], a[14], a[15]);
    __m512i x01 = _mm512_add_epi32(_mm512_shuffle_i32x4(v0, v1, 0x88), _mm512_shuffle_i32x4(v0, v1, 0xdd));
    __m512i x23 = _mm512_add_epi32(_mm512_shuffle_i32x4(v2, v3, 0x88), _mm512_shuffle_i32x4(v2, v3, 0xdd));
    return _mm512_add_epi32(_mm512_shuffle_i32x4(x01, x23, 0x88), _mm512_shuffle_i32x4(x01, x23, 0xdd));
}

/* the values of 16 rows [r, r + 16) from their exact sums s, pushed where they
   may reach the root (the same correctly rounded steps as FI_LP_I8_VALUE, lane-wise) */
FI_LP_T512 static inline void fi_i8_push16_512(__m512i s, ptrdiff_t r, int32_t qoff, float qscale, float alpha,
                                               const float* rscale, const float* err, const float* bias,
                                               const uint8_t* mask, float* hv, int64_t* hi, ptrdiff_t kk) {
    __m512 t = _mm512_cvtepi32_ps(_mm512_sub_epi32(s, _mm512_set1_epi32(qoff)));
    __m512 w = _mm512_mul_ps(_mm512_set1_ps(qscale), _mm512_loadu_ps(rscale + r));
    __m512 b = bias ? _mm512_loadu_ps(bias + r) : _mm512_setzero_ps();
    __m512 e = err ? _mm512_loadu_ps(err + r) : _mm512_setzero_ps();
    __m512 v = _mm512_fmadd_ps(_mm512_set1_ps(alpha), e, _mm512_fmadd_ps(t, w, b));
    __mmask16 m = _mm512_cmp_ps_mask(v, _mm512_set1_ps(hv[0]), _CMP_GE_OQ);
    if (m) {
        float vs[16];
        _mm512_storeu_ps(vs, v);
        unsigned mm = m;
        while (mm) {
            int i = __builtin_ctz(mm);
            mm &= mm - 1;
            fi_push_row(hv, hi, kk, mask, r + i, vs[i]);
        }
    }
}

/* short rows (ld <= 128, e.g. hsv72's 72 bytes): the query held in two registers,
   each row one (masked) 64-byte load and, past 64 bytes, one masked tail load
   chained into the same accumulator; 16 rows per block, fully unrolled so that
   the 16 accumulators stay in registers (the general loop below spilled them) */
FI_LP_T512 static void fi_i8_q1_512_short(FI_I8_Q1_ARGS) {
    (void)q16;
    const ptrdiff_t n0 = ld < 64 ? ld : 64, n1 = ld - n0;
    const __mmask64 m0 = n0 == 64 ? ~(__mmask64)0 : (((__mmask64)1 << n0) - 1);
    const __mmask64 m1 = n1 == 64 ? ~(__mmask64)0 : (((__mmask64)1 << n1) - 1);
    const __m512i qa = _mm512_maskz_loadu_epi8(m0, q), qb = _mm512_maskz_loadu_epi8(m1, q + n0);
    const __m512i z = _mm512_setzero_si512();
    ptrdiff_t r = r0;
    if (n1) {
        for (; r + 16 <= r1; r += 16) {
            const uint8_t* x = X + r * ld;
            __m512i a[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; ++i)
                a[i] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, _mm512_maskz_loadu_epi8(m0, x + i * ld), qa),
                                           _mm512_maskz_loadu_epi8(m1, x + i * ld + n0), qb);
            fi_i8_push16_512(fi_red16_512(a), r, qoff, qscale, alpha, rscale, err, bias, mask, hv, hi, kk);
        }
    } else {
        for (; r + 16 <= r1; r += 16) {
            const uint8_t* x = X + r * ld;
            __m512i a[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; ++i) a[i] = _mm512_dpbusd_epi32(z, _mm512_maskz_loadu_epi8(m0, x + i * ld), qa);
            fi_i8_push16_512(fi_red16_512(a), r, qoff, qscale, alpha, rscale, err, bias, mask, hv, hi, kk);
        }
    }
    for (; r < r1; ++r) {
        const uint8_t* x = X + r * ld;
        __m512i a = _mm512_dpbusd_epi32(z, _mm512_maskz_loadu_epi8(m0, x), qa);
        if (n1) a = _mm512_dpbusd_epi32(a, _mm512_maskz_loadu_epi8(m1, x + n0), qb);
        int32_t acc = _mm512_reduce_add_epi32(a);
        float v = FI_LP_I8_VALUE(acc, qoff, qscale, rscale[r], bias ? bias[r] : 0.0f, alpha, err ? err[r] : 0.0f);
        fi_push_row(hv, hi, kk, mask, r, v);
    }
}

/* rows in blocks of 16 (unreduced dot products, one transposing reduction, 16
   values at once); the last r1 - r0 mod 16 rows one by one; rows of at most 128
   bytes: fi_i8_q1_512_short */
FI_LP_T512 static void fi_i8_q1_512(FI_I8_Q1_ARGS) {
    if (ld <= 128) {
        fi_i8_q1_512_short(X, ld, r0, r1, q, q16, qoff, qscale, alpha, rscale, err, bias, mask, hv, hi, kk);
        return;
    }
    (void)q16;
    ptrdiff_t tail = ld % 64;
    __mmask64 tm = tail ? (((__mmask64)1 << tail) - 1) : 0;
    ptrdiff_t r = r0;
    for (; r + 16 <= r1; r += 16) {
        __m512i a[16];
        for (int i = 0; i < 16; ++i) a[i] = fi_i8_dotv_512(X + (r + i) * ld, q, ld, tm);
        fi_i8_push16_512(fi_red16_512(a), r, qoff, qscale, alpha, rscale, err, bias, mask, hv, hi, kk);
    }
    r0 = r;
#define FI_DOT_Z(x) fi_i8_dot_512(x, q, ld)
    FI_I8_Q1_LOOP(FI_DOT_Z)
#undef FI_DOT_Z
}

#if FI_LP_HAVE_AVXVNNI
/* ymm vpdpbusd (VEX, AVX-VNNI); ld is a multiple of 4: dword-masked tail */
FI_LP_TVNNI static inline __m256i fi_i8_dotv_vnni(const uint8_t* x, const int8_t* q, ptrdiff_t ld) {
    __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
    ptrdiff_t j = 0;
    for (; j + 64 <= ld; j += 64) {
        a0 = _mm256_dpbusd_avx_epi32(a0, _mm256_loadu_si256((const __m256i*)(x + j)),
                                     _mm256_loadu_si256((const __m256i*)(q + j)));
        a1 = _mm256_dpbusd_avx_epi32(a1, _mm256_loadu_si256((const __m256i*)(x + j + 32)),
                                     _mm256_loadu_si256((const __m256i*)(q + j + 32)));
    }
    if (j + 32 <= ld) {
        a0 = _mm256_dpbusd_avx_epi32(a0, _mm256_loadu_si256((const __m256i*)(x + j)),
                                     _mm256_loadu_si256((const __m256i*)(q + j)));
        j += 32;
    }
    if (j < ld) {
        static const int32_t idx[8] = {0, 1, 2, 3, 4, 5, 6, 7};
        __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32((int32_t)((ld - j) / 4)),
                                       _mm256_loadu_si256((const __m256i*)idx));
        a1 = _mm256_dpbusd_avx_epi32(a1, _mm256_maskload_epi32((const int*)(x + j), m),
                                     _mm256_maskload_epi32((const int*)(q + j), m));
    }
    return _mm256_add_epi32(a0, a1);
}

FI_LP_TVNNI static inline int32_t fi_i8_dot_vnni(const uint8_t* x, const int8_t* q, ptrdiff_t ld) {
    return fi_hsum8_epi32(fi_i8_dotv_vnni(x, q, ld));
}

FI_LP_TVNNI static void fi_i8_q1_vnni(FI_I8_Q1_ARGS) {
    (void)q16;
#define FI_DOT_V(x) fi_i8_dot_vnni(x, q, ld)
#define FI_DOTV_V(x) fi_i8_dotv_vnni(x, q, ld)
    FI_I8_Q1_BLOCKS8(FI_DOTV_V, FI_DOT_V)
#undef FI_DOTV_V
#undef FI_DOT_V
}
#endif
#endif /* FI_LP_X86 */

/* one query over rows [r0, r1) with target t (q16: the query widened to int16,
   needed by FI_LP_AVX2 only) */
static void fi_i8_rows_q1(int t, FI_I8_Q1_ARGS) {
#if FI_LP_X86
    if (t == FI_LP_AVX512) { fi_i8_q1_512(X, ld, r0, r1, q, q16, qoff, qscale, alpha, rscale, err, bias, mask, hv, hi, kk); return; }
#if FI_LP_HAVE_AVXVNNI
    if (t == FI_LP_AVXVNNI) { fi_i8_q1_vnni(X, ld, r0, r1, q, q16, qoff, qscale, alpha, rscale, err, bias, mask, hv, hi, kk); return; }
#endif
    if (t == FI_LP_AVX2) { fi_i8_q1_avx2(X, ld, r0, r1, q, q16, qoff, qscale, alpha, rscale, err, bias, mask, hv, hi, kk); return; }
#endif
    fi_i8_q1_scalar(X, ld, r0, r1, q, q16, qoff, qscale, alpha, rscale, err, bias, mask, hv, hi, kk);
}

/* ================================================================== */
/* int8 query panels: FI_LP_PW = 16 queries per panel                  */
/* Layouts of the packed panels (built by fastimg._core):              */
/*   AVX512 / AVXVNNI: QT8[p][g][lane][4] = Q8[p*16 + lane][4g + b]    */
/*   AVX2:  QT16[p][h][lane][2] = (int16) Q8[p*16 + lane][2h + b]      */
/*   SCALAR: the queries themselves, Q8 (nq, ld)                       */
/* qs, qoff, alpha have npan * 16 entries (padding lanes: 0);          */
/* thr[q] holds query q's heap-root value (+inf for padding lanes).    */
/* ================================================================== */
#define FI_I8_PANEL_ARGS                                                                          \
    const uint8_t* X, ptrdiff_t ld, ptrdiff_t r0, ptrdiff_t r1, const void* QT, ptrdiff_t npan,   \
    ptrdiff_t nq, const float* qs, const int32_t* qoff, const float* alpha, const float* rscale,  \
    const float* err, const float* bias, const uint8_t* mask, float* hv, int64_t* hi, ptrdiff_t kk, \
    float* thr, void* scratch

static void fi_i8_panels_scalar(FI_I8_PANEL_ARGS) {
    const int8_t* Q = (const int8_t*)QT;
    (void)npan; (void)thr; (void)scratch;
    for (ptrdiff_t r = r0; r < r1; ++r) {
        const uint8_t* x = X + r * ld;
        float b = bias ? bias[r] : 0.0f, e = err ? err[r] : 0.0f;
        for (ptrdiff_t i = 0; i < nq; ++i) {
            int32_t acc = fi_i8_dot_scalar(x, Q + i * ld, ld);
            float v = FI_LP_I8_VALUE(acc, qoff[i], qs[i], rscale[r], b, alpha[i], e);
            fi_push_row(hv + i * kk, hi + i * kk, kk, mask, r, v);
        }
    }
}

/* rows of a tile: R pointers and per-row terms; a short tail tile repeats its last row */
#define FI_LP_TILE_ROWS_SETUP(R, BASE, STRIDE)                                                    \
    ptrdiff_t nr = (r1 - r < R) ? r1 - r : R;                                                     \
    const BASE* x[R];                                                                             \
    float rsv[R], bv[R], ev[R];                                                                   \
    for (int i = 0; i < R; ++i) {                                                                 \
        ptrdiff_t ri = r + (i < nr ? i : nr - 1);                                                 \
        x[i] = X + ri * (STRIDE);                                                                 \
        rsv[i] = rscale ? rscale[ri] : 1.0f;                                                      \
        bv[i] = bias ? bias[ri] : 0.0f;                                                           \
        ev[i] = err ? err[ri] : 0.0f;                                                             \
    }

#if FI_LP_X86
#define FI_I8_TILE_512 12
/* 12 rows x 16 queries per tile: 12 zmm accumulators; per 4 dimensions one
   query load, 12 row-dword broadcasts, 12 vpdpbusd (measured faster than 8 x 32,
   6 x 48 and 16 x 16 tiles: bench/search.md) */
FI_LP_T512 static void fi_i8_panels_512(FI_I8_PANEL_ARGS) {
    const int8_t* QT8 = (const int8_t*)QT;
    const ptrdiff_t G = ld / 4;
    enum { R = FI_I8_TILE_512 };
    float s[FI_LP_PW];
    (void)scratch;
    for (ptrdiff_t r = r0; r < r1; r += R) {
        FI_LP_TILE_ROWS_SETUP(R, uint8_t, ld)
        for (ptrdiff_t p = 0; p < npan; ++p) {
            const int8_t* qt = QT8 + p * G * 64;
            __m512i a[R];
            for (int i = 0; i < R; ++i) a[i] = _mm512_setzero_si512();
            for (ptrdiff_t g = 0; g < G; ++g) {
                __m512i qv = _mm512_loadu_si512(qt + g * 64);
                for (int i = 0; i < R; ++i) {
                    int32_t w;
                    memcpy(&w, x[i] + 4 * g, 4);
                    a[i] = _mm512_dpbusd_epi32(a[i], _mm512_set1_epi32(w), qv);
                }
            }
            const ptrdiff_t q0 = p * FI_LP_PW;
            __m512 qsv = _mm512_loadu_ps(qs + q0), alv = _mm512_loadu_ps(alpha + q0);
            __m512i qov = _mm512_loadu_si512(qoff + q0);
            __m512 tv = _mm512_loadu_ps(thr + q0);
            __mmask16 hit = 0, mk[R];
            __m512 v[R];
            for (int i = 0; i < R; ++i) {
                __m512 t = _mm512_cvtepi32_ps(_mm512_sub_epi32(a[i], qov));
                v[i] = _mm512_fmadd_ps(t, _mm512_mul_ps(qsv, _mm512_set1_ps(rsv[i])), _mm512_set1_ps(bv[i]));
                v[i] = _mm512_fmadd_ps(alv, _mm512_set1_ps(ev[i]), v[i]);
                mk[i] = _mm512_cmp_ps_mask(v[i], tv, _CMP_GE_OQ);
                hit |= mk[i];
            }
            if (!hit) continue;
            /* only the (row, query) pairs that reached the roots (fi_panel_push's
               order and checks, without scanning the tile's other values) */
            ptrdiff_t lanes = nq - q0 < FI_LP_PW ? nq - q0 : FI_LP_PW;
            unsigned lm = lanes >= 16 ? 0xffffu : ((1u << lanes) - 1u);
            for (ptrdiff_t i = 0; i < nr; ++i) {
                unsigned mm = mk[i] & lm;
                if (!mm) continue;
                _mm512_storeu_ps(s, v[i]);
                while (mm) {
                    int l = __builtin_ctz(mm);
                    mm &= mm - 1;
                    if (s[l] < thr[q0 + l]) continue;
                    ptrdiff_t qi = q0 + l;
                    fi_push_row(hv + qi * kk, hi + qi * kk, kk, mask, r + i, s[l]);
                    thr[qi] = hv[qi * kk];
                }
            }
        }
    }
}

/* the epilogue of a ymm tile of R rows x 16 queries (two 8-lane halves): the
   values, their compare masks against the roots, and for a tile that reaches a
   root only the (row, query) pairs whose mask bit is set pushed (fi_panel_push's
   order and checks, without scanning the tile's other values) */
#define FI_LP_EPILOGUE_256(R, VAL_LO, VAL_HI)                                                     \
    const ptrdiff_t q0 = p * FI_LP_PW;                                                            \
    __m256 t0 = _mm256_loadu_ps(thr + q0), t1 = _mm256_loadu_ps(thr + q0 + 8);                    \
    __m256 v0[R], v1[R];                                                                          \
    unsigned mk[R], hit = 0;                                                                      \
    for (int i = 0; i < R; ++i) {                                                                 \
        v0[i] = VAL_LO(i);                                                                        \
        v1[i] = VAL_HI(i);                                                                        \
        mk[i] = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(v0[i], t0, _CMP_GE_OQ))                \
              | (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(v1[i], t1, _CMP_GE_OQ)) << 8;          \
        hit |= mk[i];                                                                             \
    }                                                                                             \
    if (!hit) continue;                                                                           \
    ptrdiff_t lanes = nq - q0 < FI_LP_PW ? nq - q0 : FI_LP_PW;                                    \
    unsigned lm = lanes >= 16 ? 0xffffu : ((1u << lanes) - 1u);                                   \
    for (ptrdiff_t i = 0; i < nr; ++i) {                                                          \
        unsigned mm = mk[i] & lm;                                                                 \
        if (!mm) continue;                                                                        \
        _mm256_storeu_ps(s, v0[i]);                                                               \
        _mm256_storeu_ps(s + 8, v1[i]);                                                           \
        while (mm) {                                                                              \
            int l = __builtin_ctz(mm);                                                            \
            mm &= mm - 1;                                                                         \
            if (s[l] < thr[q0 + l]) continue;                                                     \
            ptrdiff_t qi = q0 + l;                                                                \
            fi_push_row(hv + qi * kk, hi + qi * kk, kk, mask, r + i, s[l]);                       \
            thr[qi] = hv[qi * kk];                                                                \
        }                                                                                         \
    }

/* int8 value of 8 lanes (h = 0 or 8) of row i from int32 accumulator A */
#define FI_LP_I8_V256(A, i, h)                                                                    \
    _mm256_fmadd_ps(_mm256_loadu_ps(alpha + q0 + (h)), _mm256_set1_ps(ev[i]),                     \
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(A,                                    \
                            _mm256_loadu_si256((const __m256i*)(qoff + q0 + (h))))),               \
                        _mm256_mul_ps(_mm256_loadu_ps(qs + q0 + (h)), _mm256_set1_ps(rsv[i])),     \
                        _mm256_set1_ps(bv[i])))

/* AVX2: the tile's rows widened to u16 once (scratch), then per 2 dimensions a
   broadcast u16 pair times the s16 query pairs (vpmaddwd): 6 rows x 16 queries */
FI_LP_T2 static void fi_i8_panels_avx2(FI_I8_PANEL_ARGS) {
    const int16_t* QT16 = (const int16_t*)QT;
    const ptrdiff_t H = ld / 2;
    enum { R = FI_LP_TILE_ROWS };
    uint16_t* xw = (uint16_t*)scratch;  /* R rows x ld */
    float s[FI_LP_PW];
    for (ptrdiff_t r = r0; r < r1; r += R) {
        FI_LP_TILE_ROWS_SETUP(R, uint8_t, ld)
        for (int i = 0; i < R; ++i) {
            ptrdiff_t j = 0;
            for (; j + 16 <= ld; j += 16)
                _mm256_storeu_si256((__m256i*)(xw + i * ld + j),
                                    _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(x[i] + j))));
            for (; j < ld; ++j) xw[i * ld + j] = x[i][j];
        }
        for (ptrdiff_t p = 0; p < npan; ++p) {
            const int16_t* qt = QT16 + p * H * 32;
            __m256i a0[R], a1[R];
            for (int i = 0; i < R; ++i) { a0[i] = _mm256_setzero_si256(); a1[i] = _mm256_setzero_si256(); }
            for (ptrdiff_t h = 0; h < H; ++h) {
                __m256i u0 = _mm256_loadu_si256((const __m256i*)(qt + h * 32));
                __m256i u1 = _mm256_loadu_si256((const __m256i*)(qt + h * 32 + 16));
                for (int i = 0; i < R; ++i) {
                    int32_t w;
                    memcpy(&w, xw + i * ld + 2 * h, 4);
                    __m256i b = _mm256_set1_epi32(w);
                    a0[i] = _mm256_add_epi32(a0[i], _mm256_madd_epi16(b, u0));
                    a1[i] = _mm256_add_epi32(a1[i], _mm256_madd_epi16(b, u1));
                }
            }
#define FI_LO(i) FI_LP_I8_V256(a0[i], i, 0)
#define FI_HI(i) FI_LP_I8_V256(a1[i], i, 8)
            FI_LP_EPILOGUE_256(R, FI_LO, FI_HI)
#undef FI_LO
#undef FI_HI
        }
    }
}

#if FI_LP_HAVE_AVXVNNI
/* AVX-VNNI: 6 rows x 16 queries in 12 ymm accumulators, ymm vpdpbusd */
FI_LP_TVNNI static void fi_i8_panels_vnni(FI_I8_PANEL_ARGS) {
    const int8_t* QT8 = (const int8_t*)QT;
    const ptrdiff_t G = ld / 4;
    enum { R = FI_LP_TILE_ROWS };
    float s[FI_LP_PW];
    (void)scratch;
    for (ptrdiff_t r = r0; r < r1; r += R) {
        FI_LP_TILE_ROWS_SETUP(R, uint8_t, ld)
        for (ptrdiff_t p = 0; p < npan; ++p) {
            const int8_t* qt = QT8 + p * G * 64;
            __m256i a0[R], a1[R];
            for (int i = 0; i < R; ++i) { a0[i] = _mm256_setzero_si256(); a1[i] = _mm256_setzero_si256(); }
            for (ptrdiff_t g = 0; g < G; ++g) {
                __m256i u0 = _mm256_loadu_si256((const __m256i*)(qt + g * 64));
                __m256i u1 = _mm256_loadu_si256((const __m256i*)(qt + g * 64 + 32));
                for (int i = 0; i < R; ++i) {
                    int32_t w;
                    memcpy(&w, x[i] + 4 * g, 4);
                    __m256i b = _mm256_set1_epi32(w);
                    a0[i] = _mm256_dpbusd_avx_epi32(a0[i], b, u0);
                    a1[i] = _mm256_dpbusd_avx_epi32(a1[i], b, u1);
                }
            }
#define FI_LO(i) FI_LP_I8_V256(a0[i], i, 0)
#define FI_HI(i) FI_LP_I8_V256(a1[i], i, 8)
            FI_LP_EPILOGUE_256(R, FI_LO, FI_HI)
#undef FI_LO
#undef FI_HI
        }
    }
}
#endif
#endif /* FI_LP_X86 */

/* int8 panels over rows [r0, r1) with target t; QT in t's layout (see above);
   scratch: FI_LP_TILE_ROWS * ld uint16 per thread (FI_LP_AVX2) */
static void fi_i8_rows_panels(int t, FI_I8_PANEL_ARGS) {
#if FI_LP_X86
    if (t == FI_LP_AVX512) { fi_i8_panels_512(X, ld, r0, r1, QT, npan, nq, qs, qoff, alpha, rscale, err, bias, mask, hv, hi, kk, thr, scratch); return; }
#if FI_LP_HAVE_AVXVNNI
    if (t == FI_LP_AVXVNNI) { fi_i8_panels_vnni(X, ld, r0, r1, QT, npan, nq, qs, qoff, alpha, rscale, err, bias, mask, hv, hi, kk, thr, scratch); return; }
#endif
    if (t == FI_LP_AVX2) { fi_i8_panels_avx2(X, ld, r0, r1, QT, npan, nq, qs, qoff, alpha, rscale, err, bias, mask, hv, hi, kk, thr, scratch); return; }
#endif
    fi_i8_panels_scalar(X, ld, r0, r1, QT, npan, nq, qs, qoff, alpha, rscale, err, bias, mask, hv, hi, kk, thr, scratch);
}

/* ================================================================== */
/* float16: one query, each row streamed once                          */
/* ================================================================== */
#define FI_F16_Q1_ARGS                                                                            \
    const uint16_t* X, ptrdiff_t d, ptrdiff_t r0, ptrdiff_t r1, const float* q,                   \
    const float* rscale, float alpha, const float* err, const float* bias, const uint8_t* mask,   \
    float* hv, int64_t* hi, ptrdiff_t kk

static inline float fi_f16_dot_scalar(const uint16_t* x, const float* q, ptrdiff_t d) {
    float a[32] = {0}, v[8];
    ptrdiff_t j = 0;
    for (; j + 32 <= d; j += 32)
        for (int l = 0; l < 32; ++l) a[l] = fmaf(fi_h2f(x[j + l]), q[j + l], a[l]);
    for (; j + 8 <= d; j += 8)
        for (int l = 0; l < 8; ++l) a[l] = fmaf(fi_h2f(x[j + l]), q[j + l], a[l]);
    for (int l = 0; l < 8; ++l) v[l] = (a[l] + a[8 + l]) + (a[16 + l] + a[24 + l]);
    float s = ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
    for (; j < d; ++j) s = fmaf(fi_h2f(x[j]), q[j], s);
    return s;
}

#define FI_F16_Q1_LOOP(DOT)                                                                      \
    for (ptrdiff_t r = r0; r < r1; ++r) {                                                        \
        float v = FI_LP_F16_VALUE(DOT(X + r * d), rscale[r], bias ? bias[r] : 0.0f, alpha,       \
                                  err ? err[r] : 0.0f);                                          \
        fi_push_row(hv, hi, kk, mask, r, v);                                                     \
    }

static void fi_f16_q1_scalar(FI_F16_Q1_ARGS) {
#define FI_DOT_S(x) fi_f16_dot_scalar(x, q, d)
    FI_F16_Q1_LOOP(FI_DOT_S)
#undef FI_DOT_S
}

#if FI_LP_X86
FI_LP_T2 static inline __m256 fi_ld_h8(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p));
}

/* the 8 lane sums t of fi_f16_dot_avx2 before its horizontal step (j < d - d % 8) */
FI_LP_T2 static inline __m256 fi_f16_dotv_avx2(const uint16_t* x, const float* q, ptrdiff_t d) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    ptrdiff_t j = 0;
    for (; j + 32 <= d; j += 32) {
        a0 = _mm256_fmadd_ps(fi_ld_h8(x + j), _mm256_loadu_ps(q + j), a0);
        a1 = _mm256_fmadd_ps(fi_ld_h8(x + j + 8), _mm256_loadu_ps(q + j + 8), a1);
        a2 = _mm256_fmadd_ps(fi_ld_h8(x + j + 16), _mm256_loadu_ps(q + j + 16), a2);
        a3 = _mm256_fmadd_ps(fi_ld_h8(x + j + 24), _mm256_loadu_ps(q + j + 24), a3);
    }
    for (; j + 8 <= d; j += 8) a0 = _mm256_fmadd_ps(fi_ld_h8(x + j), _mm256_loadu_ps(q + j), a0);
    return _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
}

/* the dot product: those lane sums, a fixed-order horizontal sum, then the scalar tail */
FI_LP_T2 static inline float fi_f16_dot_avx2(const uint16_t* x, const float* q, ptrdiff_t d) {
    __m256 t = fi_f16_dotv_avx2(x, q, d);
    float v[8];
    _mm256_storeu_ps(v, t);
    float s = ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
    for (ptrdiff_t j = d - d % 8; j < d; ++j) s = fmaf(fi_h2f(x[j]), q[j], s);
    return s;
}

/* rows in blocks of 8: the lane sums t_i of 8 rows, then their horizontal steps
   ((v0 + v4) + (v2 + v6)) + ((v1 + v5) + (v3 + v7)) for the 8 rows at once (the
   same additions, lane-wise: a transposing reduction), the scalar tail, and the
   8 values compared with the heap root at once.  The rows are read in order (an
   order matching the reduction's lanes instead made the prefetchers miss: 1.4x
   slower at D = 256), the reduction's lanes [0 2 4 6 1 3 5 7] put back in order
   by one permutation. */
FI_LP_T2 static void fi_f16_q1_avx2(FI_F16_Q1_ARGS) {
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    const ptrdiff_t d8 = d - d % 8;
    ptrdiff_t r = r0;
    for (; r + 8 <= r1; r += 8) {
        const uint16_t* x = X + r * d;
        __m256 t[8];
#pragma GCC unroll 8
        for (int k = 0; k < 8; ++k) t[k] = fi_f16_dotv_avx2(x + k * d, q, d);
        /* w_k = [t_2k(l) + t_2k(l+4), t_2k+1(l) + t_2k+1(l+4)], l < 4 */
        __m256 w[4];
#pragma GCC unroll 4
        for (int k = 0; k < 4; ++k)
            w[k] = _mm256_add_ps(_mm256_permute2f128_ps(t[2 * k], t[2 * k + 1], 0x20),
                                 _mm256_permute2f128_ps(t[2 * k], t[2 * k + 1], 0x31));
        /* c: per slot, (v0 + v4) + (v2 + v6) and (v1 + v5) + (v3 + v7) */
        __m256 c0 = _mm256_add_ps(_mm256_shuffle_ps(w[0], w[1], 0x44), _mm256_shuffle_ps(w[0], w[1], 0xee));
        __m256 c1 = _mm256_add_ps(_mm256_shuffle_ps(w[2], w[3], 0x44), _mm256_shuffle_ps(w[2], w[3], 0xee));
        __m256 sv = _mm256_permutevar8x32_ps(
            _mm256_add_ps(_mm256_shuffle_ps(c0, c1, 0x88), _mm256_shuffle_ps(c0, c1, 0xdd)), order);
        if (d8 < d) {
            float ss[8];
            _mm256_storeu_ps(ss, sv);
            for (int i = 0; i < 8; ++i) {
                const uint16_t* xi = x + i * d;
                for (ptrdiff_t j = d8; j < d; ++j) ss[i] = fmaf(fi_h2f(xi[j]), q[j], ss[i]);
            }
            sv = _mm256_loadu_ps(ss);
        }
        __m256 b = bias ? _mm256_loadu_ps(bias + r) : _mm256_setzero_ps();
        __m256 e = err ? _mm256_loadu_ps(err + r) : _mm256_setzero_ps();
        __m256 v = _mm256_fmadd_ps(_mm256_set1_ps(alpha), e, _mm256_fmadd_ps(sv, _mm256_loadu_ps(rscale + r), b));
        int m = _mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_set1_ps(hv[0]), _CMP_GE_OQ));
        if (m) {
            float vs[8];
            _mm256_storeu_ps(vs, v);
            while (m) {
                int i = __builtin_ctz((unsigned)m);
                m &= m - 1;
                fi_push_row(hv, hi, kk, mask, r + i, vs[i]);
            }
        }
    }
    r0 = r;
#define FI_DOT_A(x) fi_f16_dot_avx2(x, q, d)
    FI_F16_Q1_LOOP(FI_DOT_A)
#undef FI_DOT_A
}
#endif

/* one float16 query over rows [r0, r1) with target t (every SIMD target runs
   the AVX2 + F16C code) */
static void fi_f16_rows_q1(int t, FI_F16_Q1_ARGS) {
#if FI_LP_X86
    if (t != FI_LP_SCALAR) { fi_f16_q1_avx2(X, d, r0, r1, q, rscale, alpha, err, bias, mask, hv, hi, kk); return; }
#endif
    (void)t;
    fi_f16_q1_scalar(X, d, r0, r1, q, rscale, alpha, err, bias, mask, hv, hi, kk);
}

/* ================================================================== */
/* float16 query panels: QTf[p][j][lane] = Q[p*16 + lane][j] (float32, */
/* zero padded); the tile's rows are converted to float32 once        */
/* (scratch: FI_LP_TILE_ROWS * d floats per thread), then 6 rows x 16  */
/* queries are accumulated with a sequential FMA over j.               */
/* ================================================================== */
#define FI_F16_PANEL_ARGS                                                                         \
    const uint16_t* X, ptrdiff_t d, ptrdiff_t r0, ptrdiff_t r1, const float* QT, ptrdiff_t npan,  \
    ptrdiff_t nq, const float* rscale, const float* alpha, const float* err, const float* bias,    \
    const uint8_t* mask, float* hv, int64_t* hi, ptrdiff_t kk, float* thr, void* scratch

static void fi_f16_panels_scalar(FI_F16_PANEL_ARGS) {
    (void)thr; (void)scratch;
    for (ptrdiff_t r = r0; r < r1; ++r) {
        const uint16_t* x = X + r * d;
        float b = bias ? bias[r] : 0.0f, e = err ? err[r] : 0.0f;
        for (ptrdiff_t i = 0; i < nq; ++i) {
            const float* qt = QT + (i / FI_LP_PW) * d * FI_LP_PW + i % FI_LP_PW;
            float a = 0.0f;
            for (ptrdiff_t j = 0; j < d; ++j) a = fmaf(fi_h2f(x[j]), qt[j * FI_LP_PW], a);
            fi_push_row(hv + i * kk, hi + i * kk, kk, mask, r, FI_LP_F16_VALUE(a, rscale[r], b, alpha[i], e));
        }
    }
    (void)npan;
}

#if FI_LP_X86
FI_LP_T2 static void fi_f16_panels_avx2(FI_F16_PANEL_ARGS) {
    enum { R = FI_LP_TILE_ROWS };
    float* xf = (float*)scratch;  /* R rows x d */
    float s[FI_LP_PW];
    for (ptrdiff_t r = r0; r < r1; r += R) {
        FI_LP_TILE_ROWS_SETUP(R, uint16_t, d)
        for (int i = 0; i < R; ++i) {
            ptrdiff_t j = 0;
            for (; j + 8 <= d; j += 8) _mm256_storeu_ps(xf + i * d + j, fi_ld_h8(x[i] + j));
            for (; j < d; ++j) xf[i * d + j] = fi_h2f(x[i][j]);
        }
        for (ptrdiff_t p = 0; p < npan; ++p) {
            const float* qt = QT + p * d * FI_LP_PW;
            __m256 a0[R], a1[R];
            for (int i = 0; i < R; ++i) { a0[i] = _mm256_setzero_ps(); a1[i] = _mm256_setzero_ps(); }
            for (ptrdiff_t j = 0; j < d; ++j) {
                __m256 u0 = _mm256_loadu_ps(qt + j * FI_LP_PW), u1 = _mm256_loadu_ps(qt + j * FI_LP_PW + 8);
                for (int i = 0; i < R; ++i) {
                    __m256 w = _mm256_broadcast_ss(xf + i * d + j);
                    a0[i] = _mm256_fmadd_ps(w, u0, a0[i]);
                    a1[i] = _mm256_fmadd_ps(w, u1, a1[i]);
                }
            }
#define FI_V(A, i, h) _mm256_fmadd_ps(_mm256_loadu_ps(alpha + q0 + (h)), _mm256_set1_ps(ev[i]),            \
                                      _mm256_fmadd_ps(A, _mm256_set1_ps(rsv[i]), _mm256_set1_ps(bv[i])))
#define FI_LO(i) FI_V(a0[i], i, 0)
#define FI_HI(i) FI_V(a1[i], i, 8)
            FI_LP_EPILOGUE_256(R, FI_LO, FI_HI)
#undef FI_LO
#undef FI_HI
#undef FI_V
        }
    }
}
#endif

/* float16 panels over rows [r0, r1) with target t (every SIMD target runs the
   AVX2 + F16C code) */
static void fi_f16_rows_panels(int t, FI_F16_PANEL_ARGS) {
#if FI_LP_X86
    if (t != FI_LP_SCALAR) { fi_f16_panels_avx2(X, d, r0, r1, QT, npan, nq, rscale, alpha, err, bias, mask, hv, hi, kk, thr, scratch); return; }
#endif
    (void)t;
    fi_f16_panels_scalar(X, d, r0, r1, QT, npan, nq, rscale, alpha, err, bias, mask, hv, hi, kk, thr, scratch);
}

#endif /* FASTIMG_FI_LOWP_H */
