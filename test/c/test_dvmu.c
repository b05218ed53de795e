/* test_dvmu.c: the VMU on a device arena (server/djn_dvmu.c) over the fake device.
 *
 * The fake runs queued work only when told, so "the device has not finished yet" is a
 * state a test can hold and look at. Covered:
 *   1. the arena: reserved through the seam, zeroed once (fresh fake memory is 0xA5),
 *      sized from the device's free memory when asked, given back; failures named;
 *   2. Data, one stream: a freed block is reused at once, scrubbed by a memset queued
 *      on its stream, no waits;
 *   3. Data, two streams: a block freed on s1 while s1's work is still queued, handed to
 *      s2: s2 cannot run before s1's last use and scrub (its first operation is a wait),
 *      and s2's bytes survive the scrub; fences are recorded in batches and reaped;
 *   4. slab, one stream: every fragment's window starts at 0 even while the previous
 *      one's work is queued (stream order);
 *   5. slab, delayed completion: another stream's window does not overlap a generation
 *      in flight; after completion it reuses offset 0; want_base waits on the device;
 *   6. held generations (a result still referenced) block reuse until released, and the
 *      release retires them on its stream;
 *   7. bump allocations grow the window over other streams' generations by waiting;
 *   8. a randomized trace over three streams with random device progress: every
 *      allocation's first use is ordered after every earlier fragment that used its
 *      bytes (probe events), and the slab reads zero once everything ran;
 *   9. the pluggable-allocator entry points (device registry, thread slab mode, words
 *      for an allocation that cannot be served);
 *  10. host allocation failures at every step of a scenario: no crash, no leak. */
#include "djn_test.h"

#include "djn_dev.h"
#include "djn_dvmu.h"

#define KiB (1024ull)
#define MiB (1024ull * 1024ull)

static djn_dvmu_t *s_vmu(djn_dev_t *d, uint64_t data, uint64_t slab) {
    char err[256] = "";
    djn_dvmu_t *v = djn_dvmu_new(d, data, slab, err, sizeof err);
    CHECK(v != NULL);
    if (!v)
        printf("djn_dvmu_new: %s\n", err);
    return v;
}

static djn_dev_stream_t *s_stream(djn_dev_t *d) {
    djn_dev_stream_t *s = NULL;
    CHECK_EQ_INT(djn_dev_stream_new(d, 0, &s), DJN_OK);
    return s;
}

static void test_arena(void) {
    djn_dev_t *d = djn_dev_fake_new();
    djn_dvmu_t *v = s_vmu(d, 1 * MiB, 256 * KiB);
    djn_dev_fake_stats_t fs;
    djn_dev_fake_stats(d, &fs);
    CHECK_EQ_INT(fs.device_bytes, 1 * MiB + 256 * KiB); /* one reservation */
    uint8_t *p = djn_dvmu_data_alloc(v, 1 * MiB, NULL);
    CHECK(p != NULL);
    CHECK(all_bytes(p, 0, 1 * MiB)); /* zeroed once at creation */
    CHECK(djn_dvmu_owns(v, p) && !djn_dvmu_in_slab(v, p));
    CHECK(djn_dvmu_data_alloc(v, 1, NULL) == NULL); /* full */
    CHECK(djn_dvmu_release(v, p, NULL));
    uint8_t outside = 0;
    CHECK(!djn_dvmu_release(v, &outside, NULL));
    djn_dvmu_stats_t st;
    djn_dvmu_stats(v, &st);
    CHECK_EQ_INT(st.data.capacity, 1 * MiB);
    CHECK_EQ_INT(st.slab_capacity, 256 * KiB);
    CHECK_EQ_INT(st.data.used, 0);
    djn_dvmu_destroy(&v);
    CHECK(v == NULL);
    djn_dvmu_destroy(&v);
    djn_dev_fake_stats(d, &fs);
    CHECK_EQ_INT(fs.device_bytes, 0);
    CHECK_EQ_INT(fs.events, 0);

    /* sized from the device: 90 % of its free memory, an eighth of that for the slab */
    djn_dev_fake_set_total(d, 16 * MiB);
    v = s_vmu(d, 0, 0);
    djn_dvmu_stats(v, &st);
    uint64_t usable = 16 * MiB / 10 * 9;
    CHECK_EQ_INT(st.slab_capacity, (usable / 8) & ~255ull);
    CHECK_EQ_INT(st.data.capacity, (usable - usable / 8) & ~255ull);
    djn_dvmu_destroy(&v);

    char err[256] = "";
    djn_dev_fake_set_total(d, 1 * KiB);
    CHECK(djn_dvmu_new(d, 0, 0, err, sizeof err) == NULL);
    CHECK_HAS(err, "too little");
    djn_dev_fake_fail_reserve_after(d, 0);
    CHECK(djn_dvmu_new(d, 1 * MiB, 1 * MiB, err, sizeof err) == NULL);
    CHECK_HAS(err, "cannot reserve");
    CHECK_HAS(err, "out of fake device memory");
    djn_dev_destroy(&d);
}

