/* test_stage.c: the pinned staging ring (server/djn_stage.c) over the fake device.
 *
 * Covered:
 *   1. creation: pinned memory through the seam (and given back), sizes rounded, the
 *      failures named; requests of 0 bytes or past the capacity refused;
 *   2. uploads with delayed completion: a chunk whose copy is still queued is not handed
 *      out again: the ring refuses (wait false) or the host waits for the copy (wait
 *      true), and the device receives the bytes the host wrote, not later ones;
 *   3. fetches: copy, fence, wait, read;
 *   4. wrap-around: a chunk never straddles the end; the skipped tail comes back when the
 *      chunks before it are reclaimed; reclaim is in ring order;
 *   5. chunks not yet released fill the ring: DJN_ERR_OOM, not a wait that could never
 *      end; the chunk-record bound;
 *   6. a randomized trace of uploads and fetches with random device progress: live chunks
 *      never overlap, and every upload's destination ends up with its own bytes;
 *   7. host allocation failures (an event that cannot be created: the stream is
 *      synchronised instead). */
#include "djn_test.h"

#include "djn_dev.h"
#include "djn_stage.h"

#define KiB (1024ull)

static djn_stage_t *s_ring(djn_dev_t *d, uint64_t bytes, uint32_t max) {
    char err[256] = "";
    djn_stage_t *r = djn_stage_new(d, bytes, max, err, sizeof err);
    CHECK(r != NULL);
    if (!r)
        printf("djn_stage_new: %s\n", err);
    return r;
}

static void test_new(void) {
    djn_dev_t *d = djn_dev_fake_new();
    djn_stage_t *r = s_ring(d, 1000, 0);
    CHECK_EQ_INT(djn_stage_capacity(r), 1024);
    djn_dev_fake_stats_t fs;
    djn_dev_fake_stats(d, &fs);
    CHECK_EQ_INT(fs.host_bytes, 1024);
    djn_stage_chunk_t c;
    CHECK_EQ_INT(djn_stage_acquire(r, 0, true, &c), DJN_ERR_LIMIT);
    CHECK_EQ_INT(djn_stage_acquire(r, 1025, true, &c), DJN_ERR_LIMIT);
    CHECK_EQ_INT(djn_stage_acquire(r, 1024, true, &c), DJN_OK); /* the whole ring */
    CHECK_EQ_INT(c.n, 1024);
    djn_stage_release(r, c.ticket);
    djn_stage_destroy(&r);
    CHECK(r == NULL);
    djn_stage_destroy(&r);
    djn_dev_fake_stats(d, &fs);
    CHECK_EQ_INT(fs.host_bytes, 0);
    char err[256] = "";
    CHECK(djn_stage_new(d, 0, 0, err, sizeof err) == NULL);
    CHECK_HAS(err, "0 bytes");
    djn_dev_fake_fail_reserve_after(d, 0);
    CHECK(djn_stage_new(d, 4096, 0, err, sizeof err) == NULL);
    CHECK_HAS(err, "pinned");
    djn_dev_destroy(&d);
}

