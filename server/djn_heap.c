/* djn_heap.c: best-fit, address-ordered, immediately coalescing offset allocator
 * (see djn_heap.h for why this policy and not TLSF).
 *
 * Every byte of [0, capacity) belongs to exactly one block, free or live. A block is a
 * record in one host array (`pool`), named by its index; records link to their address
 * neighbours (prev/next), so coalescing needs no search. Free blocks also sit in a treap
 * keyed by (size, offset); live blocks sit in a hash map keyed by offset + 1 (key 0 is
 * reserved by djn_map and offset 0 is valid).
 *
 * alloc(n):
 *   1. size = round_up(max(n, 1), align); more than capacity is DJN_ERR_OOM.
 *   2. Best fit: walk the treap for the smallest key >= (size, 0). That is the smallest
 *      free block that fits, the lowest-addressed among equals. None: DJN_ERR_OOM.
 *   3. Secure host memory before changing anything: a spare record if the block will be
 *      split (pool growth), then the map entry (offset + 1 -> record). Either failing is
 *      DJN_ERR_NOMEM with the heap as it was (a grown pool is invisible).
 *   4. Take the block out of the treap. Keep its front `size` bytes as the live block (the
 *      record keeps its index, which step 3 stored); the remainder, if any, becomes a new
 *      free record linked right after it and goes into the treap.
 * free(off):
 *   1. Remove offset + 1 from the map; absent: DJN_ERR_ARGS, nothing changed.
 *   2. If the lower neighbour is free, take it out of the treap and let it absorb the
 *      block (the lower record survives, so the record at offset 0 never changes).
 *   3. Same with the upper neighbour. Put the merged block into the treap.
 *   free never allocates host memory, so it cannot fail halfway.
 *
 * Invariants (djn_heap_check verifies all of them):
 *   - the address list starts at offset 0, blocks are contiguous, sizes sum to capacity;
 *   - every offset and size is a non-zero multiple of align;
 *   - no two address neighbours are both free (coalescing is complete);
 *   - free blocks are exactly the treap's nodes: in-order strictly increasing in
 *     (size, offset), parents' priorities >= children's;
 *   - live blocks are exactly the map's entries, each mapping offset + 1 to its record;
 *   - used, free_bytes, free_blocks and allocs equal what the lists say.
 *
 * The treap (a binary search tree that is also a heap on random priorities) is chosen
 * over a red-black or AVL tree because split and merge make insert and erase ~30 lines,
 * iterative, with expected O(log n) depth; priorities come from a fixed-seed PRNG so runs
 * are reproducible. */
#include "djn_heap.h"

#include <assert.h>
#include <stdbool.h>
#include <string.h>

#include "djn_map.h"
#include "djn_mem.h"

#define S_NIL UINT32_MAX
#define S_POOL_MIN 64u

typedef struct {
    uint64_t off, size;
    uint32_t prev, next;  /* address neighbours, S_NIL at the ends; next links spares */
    uint32_t left, right; /* treap children while free */
    uint32_t prio;        /* treap priority while free */
    uint32_t is_free;
} s_blk_t;

struct djn_heap {
    uint64_t capacity, align;
    s_blk_t *pool;
    uint32_t pool_cap, pool_len; /* records [0, pool_len) have been handed out once */
    uint32_t spare;              /* list of released records, through next */
    uint32_t head;               /* the block at offset 0 */
    uint32_t root;               /* treap of free blocks */
    djn_map_t live;              /* offset + 1 -> record index */
    uint64_t used, peak, free_bytes, free_blocks, allocs;
    uint64_t rng; /* treap priorities */
};

/* ------------------------------------------------------------------ records */

static bool s_pool_reserve(djn_heap_t *h) {
    if (h->spare != S_NIL || h->pool_len < h->pool_cap)
        return true;
    if (h->pool_cap > (UINT32_MAX - 1) / 2)
        return false;
    uint32_t ncap = h->pool_cap ? h->pool_cap * 2 : S_POOL_MIN;
    s_blk_t *np =
        djn_realloc(h->pool, (size_t)h->pool_cap * sizeof(s_blk_t), (size_t)ncap * sizeof(s_blk_t));
    if (!np)
        return false;
    h->pool = np;
    h->pool_cap = ncap;
    return true;
}