static void test_data_one_stream(void) {
    djn_dev_t *d = djn_dev_fake_new();
    djn_dvmu_t *v = s_vmu(d, 1 * MiB, 64 * KiB);
    djn_dev_stream_t *s = s_stream(d);
    djn_dev_fake_hold(d, true);
    uint8_t *a = djn_dvmu_data_alloc(v, 4 * KiB, s);
    CHECK_EQ_INT(djn_dev_memset(d, a, 0x11, 4 * KiB, s), DJN_OK);
    CHECK(djn_dvmu_release(v, a, s));
    uint8_t *b = djn_dvmu_data_alloc(v, 4 * KiB, s); /* s's work is still queued */
    CHECK(b == a);                                   /* reused at once: same stream */
    CHECK_EQ_INT(djn_dev_memset(d, b + 100, 0x22, 1, s), DJN_OK);
    djn_dev_fake_drain(d);
    CHECK_EQ_INT(b[0], 0); /* the scrub ran between the two owners */
    CHECK_EQ_INT(b[100], 0x22);
    djn_dvmu_stats_t st;
    djn_dvmu_stats(v, &st);
    CHECK_EQ_INT(st.data_stream_waits, 0);
    CHECK_EQ_INT(st.scrub_bytes, 4 * KiB);
    djn_dev_fake_stats_t fs;
    djn_dev_fake_stats(d, &fs);
    CHECK_EQ_INT(fs.stream_waits, 0);
    CHECK_EQ_INT(fs.host_waits, 1); /* only the zeroing at creation */
    CHECK(djn_dvmu_release(v, b, s));
    djn_dvmu_destroy(&v);
    djn_dev_stream_destroy(d, s);
    djn_dev_destroy(&d);
}

static void test_data_two_streams(void) {
    djn_dev_t *d = djn_dev_fake_new();
    djn_dvmu_t *v = s_vmu(d, 1 * MiB, 64 * KiB);
    djn_dev_stream_t *s1 = s_stream(d), *s2 = s_stream(d);
    djn_dev_fake_hold(d, true);
    uint8_t *a = djn_dvmu_data_alloc(v, 8 * KiB, s1);
    CHECK_EQ_INT(djn_dev_memset(d, a, 0x11, 8 * KiB, s1), DJN_OK); /* s1's last use, queued */
    CHECK(djn_dvmu_release(v, a, s1));
    uint8_t *b = djn_dvmu_data_alloc(v, 8 * KiB, s2);
    CHECK(b == a); /* best fit hands out the same bytes */
    CHECK_EQ_INT(djn_dev_memset(d, b, 0x22, 8 * KiB, s2), DJN_OK);
    CHECK(!djn_dev_fake_step(d, s2)); /* s2 waits for s1's use and scrub */
    CHECK_EQ_INT(b[0], 0);
    CHECK(djn_dev_fake_step(d, s1)); /* s1's memset */
    CHECK(!djn_dev_fake_step(d, s2));
    djn_dev_fake_drain(d);
    CHECK(all_bytes(b, 0x22, 8 * KiB)); /* s2's bytes, not wiped by s1's late scrub */
    djn_dvmu_stats_t st;
    djn_dvmu_stats(v, &st);
    CHECK_EQ_INT(st.data_stream_waits, 1);
    CHECK_EQ_INT(st.data_fences, 1);
    /* a second block from the same dirty range in the same call waits once only; the
     * range is reaped once its fence is done */
    uint8_t *c = djn_dvmu_data_alloc(v, 256, s2);
    CHECK(c != NULL);
    djn_dvmu_stats(v, &st);
    CHECK_EQ_INT(st.data_dirty, 0);
    CHECK(djn_dvmu_release(v, b, s2));
    CHECK(djn_dvmu_release(v, c, s2));

    /* batches: past 64 unfenced ranges, one fence per stream */
    uint8_t *blk[80];
    for (int i = 0; i < 80; i++)
        blk[i] = djn_dvmu_data_alloc(v, 1 * KiB, i % 2 ? s1 : s2);
    for (int i = 0; i < 80; i++)
        CHECK(djn_dvmu_release(v, blk[i], i % 2 ? s1 : s2));
    djn_dvmu_stats(v, &st);
    CHECK(st.data_fences >= 3); /* the first plus one per stream */
    CHECK(st.data_dirty > 0);
    djn_dev_fake_drain(d);
    CHECK(djn_dvmu_data_alloc(v, 1 * KiB, s1) != NULL); /* reaps */
    djn_dvmu_stats(v, &st);
    CHECK(st.data_dirty < 20); /* the unfenced tail stays until fenced */
    CHECK_EQ_INT(st.data.allocs, 1);
    djn_dvmu_destroy(&v); /* one live block: destroy does not need them back */
    djn_dev_fake_stats_t fs;
    djn_dev_fake_stats(d, &fs);
    CHECK_EQ_INT(fs.events, 0);
    CHECK_EQ_INT(fs.device_bytes, 0);
    djn_dev_stream_destroy(d, s1);
    djn_dev_stream_destroy(d, s2);
    djn_dev_destroy(&d);
}

