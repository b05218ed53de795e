/* djn_transport.h: the client's socket (ZeroMQ DEALER), the only client file that
 * includes zmq.h. One request is a header buffer plus optional byte frames; a reply is
 * its header plus frames, held until djn_rx_free. */
#ifndef DJN_TRANSPORT_H
#define DJN_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

#include "djn_status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct djn_conn djn_conn_t;
typedef struct djn_rx djn_rx_t;

/* A byte frame to send. If free_fn is set, the transport takes ownership and calls
 * free_fn(data, hint) once ZeroMQ is done with it (zero-copy). */
typedef struct djn_frame {
    const void *data;
    size_t len;
    void (*free_fn)(void *data, void *hint);
    void *hint;
} djn_frame_t;

/* CURVE keys for an authenticated connection (djn_cert.h). */
typedef struct djn_curve {
    uint8_t server_pub[32], client_pub[32], client_sec[32];
} djn_curve_t;

/* A DEALER connected to endpoint, with a random routing id (kept across reconnects, so
 * the server keeps the session of a client whose connection blipped); CURVE when curve
 * is not NULL. NULL if the endpoint is invalid. */
djn_conn_t *djn_conn_new(const char *endpoint, const djn_curve_t *curve);
/* A fresh CURVE keypair (djinn-server keygen). */
djn_status_t djn_curve_keypair(uint8_t pub[32], uint8_t sec[32]);
void djn_conn_destroy(djn_conn_t **self_p);
djn_status_t djn_conn_send(djn_conn_t *c, const void *hdr, size_t hdr_len, djn_frame_t *frames,
                           uint32_t nframes);
/* Wait up to timeout_ms (-1: forever) for one reply. DJN_ERR_TIMEOUT: nothing came;
 * DJN_ERR_DENIED: the server refused the handshake (djn_conn_problem says why). */
djn_status_t djn_conn_recv(djn_conn_t *c, int timeout_ms, djn_rx_t **out);

/* Why waits on this connection fail (DJN_OK: they do not). */
djn_status_t djn_conn_problem(djn_conn_t *c, const char **why);
/* The link's state: handshakes that succeeded so far (a reconnect adds one), and for how
 * long it has been down (0: up, or never up yet). */
void djn_conn_link(djn_conn_t *c, uint32_t *handshakes, int64_t *down_ms);
uint32_t djn_rx_nframes(const djn_rx_t *r);                           /* frames after the header */
const void *djn_rx_frame(const djn_rx_t *r, uint32_t i, size_t *len); /* 0 = header */
void djn_rx_free(djn_rx_t **r_p);

#ifdef __cplusplus
}
#endif
#endif
