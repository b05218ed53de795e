/* djn_auth.c: the tenant table (see djn_auth.h): an array, searched linearly. A server
 * has a handful to a few hundred tenants and looks one up once per connection. */
#define _GNU_SOURCE
#include "djn_auth.h"

#include <dirent.h>
#include <stdio.h>
#include <string.h>

#include "djn_mem.h"

struct djn_auth {
    djn_cert_t server;
    djn_tenant_t *tenants;
    uint32_t n, cap;
};

static bool s_add(djn_auth_t *a, const char *name, const djn_cert_t *c) {
    if (a->n == a->cap) {
        uint32_t ncap = a->cap ? a->cap * 2 : 16;
        djn_tenant_t *t =
            djn_realloc(a->tenants, a->cap * sizeof(djn_tenant_t), ncap * sizeof(djn_tenant_t));
        if (!t)
            return false;
        a->tenants = t;
        a->cap = ncap;
    }
    djn_tenant_t *t = &a->tenants[a->n++];
    memset(t, 0, sizeof(*t));
    snprintf(t->name, sizeof t->name, "%s", name);
    memcpy(t->pub, c->pub, DJN_KEY_BYTES);
    t->is_operator = c->is_operator;
    t->realtime = c->realtime;
    return true;
}

djn_auth_t *djn_auth_load(const char *dir, char *err, size_t errlen) {
    djn_auth_t *a = djn_calloc(1, sizeof(*a));
    if (!a) {
        snprintf(err, errlen, "out of host memory");
        return NULL;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/server.key_secret", dir);
    if (djn_cert_read(path, &a->server, err, errlen) != DJN_OK)
        goto fail;
    if (!a->server.has_secret) {
        snprintf(err, errlen, "'%s' has no secret-key: the server needs its own keypair", path);
        goto fail;
    }
    djn_cert_t self = a->server;
    self.is_operator = true;
    if (!s_add(a, "server", &self))
        goto oom;
    snprintf(path, sizeof path, "%s/clients", dir);
    DIR *d = opendir(path);
    if (!d) {
        snprintf(err, errlen, "cannot read the authorized keys directory '%s/clients'", dir);
        goto fail;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        if (l < 5 || strcmp(e->d_name + l - 4, ".key") != 0)
            continue;
        if (l - 4 >= DJN_TENANT_NAME) { /* never skip a key silently: its owner would wonder */
            snprintf(err, errlen, "'%s/clients/%s': a tenant name is at most %d characters", dir,
                     e->d_name, DJN_TENANT_NAME - 1);
            closedir(d);
            goto fail;
        }
        char name[DJN_TENANT_NAME];
        memcpy(name, e->d_name, l - 4);
        name[l - 4] = 0;
        djn_cert_t c;
        snprintf(path, sizeof path, "%s/clients/%s", dir, e->d_name);
        if (djn_cert_read(path, &c, err, errlen) != DJN_OK) {
            closedir(d);
            goto fail;
        }
        if (djn_auth_find(a, c.pub) || djn_auth_by_name(a, name)) {
            snprintf(err, errlen, "'%s': the same key or name is authorized twice", path);
            closedir(d);
            goto fail;
        }
        if (!s_add(a, name, &c)) {
            closedir(d);
            goto oom;
        }
    }
    closedir(d);
    return a;
oom:
    snprintf(err, errlen, "out of host memory");
fail:
    djn_auth_destroy(&a);
    return NULL;
}

void djn_auth_destroy(djn_auth_t **self_p) {
    if (!self_p || !*self_p)
        return;
    djn_auth_t *a = *self_p;
    djn_free(a->tenants, a->cap * sizeof(djn_tenant_t));
    memset(&a->server, 0, sizeof a->server); /* the secret key leaves no copy behind */
    djn_free(a, sizeof(*a));
    *self_p = NULL;
}

const djn_tenant_t *djn_auth_find(const djn_auth_t *a, const uint8_t pub[DJN_KEY_BYTES]) {
    for (uint32_t i = 0; i < a->n; i++)
        if (memcmp(a->tenants[i].pub, pub, DJN_KEY_BYTES) == 0)
            return &a->tenants[i];
    return NULL;
}

const djn_tenant_t *djn_auth_by_name(const djn_auth_t *a, const char *name) {
    for (uint32_t i = 0; i < a->n; i++)
        if (strcmp(a->tenants[i].name, name) == 0)
            return &a->tenants[i];
    return NULL;
}

const djn_cert_t *djn_auth_server(const djn_auth_t *a) {
    return &a->server;
}
uint32_t djn_auth_count(const djn_auth_t *a) {
    return a->n;
}
