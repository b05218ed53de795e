/* djn_tcache.c: the Text cache on disk (see djn_tcache.h).
 *
 * Layout: DIR/<32 hex digits>.bin holds the bytes, DIR/<32 hex>.own one line per tenant
 * that uploaded them ("=" followed by the tenant name; "=" alone for the one tenant of
 * a server without keys). Save, on the worker of the entry's device, after the upload
 * was filed:
 *   1. if the .bin is missing: read the storage into a host buffer, write it to a
 *      temporary file, fsync-free rename into place (a crash loses the entry, never
 *      serves half of one);
 *   2. append the tenant to .own unless it is there.
 * Load (a HAVE that found nothing in memory):
 *   1. the tenant must be in .own (HAVE stays no oracle for other tenants' content);
 *   2. read the .bin, check its XXH3-128 against the name (a damaged or planted file is
 *      ignored), upload it to the device, compute its keyed hash for Text.
 * Rejected: saving in the background (a restart right after an upload would lose it;
 * the write goes to the page cache, about as fast as the upload that caused it).
 * Not done: a byte budget for DIR (the operator's disk; it is a cache, delete at will). */
#define _GNU_SOURCE
#include "djn_tcache.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "djn_mem.h"
#include "djn_proto.h"

struct djn_tcache {
    char dir[PATH_MAX - 64];
    djn_exec_t *exec[DJN_MAX_DEVICES];
};

djn_tcache_t *djn_tcache_new(const char *dir, char *err, size_t errlen) {
    if (strlen(dir) >= PATH_MAX - 64) {
        snprintf(err, errlen, "--text-cache path is too long");
        return NULL;
    }
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create the text cache '%s': %s", dir, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode) || access(dir, R_OK | W_OK | X_OK) != 0) {
        snprintf(err, errlen, "the text cache '%s' is not a writable directory", dir);
        return NULL;
    }
    djn_tcache_t *tc = djn_calloc(1, sizeof(*tc));
    if (!tc) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    snprintf(tc->dir, sizeof tc->dir, "%s", dir);
    return tc;
}

void djn_tcache_destroy(djn_tcache_t **self_p) {
    if (!self_p || !*self_p)
        return;
    djn_free(*self_p, sizeof(djn_tcache_t));
    *self_p = NULL;
}

void djn_tcache_set_exec(djn_tcache_t *tc, uint32_t dev, djn_exec_t *x) {
    if (dev < DJN_MAX_DEVICES)
        tc->exec[dev] = x;
}

static void s_path(const djn_tcache_t *tc, const uint64_t plain[2], const char *ext, char *out,
                   size_t len) {
    snprintf(out, len, "%s/%016" PRIx64 "%016" PRIx64 ".%s", tc->dir, plain[0], plain[1], ext);
}

/* Is "=tenant" a line of the owners file? */
static bool s_owner(const char *own, const char *tenant) {
    FILE *f = fopen(own, "r");
    if (!f)
        return false;
    char line[80];
    bool found = false;
    while (!found && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        found = line[0] == '=' && !strcmp(line + 1, tenant);
    }
    fclose(f);
    return found;
}

static bool s_write_all(int fd, const uint8_t *p, uint64_t n) {
    while (n) {
        ssize_t w = write(fd, p, n > (1u << 30) ? (1u << 30) : (size_t)n);
        if (w <= 0)
            return false;
        p += w;
        n -= (uint64_t)w;
    }
    return true;
}

static void s_save_fn(void *ctx, const djn_text_key_t *key, const uint64_t plain[2],
                      const char *tenant, djn_stor_t *stor) {
    djn_tcache_t *tc = ctx;
    djn_exec_t *x = key->dev < DJN_MAX_DEVICES ? tc->exec[key->dev] : NULL;
    char bin[PATH_MAX], own[PATH_MAX], tmp[PATH_MAX + 32];
    s_path(tc, plain, "bin", bin, sizeof bin);
    s_path(tc, plain, "own", own, sizeof own);
    if (!x)
        return;
    if (access(bin, R_OK) != 0) { /* 1 */
        uint64_t n = djn_stor_nbytes(stor);
        uint8_t *buf = djn_malloc(n ? n : 1);
        char err[256];
        if (!buf || djn_exec_read(x, stor, 0, n, buf, err, sizeof err) != DJN_OK) {
            djn_free(buf, n ? n : 1);
            return; /* a cache: the entry is just not kept */
        }
        snprintf(tmp, sizeof tmp, "%s.%d.tmp", bin, (int)getpid());
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        bool ok = fd >= 0 && s_write_all(fd, buf, n);
        if (fd >= 0)
            ok &= close(fd) == 0;
        djn_free(buf, n ? n : 1);
        if (!ok || rename(tmp, bin) != 0) {
            unlink(tmp);
            return;
        }
    }
    if (!s_owner(own, tenant)) { /* 2 */
        int fd = open(own, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (fd >= 0) {
            char line[80];
            int l = snprintf(line, sizeof line, "=%s\n", tenant);
            if (write(fd, line, (size_t)l) != l) { /* a cache: a lost owner re-uploads */
            }
            close(fd);
        }
    }
}

static djn_stor_t *s_load_fn(void *ctx, djn_text_t *t, uint32_t dev, const uint64_t plain[2],
                             const char *tenant, djn_text_key_t *key) {
    djn_tcache_t *tc = ctx;
    djn_exec_t *x = dev < DJN_MAX_DEVICES ? tc->exec[dev] : NULL;
    char bin[PATH_MAX], own[PATH_MAX];
    s_path(tc, plain, "bin", bin, sizeof bin);
    s_path(tc, plain, "own", own, sizeof own);
    if (!x || !s_owner(own, tenant)) /* 1 */
        return NULL;
    int fd = open(bin, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    uint64_t n = (uint64_t)st.st_size;
    uint8_t *buf = djn_malloc(n ? n : 1);
    uint64_t got = 0;
    while (buf && got < n) {
        ssize_t r = read(fd, buf + got, n - got > (1u << 30) ? (1u << 30) : (size_t)(n - got));
        if (r <= 0)
            break;
        got += (uint64_t)r;
    }
    close(fd);
    djn_stor_t *stor = NULL;
    XXH128_hash_t h = buf && got == n ? XXH3_128bits(buf, n) : (XXH128_hash_t){0, 0};
    if (buf && got == n && h.high64 == plain[0] && h.low64 == plain[1]) { /* 2 */
        char err[256];
        uint64_t p2[2];
        if (djn_exec_upload(x, buf, n, &stor, err, sizeof err) != DJN_OK)
            stor = NULL;
        else
            djn_text_hash(t, buf, n, key, p2);
    }
    djn_free(buf, n ? n : 1);
    return stor;
}

djn_text_store_t djn_tcache_store(djn_tcache_t *tc) {
    return (djn_text_store_t){tc, s_save_fn, s_load_fn};
}
