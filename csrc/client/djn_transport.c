/* djn_transport.c: ZeroMQ DEALER for the client.
 *
 * One DEALER per process (and one per heartbeat thread), never shared across threads:
 * the client core serialises use behind its own lock. Linger is short so that a client
 * whose server died exits promptly; reconnects are left to ZeroMQ, and a server that
 * comes back as a new process is recognised by the session check (SessionLost). */
#include "djn_transport.h"

#include <errno.h>
#include <string.h>
#include <zmq.h>

#include "djn_mem.h"

struct djn_conn {
    void *ctx, *sock;
};

struct djn_reply {
    uint32_t n;
    zmq_msg_t *parts;
};

djn_conn_t *djn_conn_new(const char *endpoint) {
    djn_conn_t *c = djn_calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->ctx = zmq_ctx_new();
    if (!c->ctx)
        goto fail;
    zmq_ctx_set(c->ctx, ZMQ_IO_THREADS, 1);
    c->sock = zmq_socket(c->ctx, ZMQ_DEALER);
    if (!c->sock)
        goto fail;
    int linger = 100, hwm = 0, ivl = 100;
    zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(c->sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(c->sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(c->sock, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl);
    if (zmq_connect(c->sock, endpoint) != 0)
        goto fail;
    return c;
fail:
    djn_conn_destroy(&c);
    return NULL;
}

void djn_conn_destroy(djn_conn_t **self_p) {
    if (!self_p || !*self_p)
        return;
    djn_conn_t *c = *self_p;
    if (c->sock)
        zmq_close(c->sock);
    if (c->ctx)
        zmq_ctx_term(c->ctx);
    djn_free(c, sizeof(*c));
    *self_p = NULL;
}

djn_status_t djn_conn_send(djn_conn_t *c, const void *hdr, size_t hdr_len, djn_frame_t *frames,
                           uint32_t nframes) {
    if (zmq_send(c->sock, hdr, hdr_len, nframes ? ZMQ_SNDMORE : 0) < 0)
        goto fail;
    for (uint32_t i = 0; i < nframes; i++) {
        zmq_msg_t m;
        int flags = i + 1 < nframes ? ZMQ_SNDMORE : 0;
        djn_frame_t *f = &frames[i];
        if (f->free_fn) {
            if (zmq_msg_init_data(&m, (void *)f->data, f->len, f->free_fn, f->hint) != 0)
                goto fail;
            f->free_fn = NULL; /* owned by ZeroMQ now */
        } else {
            if (zmq_msg_init_size(&m, f->len) != 0)
                goto fail;
            if (f->len)
                memcpy(zmq_msg_data(&m), f->data, f->len);
        }
        if (zmq_msg_send(&m, c->sock, flags) < 0) {
            zmq_msg_close(&m);
            goto fail;
        }
    }
    return DJN_OK;
fail:
    /* frames not handed over are freed by their owner's free_fn */
    for (uint32_t i = 0; i < nframes; i++)
        if (frames[i].free_fn) {
            frames[i].free_fn((void *)frames[i].data, frames[i].hint);
            frames[i].free_fn = NULL;
        }
    return DJN_ERR_IO;
}

djn_status_t djn_conn_recv(djn_conn_t *c, int timeout_ms, djn_reply_t **out) {
    *out = NULL;
    zmq_pollitem_t it = {c->sock, 0, ZMQ_POLLIN, 0};
    int rc;
    do {
        rc = zmq_poll(&it, 1, timeout_ms);
    } while (rc < 0 && errno == EINTR);
    if (rc < 0)
        return DJN_ERR_IO;
    if (rc == 0)
        return DJN_ERR_TIMEOUT;
    djn_reply_t *r = djn_calloc(1, sizeof(*r));
    if (!r)
        return DJN_ERR_NOMEM;
    uint32_t cap = 0;
    for (;;) {
        if (r->n == cap) {
            uint32_t ncap = cap ? cap * 2 : 4;
            zmq_msg_t *np = djn_realloc(r->parts, cap * sizeof(zmq_msg_t), ncap * sizeof(zmq_msg_t));
            if (!np)
                goto fail;
            r->parts = np;
            cap = ncap;
        }
        zmq_msg_init(&r->parts[r->n]);
        if (zmq_msg_recv(&r->parts[r->n], c->sock, 0) < 0) {
            zmq_msg_close(&r->parts[r->n]);
            goto fail;
        }
        r->n++;
        if (!zmq_msg_more(&r->parts[r->n - 1]))
            break;
    }
    /* shrink bookkeeping to exactly n for djn_reply_free */
    zmq_msg_t *np = djn_realloc(r->parts, cap * sizeof(zmq_msg_t), r->n * sizeof(zmq_msg_t));
    if (np)
        r->parts = np;
    else {
        /* keep the bigger block; record its size as n by moving nothing */
        for (uint32_t i = 0; i < r->n; i++)
            zmq_msg_close(&r->parts[i]);
        djn_free(r->parts, cap * sizeof(zmq_msg_t));
        djn_free(r, sizeof(*r));
        return DJN_ERR_NOMEM;
    }
    *out = r;
    return DJN_OK;
fail:
    for (uint32_t i = 0; i < r->n; i++)
        zmq_msg_close(&r->parts[i]);
    djn_free(r->parts, cap * sizeof(zmq_msg_t));
    djn_free(r, sizeof(*r));
    return DJN_ERR_IO;
}

uint32_t djn_reply_nframes(const djn_reply_t *r) { return r->n ? r->n - 1 : 0; }

const void *djn_reply_frame(const djn_reply_t *r, uint32_t i, size_t *len) {
    if (i >= r->n) {
        *len = 0;
        return NULL;
    }
    *len = zmq_msg_size(&r->parts[i]);
    return zmq_msg_data(&r->parts[i]);
}

void djn_reply_free(djn_reply_t **r_p) {
    if (!r_p || !*r_p)
        return;
    djn_reply_t *r = *r_p;
    for (uint32_t i = 0; i < r->n; i++)
        zmq_msg_close(&r->parts[i]);
    djn_free(r->parts, r->n * sizeof(zmq_msg_t));
    djn_free(r, sizeof(*r));
    *r_p = NULL;
}