static void test_slab_one_stream(void) {
    djn_dev_t *d = djn_dev_fake_new();
    djn_dvmu_t *v = s_vmu(d, 64 * KiB, 64 * KiB);
    djn_dev_stream_t *s = s_stream(d);
    djn_dev_fake_hold(d, true);
    for (int i = 0; i < 5; i++) {
        CHECK_EQ_INT(djn_dvmu_fragment_begin(v, s, 8 * KiB, UINT64_MAX), DJN_OK);
        uint64_t base = 1, end = 0;
        CHECK(djn_dvmu_window(v, &base, &end));
        CHECK_EQ_INT(base, 0);
        CHECK_EQ_INT(end, 64 * KiB);
        uint8_t *p = djn_dvmu_slab_at(v, 4 * KiB, 4 * KiB);
        CHECK(p != NULL && djn_dvmu_in_slab(v, p));
        CHECK_EQ_INT(djn_dev_memset(d, p, 0x30 + i, 4 * KiB, s), DJN_OK);
        uint8_t *q = djn_dvmu_slab_alloc(v, 1000, s);
        CHECK(q == p + 4 * KiB); /* bumps above the planned region */
        CHECK(djn_dvmu_release(v, p, s));
        CHECK(djn_dvmu_release(v, q, s));
        CHECK_EQ_INT(djn_dvmu_fragment_end(v, s), DJN_OK);
    }
    CHECK(!djn_dvmu_window(v, &(uint64_t){0}, &(uint64_t){0}));
    djn_dvmu_stats_t st;
    djn_dvmu_stats(v, &st);
    CHECK_EQ_INT(st.fragments, 5);
    CHECK_EQ_INT(st.windows_moved, 0);
    CHECK_EQ_INT(st.slab_stream_waits, 0);
    CHECK_EQ_INT(st.slab_live, 0);
    djn_dev_fake_drain(d);
    uint8_t *slab = (uint8_t *)djn_dvmu_data_alloc(v, 64 * KiB, s) + 64 * KiB;
    CHECK(all_bytes(slab, 0, 64 * KiB)); /* scrubbed after each fragment */
    CHECK(djn_dvmu_release(v, slab - 64 * KiB, s));
    CHECK_EQ_INT(djn_dvmu_fragment_end(v, s), DJN_ERR_ARGS);           /* none open */
    CHECK_EQ_INT(djn_dvmu_fragment_begin(v, s, 0, 100), DJN_ERR_ARGS); /* unaligned base */
    CHECK_EQ_INT(djn_dvmu_fragment_begin(v, s, 0, UINT64_MAX), DJN_OK);
    CHECK_EQ_INT(djn_dvmu_fragment_begin(v, s, 0, UINT64_MAX), DJN_ERR_ARGS); /* one open */
    CHECK(djn_dvmu_slab_at(v, 60 * KiB, 8 * KiB) == NULL);                    /* past the window */
    CHECK_EQ_INT(djn_dvmu_fragment_end(v, s), DJN_OK);
    djn_dvmu_destroy(&v);
    djn_dev_stream_destroy(d, s);
    djn_dev_destroy(&d);
}

