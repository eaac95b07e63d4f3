# Declarations of fi_rescore.h: float64 re-scoring of candidate rows, summed in
# NumPy's pairwise order (bit-identical to fastimg.metrics._exact_block).
from libc.stddef cimport ptrdiff_t
from libc.stdint cimport int64_t


cdef extern from "fi_rescore.h" nogil:
    # metrics (fastimg._core exports them as RESCORE_*)
    const int FI_RS_COSINE
    const int FI_RS_PEARSON
    const int FI_RS_L2
    const int FI_RS_BHATTACHARYYA
    const int FI_RS_N

    # the sums of query q (D,) the formulas need (qs: 2 doubles)
    void fi_rs_query(int kind, const float* q, ptrdiff_t d, double* qs)
    # the metric's float64 value of row x (D,) against query q (qs: fi_rs_query's)
    double fi_rs_score(int kind, const float* x, const float* q, ptrdiff_t d, const double* qs)
    ctypedef struct fi_rs_pair:
        double s
        int64_t id
    # the k best of query q's nc candidates (ids checked by the caller), best first
    # (higher: similarities; NaN last; ties by the lower id); scratch: nc pairs
    void fi_rs_topk(int kind, int higher, const float* X, ptrdiff_t d, const float* q, const int64_t* cand,
                    ptrdiff_t nc, ptrdiff_t k, int64_t* out_ids, float* out_scores, fi_rs_pair* scratch)
