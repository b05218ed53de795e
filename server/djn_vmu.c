/* djn_vmu.c: Data heap + Stack slab over one reserved host region (see djn_vmu.h).
 *
 * Layout: [ Data segment: data_bytes ][ Stack slab: slab_bytes ], one mmap.
 * Invariants:
 *   1. a Data block is live from djn_vmu_data_alloc to djn_vmu_release, and the heap
 *      lock covers every heap call (deleters run on any thread);
 *   2. slab_live counts slab allocations not yet released; the slab is reset only at a
 *      fragment end with slab_live == 0, so no live tensor ever sees its bytes reused;
 *   3. on CPU the device is synchronous, so "the device has finished" holds when the
 *      worker reaches the fragment end (a CUDA VMU would wait on the stream's event);
 *   4. memory is scrubbed before it can change hands, so no allocation ever holds bytes
 *      of a previous owner: a Data block is zeroed when freed (its range given back to
 *      the kernel past S_MADVISE_MIN: the next touch maps zero pages), and the slab's
 *      used range [0, top) when it is reset. Everything above the slab's top and every
 *      free Data block is zero. (A fragment reusing its own intermediates' slab bytes
 *      sees its own data: one session, one fragment.)
 *
 * Warm Data. Giving a freed block's pages back to the kernel is cheap, but the next
 * block placed there pays a page fault per 4 KiB page as it is written: measured on the
 * 2-core VM, 64 MiB written into fresh pages takes ~140 ms, into resident ones ~17 ms,
 * and zeroing resident pages costs about what MADV_DONTNEED does (~13-16 ms). A large
 * upload or result that replaces one of the same size (a training step's batch, a
 * benchmark's repeated transfer) would pay the faults every time. So freed large blocks
 * are zeroed in place and stay resident ("warm") within a budget (S_WARM_MAX, at most an
 * eighth of the Data segment); past it the oldest warm ranges are given back:
 *   5. every warm extent lies in free heap space, zeroed; warm_bytes is their sum and
 *      never exceeds warm_cap; an allocation takes the warm extents it overlaps out of
 *      the list (those pages are its own now), and extents are evicted (madvise) only
 *      under the heap lock, so no allocation can land on a range being given back. */
#define _GNU_SOURCE
#include "djn_vmu.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "djn_mem.h"

#define S_ALIGN 256u
#define S_MAX_VMUS 64
#define S_MADVISE_MIN (1u << 20)
#define S_WARM_MAX (256ull << 20) /* freed large blocks kept resident, zeroed */
#define S_WARM_EXTENTS 32

typedef struct {
    uint64_t off, n; /* a warm range of the Data segment, by offset */
} s_warm_t;

struct djn_vmu {
    uint8_t *base;
    uint64_t data_bytes, slab_bytes, total;
    pthread_mutex_t mu; /* heap and slab bookkeeping */
    djn_heap_t *heap;
    djn_slab_t *slab;
    _Atomic uint64_t slab_live;
    _Atomic uint64_t scrub_bytes, scrub_ns;
    bool in_planned;   /* between a planned fragment's begin and end */
    uint64_t frag_top; /* the highest slab top since that begin */
    djn_vmu_stats_t st;
    s_warm_t warm[S_WARM_EXTENTS]; /* oldest first; under mu */
    uint32_t nwarm;
    uint64_t warm_bytes, warm_cap;
};

/* The registry behind djn_vmu_find: slots written at new/destroy, read lock-free. */
static djn_vmu_t *_Atomic s_registry[S_MAX_VMUS];

djn_vmu_t *djn_vmu_find(const void *p) {
    for (int i = 0; i < S_MAX_VMUS; i++) {
        djn_vmu_t *v = atomic_load_explicit(&s_registry[i], memory_order_acquire);
        if (v && djn_vmu_owns(v, p))
            return v;
    }
    return NULL;
}

static bool s_register(djn_vmu_t *v) {
    for (int i = 0; i < S_MAX_VMUS; i++) {
        djn_vmu_t *empty = NULL;
        if (atomic_compare_exchange_strong(&s_registry[i], &empty, v))
            return true;
    }
    return false;
}

