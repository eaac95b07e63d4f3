/* fi_heap.h - the bounded top-k heap of fastimg's kernels (plain C99).
 *
 * A heap of capacity n is two arrays, values v[n] (float) and ids id[n]
 * (int64), a min-heap on "goodness": the root v[0]/id[0] is the worst pair kept.
 * Pairs are ordered by a total order, "higher value first, then lower id", so
 * the content of a heap after a set of pushes does not depend on their order
 * (hence not on the thread count of a scan).
 *
 *   fi_heap_init(v, id, n)              every slot (-inf, FI_WORST_ID)
 *   fi_heap_push(v, id, n, val, idx)    keep (val, idx) if it beats the root
 *   fi_push_row(v, id, n, mask, r, val) the same for row r, skipped if mask[r]
 *   fi_heap_sort(v, id, n)              best first; never-filled slots get id -1
 *   fi_panel_push(...)                  a query-panel tile's values into their heaps
 *
 * NumPy equivalent of pushing values[i] with ids[i], then sorting:
 *     order = np.lexsort((ids, -values))[:n]
 *
 * Declared for Cython in _heap.pxd.  Check with: gcc -std=c99 -fsyntax-only fi_heap.h
 */
#ifndef FASTIMG_FI_HEAP_H
#define FASTIMG_FI_HEAP_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#define FI_WORST_ID INT64_MAX

/* a better than b: higher value, then lower id (a total order on distinct ids) */
static inline int fi_better(float va, int64_t ia, float vb, int64_t ib) {
    return va > vb || (va == vb && ia < ib);
}

/* restore the heap property below pos (min-heap on "goodness": root = worst) */
static inline void fi_sift_down(float* v, int64_t* id, ptrdiff_t n, ptrdiff_t pos) {
    float nv = v[pos];
    int64_t ni = id[pos];
    for (;;) {
        ptrdiff_t l = 2 * pos + 1, r = l + 1, w;
        if (l >= n) break;
        w = l;
        if (r < n && fi_better(v[l], id[l], v[r], id[r])) w = r;  /* the worse child */
        if (!fi_better(nv, ni, v[w], id[w])) break;
        v[pos] = v[w]; id[pos] = id[w];
        pos = w;
    }
    v[pos] = nv; id[pos] = ni;
}

static inline void fi_heap_init(float* v, int64_t* id, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; ++i) { v[i] = -INFINITY; id[i] = FI_WORST_ID; }
}

/* keep (val, idx) if it beats the worst kept pair */
static inline void fi_heap_push(float* v, int64_t* id, ptrdiff_t n, float val, int64_t idx) {
    if (!fi_better(val, idx, v[0], id[0])) return;
    v[0] = val; id[0] = idx;
    fi_sift_down(v, id, n, 0);
}

/* heapsort in place: afterwards v[0] is the best pair; empty slots get id -1 */
static void fi_heap_sort(float* v, int64_t* id, ptrdiff_t n) {
    for (ptrdiff_t end = n - 1; end > 0; --end) {
        float tv = v[0]; int64_t ti = id[0];
        v[0] = v[end]; id[0] = id[end];
        v[end] = tv; id[end] = ti;
        fi_sift_down(v, id, end, 0);
    }
    for (ptrdiff_t i = 0; i < n; ++i) if (id[i] == FI_WORST_ID) id[i] = -1;
}

/* fi_heap_push of row r's value, unless mask[r] (mask may be NULL); the
   common case (the value does not reach the root) is decided first, inline */
static inline void fi_push_row(float* hv, int64_t* hi, ptrdiff_t kk, const uint8_t* mask,
                               ptrdiff_t r, float val) {
    if (!fi_better(val, (int64_t)r, hv[0], hi[0])) return;
    if (mask != NULL && mask[r]) return;
    hv[0] = val; hi[0] = (int64_t)r;
    fi_sift_down(hv, hi, kk, 0);
}

/* the rare path of a query-panel tile (fi_scan.h, fi_lowp.h): values s[i * pw + l]
   of rows r + i (i < nr) for queries q0 + l (l < lanes) that reach th[l], query
   q0 + l's heap-root value, are pushed; th[l] follows the root */
static inline void fi_panel_push(const float* s, ptrdiff_t pw, ptrdiff_t nr, ptrdiff_t lanes, ptrdiff_t q0,
                                 ptrdiff_t r, const uint8_t* mask, float* hv, int64_t* hi, ptrdiff_t kk,
                                 float* th) {
    for (ptrdiff_t i = 0; i < nr; ++i) {
        for (ptrdiff_t l = 0; l < lanes; ++l) {
            float v = s[i * pw + l];
            if (v < th[l]) continue;
            ptrdiff_t q = q0 + l;
            fi_push_row(hv + q * kk, hi + q * kk, kk, mask, r + i, v);
            th[l] = hv[q * kk];
        }
    }
}

#endif /* FASTIMG_FI_HEAP_H */