static void test_upload_delayed(void) {
    djn_dev_t *d = djn_dev_fake_new();
    djn_stage_t *r = s_ring(d, 4 * KiB, 0);
    djn_dev_stream_t *copy = NULL;
    CHECK_EQ_INT(djn_dev_stream_new(d, 0, &copy), DJN_OK);
    uint8_t dst[4][2 * KiB];
    memset(dst, 0, sizeof dst);
    djn_dev_fake_hold(d, true); /* the device runs nothing until told */
    djn_stage_chunk_t c[4];
    for (int i = 0; i < 2; i++) {
        CHECK_EQ_INT(djn_stage_acquire(r, 2 * KiB, false, &c[i]), DJN_OK);
        memset(c[i].p, 0x10 + i, 2 * KiB);
        CHECK_EQ_INT(djn_dev_memcpy(d, dst[i], c[i].p, 2 * KiB, DJN_DEV_H2D, copy), DJN_OK);
        CHECK_EQ_INT(djn_stage_fence(r, c[i].ticket, copy), DJN_OK);
        djn_stage_release(r, c[i].ticket); /* the host is done; the copy is not */
    }
    CHECK(c[1].p == c[0].p + 2 * KiB);
    /* full of copies still queued: refused without waiting... */
    CHECK_EQ_INT(djn_stage_acquire(r, 2 * KiB, false, &c[2]), DJN_ERR_TIMEOUT);
    djn_stage_stats_t st;
    djn_stage_stats(r, &st);
    CHECK_EQ_INT(st.in_use, 4 * KiB);
    CHECK_EQ_INT(st.full, 1);
    CHECK(all_bytes(dst[0], 0, 2 * KiB)); /* nothing ran */
    /* ...or the host waits for the oldest copy, and only that one */
    CHECK_EQ_INT(djn_stage_acquire(r, 2 * KiB, true, &c[2]), DJN_OK);
    CHECK(c[2].p == c[0].p);
    CHECK(all_bytes(dst[0], 0x10, 2 * KiB)); /* the copy ran before its bytes were reused */
    memset(c[2].p, 0x12, 2 * KiB);           /* the host may overwrite them now */
    CHECK_EQ_INT(djn_dev_memcpy(d, dst[2], c[2].p, 2 * KiB, DJN_DEV_H2D, copy), DJN_OK);
    CHECK_EQ_INT(djn_stage_fence(r, c[2].ticket, copy), DJN_OK);
    djn_stage_release(r, c[2].ticket);
    djn_dev_fake_drain(d);
    CHECK(all_bytes(dst[0], 0x10, 2 * KiB));
    CHECK(all_bytes(dst[1], 0x11, 2 * KiB));
    CHECK(all_bytes(dst[2], 0x12, 2 * KiB));
    djn_stage_stats(r, &st);
    CHECK_EQ_INT(st.host_waits, 1);
    CHECK_EQ_INT(st.acquires, 3);
    djn_stage_destroy(&r);
    djn_dev_fake_stats_t fs;
    djn_dev_fake_stats(d, &fs);
    CHECK_EQ_INT(fs.events, 0);
    djn_dev_stream_destroy(d, copy);
    djn_dev_destroy(&d);
}

static void test_fetch(void) {
    djn_dev_t *d = djn_dev_fake_new();
    djn_stage_t *r = s_ring(d, 4 * KiB, 0);
    djn_dev_stream_t *s = NULL;
    CHECK_EQ_INT(djn_dev_stream_new(d, 0, &s), DJN_OK);
    uint8_t src[1000];
    memset(src, 0x7e, sizeof src);
    djn_dev_fake_hold(d, true);
    djn_stage_chunk_t c;
    CHECK_EQ_INT(djn_stage_acquire(r, sizeof src, true, &c), DJN_OK);
    CHECK_EQ_INT(djn_dev_memcpy(d, c.p, src, sizeof src, DJN_DEV_D2H, s), DJN_OK);
    CHECK_EQ_INT(djn_stage_fence(r, c.ticket, s), DJN_OK);
    CHECK_EQ_INT(djn_stage_wait(r, c.ticket), DJN_OK);
    CHECK(all_bytes(c.p, 0x7e, sizeof src));
    djn_stage_release(r, c.ticket);
    /* a chunk never fenced is free on release */
    CHECK_EQ_INT(djn_stage_acquire(r, 100, true, &c), DJN_OK);
    CHECK_EQ_INT(djn_stage_wait(r, c.ticket), DJN_OK);
    djn_stage_release(r, c.ticket);
    djn_stage_stats_t st;
    djn_stage_stats(r, &st);
    CHECK_EQ_INT(st.chunks, 0);
    CHECK_EQ_INT(st.in_use, 0);
    djn_stage_destroy(&r);
    djn_dev_stream_destroy(d, s);
    djn_dev_destroy(&d);
}