static void s_unregister(djn_vmu_t *v) {
    for (int i = 0; i < S_MAX_VMUS; i++) {
        djn_vmu_t *self = v;
        atomic_compare_exchange_strong(&s_registry[i], &self, NULL);
    }
}

djn_vmu_t *djn_vmu_new(uint64_t data_bytes, uint64_t slab_bytes, char *err, size_t errlen) {
    djn_vmu_t *v = djn_calloc(1, sizeof(*v));
    if (!v) {
        snprintf(err, errlen, "out of host memory");
        return NULL;
    }
    data_bytes = (data_bytes + S_ALIGN - 1) & ~(uint64_t)(S_ALIGN - 1);
    slab_bytes = (slab_bytes + S_ALIGN - 1) & ~(uint64_t)(S_ALIGN - 1);
    v->data_bytes = data_bytes;
    v->slab_bytes = slab_bytes;
    v->total = data_bytes + slab_bytes;
    v->warm_cap = data_bytes / 8 < S_WARM_MAX ? data_bytes / 8 : S_WARM_MAX;
    pthread_mutex_init(&v->mu, NULL);
    void *p = mmap(NULL, v->total, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        snprintf(err, errlen, "cannot reserve %llu bytes of address space for the VMU",
                 (unsigned long long)v->total);
        goto fail;
    }
    v->base = p;
    v->heap = djn_heap_new(data_bytes, S_ALIGN);
    v->slab = djn_slab_new(slab_bytes, S_ALIGN);
    if (!v->heap || !v->slab) {
        snprintf(err, errlen, "cannot create the VMU segments (data %llu, slab %llu bytes)",
                 (unsigned long long)data_bytes, (unsigned long long)slab_bytes);
        goto fail;
    }
    if (!s_register(v)) {
        snprintf(err, errlen, "more than %d VMUs in one process", S_MAX_VMUS);
        goto fail;
    }
    return v;
fail:
    djn_vmu_destroy(&v);
    return NULL;
}

void djn_vmu_destroy(djn_vmu_t **self_p) {
    if (!self_p || !*self_p)
        return;
    djn_vmu_t *v = *self_p;
    s_unregister(v);
    djn_heap_destroy(&v->heap);
    djn_slab_destroy(&v->slab);
    if (v->base)
        munmap(v->base, v->total);
    pthread_mutex_destroy(&v->mu);
    djn_free(v, sizeof(*v));
    *self_p = NULL;
}

static uint64_t s_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Zero [p, p + n): small ranges by memset, large ones by giving their whole pages back
 * to the kernel (a private anonymous mapping reads as zeros after MADV_DONTNEED, and
 * the pages stop counting as used memory until touched again). */
static void s_scrub(djn_vmu_t *v, uint8_t *p, uint64_t n) {
    if (!n)
        return;
    uint64_t t0 = s_now_ns();
    const uintptr_t pg = 4096;
    uintptr_t a = ((uintptr_t)p + pg - 1) & ~(pg - 1), b = ((uintptr_t)p + n) & ~(pg - 1);
    if (n >= S_MADVISE_MIN && b > a && madvise((void *)a, b - a, MADV_DONTNEED) == 0) {
        memset(p, 0, a - (uintptr_t)p);
        memset((void *)b, 0, (uintptr_t)p + n - b);
    } else {
        memset(p, 0, n);
    }
    atomic_fetch_add(&v->scrub_bytes, n);
    atomic_fetch_add(&v->scrub_ns, s_now_ns() - t0);
}

/* Give the pages of a free range back to the kernel (they read as zeros after). */
static void s_giveback(djn_vmu_t *v, uint64_t off, uint64_t n) {
    const uintptr_t pg = 4096;
    uintptr_t a = ((uintptr_t)v->base + off + pg - 1) & ~(pg - 1),
              b = ((uintptr_t)v->base + off + n) & ~(pg - 1);
    if (b > a)
        madvise((void *)a, b - a, MADV_DONTNEED);
}

/* Take [off, off + n) out of the warm list: it is being allocated (lock held). A split
 * that finds the list full gives the smaller piece back instead (invariant 5). */