static void test_slab_delayed_completion(void) {
    djn_dev_t *d = djn_dev_fake_new();
    djn_dvmu_t *v = s_vmu(d, 64 * KiB, 64 * KiB);
    djn_dev_stream_t *s1 = s_stream(d), *s2 = s_stream(d);
    djn_dev_fake_hold(d, true);
    uint64_t base = 0, end = 0;
    CHECK_EQ_INT(djn_dvmu_fragment_begin(v, s1, 16 * KiB, UINT64_MAX), DJN_OK);
    uint8_t *p1 = djn_dvmu_slab_at(v, 0, 16 * KiB);
    CHECK_EQ_INT(djn_dev_memset(d, p1, 0x11, 16 * KiB, s1), DJN_OK);
    CHECK(djn_dvmu_release(v, p1, s1));
    CHECK_EQ_INT(djn_dvmu_fragment_end(v, s1), DJN_OK); /* scrub + event, queued on s1 */

    /* s1's generation is in flight: s2's window goes above it, no wait */
    CHECK_EQ_INT(djn_dvmu_fragment_begin(v, s2, 16 * KiB, UINT64_MAX), DJN_OK);
    CHECK(djn_dvmu_window(v, &base, &end));
    CHECK_EQ_INT(base, 16 * KiB);
    CHECK_EQ_INT(end, 64 * KiB);
    uint8_t *p2 = djn_dvmu_slab_at(v, 0, 16 * KiB);
    CHECK_EQ_INT(djn_dev_memset(d, p2, 0x22, 16 * KiB, s2), DJN_OK);
    CHECK(djn_dev_fake_step(d, s2)); /* s2 runs beside s1: no wait queued */
    CHECK(all_bytes(p2, 0x22, 16 * KiB));
    CHECK(djn_dvmu_release(v, p2, s2));
    CHECK_EQ_INT(djn_dvmu_fragment_end(v, s2), DJN_OK);
    djn_dvmu_stats_t st;
    djn_dvmu_stats(v, &st);
    CHECK_EQ_INT(st.slab_inflight, 2);
    CHECK_EQ_INT(st.windows_moved, 1);
    CHECK_EQ_INT(st.slab_stream_waits, 0);

    /* a third stream wants 40 KiB: both generations are in the way, the largest free
     * span (32 KiB above them) is short, so it takes 0 and waits on the device */
    djn_dev_stream_t *s3 = s_stream(d);
    CHECK_EQ_INT(djn_dvmu_fragment_begin(v, s3, 40 * KiB, UINT64_MAX), DJN_OK);
    CHECK(djn_dvmu_window(v, &base, &end));
    CHECK_EQ_INT(base, 0);
    djn_dvmu_stats(v, &st);
    CHECK_EQ_INT(st.slab_stream_waits, 2);
    uint8_t *p3 = djn_dvmu_slab_at(v, 0, 40 * KiB);
    CHECK_EQ_INT(djn_dev_memset(d, p3, 0x33, 40 * KiB, s3), DJN_OK);
    CHECK(!djn_dev_fake_step(d, s3)); /* blocked until s1 and s2 are done */
    djn_dev_fake_drain(d);
    CHECK(all_bytes(p3, 0x33, 40 * KiB)); /* neither late scrub wiped it */
    CHECK(djn_dvmu_release(v, p3, s3));
    CHECK_EQ_INT(djn_dvmu_fragment_end(v, s3), DJN_OK);
    djn_dev_fake_drain(d);

    /* completion -> reuse: with everything done, s2's next window starts at 0 again */
    CHECK_EQ_INT(djn_dvmu_fragment_begin(v, s2, 16 * KiB, UINT64_MAX), DJN_OK);
    CHECK(djn_dvmu_window(v, &base, &end));
    CHECK_EQ_INT(base, 0);
    CHECK_EQ_INT(djn_dvmu_fragment_end(v, s2), DJN_OK);
    djn_dev_fake_drain(d);

    /* want_base: a replayed graph needs its base; a held generation there refuses it */
    CHECK_EQ_INT(djn_dvmu_fragment_begin(v, s1, 8 * KiB, UINT64_MAX), DJN_OK);
    CHECK(djn_dvmu_window(v, &base, &end));
    CHECK_EQ_INT(base, 0);
    CHECK(djn_dvmu_slab_alloc(v, 8 * KiB, s1) != NULL);
    uint8_t *keep = djn_dvmu_slab_at(v, 0, 8 * KiB);
    CHECK_EQ_INT(djn_dvmu_fragment_end(v, s1), DJN_OK); /* live: HELD */
    CHECK_EQ_INT(djn_dvmu_fragment_begin(v, s2, 8 * KiB, 0), DJN_ERR_OOM);
    CHECK_EQ_INT(djn_dvmu_fragment_begin(v, s2, 8 * KiB, 32 * KiB), DJN_OK);
    CHECK(djn_dvmu_window(v, &base, &end));
    CHECK_EQ_INT(base, 32 * KiB);
    CHECK_EQ_INT(djn_dvmu_fragment_end(v, s2), DJN_OK);
    djn_dvmu_stats(v, &st);
    CHECK_EQ_INT(st.gens_held, 1);
    CHECK_EQ_INT(st.slab_live, 2);
    djn_dvmu_destroy(&v); /* destroy needs nothing back (the server never destroys a live one) */
    djn_dev_stream_destroy(d, s1);
    djn_dev_stream_destroy(d, s2);
    djn_dev_stream_destroy(d, s3);
    djn_dev_destroy(&d);
    (void)keep;
}

static void test_slab_held(void) {
    djn_dev_t *d = djn_dev_fake_new();
    djn_dvmu_t *v = s_vmu(d, 64 * KiB, 64 * KiB);
    djn_dev_stream_t *s = s_stream(d), *t = s_stream(d);
    djn_dev_fake_hold(d, true);
    uint64_t base = 0, end = 0;
    CHECK_EQ_INT(djn_dvmu_fragment_begin(v, s, 8 * KiB, UINT64_MAX), DJN_OK);
    uint8_t *kept = djn_dvmu_slab_at(v, 0, 8 * KiB);
    CHECK_EQ_INT(djn_dev_memset(d, kept, 0x44, 8 * KiB, s), DJN_OK);
    CHECK_EQ_INT(djn_dvmu_fragment_end(v, s), DJN_OK); /* still referenced: HELD */
    djn_dev_fake_drain(d);
    CHECK(all_bytes(kept, 0x44, 8 * KiB)); /* not scrubbed under its owner */
    /* the same stream cannot reuse a held generation: the window moves above it */
    CHECK_EQ_INT(djn_dvmu_fragment_begin(v, s, 8 * KiB, UINT64_MAX), DJN_OK);
    CHECK(djn_dvmu_window(v, &base, &end));
    CHECK_EQ_INT(base, 8 * KiB);
    /* nor can a bump allocation grow into it: the window ends at capacity here, and
     * a window below a held generation ends at it (checked in test_slab_grow) */
    CHECK_EQ_INT(djn_dvmu_fragment_end(v, s), DJN_OK);
    djn_dvmu_stats_t st;
    djn_dvmu_stats(v, &st);
    CHECK_EQ_INT(st.gens_held, 1);
    /* the last reference goes on t: the generation is scrubbed and retired on t */
    CHECK(djn_dvmu_release(v, kept, t));
    djn_dvmu_stats(v, &st);
    CHECK_EQ_INT(st.gens_held, 0);
    CHECK_EQ_INT(st.slab_inflight, 2); /* with the second window's, not reaped yet */
    CHECK_EQ_INT(kept[0], 0x44);       /* the scrub is queued on t */
    djn_dev_fake_drain(d);
    CHECK(all_bytes(kept, 0, 8 * KiB));
    CHECK_EQ_INT(djn_dvmu_fragment_begin(v, s, 8 * KiB, UINT64_MAX), DJN_OK);
    CHECK(djn_dvmu_window(v, &base, &end));
    CHECK_EQ_INT(base, 0); /* done: reused */
    CHECK_EQ_INT(djn_dvmu_fragment_end(v, s), DJN_OK);
    /* sixteen held generations fill every slot: the next begin cannot open a window */
    uint8_t *h[16];
    for (int i = 0; i < 16; i++) {
        CHECK_EQ_INT(djn_dvmu_fragment_begin(v, s, 1 * KiB, UINT64_MAX), DJN_OK);
        h[i] = djn_dvmu_slab_at(v, 0, 1 * KiB);
        CHECK_EQ_INT(djn_dvmu_fragment_end(v, s), DJN_OK);
    }
    CHECK_EQ_INT(djn_dvmu_fragment_begin(v, s, 1 * KiB, UINT64_MAX), DJN_ERR_OOM);
    for (int i = 0; i < 16; i++)
        CHECK(djn_dvmu_release(v, h[i], s));
    CHECK_EQ_INT(djn_dvmu_fragment_begin(v, s, 1 * KiB, UINT64_MAX), DJN_OK);
    CHECK_EQ_INT(djn_dvmu_fragment_end(v, s), DJN_OK);
    djn_dvmu_destroy(&v);
    djn_dev_stream_destroy(d, s);
    djn_dev_stream_destroy(d, t);
    djn_dev_destroy(&d);
}

