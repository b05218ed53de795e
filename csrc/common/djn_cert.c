/* djn_cert.c: Z85 and certificate files (see djn_cert.h). */
#define _GNU_SOURCE
#include "djn_cert.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char s_z85[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/"
                            "*?&<>()[]{}@%$#";

bool djn_z85_decode(const char *z85, uint8_t out[DJN_KEY_BYTES]) {
    for (int i = 0; i < DJN_Z85_KEY_CHARS; i += 5) {
        uint64_t v = 0;
        for (int k = 0; k < 5; k++) {
            const char *p = z85[i + k] ? strchr(s_z85, z85[i + k]) : NULL;
            if (!p)
                return false;
            v = v * 85 + (uint64_t)(p - s_z85);
        }
        if (v > 0xFFFFFFFFull)
            return false;
        for (int k = 0; k < 4; k++)
            out[i / 5 * 4 + k] = (uint8_t)(v >> (24 - 8 * k));
    }
    return true;
}

void djn_z85_encode(const uint8_t key[DJN_KEY_BYTES], char out[DJN_Z85_KEY_CHARS + 1]) {
    for (int i = 0; i < DJN_KEY_BYTES; i += 4) {
        uint32_t v = (uint32_t)key[i] << 24 | (uint32_t)key[i + 1] << 16 |
                     (uint32_t)key[i + 2] << 8 | key[i + 3];
        for (int k = 4; k >= 0; k--) {
            out[i / 4 * 5 + k] = s_z85[v % 85];
            v /= 85;
        }
    }
    out[DJN_Z85_KEY_CHARS] = 0;
}

/* `key = "value"` (spaces around =, quotes optional): the value into val. */
static bool s_kv(const char *line, const char *key, char *val, size_t vlen) {
    size_t kl = strlen(key);
    while (*line == ' ' || *line == '\t')
        line++;
    if (strncmp(line, key, kl) != 0)
        return false;
    line += kl;
    while (*line == ' ' || *line == '\t')
        line++;
    if (*line++ != '=')
        return false;
    while (*line == ' ' || *line == '\t')
        line++;
    bool quoted = *line == '"';
    line += quoted;
    size_t n = 0;
    while (line[n] && line[n] != '\n' && line[n] != '\r' &&
           (quoted ? line[n] != '"' : line[n] != ' '))
        n++;
    if (n >= vlen)
        return false;
    memcpy(val, line, n);
    val[n] = 0;
    return true;
}

djn_status_t djn_cert_read(const char *path, djn_cert_t *out, char *err, size_t errlen) {
    memset(out, 0, sizeof(*out));
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "cannot read the certificate '%s': %s", path, strerror(errno));
        return DJN_ERR_IO;
    }
    char line[1200], val[1024];
    bool have_pub = false, in_meta = false;
    djn_status_t st = DJN_OK;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#')
            continue;
        if (line[0] != ' ' && line[0] != '\t' && line[0] != '\n') {
            in_meta = strncmp(line, "metadata", 8) == 0;
            continue;
        }
        if (s_kv(line, "public-key", val, sizeof val)) {
            if (strlen(val) != DJN_Z85_KEY_CHARS || !djn_z85_decode(val, out->pub)) {
                st = DJN_ERR_PROTO;
                break;
            }
            have_pub = true;
        } else if (s_kv(line, "secret-key", val, sizeof val)) {
            if (strlen(val) != DJN_Z85_KEY_CHARS || !djn_z85_decode(val, out->sec)) {
                st = DJN_ERR_PROTO;
                break;
            }
            out->has_secret = true;
        } else if (in_meta && s_kv(line, "role", val, sizeof val)) {
            snprintf(out->role, sizeof out->role, "%.127s", val);
            out->is_operator = strcmp(val, "operator") == 0;
        } else if (in_meta && s_kv(line, "realtime", val, sizeof val)) {
            out->realtime = strcmp(val, "yes") == 0 || strcmp(val, "true") == 0;
        } else if (in_meta && s_kv(line, "models", val, sizeof val)) {
            snprintf(out->models, sizeof out->models, "%s", val);
        }
    }
    fclose(f);
    if (st == DJN_OK && !have_pub)
        st = DJN_ERR_PROTO;
    if (st != DJN_OK)
        snprintf(err, errlen,
                 "'%s' is not a CURVE certificate: it needs a 40-character Z85 "
                 "public-key (make one with 'djinn-server keygen')",
                 path);
    return st;
}

static djn_status_t s_write(const char *path, int mode, const djn_cert_t *c, bool secret, char *err,
                            size_t errlen) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0) {
        snprintf(err, errlen, "cannot write '%s': %s", path, strerror(errno));
        return DJN_ERR_IO;
    }
    fchmod(fd, (mode_t)mode); /* whatever the umask */
    char pub[DJN_Z85_KEY_CHARS + 1], sec[DJN_Z85_KEY_CHARS + 1];
    djn_z85_encode(c->pub, pub);
    djn_z85_encode(c->sec, sec);
    char buf[1024];
    int n = snprintf(buf, sizeof buf,
                     "#   ZeroMQ CURVE %s Certificate (djinn-server keygen)\n"
                     "#   %s\n\n"
                     "metadata\n%s%s"
                     "curve\n"
                     "    public-key = \"%s\"\n%s%s%s",
                     secret ? "**Secret**" : "Public",
                     secret ? "Keep this file private: it authenticates its owner."
                            : "Exchange freely; install it in the server's clients/ directory.",
                     c->is_operator ? "    role = \"operator\"\n" : "",
                     c->realtime ? "    realtime = \"yes\"\n" : "", pub,
                     secret ? "    secret-key = \"" : "", secret ? sec : "", secret ? "\"\n" : "");
    bool ok = n > 0 && (size_t)n < sizeof buf && write(fd, buf, (size_t)n) == n;
    close(fd);
    if (!ok) {
        snprintf(err, errlen, "cannot write '%s'", path);
        return DJN_ERR_IO;
    }
    return DJN_OK;
}

djn_status_t djn_cert_write(const char *dir, const char *name, const djn_cert_t *c, char *err,
                            size_t errlen) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.key", dir, name);
    djn_status_t st = s_write(path, 0644, c, false, err, errlen);
    if (st != DJN_OK)
        return st;
    snprintf(path, sizeof path, "%s/%s.key_secret", dir, name);
    return s_write(path, 0600, c, true, err, errlen);
}