static void s_warm_take(djn_vmu_t *v, uint64_t off, uint64_t n) {
    for (uint32_t i = 0; i < v->nwarm; i++) {
        s_warm_t w = v->warm[i];
        if (off >= w.off + w.n || w.off >= off + n)
            continue;
        uint64_t lo_n = off > w.off ? off - w.off : 0,
                 hi_n = w.off + w.n > off + n ? w.off + w.n - (off + n) : 0;
        v->warm_bytes -= w.n - lo_n - hi_n;
        if (lo_n && hi_n && v->nwarm == S_WARM_EXTENTS) {
            uint64_t go = lo_n < hi_n ? w.off : off + n, go_n = lo_n < hi_n ? lo_n : hi_n;
            s_giveback(v, go, go_n);
            v->warm_bytes -= go_n;
            if (lo_n < hi_n)
                lo_n = 0;
            else
                hi_n = 0;
        }
        if (lo_n && hi_n) {
            v->warm[i].n = lo_n;
            v->warm[v->nwarm++] = (s_warm_t){off + n, hi_n};
        } else if (lo_n || hi_n) {
            v->warm[i] = lo_n ? (s_warm_t){w.off, lo_n} : (s_warm_t){off + n, hi_n};
        } else {
            memmove(&v->warm[i], &v->warm[i + 1], (v->nwarm - i - 1) * sizeof(s_warm_t));
            v->nwarm--;
            i--;
        }
    }
}

/* A freed large block, zeroed already, joins the warm list (lock held, the block still
 * allocated): the oldest extents are given back while the budget or the list is short. */
static void s_warm_put(djn_vmu_t *v, uint64_t off, uint64_t n) {
    while (v->nwarm && (v->nwarm == S_WARM_EXTENTS || v->warm_bytes + n > v->warm_cap)) {
        s_giveback(v, v->warm[0].off, v->warm[0].n);
        v->warm_bytes -= v->warm[0].n;
        memmove(&v->warm[0], &v->warm[1], (v->nwarm - 1) * sizeof(s_warm_t));
        v->nwarm--;
    }
    v->warm[v->nwarm++] = (s_warm_t){off, n};
    v->warm_bytes += n;
}

void *djn_vmu_data_alloc(djn_vmu_t *v, uint64_t n) {
    uint64_t off;
    pthread_mutex_lock(&v->mu);
    djn_status_t st = djn_heap_alloc(v->heap, n, &off);
    if (st == DJN_OK && v->nwarm)
        s_warm_take(v, off, djn_heap_size_of(v->heap, off));
    pthread_mutex_unlock(&v->mu);
    return st == DJN_OK ? v->base + off : NULL;
}

void *djn_vmu_slab_alloc(djn_vmu_t *v, uint64_t n) {
    uint64_t off;
    pthread_mutex_lock(&v->mu);
    djn_status_t st = djn_slab_alloc(v->slab, n, &off);
    if (st == DJN_OK && v->in_planned && djn_slab_mark(v->slab) > v->frag_top)
        v->frag_top = djn_slab_mark(v->slab);
    pthread_mutex_unlock(&v->mu);
    if (st != DJN_OK)
        return NULL;
    atomic_fetch_add(&v->slab_live, 1);
    return v->base + v->data_bytes + off;
}

void *djn_vmu_slab_at(djn_vmu_t *v, uint64_t offset, uint64_t n) {
    if (offset > v->slab_bytes || n > v->slab_bytes - offset)
        return NULL;
    atomic_fetch_add(&v->slab_live, 1);
    return v->base + v->data_bytes + offset;
}

bool djn_vmu_in_slab(const djn_vmu_t *v, const void *p) {
    const uint8_t *q = p;
    return q >= v->base + v->data_bytes && q < v->base + v->total;
}

bool djn_vmu_owns(const djn_vmu_t *v, const void *p) {
    const uint8_t *q = p;
    return q >= v->base && q < v->base + v->total;
}

