/* djn_transport.c: ZeroMQ DEALER for the client (the only client file with zmq.h).
 *
 * One DEALER per client object, never shared across threads: the client core serialises
 * use behind its own lock. Linger is short so that a client whose server died exits
 * promptly; reconnects are left to ZeroMQ, and a server that comes back as a new process
 * is recognised by the session check (SessionLost).
 *
 * Liveness. The socket sends ZMTP heartbeats (answered by the server's I/O thread even
 * while its workers are busy, so a busy server is never taken for a dead one) and a
 * socket monitor reports the connection's events: when the link dropped (the server
 * died, or a silent peer missed its heartbeats), how many handshakes succeeded (a
 * reconnect), and a handshake the server refused (an unknown CURVE key, or CURVE against
 * a plain server and back), reported as such instead of as a timeout. What a drop means
 * for a request in flight is the client's decision (djn_client.c). */
#include "djn_transport.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <zmq.h>

#include "djn_mem.h"

struct djn_conn {
    void *ctx, *sock, *mon;
    uint32_t handshakes;  /* succeeded so far: one more after each reconnect */
    int64_t dropped_ms;   /* when the link dropped, 0 while it is up */
    djn_status_t problem; /* DJN_OK, or DJN_ERR_DENIED: the server refused the handshake */
    char why[256];
};

struct djn_rx {
    uint32_t n;
    zmq_msg_t *parts;
};

djn_status_t djn_curve_keypair(uint8_t pub[32], uint8_t sec[32]) {
    char zp[41], zs[41];
    if (zmq_curve_keypair(zp, zs) != 0)
        return DJN_ERR_IO;
    bool ok = zmq_z85_decode(pub, zp) && zmq_z85_decode(sec, zs);
    memset(zs, 0, sizeof zs);
    return ok ? DJN_OK : DJN_ERR_INTERNAL;
}

djn_conn_t *djn_conn_new(const char *endpoint, const djn_curve_t *curve) {
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
    uint8_t rid[17];
    rid[0] = 'D'; /* a routing id must not start with a zero byte */
    if (getrandom(rid + 1, 16, 0) != 16)
        goto fail;
    zmq_setsockopt(c->sock, ZMQ_ROUTING_ID, rid, sizeof rid);
    if (curve) {
        zmq_setsockopt(c->sock, ZMQ_CURVE_SERVERKEY, curve->server_pub, 32);
        zmq_setsockopt(c->sock, ZMQ_CURVE_PUBLICKEY, curve->client_pub, 32);
        zmq_setsockopt(c->sock, ZMQ_CURVE_SECRETKEY, curve->client_sec, 32);
    }
    int hb_ivl = 1000, hb_timeout = 5000;
    zmq_setsockopt(c->sock, ZMQ_HEARTBEAT_IVL, &hb_ivl, sizeof hb_ivl);
    zmq_setsockopt(c->sock, ZMQ_HEARTBEAT_TIMEOUT, &hb_timeout, sizeof hb_timeout);
    char mon_ep[64];
    snprintf(mon_ep, sizeof mon_ep, "inproc://djn-monitor-%p", (void *)c);
    int events = ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_HANDSHAKE_SUCCEEDED |
                 ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                 ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL;
    if (zmq_socket_monitor(c->sock, mon_ep, events) != 0 ||
        !(c->mon = zmq_socket(c->ctx, ZMQ_PAIR)) || zmq_connect(c->mon, mon_ep) != 0)
        goto fail;
    zmq_setsockopt(c->mon, ZMQ_LINGER, &linger, sizeof linger);
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
    if (c->mon)
        zmq_close(c->mon);
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

static int64_t s_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* File the monitor's events: [u16 event, u32 value][endpoint]. */
static void s_monitor(djn_conn_t *c) {
    for (;;) {
        zmq_msg_t ev, ep;
        zmq_msg_init(&ev);
        if (zmq_msg_recv(&ev, c->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&ev);
            return;
        }
        uint16_t event = 0;
        if (zmq_msg_size(&ev) >= 2)
            memcpy(&event, zmq_msg_data(&ev), 2);
        zmq_msg_close(&ev);
        zmq_msg_init(&ep);
        zmq_msg_recv(&ep, c->mon, 0);
        zmq_msg_close(&ep);
        if (event == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
            c->handshakes++;
            c->dropped_ms = 0;
        } else if (event == ZMQ_EVENT_DISCONNECTED && c->handshakes && !c->dropped_ms) {
            c->dropped_ms = s_now_ms();
        } else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH && c->problem == DJN_OK) {
            c->problem = DJN_ERR_DENIED;
            snprintf(c->why, sizeof c->why,
                     "the server refused this client's CURVE key (is its public key in the "
                     "server's clients/ directory? DJINN_CLIENT_CERT names this client's "
                     "keypair)");
        } else if ((event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL ||
                    event == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) &&
                   c->problem == DJN_OK) {
            c->problem = DJN_ERR_DENIED;
            snprintf(c->why, sizeof c->why,
                     "the handshake with the server failed: it expects CURVE keys and this "
                     "client has none, or the reverse, or DJINN_SERVER_CERT is not this "
                     "server's public key");
        }
    }
}