/* Caller made sure with s_pool_reserve. */
static uint32_t s_rec_take(djn_heap_t *h) {
    uint32_t i;
    if (h->spare != S_NIL) {
        i = h->spare;
        h->spare = h->pool[i].next;
    } else {
        assert(h->pool_len < h->pool_cap);
        i = h->pool_len++;
    }
    memset(&h->pool[i], 0, sizeof(s_blk_t));
    h->pool[i].prev = h->pool[i].next = h->pool[i].left = h->pool[i].right = S_NIL;
    return i;
}

static void s_rec_release(djn_heap_t *h, uint32_t i) {
    h->pool[i].is_free = 0;
    h->pool[i].next = h->spare;
    h->spare = i;
}

static uint32_t s_prio(djn_heap_t *h) {
    uint64_t z = (h->rng += 0x9e3779b97f4a7c15ull); /* splitmix64 */
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (uint32_t)((z ^ (z >> 31)) >> 32);
}

/* ------------------------------------------------------------------ treap of free blocks */

/* (size, off) of a strictly before b. */
static inline bool s_less(const s_blk_t *a, const s_blk_t *b) {
    return a->size < b->size || (a->size == b->size && a->off < b->off);
}

/* Splits subtree t around x's key (x not in t) into x->left and x->right. */
static void s_split(djn_heap_t *h, uint32_t t, uint32_t x) {
    s_blk_t *p = h->pool;
    uint32_t *l = &p[x].left, *r = &p[x].right;
    while (t != S_NIL) {
        if (s_less(&p[t], &p[x])) { /* t and its left subtree go left */
            *l = t;
            l = &p[t].right;
            t = p[t].right;
        } else {
            *r = t;
            r = &p[t].left;
            t = p[t].left;
        }
    }
    *l = *r = S_NIL;
}

/* Stores into *link the merge of a and b, every key of a below every key of b. */
static void s_merge(djn_heap_t *h, uint32_t *link, uint32_t a, uint32_t b) {
    s_blk_t *p = h->pool;
    while (a != S_NIL && b != S_NIL) {
        if (p[a].prio >= p[b].prio) {
            *link = a;
            link = &p[a].right;
            a = *link;
        } else {
            *link = b;
            link = &p[b].left;
            b = *link;
        }
    }
    *link = a != S_NIL ? a : b;
}

static void s_tree_insert(djn_heap_t *h, uint32_t x) {
    s_blk_t *p = h->pool;
    p[x].prio = s_prio(h);
    p[x].is_free = 1;
    uint32_t *link = &h->root;
    while (*link != S_NIL && p[*link].prio >= p[x].prio)
        link = s_less(&p[x], &p[*link]) ? &p[*link].left : &p[*link].right;
    s_split(h, *link, x);
    *link = x;
    h->free_blocks++;
    h->free_bytes += p[x].size;
}

static void s_tree_erase(djn_heap_t *h, uint32_t x) {
    s_blk_t *p = h->pool;
    uint32_t *link = &h->root;
    while (*link != x) {
        assert(*link != S_NIL);
        link = s_less(&p[x], &p[*link]) ? &p[*link].left : &p[*link].right;
    }
    s_merge(h, link, p[x].left, p[x].right);
    p[x].left = p[x].right = S_NIL;
    p[x].is_free = 0;
    h->free_blocks--;
    h->free_bytes -= p[x].size;
}

/* The smallest free block of at least `size` bytes, lowest offset among equals. */
static uint32_t s_tree_best_fit(const djn_heap_t *h, uint64_t size) {
    uint32_t best = S_NIL, t = h->root;
    while (t != S_NIL) {
        if (h->pool[t].size >= size) {
            best = t;
            t = h->pool[t].left;
        } else {
            t = h->pool[t].right;
        }
    }
    return best;
}

