# Declarations of fi_heap.h: the bounded top-k heap of fastimg's kernels.
#
# A heap of capacity n is two arrays, values (float32) and ids (int64), a
# min-heap on "goodness" (root = worst pair kept) under the total order "higher
# value first, then lower id".  Like scikit-learn's sklearn/utils/_heap.pxd, it
# is meant to be cimported:
#
#     from fastimg._heap cimport fi_heap_init, fi_heap_push, fi_heap_sort
#
# NumPy equivalent of pushing (values[i], ids[i]) for every i, then sorting:
#     order = np.lexsort((ids, -values))[:n]   (slots never filled: id -1, value -inf)
from libc.stddef cimport ptrdiff_t
from libc.stdint cimport int64_t, uint8_t


cdef extern from "fi_heap.h" nogil:
    # the id of an empty slot before fi_heap_sort (it becomes -1 there)
    const int64_t FI_WORST_ID

    # 1 if (va, ia) is better than (vb, ib): higher value, then lower id
    int fi_better(float va, int64_t ia, float vb, int64_t ib)
    # every slot (-inf, FI_WORST_ID)
    void fi_heap_init(float* v, int64_t* id, ptrdiff_t n)
    # keep (val, idx) if it beats the root
    void fi_heap_push(float* v, int64_t* id, ptrdiff_t n, float val, int64_t idx)
    # fi_heap_push of row r's value unless mask[r] (mask may be NULL)
    void fi_push_row(float* v, int64_t* id, ptrdiff_t n, const uint8_t* mask, ptrdiff_t r, float val)
    # in place, best first; empty slots get id -1
    void fi_heap_sort(float* v, int64_t* id, ptrdiff_t n)
    # the values s[i * pw + l] of rows r + i (i < nr) reaching th[l] (query q0 + l's
    # heap root) pushed into query q0 + l's heap; th[l] follows the root
    void fi_panel_push(const float* s, ptrdiff_t pw, ptrdiff_t nr, ptrdiff_t lanes, ptrdiff_t q0, ptrdiff_t r,
                       const uint8_t* mask, float* hv, int64_t* hi, ptrdiff_t kk, float* th)