djn_status_t djn_conn_problem(djn_conn_t *c, const char **why) {
    s_monitor(c);
    *why = c->why;
    return c->problem;
}

void djn_conn_link(djn_conn_t *c, uint32_t *handshakes, int64_t *down_ms) {
    s_monitor(c);
    *handshakes = c->handshakes;
    *down_ms = c->dropped_ms ? s_now_ms() - c->dropped_ms : 0;
}

djn_status_t djn_conn_recv(djn_conn_t *c, int timeout_ms, djn_rx_t **out) {
    *out = NULL;
    zmq_pollitem_t it[2] = {{c->sock, 0, ZMQ_POLLIN, 0}, {c->mon, 0, ZMQ_POLLIN, 0}};
    int rc;
    int64_t deadline = timeout_ms < 0 ? -1 : s_now_ms() + timeout_ms;
    for (;;) {
        int64_t left = deadline < 0 ? -1 : deadline - s_now_ms();
        rc = zmq_poll(it, 2, deadline < 0 ? -1 : (left > 0 ? (long)left : 0));
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc < 0)
            return DJN_ERR_IO;
        if (it[1].revents & ZMQ_POLLIN)
            s_monitor(c);
        if (it[0].revents & ZMQ_POLLIN)
            break; /* a reply that arrived wins over a problem found since */
        if (c->problem != DJN_OK)
            return c->problem;
        if (rc == 0 || (deadline >= 0 && s_now_ms() >= deadline))
            return DJN_ERR_TIMEOUT;
        /* only monitor events: keep waiting for the time that is left */
    }
    djn_rx_t *r = djn_calloc(1, sizeof(*r));
    if (!r)
        return DJN_ERR_NOMEM;
    uint32_t cap = 0;
    for (;;) {
        if (r->n == cap) {
            uint32_t ncap = cap ? cap * 2 : 4;
            zmq_msg_t *np =
                djn_realloc(r->parts, cap * sizeof(zmq_msg_t), ncap * sizeof(zmq_msg_t));
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
    /* shrink bookkeeping to exactly n for djn_rx_free */
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

uint32_t djn_rx_nframes(const djn_rx_t *r) {
    return r->n ? r->n - 1 : 0;
}

const void *djn_rx_frame(const djn_rx_t *r, uint32_t i, size_t *len) {
    if (i >= r->n) {
        *len = 0;
        return NULL;
    }
    *len = zmq_msg_size(&r->parts[i]);
    return zmq_msg_data(&r->parts[i]);
}

void djn_rx_free(djn_rx_t **r_p) {
    if (!r_p || !*r_p)
        return;
    djn_rx_t *r = *r_p;
    for (uint32_t i = 0; i < r->n; i++)
        zmq_msg_close(&r->parts[i]);
    djn_free(r->parts, r->n * sizeof(zmq_msg_t));
    djn_free(r, sizeof(*r));
    *r_p = NULL;
}
