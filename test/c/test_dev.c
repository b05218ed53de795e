/* test_dev.c: the device seam's fake CPU device (server/djn_dev.c).
 *
 * The memory kernel's ordering tests (test_dvmu, test_stage, test_gcache) are only as
 * good as the fake's model of a GPU, so its semantics are pinned here (djn_dev.h, 1-4):
 *   1. stream order: operations of one stream run in order; held, nothing runs until
 *      stepped; not held, everything runs as it is enqueued;
 *   2. events: done once the operation before which they were recorded ran; never
 *      recorded: done; a host wait runs the device until done, and fails (no hang) when
 *      nothing can make it done;
 *   3. a stream wait blocks its stream on the record current at the call: a later
 *      re-record of the same event does not move it;
 *   4. copies read their source when they run, not when enqueued;
 *   5. capture and launch: captured operations do not run, each launch runs them;
 *   6. memory: fresh memory is not zero, counters return to 0, an allocation can be made
 *      to fail; counted host memory returns to its start (every test). */
#include "djn_test.h"

#include "djn_dev.h"

static djn_dev_t *s_new(void) {
    djn_dev_t *d = djn_dev_fake_new();
    CHECK(d != NULL);
    return d;
}

static void test_stream_order(void) {
    djn_dev_t *d = s_new();
    djn_dev_stream_t *a = NULL, *b = NULL;
    CHECK_EQ_INT(djn_dev_stream_new(d, 0, &a), DJN_OK);
    CHECK_EQ_INT(djn_dev_stream_new(d, -1, &b), DJN_OK);
    uint8_t buf[4] = {0};
    djn_dev_fake_hold(d, true);
    CHECK_EQ_INT(djn_dev_memset(d, buf, 1, 4, a), DJN_OK);
    CHECK_EQ_INT(djn_dev_memset(d, buf, 2, 2, a), DJN_OK);
    CHECK_EQ_INT(djn_dev_memset(d, buf + 2, 3, 2, b), DJN_OK);
    CHECK_EQ_INT(buf[0], 0); /* held: nothing ran */
    CHECK(djn_dev_fake_step(d, b));
    CHECK_EQ_INT(buf[2], 3);
    CHECK_EQ_INT(buf[0], 0); /* b does not wait for a */
    CHECK(djn_dev_fake_step(d, a));
    CHECK_EQ_INT(buf[0], 1);
    CHECK_EQ_INT(buf[2], 1); /* a's first memset covers all four bytes */
    CHECK(djn_dev_fake_step(d, a));
    CHECK_EQ_INT(buf[0], 2);
    CHECK_EQ_INT(buf[2], 1);
    CHECK(!djn_dev_fake_step(d, a)); /* empty */
    djn_dev_fake_hold(d, false);
    CHECK_EQ_INT(djn_dev_memset(d, buf, 9, 4, NULL), DJN_OK);
    CHECK_EQ_INT(buf[3], 9); /* not held: runs at once */
    djn_dev_fake_stats_t st;
    djn_dev_fake_stats(d, &st);
    CHECK_EQ_INT(st.executed, 4);
    CHECK_EQ_INT(st.queued, 0);
    CHECK_EQ_INT(st.streams, 2);
    djn_dev_stream_destroy(d, a);
    djn_dev_stream_destroy(d, b);
    djn_dev_fake_stats(d, &st);
    CHECK_EQ_INT(st.streams, 0);
    djn_dev_destroy(&d);
    CHECK(d == NULL);
    djn_dev_destroy(&d); /* NULL is fine */
}

static void test_events(void) {
    djn_dev_t *d = s_new();
    djn_dev_stream_t *s = NULL;
    djn_dev_event_t *e = NULL;
    CHECK_EQ_INT(djn_dev_stream_new(d, 0, &s), DJN_OK);
    CHECK_EQ_INT(djn_dev_event_new(d, &e), DJN_OK);
    CHECK_EQ_INT(djn_dev_event_query(d, e), DJN_OK); /* never recorded: done */
    djn_dev_fake_hold(d, true);
    uint8_t x = 0;
    CHECK_EQ_INT(djn_dev_memset(d, &x, 7, 1, s), DJN_OK);
    CHECK_EQ_INT(djn_dev_event_record(d, e, s), DJN_OK);
    CHECK_EQ_INT(djn_dev_event_query(d, e), DJN_ERR_TIMEOUT);
    CHECK(djn_dev_fake_step(d, s)); /* the memset, not yet the record */
    CHECK_EQ_INT(djn_dev_event_query(d, e), DJN_ERR_TIMEOUT);
    CHECK(djn_dev_fake_step(d, s));
    CHECK_EQ_INT(djn_dev_event_query(d, e), DJN_OK);
    /* a host wait runs the device until the event is done */
    CHECK_EQ_INT(djn_dev_memset(d, &x, 8, 1, s), DJN_OK);
    CHECK_EQ_INT(djn_dev_event_record(d, e, s), DJN_OK);
    CHECK_EQ_INT(djn_dev_event_wait(d, e), DJN_OK);
    CHECK_EQ_INT(x, 8);
    CHECK_EQ_INT(djn_dev_stream_sync(d, s), DJN_OK);
    djn_dev_event_destroy(d, e);
    djn_dev_stream_destroy(d, s);
    djn_dev_destroy(&d);
}