/* ------------------------------------------------------------------ address list */

/* Unlinks record b (the upper of two neighbours being merged) and releases it. */
static void s_absorb(djn_heap_t *h, uint32_t a, uint32_t b) {
    s_blk_t *p = h->pool;
    assert(p[a].next == b && p[b].prev == a);
    p[a].size += p[b].size;
    p[a].next = p[b].next;
    if (p[b].next != S_NIL)
        p[p[b].next].prev = a;
    s_rec_release(h, b);
}

/* ------------------------------------------------------------------ public */

djn_heap_t *djn_heap_new(uint64_t capacity, uint32_t align) {
    if (align == 0 || (align & (align - 1)) != 0)
        return NULL;
    capacity &= ~((uint64_t)align - 1);
    if (capacity == 0)
        return NULL;
    djn_heap_t *h = djn_calloc(1, sizeof(*h));
    if (!h)
        goto fail;
    h->capacity = capacity;
    h->align = align;
    h->spare = S_NIL;
    h->root = S_NIL;
    h->rng = 0x6a09e667f3bcc908ull;
    if (!s_pool_reserve(h))
        goto fail;
    h->head = s_rec_take(h);
    h->pool[h->head].off = 0;
    h->pool[h->head].size = capacity;
    s_tree_insert(h, h->head);
    return h;
fail:
    djn_heap_destroy(&h);
    return NULL;
}

void djn_heap_destroy(djn_heap_t **self_p) {
    if (!self_p || !*self_p)
        return;
    djn_heap_t *h = *self_p;
    djn_map_release(&h->live);
    djn_free(h->pool, (size_t)h->pool_cap * sizeof(s_blk_t));
    djn_free(h, sizeof(*h));
    *self_p = NULL;
}

djn_status_t djn_heap_alloc(djn_heap_t *h, uint64_t nbytes, uint64_t *offset_out) {
    assert(h && offset_out);
    if (nbytes > h->capacity)
        return DJN_ERR_OOM;
    uint64_t size = (nbytes ? nbytes : 1) + h->align - 1;
    size &= ~(h->align - 1); /* no overflow: nbytes <= capacity, a multiple of align */
    uint32_t b = s_tree_best_fit(h, size);
    if (b == S_NIL)
        return DJN_ERR_OOM;
    bool split = h->pool[b].size > size;
    if (split && !s_pool_reserve(h))
        return DJN_ERR_NOMEM;
    uint64_t off = h->pool[b].off;
    if (!djn_map_put(&h->live, off + 1, b))
        return DJN_ERR_NOMEM;

    s_tree_erase(h, b);
    if (split) {
        uint32_t r = s_rec_take(h); /* may not move the pool: reserved above */
        s_blk_t *p = h->pool;
        p[r].off = off + size;
        p[r].size = p[b].size - size;
        p[r].prev = b;
        p[r].next = p[b].next;
        if (p[b].next != S_NIL)
            p[p[b].next].prev = r;
        p[b].next = r;
        p[b].size = size;
        s_tree_insert(h, r);
    }
    h->used += size;
    if (h->used > h->peak)
        h->peak = h->used;
    h->allocs++;
    *offset_out = off;
    return DJN_OK;
}

djn_status_t djn_heap_free(djn_heap_t *h, uint64_t offset) {
    assert(h);
    uint64_t v;
    if (offset == UINT64_MAX || !djn_map_del(&h->live, offset + 1, &v))
        return DJN_ERR_ARGS;
    uint32_t b = (uint32_t)v;
    s_blk_t *p = h->pool;
    assert(v < h->pool_len && p[b].off == offset && !p[b].is_free);
    h->used -= p[b].size;
    h->allocs--;
    uint32_t prev = p[b].prev, next = p[b].next;
    if (prev != S_NIL && p[prev].is_free) {
        s_tree_erase(h, prev);
        s_absorb(h, prev, b);
        b = prev;
    }
    if (next != S_NIL && p[next].is_free) {
        s_tree_erase(h, next);
        s_absorb(h, b, next);
    }
    s_tree_insert(h, b);
    return DJN_OK;
}