static void test_wrap(void) {
    djn_dev_t *d = djn_dev_fake_new();
    djn_stage_t *r = s_ring(d, 10 * KiB, 0);
    djn_dev_fake_hold(d, true);
    djn_stage_chunk_t a, b, c, e;
    CHECK_EQ_INT(djn_stage_acquire(r, 4 * KiB, true, &a), DJN_OK); /* [0, 4) */
    CHECK_EQ_INT(djn_stage_acquire(r, 4 * KiB, true, &b), DJN_OK); /* [4, 8) */
    djn_stage_release(r, a.ticket);                                /* [0, 4) comes back */
    /* 3 KiB do not fit in [8, 10): the tail is skipped, the chunk starts at 0 */
    CHECK_EQ_INT(djn_stage_acquire(r, 3 * KiB, true, &c), DJN_OK);
    CHECK(c.p == a.p);
    djn_stage_stats_t st;
    djn_stage_stats(r, &st);
    CHECK_EQ_INT(st.wraps, 1);
    CHECK_EQ_INT(st.in_use, 10 * KiB - 4 * KiB + 3 * KiB); /* the skipped tail counts */
    /* [3, 4) is free but 2 KiB are not contiguous anywhere */
    CHECK_EQ_INT(djn_stage_acquire(r, 2 * KiB, false, &e), DJN_ERR_OOM); /* b is unreleased */
    CHECK_EQ_INT(djn_stage_acquire(r, 1 * KiB, false, &e), DJN_OK);
    CHECK(e.p == a.p + 3 * KiB);
    djn_stage_release(r, e.ticket); /* released out of order: reclaimed only after b, c */
    djn_stage_stats(r, &st);
    CHECK_EQ_INT(st.chunks, 3);
    djn_stage_release(r, b.ticket); /* b goes, and the skipped tail with it */
    djn_stage_stats(r, &st);
    CHECK_EQ_INT(st.chunks, 2);
    CHECK_EQ_INT(st.in_use, 4 * KiB);
    CHECK_EQ_INT(djn_stage_acquire(r, 6 * KiB, false, &a), DJN_OK); /* [4, 10) */
    CHECK(a.p == c.p + 4 * KiB);
    djn_stage_release(r, c.ticket);
    djn_stage_release(r, a.ticket);
    djn_stage_stats(r, &st);
    CHECK_EQ_INT(st.chunks, 0);
    djn_stage_destroy(&r);

    r = s_ring(d, 64 * KiB, 2); /* two chunk records */
    CHECK_EQ_INT(djn_stage_acquire(r, 1, true, &a), DJN_OK);
    CHECK_EQ_INT(djn_stage_acquire(r, 1, true, &b), DJN_OK);
    CHECK_EQ_INT(djn_stage_acquire(r, 1, true, &c), DJN_ERR_OOM);
    djn_stage_release(r, a.ticket);
    CHECK_EQ_INT(djn_stage_acquire(r, 1, true, &c), DJN_OK);
    djn_stage_release(r, b.ticket);
    djn_stage_release(r, c.ticket);
    djn_stage_destroy(&r);
    djn_dev_destroy(&d);
}

#define NU 2000