static void test_stream_wait_keeps_its_record(void) {
    djn_dev_t *d = s_new();
    djn_dev_stream_t *a = NULL, *b = NULL;
    djn_dev_event_t *e = NULL;
    CHECK_EQ_INT(djn_dev_stream_new(d, 0, &a), DJN_OK);
    CHECK_EQ_INT(djn_dev_stream_new(d, 0, &b), DJN_OK);
    CHECK_EQ_INT(djn_dev_event_new(d, &e), DJN_OK);
    djn_dev_fake_hold(d, true);
    uint8_t x = 0, y = 0;
    CHECK_EQ_INT(djn_dev_memset(d, &x, 1, 1, a), DJN_OK);
    CHECK_EQ_INT(djn_dev_event_record(d, e, a), DJN_OK); /* record #1 */
    CHECK_EQ_INT(djn_dev_stream_wait(d, b, e), DJN_OK);  /* b waits for #1 */
    CHECK_EQ_INT(djn_dev_memset(d, &y, 2, 1, b), DJN_OK);
    CHECK(!djn_dev_fake_step(d, b)); /* blocked on #1 */
    CHECK_EQ_INT(y, 0);
    CHECK(djn_dev_fake_step(d, a));
    CHECK(djn_dev_fake_step(d, a)); /* #1 done */
    /* re-record on a behind new work: b's wait is for #1, which is done */
    CHECK_EQ_INT(djn_dev_memset(d, &x, 5, 1, a), DJN_OK);
    CHECK_EQ_INT(djn_dev_event_record(d, e, a), DJN_OK);
    CHECK(djn_dev_fake_step(d, b)); /* the wait passes */
    CHECK(djn_dev_fake_step(d, b));
    CHECK_EQ_INT(y, 2);
    CHECK_EQ_INT(x, 1); /* a's second memset has not run */
    CHECK_EQ_INT(djn_dev_fake_drain(d), 2);
    CHECK_EQ_INT(x, 5);
    djn_dev_fake_stats_t st;
    djn_dev_fake_stats(d, &st);
    CHECK_EQ_INT(st.stream_waits, 1);
    djn_dev_event_destroy(d, e);
    djn_dev_stream_destroy(d, a);
    djn_dev_stream_destroy(d, b);
    djn_dev_destroy(&d);
}

static void test_wait_that_cannot_finish(void) {
    /* waits name the record current when they are enqueued, so streams cannot wait on
     * each other in a cycle; what can never finish is a record that went into a
     * capture: it runs only when the graph is launched */
    djn_dev_t *d = s_new();
    djn_dev_stream_t *s = NULL;
    djn_dev_event_t *e = NULL;
    CHECK_EQ_INT(djn_dev_stream_new(d, 0, &s), DJN_OK);
    CHECK_EQ_INT(djn_dev_event_new(d, &e), DJN_OK);
    CHECK_EQ_INT(djn_dev_capture_begin(d, s), DJN_OK);
    CHECK_EQ_INT(djn_dev_event_record(d, e, s), DJN_OK);
    djn_dev_graph_t *g = NULL;
    CHECK_EQ_INT(djn_dev_capture_end(d, s, &g), DJN_OK);
    CHECK_EQ_INT(djn_dev_event_query(d, e), DJN_ERR_TIMEOUT);
    CHECK_EQ_INT(djn_dev_event_wait(d, e), DJN_ERR_DEVICE); /* fails, does not hang */
    CHECK_HAS(djn_dev_last_error(d), "never complete");
    CHECK_EQ_INT(djn_dev_graph_launch(d, g, s), DJN_OK);
    CHECK_EQ_INT(djn_dev_event_wait(d, e), DJN_OK);
    djn_dev_graph_destroy(d, g);
    djn_dev_event_destroy(d, e);
    djn_dev_stream_destroy(d, s);
    djn_dev_destroy(&d);
}