static void test_slab_grow(void) {
    djn_dev_t *d = djn_dev_fake_new();
    djn_dvmu_t *v = s_vmu(d, 64 * KiB, 64 * KiB);
    djn_dev_stream_t *s1 = s_stream(d), *s2 = s_stream(d);
    djn_dev_fake_hold(d, true);
    uint64_t base = 0, end = 0;
    /* s1 uses [32 KiB, 48 KiB) while [0, 32 KiB) is held by s2's first fragment */
    CHECK_EQ_INT(djn_dvmu_fragment_begin(v, s2, 32 * KiB, UINT64_MAX), DJN_OK);
    uint8_t *held = djn_dvmu_slab_at(v, 0, 32 * KiB);
    CHECK_EQ_INT(djn_dvmu_fragment_end(v, s2), DJN_OK);
    CHECK_EQ_INT(djn_dvmu_fragment_begin(v, s1, 16 * KiB, UINT64_MAX), DJN_OK);
    CHECK(djn_dvmu_window(v, &base, &end));
    CHECK_EQ_INT(base, 32 * KiB);
    CHECK_EQ_INT(djn_dvmu_fragment_end(v, s1), DJN_OK); /* its planned region: in flight */
    CHECK_EQ_INT(djn_dvmu_fragment_begin(v, s1, 16 * KiB, UINT64_MAX), DJN_OK); /* same place */
    CHECK(djn_dvmu_window(v, &base, &end));
    CHECK_EQ_INT(base, 32 * KiB);
    uint8_t *p = djn_dvmu_slab_at(v, 0, 16 * KiB);
    CHECK(djn_dvmu_release(v, p, s1));
    CHECK_EQ_INT(djn_dvmu_fragment_end(v, s1), DJN_OK); /* [32, 48) in flight on s1 */
    CHECK(djn_dvmu_release(v, held, s2));               /* [0, 32) in flight on s2 */
    /* s2 again: its own generation at 0 is free to it at once; the window ends where
     * s1's in-flight generation begins */
    CHECK_EQ_INT(djn_dvmu_fragment_begin(v, s2, 8 * KiB, 0), DJN_OK);
    CHECK(djn_dvmu_window(v, &base, &end));
    CHECK_EQ_INT(base, 0);
    CHECK_EQ_INT(end, 32 * KiB);
    uint8_t *a = djn_dvmu_slab_alloc(v, 20 * KiB, s2); /* [8, 28): fits */
    CHECK(a != NULL);
    djn_dvmu_stats_t st;
    djn_dvmu_stats(v, &st);
    CHECK_EQ_INT(st.slab_stream_waits, 0);
    uint8_t *b = djn_dvmu_slab_alloc(v, 16 * KiB, s2); /* [28, 44): grows over s1's */
    CHECK(b != NULL);
    CHECK(djn_dvmu_window(v, &base, &end));
    CHECK_EQ_INT(end, 64 * KiB);
    djn_dvmu_stats(v, &st);
    CHECK_EQ_INT(st.slab_stream_waits, 1);
    CHECK_EQ_INT(djn_dev_memset(d, b, 0x55, 16 * KiB, s2), DJN_OK);
    djn_dev_fake_drain(d);
    CHECK(all_bytes(b, 0x55, 16 * KiB));                 /* s1's scrub ran before, not after */
    CHECK(djn_dvmu_slab_alloc(v, 64 * KiB, s2) == NULL); /* past capacity */
    CHECK(djn_dvmu_release(v, a, s2));
    CHECK(djn_dvmu_release(v, b, s2));
    CHECK_EQ_INT(djn_dvmu_fragment_end(v, s2), DJN_OK);

    /* a held generation above stops growth */
    CHECK_EQ_INT(djn_dvmu_fragment_begin(v, s1, 0, 32 * KiB), DJN_OK);
    uint8_t *h = djn_dvmu_slab_alloc(v, 8 * KiB, s1);
    CHECK_EQ_INT(djn_dvmu_fragment_end(v, s1), DJN_OK); /* [32, 40) held */
    CHECK_EQ_INT(djn_dvmu_fragment_begin(v, s1, 0, 0), DJN_OK);
    CHECK(djn_dvmu_window(v, &base, &end));
    CHECK_EQ_INT(end, 32 * KiB);
    CHECK(djn_dvmu_slab_alloc(v, 40 * KiB, s1) == NULL);
    uint8_t *ok = djn_dvmu_slab_alloc(v, 32 * KiB, s1); /* the failed one left no trace */
    CHECK(ok != NULL);
    CHECK(djn_dvmu_release(v, ok, s1));
    CHECK_EQ_INT(djn_dvmu_fragment_end(v, s1), DJN_OK);
    CHECK(djn_dvmu_release(v, h, s1));
    djn_dvmu_destroy(&v);
    djn_dev_stream_destroy(d, s1);
    djn_dev_stream_destroy(d, s2);
    djn_dev_destroy(&d);
}

