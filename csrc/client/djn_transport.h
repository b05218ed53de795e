/* djn_transport.h: the client's socket (ZeroMQ DEALER), the only client file that
 * includes zmq.h. One request is a header buffer plus optional byte frames; a reply is
 * its header plus frames, held until djn_reply_free. */
#ifndef DJN_TRANSPORT_H
#define DJN_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

#include "djn_status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct djn_conn djn_conn_t;
typedef struct djn_reply djn_reply_t;

/* A byte frame to send. If free_fn is set, the transport takes ownership and calls
 * free_fn(data, hint) once ZeroMQ is done with it (zero-copy). */
typedef struct djn_frame {
    const void *data;
    size_t len;
    void (*free_fn)(void *data, void *hint);
    void *hint;
} djn_frame_t;

djn_conn_t *djn_conn_new(const char *endpoint);
void djn_conn_destroy(djn_conn_t **self_p);
djn_status_t djn_conn_send(djn_conn_t *c, const void *hdr, size_t hdr_len, djn_frame_t *frames,
                           uint32_t nframes);
/* Wait up to timeout_ms (-1: forever) for one reply. */
djn_status_t djn_conn_recv(djn_conn_t *c, int timeout_ms, djn_reply_t **out);

uint32_t djn_reply_nframes(const djn_reply_t *r); /* frames after the header */
const void *djn_reply_frame(const djn_reply_t *r, uint32_t i, size_t *len); /* 0 = header */
void djn_reply_free(djn_reply_t **r_p);

#ifdef __cplusplus
}
#endif
#endif