static void test_random_trace(void) {
    djn_dev_t *d = djn_dev_fake_new();
    djn_stage_t *r = s_ring(d, 16 * KiB, 16);
    djn_dev_stream_t *s[2] = {NULL, NULL};
    CHECK_EQ_INT(djn_dev_stream_new(d, 0, &s[0]), DJN_OK);
    CHECK_EQ_INT(djn_dev_stream_new(d, 0, &s[1]), DJN_OK);
    static uint8_t dst[NU][600]; /* each upload's device destination */
    static uint16_t len[NU];
    memset(dst, 0, sizeof dst);
    djn_dev_fake_hold(d, true);
    rng_seed(7);
    struct {
        uint8_t *p;
        uint64_t n, t;
    } live[16];
    int nlive = 0, timeouts = 0, ooms = 0;
    for (int i = 0; i < NU; i++) {
        len[i] = (uint16_t)(1 + rng_below(600));
        djn_stage_chunk_t c;
        djn_status_t st = djn_stage_acquire(r, len[i], rng_below(3) != 0, &c);
        if (st == DJN_ERR_TIMEOUT || st == DJN_ERR_OOM) {
            /* full of copies in flight (wait false), or of chunks the host still holds */
            timeouts += st == DJN_ERR_TIMEOUT;
            ooms += st == DJN_ERR_OOM;
            len[i] = 0;
            while (st == DJN_ERR_OOM && nlive--)
                djn_stage_release(r, live[nlive].t);
            nlive = nlive < 0 ? 0 : nlive;
            continue;
        }
        CHECK_EQ_INT(st, DJN_OK);
        if (st != DJN_OK)
            break;
        CHECK(c.n == len[i]);
        for (int j = 0; j < nlive; j++) /* live chunks never overlap */
            CHECK(c.p + c.n <= live[j].p || live[j].p + live[j].n <= c.p);
        memset(c.p, (uint8_t)(i * 7 + 1), len[i]);
        int k = (int)rng_below(2);
        CHECK_EQ_INT(djn_dev_memcpy(d, dst[i], c.p, len[i], DJN_DEV_H2D, s[k]), DJN_OK);
        CHECK_EQ_INT(djn_stage_fence(r, c.ticket, s[k]), DJN_OK);
        if (rng_below(4) == 0 && nlive < 16) { /* the host keeps it a while */
            live[nlive].p = c.p;
            live[nlive].n = c.n;
            live[nlive++].t = c.ticket;
        } else {
            djn_stage_release(r, c.ticket);
        }
        if (nlive && rng_below(2) == 0) {
            int j = (int)rng_below((uint64_t)nlive);
            djn_stage_release(r, live[j].t);
            live[j] = live[--nlive];
        }
        if (nlive > 8) { /* keep room so a wait is always possible */
            djn_stage_release(r, live[0].t);
            live[0] = live[--nlive];
        }
        for (int st2 = (int)rng_below(4); st2 > 0; st2--)
            djn_dev_fake_step(d, s[rng_below(2)]);
    }
    while (nlive--)
        djn_stage_release(r, live[nlive].t);
    djn_dev_fake_drain(d);
    int bad = 0;
    for (int i = 0; i < NU; i++)
        bad += len[i] && !all_bytes(dst[i], (uint8_t)(i * 7 + 1), len[i]);
    CHECK_EQ_INT(bad, 0); /* every copy read the bytes written for it */
    djn_stage_stats_t st;
    djn_stage_stats(r, &st);
    CHECK(st.wraps > 10);
    CHECK(st.host_waits > 10);
    CHECK(timeouts > 10);
    CHECK(ooms < timeouts); /* held chunks block rarely */
    djn_stage_destroy(&r);
    djn_dev_stream_destroy(d, s[0]);
    djn_dev_stream_destroy(d, s[1]);
    djn_dev_fake_stats_t fs;
    djn_dev_fake_stats(d, &fs);
    CHECK_EQ_INT(fs.events, 0);
    djn_dev_destroy(&d);
}

static void test_host_oom(void) {
    for (int64_t n = 0; n < 12; n++) {
        djn_dev_t *d = djn_dev_fake_new();
        djn_dev_stream_t *s = NULL;
        CHECK_EQ_INT(djn_dev_stream_new(d, 0, &s), DJN_OK);
        djn_dev_fake_hold(d, true);
        djn_mem_fail_after(n);
        char err[128];
        djn_stage_t *r = djn_stage_new(d, 2 * KiB, 4, err, sizeof err);
        if (r) {
            uint8_t dst[2][2 * KiB];
            for (int i = 0; i < 2; i++) {
                djn_stage_chunk_t c;
                CHECK_EQ_INT(djn_stage_acquire(r, 2 * KiB, true, &c), DJN_OK);
                memset(c.p, 0x40 + i, 2 * KiB);
                djn_status_t st = djn_dev_memcpy(d, dst[i], c.p, 2 * KiB, DJN_DEV_H2D, s);
                CHECK_EQ_INT(djn_stage_fence(r, c.ticket, s), DJN_OK);
                djn_stage_release(r, c.ticket);
                if (st == DJN_OK && i == 0) {
                    djn_dev_fake_drain(d);                   /* everything queued ran... */
                    CHECK(all_bytes(dst[0], 0x40, 2 * KiB)); /* ...before the bytes changed */
                }
            }
            djn_stage_destroy(&r);
        }
        djn_mem_fail_after(-1);
        djn_dev_stream_destroy(d, s);
        djn_dev_fake_stats_t fs;
        djn_dev_fake_stats(d, &fs);
        CHECK_EQ_INT(fs.events, 0);
        CHECK_EQ_INT(fs.host_bytes, 0);
        djn_dev_destroy(&d);
    }
}

int main(void) {
    RUN(test_new);
    RUN(test_upload_delayed);
    RUN(test_fetch);
    RUN(test_wrap);
    RUN(test_random_trace);
    RUN(test_host_oom);
    return djn_test_report();
}