/* ---- the randomized ordering trace ---- */

#define NS 3
#define MAXF 1200
#define MAXP 6000

/* An earlier user of some bytes: a fragment's window, or a Data block freed. */
typedef struct {
    uintptr_t lo, hi; /* addresses its last use (and scrub) covers */
    djn_dev_stream_t *s;
    djn_dev_event_t *done; /* recorded on s just before its end or free: done => it ran */
} s_user_t;

typedef struct {
    djn_dev_event_t *probe; /* recorded on the allocating stream right after the alloc */
    int before[64];         /* users of these bytes on other streams, not done then */
    int nbefore;
} s_probe_t;

static s_user_t F[MAXF];
static s_probe_t P[MAXP];
static int nF, nP;

static void s_check_probes(djn_dev_t *d) {
    for (int i = 0; i < nP; i++) {
        if (!P[i].nbefore || djn_dev_event_query(d, P[i].probe) != DJN_OK)
            continue;
        for (int j = 0; j < P[i].nbefore; j++)
            if (djn_dev_event_query(d, F[P[i].before[j]].done) != DJN_OK) {
                CHECK(!"an allocation's stream ran before an earlier user of its bytes");
                break;
            }
        P[i].nbefore = 0; /* checked once and for all */
    }
}

/* The probe for bytes [p, p + n) just handed to stream s. */
static void s_probe(djn_dev_t *d, djn_dev_stream_t *s, const uint8_t *p, uint64_t n) {
    s_probe_t *pr = &P[nP++];
    CHECK_EQ_INT(djn_dev_event_new(d, &pr->probe), DJN_OK);
    CHECK_EQ_INT(djn_dev_event_record(d, pr->probe, s), DJN_OK);
    pr->nbefore = 0;
    uintptr_t lo = (uintptr_t)p, hi = lo + n;
    for (int j = 0; j < nF && pr->nbefore < 64; j++)
        if (F[j].s != s && F[j].lo < hi && lo < F[j].hi &&
            djn_dev_event_query(d, F[j].done) != DJN_OK)
            pr->before[pr->nbefore++] = j;
}

static void s_user(djn_dev_t *d, djn_dev_stream_t *s, uintptr_t lo, uintptr_t hi) {
    s_user_t *u = &F[nF++];
    *u = (s_user_t){lo, hi, s, NULL};
    CHECK_EQ_INT(djn_dev_event_new(d, &u->done), DJN_OK);
    CHECK_EQ_INT(djn_dev_event_record(d, u->done, s), DJN_OK);
}