bool djn_vmu_release(djn_vmu_t *v, void *p) {
    if (!djn_vmu_owns(v, p))
        return false;
    if (djn_vmu_in_slab(v, p)) {
        atomic_fetch_sub(&v->slab_live, 1);
        return true;
    }
    uint64_t off = (uint64_t)((uint8_t *)p - v->base);
    pthread_mutex_lock(&v->mu);
    uint64_t n = djn_heap_size_of(v->heap, off);
    pthread_mutex_unlock(&v->mu);
    bool warm = n >= S_MADVISE_MIN && n <= v->warm_cap;
    if (warm) { /* zeroed in place, kept resident: the next block here is written warm */
        uint64_t t0 = s_now_ns();
        memset(p, 0, n);
        atomic_fetch_add(&v->scrub_bytes, n);
        atomic_fetch_add(&v->scrub_ns, s_now_ns() - t0);
    } else {
        s_scrub(v, p, n); /* still ours: nobody else can be handed this block yet */
    }
    pthread_mutex_lock(&v->mu);
    if (warm)
        s_warm_put(v, off, n);
    djn_heap_free(v->heap, off);
    pthread_mutex_unlock(&v->mu);
    return true;
}

djn_status_t djn_vmu_fragment_begin(djn_vmu_t *v, uint64_t planned_peak) {
    pthread_mutex_lock(&v->mu);
    v->st.fragments++;
    djn_status_t st = DJN_OK;
    if (planned_peak) {
        uint64_t top = djn_slab_mark(v->slab);
        /* the planned region must start empty: only after a reset */
        st = top == 0 ? djn_slab_reserve_at(v->slab, 0, planned_peak) : DJN_ERR_OOM;
        v->in_planned = st == DJN_OK;
        v->frag_top = st == DJN_OK ? planned_peak : 0;
        if (st == DJN_OK) {
            v->st.plan_reserved_sum += planned_peak;
            v->st.planned_runs++;
        }
    }
    pthread_mutex_unlock(&v->mu);
    return st;
}

void djn_vmu_fragment_end(djn_vmu_t *v) {
    pthread_mutex_lock(&v->mu);
    if (v->in_planned) {
        v->st.plan_high_water_last = v->frag_top;
        v->st.plan_high_water_sum += v->frag_top;
        v->in_planned = false;
    }
    uint64_t dirty = 0;
    if (atomic_load(&v->slab_live) == 0) {
        dirty = djn_slab_mark(v->slab); /* slab allocations only bump: top is all used */
        djn_slab_reset(v->slab, 0);
    } else {
        v->st.slab_resets_deferred++;
    }
    pthread_mutex_unlock(&v->mu);
    /* only this worker allocates in the slab, and it is here: scrub without the lock */
    s_scrub(v, v->base + v->data_bytes, dirty);
}

void djn_vmu_note_plan(djn_vmu_t *v, uint64_t peak, uint64_t lower_bound, uint64_t bump) {
    pthread_mutex_lock(&v->mu);
    v->st.planned_fragments++;
    v->st.plan_peak_last = peak;
    v->st.plan_lower_bound_last = lower_bound;
    v->st.plan_bump_last = bump;
    v->st.plan_peak_sum += peak;
    v->st.plan_lower_bound_sum += lower_bound;
    v->st.plan_bump_sum += bump;
    pthread_mutex_unlock(&v->mu);
}

void djn_vmu_note_copy_out(djn_vmu_t *v, uint64_t n) {
    pthread_mutex_lock(&v->mu);
    v->st.copied_out_bytes += n;
    pthread_mutex_unlock(&v->mu);
}

void djn_vmu_stats(djn_vmu_t *v, djn_vmu_stats_t *out) {
    pthread_mutex_lock(&v->mu);
    *out = v->st;
    djn_heap_stats(v->heap, &out->data);
    djn_slab_stats(v->slab, &out->slab);
    out->slab_live = atomic_load(&v->slab_live);
    out->scrub_bytes = atomic_load(&v->scrub_bytes);
    out->scrub_ns = atomic_load(&v->scrub_ns);
    pthread_mutex_unlock(&v->mu);
}

uint64_t djn_vmu_slab_capacity(const djn_vmu_t *v) {
    return v->slab_bytes;
}

uint64_t djn_vmu_data_free(djn_vmu_t *v, uint64_t *capacity) {
    djn_heap_stats_t hs;
    pthread_mutex_lock(&v->mu);
    djn_heap_stats(v->heap, &hs);
    pthread_mutex_unlock(&v->mu);
    if (capacity)
        *capacity = hs.capacity;
    return hs.free_bytes;
}