uint64_t djn_heap_size_of(const djn_heap_t *h, uint64_t offset) {
    assert(h);
    uint64_t v;
    if (offset == UINT64_MAX || !djn_map_get(&h->live, offset + 1, &v))
        return 0;
    return h->pool[v].size;
}

void djn_heap_stats(const djn_heap_t *h, djn_heap_stats_t *out) {
    assert(h && out);
    memset(out, 0, sizeof(*out));
    out->capacity = h->capacity;
    out->used = h->used;
    out->peak = h->peak;
    out->free_bytes = h->free_bytes;
    out->free_blocks = h->free_blocks;
    out->allocs = h->allocs;
    /* the largest free block is the treap's rightmost node */
    uint32_t t = h->root;
    while (t != S_NIL && h->pool[t].right != S_NIL)
        t = h->pool[t].right;
    out->largest_free = t != S_NIL ? h->pool[t].size : 0;
    out->fragmentation =
        h->free_bytes ? 1.0 - (double)out->largest_free / (double)h->free_bytes : 0.0;
}

/* ------------------------------------------------------------------ checking */

/* Checks the treap under t within the open key bounds lo/hi (S_NIL: unbounded); counts
 * its nodes into *n. Recursion depth is the treap's height, expected O(log n). */
static bool s_check_tree(const djn_heap_t *h, uint32_t t, uint32_t lo, uint32_t hi, uint64_t *n) {
    if (t == S_NIL)
        return true;
    const s_blk_t *p = h->pool;
    if (t >= h->pool_len || !p[t].is_free || ++*n > h->pool_len)
        return false;
    if ((lo != S_NIL && !s_less(&p[lo], &p[t])) || (hi != S_NIL && !s_less(&p[t], &p[hi])))
        return false;
    for (int side = 0; side < 2; side++) {
        uint32_t c = side ? p[t].right : p[t].left;
        if (c != S_NIL && (c >= h->pool_len || p[c].prio > p[t].prio))
            return false;
    }
    return s_check_tree(h, p[t].left, lo, t, n) && s_check_tree(h, p[t].right, t, hi, n);
}

djn_status_t djn_heap_check(const djn_heap_t *h) {
    assert(h);
    const s_blk_t *p = h->pool;
    uint64_t end = 0, used = 0, free_bytes = 0, nfree = 0, nlive = 0, steps = 0;
    bool prev_free = false;
    if (h->head >= h->pool_len || p[h->head].prev != S_NIL)
        return DJN_ERR_INTERNAL;
    for (uint32_t b = h->head, prev = S_NIL; b != S_NIL; prev = b, b = p[b].next) {
        if (b >= h->pool_len || ++steps > h->pool_len || p[b].prev != prev)
            return DJN_ERR_INTERNAL;
        if (p[b].off != end || p[b].size == 0 || (p[b].size & (h->align - 1)) != 0 ||
            p[b].size > h->capacity - end)
            return DJN_ERR_INTERNAL;
        end += p[b].size;
        if (p[b].is_free) {
            if (prev_free)
                return DJN_ERR_INTERNAL; /* two free neighbours: a missed coalesce */
            free_bytes += p[b].size;
            nfree++;
        } else {
            uint64_t v;
            if (!djn_map_get(&h->live, p[b].off + 1, &v) || v != b)
                return DJN_ERR_INTERNAL;
            used += p[b].size;
            nlive++;
        }
        prev_free = p[b].is_free;
    }
    uint64_t ntree = 0;
    if (end != h->capacity || !s_check_tree(h, h->root, S_NIL, S_NIL, &ntree))
        return DJN_ERR_INTERNAL;
    if (ntree != nfree || nfree != h->free_blocks || free_bytes != h->free_bytes ||
        used != h->used || nlive != h->allocs || h->live.len != nlive ||
        used + free_bytes != h->capacity || h->peak < used)
        return DJN_ERR_INTERNAL;
    return DJN_OK;
}