static void test_random_trace(void) {
    djn_dev_t *d = djn_dev_fake_new();
    djn_dvmu_t *v = s_vmu(d, 64 * KiB, 256 * KiB);
    djn_dev_stream_t *s[NS];
    for (int i = 0; i < NS; i++)
        s[i] = s_stream(d);
    uint8_t *data = djn_dvmu_data_alloc(v, 64 * KiB, NULL), *slab = data + 64 * KiB;
    CHECK(djn_dvmu_release(v, data, NULL));
    djn_dev_fake_hold(d, true);
    rng_seed(42);
    nF = nP = 0;
    uint8_t *held[8], *blk[16];
    djn_dev_stream_t *held_s[8], *blk_s[16];
    uint64_t blk_n[16];
    int nheld = 0, nblk = 0, refused = 0, frags = 0, data_waits_seen = 0;
    for (int it = 0; it < 600 && nF < MAXF - 40 && nP < MAXP - 40; it++) {
        int k = (int)rng_below(NS);
        uint64_t peak = 256 * (1 + rng_below(200)); /* up to 50 KiB */
        uint64_t want = rng_below(8) == 0 ? 256 * rng_below(4) * 64 : UINT64_MAX;
        if (djn_dvmu_fragment_begin(v, s[k], peak, want) != DJN_OK) {
            refused++;
        } else {
            uint64_t base = 0, end = 0;
            CHECK(djn_dvmu_window(v, &base, &end));
            uint64_t used_hi = base + peak;
            uint8_t *live[16];
            int nlive = 0;
            for (int a = (int)rng_below(6); a >= 0; a--) {
                uint64_t n = 1 + rng_below(20 * KiB);
                uint8_t *p = a == 0 && peak >= 256 ? djn_dvmu_slab_at(v, 0, peak)
                                                   : djn_dvmu_slab_alloc(v, n, s[k]);
                if (a == 0 && peak >= 256)
                    n = peak;
                if (!p)
                    continue;
                uint64_t hi = (uint64_t)(p - slab) + n;
                if (((hi + 255) & ~255ull) > used_hi)
                    used_hi = (hi + 255) & ~255ull;
                s_probe(d, s[k], p, n); /* everything earlier on these bytes first */
                CHECK_EQ_INT(djn_dev_memset(d, p, 1 + it % 250, n, s[k]), DJN_OK);
                if (nlive < 16)
                    live[nlive++] = p;
            }
            s_user(d, s[k], (uintptr_t)(slab + base), (uintptr_t)(slab + used_hi));
            /* most results are released before the end; a few outlive it (held) */
            for (int i = 0; i < nlive; i++) {
                if (nheld < 8 && rng_below(20) == 0) { /* released later, on its stream */
                    held[nheld] = live[i];
                    held_s[nheld++] = s[k];
                } else {
                    CHECK(djn_dvmu_release(v, live[i], s[k]));
                }
            }
            CHECK_EQ_INT(djn_dvmu_fragment_end(v, s[k]), DJN_OK);
            frags++;
        }
        if (nheld && rng_below(4) == 0) { /* a held result goes */
            nheld--;
            CHECK(djn_dvmu_release(v, held[nheld], held_s[nheld]));
        }
        /* Data: blocks allocated and freed on random streams */
        for (int op = (int)rng_below(4); op > 0; op--) {
            int j = (int)rng_below(NS);
            if (nblk < 16 && rng_below(2)) {
                uint64_t n = 1 + rng_below(8 * KiB);
                djn_dvmu_stats_t before, after;
                djn_dvmu_stats(v, &before);
                uint8_t *p = djn_dvmu_data_alloc(v, n, s[j]);
                if (!p)
                    continue;
                djn_dvmu_stats(v, &after);
                data_waits_seen += after.data_stream_waits > before.data_stream_waits;
                s_probe(d, s[j], p, n);
                CHECK_EQ_INT(djn_dev_memset(d, p, 0x80 + j, n, s[j]), DJN_OK);
                blk[nblk] = p;
                blk_n[nblk] = n;
                blk_s[nblk++] = s[j];
            } else if (nblk) {
                int i = (int)rng_below((uint64_t)nblk);
                uint8_t *p = blk[i];
                djn_dev_stream_t *t = blk_s[i];
                uint64_t n = (blk_n[i] + 255) & ~255ull; /* the heap block; its scrub */
                blk[i] = blk[--nblk];
                blk_s[i] = blk_s[nblk];
                blk_n[i] = blk_n[nblk];
                s_user(d, t, (uintptr_t)p, (uintptr_t)p + n);
                CHECK(djn_dvmu_release(v, p, t));
            }
        }
        for (int st = (int)rng_below(8); st > 0; st--) /* the device makes some progress */
            djn_dev_fake_step(d, s[rng_below(NS)]);
        if (rng_below(50) == 0)
            djn_dev_fake_drain(d);
        s_check_probes(d);
    }
    while (nheld--)
        CHECK(djn_dvmu_release(v, held[nheld], held_s[nheld]));
    while (nblk--)
        CHECK(djn_dvmu_release(v, blk[nblk], blk_s[nblk]));
    djn_dev_fake_drain(d);
    s_check_probes(d);
    CHECK(frags > 300);
    CHECK(refused < frags);
    djn_dvmu_stats_t st;
    djn_dvmu_stats(v, &st);
    CHECK_EQ_INT(st.slab_live, 0);
    CHECK_EQ_INT(st.gens_held, 0);
    CHECK_EQ_INT(st.data.used, 0);
    CHECK(st.windows_moved > 0);                     /* streams ran side by side */
    CHECK(st.slab_stream_waits > 0);                 /* and waited on each other */
    CHECK(data_waits_seen > 0);                      /* Data crossed streams too */
    CHECK(all_bytes(data, 0, 64 * KiB + 256 * KiB)); /* all scrubbed once everything ran */
    for (int i = 0; i < nP; i++)
        djn_dev_event_destroy(d, P[i].probe);
    for (int i = 0; i < nF; i++)
        djn_dev_event_destroy(d, F[i].done);
    djn_dvmu_destroy(&v);
    for (int i = 0; i < NS; i++)
        djn_dev_stream_destroy(d, s[i]);
    djn_dev_fake_stats_t fs;
    djn_dev_fake_stats(d, &fs);
    CHECK_EQ_INT(fs.events, 0);
    djn_dev_destroy(&d);
}

