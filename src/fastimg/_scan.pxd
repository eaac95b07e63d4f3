# Declarations of fi_scan.h: the scanning kernels of fastimg (score rows against
# queries and push the values into per-query heaps, see _heap.pxd).
#
# Each kernel handles rows [r0, r1) of X (float32, row stride d), trusts its
# arguments, and never touches Python objects; hv/hi are the query heaps
# (capacity kk each, query q's at hv + q * kk).  Values are "higher is better".
from libc.stddef cimport ptrdiff_t
from libc.stdint cimport int32_t, int64_t, uint8_t


cdef extern from "fi_scan.h" nogil:
    # what a scan computes (fastimg._core exports them as KIND_*)
    ctypedef enum fi_kind:
        FI_KIND_IP           # query . row + bias[row]           (fi_ip_rows_*)
        FI_KIND_CHISQR       # -sum (x - q)^2 * aux, aux = 1/q    (fi_direct_rows)
        FI_KIND_CHISQR_ALT   # -sum (x - q)^2 / (x + q)
        FI_KIND_INTERSECT    #  sum min(q, x)
        FI_KIND_KL_DIV       #  sum aux * log(max(x, 1e-10)) over the active bins
        FI_KIND_L1           # -sum |x - q|
        FI_N_KINDS

    # 1 when the vector kernels were compiled (GCC/Clang vector extensions)
    const int FI_HAVE_VEC
    # a multiple of every panel tile height: panel chunk sizes are rounded to it
    const int FI_TILE_LCM
    # 1 when the panel kernels run as AVX2 + FMA code on this CPU
    int fi_panels_fast()

    # one query q (D,)
    void fi_ip_rows_q1(const float* X, ptrdiff_t d, ptrdiff_t r0, ptrdiff_t r1, const float* q,
                       const float* bias, const uint8_t* mask, float* hv, int64_t* hi, ptrdiff_t kk)
    # four queries, rows of q with stride d
    void fi_ip_rows_q4(const float* X, ptrdiff_t d, ptrdiff_t r0, ptrdiff_t r1, const float* q,
                       const float* bias, const uint8_t* mask, float* hv, int64_t* hi, ptrdiff_t kk)
    # nq queries packed in npan transposed panels QT[p][j][lane] of 16 (or 8) lanes;
    # thr[q] holds query q's heap-root value (+inf for padding lanes)
    void fi_ip_rows_panels16(const float* X, ptrdiff_t d, ptrdiff_t r0, ptrdiff_t r1, const float* QT,
                             ptrdiff_t npan, ptrdiff_t nq, const float* bias, const uint8_t* mask,
                             float* hv, int64_t* hi, ptrdiff_t kk, float* thr)
    void fi_ip_rows_panels8(const float* X, ptrdiff_t d, ptrdiff_t r0, ptrdiff_t r1, const float* QT,
                            ptrdiff_t npan, ptrdiff_t nq, const float* bias, const uint8_t* mask,
                            float* hv, int64_t* hi, ptrdiff_t kk, float* thr)
    # the direct kinds: nq queries Q (nq, d) with their aux (nq, d), active bins
    # ACT (nq, d) and active counts NACT (nq,)
    void fi_direct_rows(fi_kind kind, const float* X, ptrdiff_t d, ptrdiff_t r0, ptrdiff_t r1,
                        const float* Q, const float* AUX, const int32_t* ACT, const int64_t* NACT,
                        ptrdiff_t nq, const uint8_t* mask, float* hv, int64_t* hi, ptrdiff_t kk)
    # sum of rows [r0, r1), read like the scans read them
    double fi_sum_rows(const float* X, ptrdiff_t d, ptrdiff_t r0, ptrdiff_t r1)
