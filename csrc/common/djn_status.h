/* djn_status.h: the run-time error channel shared by client and server.
 *
 * Broken invariants of our own are asserts. Everything a peer, the allocator or the
 * device can make go wrong returns a djn_status_t; djn_status_str() gives the words a
 * user sees. Codes are part of the wire protocol (error replies carry them): append
 * only, never renumber. */
#ifndef DJN_STATUS_H
#define DJN_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum djn_status {
    DJN_OK = 0,
    DJN_ERR_NOMEM = 1,     /* host allocation failed */
    DJN_ERR_PROTO = 2,     /* malformed message: bad msgpack, wrong field types */
    DJN_ERR_VERSION = 3,   /* protocol version mismatch in HELLO */
    DJN_ERR_LIMIT = 4,     /* a size limit (header, frames, tensor bytes) exceeded */
    DJN_ERR_SESSION = 5,   /* unknown or expired session */
    DJN_ERR_HANDLE = 6,    /* a handle the session does not own */
    DJN_ERR_OP = 7,        /* an operator failed or is unknown on the server */
    DJN_ERR_ARGS = 8,      /* arguments do not match the operator's schema */
    DJN_ERR_DEVICE = 9,    /* no such device, or the device failed */
    DJN_ERR_TIMEOUT = 10,  /* the peer did not answer in time */
    DJN_ERR_IO = 11,       /* socket or process error */
    DJN_ERR_OOM = 12,      /* a device memory segment is full */
    DJN_ERR_QUOTA = 13,    /* a per-session quota is exceeded */
    DJN_ERR_EVICTED = 14,  /* a plan-cache entry the client named is gone */
    DJN_ERR_CLOSED = 15,   /* the client or server is shutting down */
    DJN_ERR_INTERNAL = 16, /* a bug: please report */
    DJN_ERR_DENIED = 17,   /* refused by the server's policy: an op, a message, a model */
    DJN_STATUS_COUNT       /* not a status: the number of them */
} djn_status_t;

const char *djn_status_str(djn_status_t st);
/* The code's name without the prefix: "OK", "PROTO", "QUOTA"... */
const char *djn_status_name(djn_status_t st);

#ifdef __cplusplus
}
#endif
#endif
