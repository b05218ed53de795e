/* djn_cert.h: CURVE keys and the certificate files that hold them.
 *
 * The format is ZeroMQ's (czmq zcert, also what pyzmq's zmq.auth writes and reads):
 *
 *     metadata
 *         role = "operator"
 *     curve
 *         public-key = "<40 Z85 characters>"
 *         secret-key = "<40 Z85 characters>"     (only in NAME.key_secret, mode 0600)
 *
 * NAME.key holds the public key (exchanged freely), NAME.key_secret both. Metadata
 * lines are `name = "value"` under `metadata`; Djinn reads `role` ("operator": may read
 * server-wide STATS), `realtime` ("yes": may claim the realtime QoS class) and `models`
 * (the models of the server's store the tenant may load: "a,b" or "*"; none if absent). Z85 is
 * ZeroMQ's RFC 32 encoding (32 bytes <-> 40 characters), written here so this file needs
 * no ZeroMQ. Pure C: the server's tenant table and the client's key lookup use it. */
#ifndef DJN_CERT_H
#define DJN_CERT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "djn_status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DJN_KEY_BYTES 32
#define DJN_Z85_KEY_CHARS 40

typedef struct djn_cert {
    uint8_t pub[DJN_KEY_BYTES];
    uint8_t sec[DJN_KEY_BYTES];
    bool has_secret;
    bool is_operator; /* metadata role = "operator" */
    bool realtime;    /* metadata realtime = "yes" */
    char role[128];
    char models[1024]; /* metadata models = "a,b" or "*"; "" = none */
} djn_cert_t;

/* 40 Z85 characters (no terminator needed) -> 32 bytes; false on a bad character. */
bool djn_z85_decode(const char *z85, uint8_t out[DJN_KEY_BYTES]);
void djn_z85_encode(const uint8_t key[DJN_KEY_BYTES], char out[DJN_Z85_KEY_CHARS + 1]);

/* Read a certificate file. DJN_ERR_IO (cannot read) or DJN_ERR_PROTO (no valid
 * public-key), with err naming the file and the problem. */
djn_status_t djn_cert_read(const char *path, djn_cert_t *out, char *err, size_t errlen);
/* Write DIR/NAME.key (0644) and DIR/NAME.key_secret (0600) for a keypair; metadata
 * role = "operator" when is_operator. */
djn_status_t djn_cert_write(const char *dir, const char *name, const djn_cert_t *c, char *err,
                            size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
