# Declarations of fi_lowp.h: the reduced-precision (int8, float16) scanning
# kernels of fastimg.  Each kernel handles rows [r0, r1), trusts its arguments,
# never touches Python objects, and pushes "higher is better" values into the
# per-query heaps hv/hi (capacity kk each, query i's at hv + i * kk; _heap.pxd).
# The value formulas, row formats and panel layouts are in fi_lowp.h.
from libc.stddef cimport ptrdiff_t
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t


cdef extern from "fi_lowp.h" nogil:
    # dispatch targets
    const int FI_LP_SCALAR     # portable C, the reference
    const int FI_LP_AVX2       # AVX2 + FMA + F16C
    const int FI_LP_AVX512     # AVX-512 F/BW/VL + VNNI (zmm vpdpbusd)
    const int FI_LP_AVXVNNI    # AVX2 + AVX-VNNI (ymm vpdpbusd)
    const int FI_LP_N_TARGETS
    # queries per panel; a multiple of every panel tile height; rows per scratch tile
    const int FI_LP_PW
    const int FI_LP_TILE_LCM
    const int FI_LP_TILE_ROWS

    # 1 if target t is compiled in and this CPU runs it / is compiled in
    int fi_lp_cpu_has(int t)
    int fi_lp_compiled(int t)
    # the fastest target this CPU runs
    int fi_lp_best()

    # int8, one query (q: s8 codes, stride ld; q16: the same as int16, FI_LP_AVX2 only)
    void fi_i8_rows_q1(int t, const uint8_t* X, ptrdiff_t ld, ptrdiff_t r0, ptrdiff_t r1, const int8_t* q,
                       const int16_t* q16, int32_t qoff, float qscale, float alpha, const float* rscale,
                       const float* err, const float* bias, const uint8_t* mask, float* hv, int64_t* hi,
                       ptrdiff_t kk)
    # int8, nq queries packed in npan panels of FI_LP_PW lanes (layout per target);
    # thr[q]: query q's heap-root value (+inf for padding lanes)
    void fi_i8_rows_panels(int t, const uint8_t* X, ptrdiff_t ld, ptrdiff_t r0, ptrdiff_t r1, const void* QT,
                           ptrdiff_t npan, ptrdiff_t nq, const float* qs, const int32_t* qoff, const float* alpha,
                           const float* rscale, const float* err, const float* bias, const uint8_t* mask,
                           float* hv, int64_t* hi, ptrdiff_t kk, float* thr, void* scratch)
    # float16, one float32 query q (d,)
    void fi_f16_rows_q1(int t, const uint16_t* X, ptrdiff_t d, ptrdiff_t r0, ptrdiff_t r1, const float* q,
                        const float* rscale, float alpha, const float* err, const float* bias, const uint8_t* mask,
                        float* hv, int64_t* hi, ptrdiff_t kk)
    # float16, nq float32 queries in transposed panels QT[p][j][lane]
    void fi_f16_rows_panels(int t, const uint16_t* X, ptrdiff_t d, ptrdiff_t r0, ptrdiff_t r1, const float* QT,
                            ptrdiff_t npan, ptrdiff_t nq, const float* rscale, const float* alpha, const float* err,
                            const float* bias, const uint8_t* mask, float* hv, int64_t* hi, ptrdiff_t kk,
                            float* thr, void* scratch)
