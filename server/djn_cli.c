/* djn_cli.c: the command-line tools of djinn-server that are clients of a server, and
 * key generation: `--stats EP`, `--check EP`, `keygen DIR NAME`.
 *
 * They speak the protocol through the client's own transport (csrc/client/djn_transport.c)
 * and codec. --stats prints every counter of the descriptor table (djn_stats.h) with its
 * documentation, so an operator reads the same names as the wire and memory_stats(). With
 * --keys DIR both authenticate with the server's own keypair, which the server admits as
 * an operator: a probe on the server's host needs no key of its own. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "djn_cert.h"
#include "djn_codec.h"
#include "djn_mem.h"
#include "djn_server.h"
#include "djn_transport.h"

static void s_print(djn_stats_scope_t scope, const void *base, const char *indent) {
    uint32_t n;
    const djn_stats_field_t *f = djn_stats_fields(&n);
    for (uint32_t i = 0; i < n; i++) {
        if (f[i].scope != scope)
            continue;
        const char *p = (const char *)base + f[i].offset;
        if (f[i].is_float) {
            double d;
            memcpy(&d, p, sizeof d);
            printf("%s%-24s %-14.4f  %s\n", indent, f[i].name, d, f[i].doc);
        } else {
            uint64_t u;
            memcpy(&u, p, sizeof u);
            printf("%s%-24s %-14" PRIu64 "  %s\n", indent, f[i].name, u, f[i].doc);
        }
    }
}

/* A connection to endpoint, authenticated with DIR/server.key_secret when keys_dir. */
static djn_conn_t *s_connect(const char *endpoint, const char *keys_dir) {
    djn_curve_t k;
    if (keys_dir) {
        char path[4096], err[512];
        djn_cert_t cert;
        snprintf(path, sizeof path, "%s/server.key_secret", keys_dir);
        if (djn_cert_read(path, &cert, err, sizeof err) != DJN_OK || !cert.has_secret) {
            fprintf(stderr, "djinn-server: %s\n", err);
            return NULL;
        }
        memcpy(k.server_pub, cert.pub, 32);
        memcpy(k.client_pub, cert.pub, 32);
        memcpy(k.client_sec, cert.sec, 32);
        memset(&cert, 0, sizeof cert);
    }
    djn_conn_t *c = djn_conn_new(endpoint, keys_dir ? &k : NULL);
    memset(&k, 0, sizeof k);
    if (!c)
        fprintf(stderr, "djinn-server: bad endpoint '%s'\n", endpoint);
    return c;
}

/* One STATS request; *rep on success (caller frees). */
static int s_stats(djn_conn_t *c, const char *endpoint, int timeout_ms, djn_reply_t **rep) {
    djn_buf_t b = {0};
    djn_msg_hdr_t h = {DJN_MSG_STATS, 0, 1};
    djn_empty_encode(&b, &h);
    djn_rx_t *rx = NULL;
    char err[256] = "";
    int rc = 1;
    djn_status_t st;
    if (b.failed || djn_conn_send(c, b.data, b.len, NULL, 0) != DJN_OK) {
        fprintf(stderr, "djinn-server: cannot send to %s\n", endpoint);
    } else if ((st = djn_conn_recv(c, timeout_ms, &rx)) != DJN_OK) {
        const char *why = "";
        djn_conn_problem(c, &why);
        fprintf(stderr, "djinn-server: no answer from %s within %d ms%s%s\n", endpoint, timeout_ms,
                *why ? ": " : "", why);
    } else {
        size_t hl;
        const void *hdr = djn_rx_frame(rx, 0, &hl);
        if (djn_reply_decode(hdr, hl, rep, err, sizeof err) != DJN_OK)
            fprintf(stderr, "djinn-server: unreadable answer from %s: %s\n", endpoint, err);
        else if ((*rep)->type == DJN_MSG_ERROR)
            fprintf(stderr, "djinn-server: %s refused STATS: %s\n", endpoint, (*rep)->error.msg);
        else
            rc = 0;
    }
    if (rc)
        djn_reply_free(rep);
    djn_rx_free(&rx);
    djn_buf_release(&b);
    return rc;
}

int djn_server_check(const char *endpoint, const char *keys_dir, int timeout_ms) {
    djn_conn_t *c = s_connect(endpoint, keys_dir);
    if (!c)
        return 2;
    djn_reply_t *rep = NULL;
    int rc = s_stats(c, endpoint, timeout_ms, &rep);
    if (!rc)
        printf("djinn-server at %s answers\n", endpoint);
    djn_reply_free(&rep);
    djn_conn_destroy(&c);
    return rc;
}

int djn_server_keygen(const char *dir, const char *name, bool is_operator, bool realtime) {
    if (!*name || strchr(name, '/') || strlen(name) >= 64) {
        fprintf(stderr, "djinn-server: a key name is 1-63 characters without '/'\n");
        return 2;
    }
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "djinn-server: cannot make '%s': %s\n", dir, strerror(errno));
        return 1;
    }
    djn_cert_t c;
    memset(&c, 0, sizeof c);
    c.is_operator = is_operator;
    c.realtime = realtime;
    char err[512];
    if (djn_curve_keypair(c.pub, c.sec) != DJN_OK) {
        fprintf(stderr, "djinn-server: cannot make a keypair (libzmq without CURVE?)\n");
        return 1;
    }
    djn_status_t st = djn_cert_write(dir, name, &c, err, sizeof err);
    memset(&c, 0, sizeof c);
    if (st != DJN_OK) {
        fprintf(stderr, "djinn-server: %s\n", err);
        return 1;
    }
    printf("wrote %s/%s.key (public) and %s/%s.key_secret (secret, mode 0600)\n", dir, name, dir,
           name);
    return 0;
}

int djn_server_print_stats(const char *endpoint, const char *keys_dir, int timeout_ms) {
    djn_conn_t *c = s_connect(endpoint, keys_dir);
    if (!c)
        return 1;
    int rc = 1;
    djn_reply_t *rep = NULL;
    djn_stats_rep_t *st = djn_calloc(1, sizeof(*st));
    char err[256] = "";
    if (!st || s_stats(c, endpoint, timeout_ms, &rep) != 0)
        goto out;
    if (djn_stats_rep_parse(rep, st, err, sizeof err) != DJN_OK) {
        fprintf(stderr, "djinn-server: unreadable answer from %s: %s\n", endpoint, err);
        goto out;
    }
    printf("djinn-server %s\n", endpoint);
    if (st->has_server)
        s_print(DJN_STATS_SCOPE_SERVER, &st->server, "  ");
    s_print(DJN_STATS_SCOPE_SESSION, &st->session, "  ");
    for (uint32_t i = 0; i < st->ndevices; i++) {
        printf("  device %u: %s\n", i, st->devices[i].name);
        s_print(DJN_STATS_SCOPE_DEVICE, &st->devices[i], "    ");
    }
    rc = 0;
out:
    djn_free(st, sizeof(*st));
    djn_reply_free(&rep);
    djn_conn_destroy(&c);
    return rc;
}
