/* djn_auth.h: who may talk to this server: the server's CURVE keypair and its tenants.
 *
 * `djinn-server --keys DIR` reads DIR/server.key_secret (the server's keypair) and every
 * DIR/clients/NAME.key (a tenant's public certificate; the tenant is called NAME). The
 * transport's ZAP handler asks djn_auth_find for each connecting key: an unknown key is
 * refused during the handshake, a known one is admitted under its tenant name, which
 * every message of that connection then carries (ZeroMQ's User-Id). Per-tenant rights
 * come from the certificate's metadata (djn_cert.h): operators read server-wide STATS;
 * `realtime` tenants may claim the realtime class. The server's own public key is a
 * tenant too ("server", an operator), so `djinn-server --check EP --keys DIR` can probe a
 * server with the keys the server itself was given. No ZeroMQ here: pure data. */
#ifndef DJN_AUTH_H
#define DJN_AUTH_H

#include <stdbool.h>
#include <stdint.h>

#include "djn_cert.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DJN_TENANT_NAME 64

typedef struct djn_tenant {
    char name[DJN_TENANT_NAME];
    uint8_t pub[DJN_KEY_BYTES];
    bool is_operator, realtime;
    char models[1024]; /* the models it may load: "a,b", "*", or "" for none */
} djn_tenant_t;

typedef struct djn_auth djn_auth_t;

djn_auth_t *djn_auth_load(const char *dir, char *err, size_t errlen);
void djn_auth_destroy(djn_auth_t **self_p);
const djn_tenant_t *djn_auth_find(const djn_auth_t *a, const uint8_t pub[DJN_KEY_BYTES]);
const djn_tenant_t *djn_auth_by_name(const djn_auth_t *a, const char *name);
const djn_cert_t *djn_auth_server(const djn_auth_t *a);
uint32_t djn_auth_count(const djn_auth_t *a); /* tenants, the server's own key included */

#ifdef __cplusplus
}
#endif
#endif