static void test_pluggable_entry_points(void) {
    djn_dev_t *d = djn_dev_fake_new();
    djn_dvmu_t *v = s_vmu(d, 64 * KiB, 64 * KiB);
    CHECK(djn_dvmu_register(3, v));
    CHECK(!djn_dvmu_register(64, v));
    CHECK(!djn_dvmu_register(-1, v));
    CHECK(djn_dvmu_of_device(3) == v);
    CHECK(djn_dvmu_of_device(2) == NULL);
    void *p = djn_dvmu_alloc_fn(1000, 3, NULL);
    CHECK(p != NULL && djn_dvmu_find(p) == v && !djn_dvmu_in_slab(v, p));
    CHECK(djn_dvmu_alloc_fn(10, 2, NULL) == NULL);
    CHECK_HAS(djn_dvmu_oom_words(), "no djinn VMU for CUDA device 2");
    CHECK(djn_dvmu_alloc_fn(1 * MiB, 3, NULL) == NULL);
    CHECK_HAS(djn_dvmu_oom_words(), "the Data segment cannot fit 1048576 bytes");
    /* slab mode: from the open window; with none open, from Data */
    CHECK(!djn_dvmu_thread_slab(true));
    void *q = djn_dvmu_alloc_fn(100, 3, NULL);
    CHECK(q != NULL && !djn_dvmu_in_slab(v, q));
    CHECK_EQ_INT(djn_dvmu_fragment_begin(v, NULL, 0, UINT64_MAX), DJN_OK);
    void *r = djn_dvmu_alloc_fn(100, 3, NULL);
    CHECK(r != NULL && djn_dvmu_in_slab(v, r));
    CHECK(djn_dvmu_alloc_fn(1 * MiB, 3, NULL) == NULL);
    CHECK_HAS(djn_dvmu_oom_words(), "stack-slab window");
    djn_dvmu_free_fn(r, 100, 3, NULL);
    CHECK_EQ_INT(djn_dvmu_fragment_end(v, NULL), DJN_OK);
    CHECK(djn_dvmu_thread_slab(false));
    djn_dvmu_free_fn(q, 100, 3, NULL);
    djn_dvmu_free_fn(p, 1000, 7, NULL); /* found by address, whatever the device says */
    djn_dvmu_free_fn(NULL, 0, 3, NULL);
    djn_dvmu_stats_t st;
    djn_dvmu_stats(v, &st);
    CHECK_EQ_INT(st.data.used, 0);
    CHECK_EQ_INT(st.slab_live, 0);
    djn_dvmu_destroy(&v); /* unregisters */
    CHECK(djn_dvmu_of_device(3) == NULL);
    djn_dev_destroy(&d);
}

static void test_host_oom(void) {
    for (int64_t n = 0; n < 40; n++) {
        djn_dev_t *d = djn_dev_fake_new();
        djn_dev_stream_t *s1 = s_stream(d), *s2 = s_stream(d);
        djn_dev_fake_hold(d, true);
        djn_mem_fail_after(n);
        char err[128];
        djn_dvmu_t *v = djn_dvmu_new(d, 256 * KiB, 64 * KiB, err, sizeof err);
        if (v) {
            void *blk[40];
            for (int i = 0; i < 40; i++)
                blk[i] = djn_dvmu_data_alloc(v, 1 * KiB, i % 2 ? s1 : s2);
            for (int i = 0; i < 40; i++)
                if (blk[i])
                    CHECK(djn_dvmu_release(v, blk[i], i % 2 ? s1 : s2));
            void *x = djn_dvmu_data_alloc(v, 200 * KiB, s1); /* crosses s2's ranges */
            if (x) {
                if (djn_dev_memset(d, x, 0x66, 200 * KiB, s1) == DJN_OK) {
                    djn_dev_fake_drain(d);
                    CHECK(all_bytes(x, 0x66, 200 * KiB)); /* after every late scrub */
                }
                CHECK(djn_dvmu_release(v, x, s1));
            }
            if (djn_dvmu_fragment_begin(v, s1, 4 * KiB, UINT64_MAX) == DJN_OK) {
                void *p = djn_dvmu_slab_alloc(v, 100, s1);
                if (p)
                    CHECK(djn_dvmu_release(v, p, s1));
                djn_dvmu_fragment_end(v, s1);
            }
            djn_dvmu_destroy(&v);
        }
        djn_mem_fail_after(-1);
        djn_dev_stream_destroy(d, s1);
        djn_dev_stream_destroy(d, s2);
        djn_dev_fake_stats_t fs;
        djn_dev_fake_stats(d, &fs);
        CHECK_EQ_INT(fs.device_bytes, 0);
        CHECK_EQ_INT(fs.events, 0);
        djn_dev_destroy(&d);
    }
}

int main(void) {
    RUN(test_arena);
    RUN(test_data_one_stream);
    RUN(test_data_two_streams);
    RUN(test_slab_one_stream);
    RUN(test_slab_delayed_completion);
    RUN(test_slab_held);
    RUN(test_slab_grow);
    RUN(test_random_trace);
    RUN(test_pluggable_entry_points);
    RUN(test_host_oom);
    return djn_test_report();
}