static void test_copy_reads_when_it_runs(void) {
    djn_dev_t *d = s_new();
    void *dev = NULL;
    CHECK_EQ_INT(djn_dev_reserve(d, 64, &dev), DJN_OK);
    CHECK_EQ_INT(((uint8_t *)dev)[0], 0xA5); /* not zero: cudaMalloc does not zero */
    uint8_t host[64];
    memset(host, 1, sizeof host);
    djn_dev_fake_hold(d, true);
    CHECK_EQ_INT(djn_dev_memcpy(d, dev, host, 64, DJN_DEV_H2D, NULL), DJN_OK);
    memset(host, 2, sizeof host); /* the host overwrites its buffer too early */
    djn_dev_fake_drain(d);
    CHECK_EQ_INT(((uint8_t *)dev)[10], 2); /* the copy saw the late bytes */
    djn_dev_fake_stats_t st;
    djn_dev_fake_stats(d, &st);
    CHECK_EQ_INT(st.device_bytes, 64);
    djn_dev_release(d, dev);
    djn_dev_fake_stats(d, &st);
    CHECK_EQ_INT(st.device_bytes, 0);
    void *pinned = NULL;
    CHECK_EQ_INT(djn_dev_host_alloc(d, 100, &pinned), DJN_OK);
    CHECK(((uintptr_t)pinned & 255) == 0);
    djn_dev_fake_stats(d, &st);
    CHECK_EQ_INT(st.host_bytes, 100);
    djn_dev_host_free(d, pinned);
    djn_dev_fake_fail_reserve_after(d, 1);
    void *p1 = NULL, *p2 = NULL;
    CHECK_EQ_INT(djn_dev_reserve(d, 8, &p1), DJN_OK);
    CHECK_EQ_INT(djn_dev_reserve(d, 8, &p2), DJN_ERR_DEVICE);
    CHECK_HAS(djn_dev_last_error(d), "out of fake device memory");
    djn_dev_release(d, p1);
    uint64_t fr = 0, total = 0;
    CHECK_EQ_INT(djn_dev_mem_info(d, &fr, &total), DJN_OK);
    CHECK_EQ_INT(fr, total);
    djn_dev_destroy(&d);
}

static void test_capture_and_launch(void) {
    djn_dev_t *d = s_new();
    djn_dev_stream_t *s = NULL;
    CHECK_EQ_INT(djn_dev_stream_new(d, 0, &s), DJN_OK);
    CHECK_EQ_INT(djn_dev_capture_begin(d, NULL), DJN_ERR_DEVICE); /* not the default stream */
    CHECK_EQ_INT(djn_dev_capture_begin(d, s), DJN_OK);
    CHECK_EQ_INT(djn_dev_capture_begin(d, s), DJN_ERR_DEVICE);
    uint8_t x[2] = {0, 0};
    CHECK_EQ_INT(djn_dev_memset(d, x, 4, 1, s), DJN_OK);
    CHECK_EQ_INT(djn_dev_memcpy(d, x + 1, x, 1, DJN_DEV_D2D, s), DJN_OK);
    CHECK_EQ_INT(x[0], 0); /* captured, not run */
    djn_dev_graph_t *g = NULL;
    CHECK_EQ_INT(djn_dev_capture_end(d, s, &g), DJN_OK);
    CHECK_EQ_INT(djn_dev_fake_graph_ops(g), 2);
    CHECK_EQ_INT(djn_dev_graph_launch(d, g, s), DJN_OK);
    CHECK_EQ_INT(x[0], 4);
    CHECK_EQ_INT(x[1], 4);
    x[0] = x[1] = 0;
    djn_dev_fake_hold(d, true);
    CHECK_EQ_INT(djn_dev_graph_launch(d, g, NULL), DJN_OK);
    CHECK_EQ_INT(x[1], 0);
    CHECK_EQ_INT(djn_dev_stream_sync(d, NULL), DJN_OK);
    CHECK_EQ_INT(x[1], 4);
    CHECK_EQ_INT(djn_dev_fake_graph_launches(g), 2);
    CHECK_EQ_INT(djn_dev_capture_end(d, s, &g), DJN_ERR_DEVICE); /* not capturing */
    djn_dev_fake_stats_t st;
    djn_dev_fake_stats(d, &st);
    CHECK_EQ_INT(st.graphs, 1);
    CHECK_EQ_INT(st.launches, 2);
    djn_dev_graph_destroy(d, g);
    djn_dev_fake_stats(d, &st);
    CHECK_EQ_INT(st.graphs, 0);
    djn_dev_stream_destroy(d, s);
    djn_dev_destroy(&d);
}

static void test_host_oom(void) {
    for (int64_t n = 0; n < 8; n++) { /* every counted allocation of a small scenario */
        djn_mem_fail_after(n);
        djn_dev_t *d = djn_dev_fake_new();
        if (!d)
            continue;
        djn_dev_stream_t *s = NULL;
        djn_dev_event_t *e = NULL;
        uint8_t x = 0;
        if (djn_dev_stream_new(d, 0, &s) == DJN_OK) {
            if (djn_dev_event_new(d, &e) == DJN_OK) {
                djn_status_t st = djn_dev_memset(d, &x, 1, 1, s);
                CHECK(st == DJN_OK || st == DJN_ERR_NOMEM);
                st = djn_dev_event_record(d, e, s);
                CHECK(st == DJN_OK || st == DJN_ERR_NOMEM);
                CHECK_EQ_INT(djn_dev_event_query(d, e), DJN_OK); /* not held: ran or never */
                djn_dev_event_destroy(d, e);
            }
            djn_dev_stream_destroy(d, s);
        }
        djn_dev_destroy(&d);
        djn_mem_fail_after(-1);
    }
}

int main(void) {
    RUN(test_stream_order);
    RUN(test_events);
    RUN(test_stream_wait_keeps_its_record);
    RUN(test_wait_that_cannot_finish);
    RUN(test_copy_reads_when_it_runs);
    RUN(test_capture_and_launch);
    RUN(test_host_oom);
    return djn_test_report();
}
