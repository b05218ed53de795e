/* djn_models.c: the model store (see djn_models.h).
 *
 * A load, in steps (one store mutex held throughout: loads are rare and long, and the
 * mutex keeps two devices' workers from parsing one model twice):
 *   1. access: the name must be on the tenant's list, and in the store; an unknown name
 *      is answered with the names the tenant may load (never the others);
 *   2. parse, once per model: config.json (<= 1 MiB, must be a JSON object) and every
 *      safetensors header of its files (djn_safet: bounded and strict); tensors sorted
 *      by name, a name in two shards refused;
 *   3. describe (no binds): config and tensors into the reply;
 *   4. bind, under the session's lock: for each (name, handle), the tensor's Text entry
 *      on this device if its remembered key still finds one (djn_text_acquire_key);
 *      else the file is memory-mapped (once per load), the bytes go to a device storage,
 *      and that is shared with an identical upload already in Text (keyed hash, then a
 *      byte comparison) or filed as a new entry with no owner; the handle takes the
 *      reference (djn_session_bind_text).
 * A file that changed size or mtime since step 2 fails the load (DJN_ERR_IO) rather
 * than serving bytes its header does not describe.
 * Rejected: copying each tensor through read() into a bounce buffer (one more copy of
 * every weight; mmap lets the executor copy straight from the page cache); keeping a
 * reference per loaded tensor in the store with a per-model LRU (the Text cache already
 * keeps unreferenced content within one budget, shared with client uploads). */
#define _GNU_SOURCE
#include "djn_models.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "djn_mem.h"
#include "djn_safet.h"
#include "djn_vec.h"

#define S_MAX_CONFIG (1u << 20)
#define S_MAX_MODELS 4096u
#define S_MAX_FILES 4096u

typedef struct {
    char path[PATH_MAX];
    uint64_t size;
    int64_t mtime_ns;
} s_file_t;

typedef struct {
    char name[DJN_MAX_NAME + 1];
    char dir[PATH_MAX];
    bool parsed;
    djn_arena_t *arena; /* config, tensor names and tables */
    char *config;
    s_file_t *files;
    uint32_t nfiles;
    djn_safet_tensor_t *tensors; /* sorted by name */
    uint32_t *tfile;             /* file of each tensor */
    uint32_t ntensors;
    djn_text_key_t *keys[DJN_MAX_DEVICES]; /* per device; serial 0: not in Text */
    /* read without the store's mutex (placement, djn_models_held): the devices where a
     * bind succeeded, and the model's bytes */
    _Atomic uint64_t on_dev, nbytes;
} s_model_t;

struct djn_models {
    pthread_mutex_t mu;
    djn_text_t *text;
    s_model_t *models; /* sorted by name */
    uint32_t n;
};

static int s_model_cmp(const void *a, const void *b) {
    return strcmp(((const s_model_t *)a)->name, ((const s_model_t *)b)->name);
}

static bool s_is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static bool s_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* A name a client can spell and an access list can hold: printable, no ',' or spaces. */
static bool s_good_name(const char *n) {
    if (!*n || n[0] == '.')
        return false;
    for (const char *p = n; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == ',' || *p == 0x7f)
            return false;
    return strlen(n) <= DJN_MAX_NAME;
}

static bool s_add(djn_models_t *m, const char *name, const char *dir) {
    if (m->n >= S_MAX_MODELS || !s_good_name(name))
        return true; /* skipped */
    s_model_t *nm =
        djn_realloc(m->models, m->n * sizeof(s_model_t), (m->n + 1) * sizeof(s_model_t));
    if (!nm)
        return false;
    m->models = nm;
    s_model_t *x = &m->models[m->n++];
    memset(x, 0, sizeof(*x));
    snprintf(x->name, sizeof x->name, "%.*s", DJN_MAX_NAME, name); /* s_good_name: fits */
    snprintf(x->dir, sizeof x->dir, "%s", dir);
    return true;
}

static bool s_scan(djn_models_t *m, const char *root, const char *prefix, int depth) {
    DIR *d = opendir(root);
    if (!d)
        return depth > 0; /* the top directory must be readable; a subfolder may not be */
    struct dirent *e;
    bool ok = true;
    while (ok && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[PATH_MAX], cfg[PATH_MAX + 16], name[DJN_MAX_NAME + 2];
        if (snprintf(path, sizeof path, "%s/%s", root, e->d_name) >= (int)sizeof path ||
            snprintf(name, sizeof name, "%s%s", prefix, e->d_name) >= (int)sizeof name)
            continue;
        if (!s_is_dir(path))
            continue;
        snprintf(cfg, sizeof cfg, "%s/config.json", path);
        if (s_is_file(cfg)) {
            ok = s_add(m, name, path);
        } else if (depth == 0) {
            char pre[DJN_MAX_NAME + 2];
            snprintf(pre, sizeof pre, "%.*s/", DJN_MAX_NAME - 1, e->d_name);
            ok = s_scan(m, path, pre, 1);
        }
    }
    closedir(d);
    return ok;
}

djn_models_t *djn_models_new(const char *dir, djn_text_t *text, char *err, size_t errlen) {
    djn_models_t *m = djn_calloc(1, sizeof(*m));
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&m->mu, NULL);
    m->text = text;
    if (dir && *dir) {
        if (!s_is_dir(dir)) {
            snprintf(err, errlen, "--models '%s' is not a readable directory", dir);
            djn_models_destroy(&m);
            return NULL;
        }
        if (!s_scan(m, dir, "", 0)) {
            snprintf(err, errlen, "cannot read the model directory '%s': %s", dir, strerror(errno));
            djn_models_destroy(&m);
            return NULL;
        }
        if (m->n)
            qsort(m->models, m->n, sizeof(s_model_t), s_model_cmp);
    }
    return m;
}

static void s_model_clear(s_model_t *x) {
    for (int d = 0; d < DJN_MAX_DEVICES; d++) {
        djn_free(x->keys[d], x->ntensors * sizeof(djn_text_key_t));
        x->keys[d] = NULL;
    }
    djn_arena_destroy(&x->arena);
    x->parsed = false;
    x->config = NULL;
    x->files = NULL;
    x->tensors = NULL;
    x->tfile = NULL;
    x->nfiles = x->ntensors = 0;
}

void djn_models_destroy(djn_models_t **self_p) {
    if (!self_p || !*self_p)
        return;
    djn_models_t *m = *self_p;
    for (uint32_t i = 0; i < m->n; i++)
        s_model_clear(&m->models[i]); /* Text entries stay Text's: nothing to release */
    djn_free(m->models, m->n * sizeof(s_model_t));
    pthread_mutex_destroy(&m->mu);
    djn_free(m, sizeof(*m));
    *self_p = NULL;
}

uint32_t djn_models_count(const djn_models_t *m) {
    return m ? m->n : 0;
}

bool djn_models_allowed(const char *acl, const char *name) {
    if (!acl || !name)
        return false;
    size_t nl = strlen(name);
    const char *p = acl;
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        const char *q = p;
        while (*q && *q != ',')
            q++;
        const char *e = q;
        while (e > p && e[-1] == ' ')
            e--;
        if ((e - p == 1 && *p == '*') || ((size_t)(e - p) == nl && !memcmp(p, name, nl)))
            return true;
        p = q;
    }
    return false;
}

/* ------------------------------------------------------------------ step 2: parse */

static djn_status_t s_read_all(const char *path, uint64_t cap, djn_arena_t *a, char **out,
                               size_t *len, char *err, size_t errlen) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(err, errlen, "cannot read '%s': %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return DJN_ERR_IO;
    }
    if ((uint64_t)st.st_size > cap) {
        close(fd);
        snprintf(err, errlen, "'%s' is larger than %" PRIu64 " bytes", path, cap);
        return DJN_ERR_LIMIT;
    }
    char *buf = djn_arena_alloc(a, (size_t)st.st_size + 1);
    if (!buf) {
        close(fd);
        snprintf(err, errlen, "out of memory");
        return DJN_ERR_NOMEM;
    }
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    if (got != (size_t)st.st_size) {
        snprintf(err, errlen, "short read of '%s'", path);
        return DJN_ERR_IO;
    }
    buf[got] = 0;
    *out = buf;
    *len = got;
    return DJN_OK;
}

static int s_strpcmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The model's safetensors files, by the index when there is one. */
static djn_status_t s_list_files(s_model_t *x, djn_vec_t *names, char *err, size_t errlen) {
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", x->dir);
    if (s_is_file(path)) {
        char *text;
        size_t len;
        djn_status_t st = s_read_all(path, 64u << 20, x->arena, &text, &len, err, errlen);
        djn_value_t *root;
        if (st == DJN_OK &&
            (st = djn_json_parse(text, len, x->arena, &root, err, errlen)) == DJN_OK) {
            const djn_value_t *wm = djn_value_get(root, "weight_map");
            if (!wm || wm->kind != DJN_V_MAP) {
                snprintf(err, errlen,
                         "model '%s': model.safetensors.index.json has no 'weight_map' object",
                         x->name);
                return DJN_ERR_PROTO;
            }
            for (uint32_t i = 0; i < wm->len; i++) {
                const djn_value_t *f = &wm->u.items[2 * i + 1];
                if (f->kind != DJN_V_STR || !f->len || strchr(f->u.s, '/') ||
                    !strcmp(f->u.s, "..") || f->u.s[0] == '.') {
                    snprintf(err, errlen,
                             "model '%s': model.safetensors.index.json names a file that is not "
                             "a plain file name in the model's folder",
                             x->name);
                    return DJN_ERR_PROTO;
                }
                bool seen = false;
                for (size_t k = 0; k < names->len && !seen; k++)
                    seen = !strcmp(DJN_VEC_AT(names, const char *, k), f->u.s);
                if (!seen && !djn_vec_push(names, &f->u.s))
                    return DJN_ERR_NOMEM;
            }
        }
        return st;
    }
    snprintf(path, sizeof path, "%s/model.safetensors", x->dir);
    if (s_is_file(path)) {
        static const char *one = "model.safetensors";
        return djn_vec_push(names, &one) ? DJN_OK : DJN_ERR_NOMEM;
    }
    DIR *d = opendir(x->dir);
    if (!d) {
        snprintf(err, errlen, "cannot read the folder of model '%s'", x->name);
        return DJN_ERR_IO;
    }
    struct dirent *e;
    djn_status_t st = DJN_OK;
    while (st == DJN_OK && (e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        if (e->d_name[0] == '.' || l < 12 || strcmp(e->d_name + l - 12, ".safetensors"))
            continue;
        char *copy = djn_arena_alloc(x->arena, l + 1);
        if (!copy || !djn_vec_push(names, &copy))
            st = DJN_ERR_NOMEM;
        else
            memcpy(copy, e->d_name, l + 1);
    }
    closedir(d);
    if (st == DJN_OK && names->len > 1)
        qsort(names->data, names->len, sizeof(char *), s_strpcmp);
    return st;
}

typedef struct {
    djn_safet_tensor_t *t;
    uint32_t file;
} s_tpos_t;

static int s_tpos_cmp(const void *a, const void *b) {
    return strcmp(((const s_tpos_t *)a)->t->name, ((const s_tpos_t *)b)->t->name);
}

static int64_t s_mtime_ns(const struct stat *st) {
    return (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
}

static djn_status_t s_parse_file(s_model_t *x, uint32_t fi, djn_vec_t *all, char *err,
                                 size_t errlen) {
    s_file_t *f = &x->files[fi];
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(err, errlen, "cannot read '%s': %s", f->path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return DJN_ERR_IO;
    }
    f->size = (uint64_t)st.st_size;
    f->mtime_ns = s_mtime_ns(&st);
    uint8_t first[8] = {0};
    uint64_t hlen = 0;
    char e2[400];
    djn_status_t s = pread(fd, first, 8, 0) == 8
                         ? djn_safet_header_len(first, f->size, &hlen, e2, sizeof e2)
                         : (snprintf(e2, sizeof e2, "file is shorter than 8 bytes"), DJN_ERR_PROTO);
    char *hdr = s == DJN_OK ? djn_arena_alloc(x->arena, (size_t)hlen + 1) : NULL;
    if (s == DJN_OK && !hdr)
        s = DJN_ERR_NOMEM, snprintf(e2, sizeof e2, "out of memory");
    if (s == DJN_OK && pread(fd, hdr, (size_t)hlen, 8) != (ssize_t)hlen)
        s = DJN_ERR_IO, snprintf(e2, sizeof e2, "short read of the header");
    close(fd);
    djn_safet_tensor_t *ts = NULL;
    uint32_t n = 0;
    if (s == DJN_OK)
        s = djn_safet_parse(hdr, hlen, f->size, x->arena, &ts, &n, e2, sizeof e2);
    if (s != DJN_OK) {
        const char *base = strrchr(f->path, '/');
        snprintf(err, errlen, "model '%s', file '%s': %s", x->name, base ? base + 1 : f->path, e2);
        return s;
    }
    for (uint32_t i = 0; i < n; i++) {
        s_tpos_t p = {&ts[i], fi};
        if (!djn_vec_push(all, &p))
            return DJN_ERR_NOMEM;
    }
    return DJN_OK;
}

static djn_status_t s_parse(s_model_t *x, char *err, size_t errlen) {
    if (x->parsed)
        return DJN_OK;
    s_model_clear(x);
    if (!(x->arena = djn_arena_new())) {
        snprintf(err, errlen, "out of memory");
        return DJN_ERR_NOMEM;
    }
    char path[PATH_MAX + 64];
    size_t clen;
    djn_value_t *cfg;
    snprintf(path, sizeof path, "%s/config.json", x->dir);
    djn_status_t st = s_read_all(path, S_MAX_CONFIG, x->arena, &x->config, &clen, err, errlen);
    if (st == DJN_OK && djn_json_parse(x->config, clen, x->arena, &cfg, err, errlen) != DJN_OK) {
        char e2[256];
        snprintf(e2, sizeof e2, "%s", err);
        snprintf(err, errlen, "model '%s': config.json: %s", x->name, e2);
        st = DJN_ERR_PROTO;
    } else if (st == DJN_OK && cfg->kind != DJN_V_MAP) {
        snprintf(err, errlen, "model '%s': config.json is not a JSON object", x->name);
        st = DJN_ERR_PROTO;
    }
    djn_vec_t names = DJN_VEC(const char *), all = DJN_VEC(s_tpos_t);
    if (st == DJN_OK)
        st = s_list_files(x, &names, err, errlen);
    if (st == DJN_OK && (names.len == 0 || names.len > S_MAX_FILES)) {
        if (names.len)
            snprintf(err, errlen, "model '%s' has %zu safetensors files, the limit is %u", x->name,
                     names.len, S_MAX_FILES);
        else
            snprintf(err, errlen, "model '%s' has no safetensors files", x->name);
        st = names.len ? DJN_ERR_LIMIT : DJN_ERR_IO;
    }
    if (st == DJN_OK && !(x->files = djn_arena_alloc(x->arena, names.len * sizeof(s_file_t))))
        st = DJN_ERR_NOMEM;
    for (size_t i = 0; st == DJN_OK && i < names.len; i++) {
        x->nfiles = (uint32_t)i + 1;
        if (snprintf(x->files[i].path, sizeof x->files[i].path, "%s/%s", x->dir,
                     DJN_VEC_AT(&names, const char *, i)) >= (int)sizeof x->files[i].path) {
            snprintf(err, errlen, "model '%s': a file path is longer than %d bytes", x->name,
                     PATH_MAX - 1);
            st = DJN_ERR_LIMIT;
            break;
        }
        st = s_parse_file(x, (uint32_t)i, &all, err, errlen);
    }
    if (st == DJN_OK && all.len) {
        qsort(all.data, all.len, sizeof(s_tpos_t), s_tpos_cmp);
        x->tensors = djn_arena_alloc(x->arena, all.len * sizeof(djn_safet_tensor_t));
        x->tfile = djn_arena_alloc(x->arena, all.len * sizeof(uint32_t));
        if (!x->tensors || !x->tfile)
            st = DJN_ERR_NOMEM;
        for (size_t i = 0; st == DJN_OK && i < all.len; i++) {
            s_tpos_t *p = &DJN_VEC_AT(&all, s_tpos_t, i);
            if (i && !strcmp(p->t->name, DJN_VEC_AT(&all, s_tpos_t, i - 1).t->name)) {
                snprintf(err, errlen, "model '%s': tensor '%.200s' appears in two files", x->name,
                         p->t->name);
                st = DJN_ERR_PROTO;
                break;
            }
            x->tensors[i] = *p->t;
            x->tfile[i] = p->file;
        }
        x->ntensors = (uint32_t)all.len;
    }
    djn_vec_release(&names);
    djn_vec_release(&all);
    if (st != DJN_OK) {
        if (st == DJN_ERR_NOMEM)
            snprintf(err, errlen, "out of memory reading model '%s'", x->name);
        s_model_clear(x);
        return st;
    }
    x->parsed = true;
    return DJN_OK;
}

/* ------------------------------------------------------------------ step 1: access */

static s_model_t *s_find(djn_models_t *m, const char *name) {
    s_model_t key;
    snprintf(key.name, sizeof key.name, "%s", name);
    return m->n ? bsearch(&key, m->models, m->n, sizeof(s_model_t), s_model_cmp) : NULL;
}

static djn_status_t s_unknown(djn_models_t *m, const char *name, const char *acl, char *err,
                              size_t errlen) {
    size_t o = (size_t)snprintf(err, errlen, "unknown model '%s': this server offers ", name);
    uint32_t shown = 0;
    for (uint32_t i = 0; i < m->n && o < errlen; i++) {
        if (!djn_models_allowed(acl, m->models[i].name))
            continue;
        o += (size_t)snprintf(err + o, errlen - o, "%s'%s'", shown ? ", " : "", m->models[i].name);
        shown++;
    }
    if (!shown && o < errlen)
        snprintf(err + o, errlen - o, "%s",
                 m->n ? "no model to this tenant" : "no models (start it with --models DIR)");
    return DJN_ERR_ARGS;
}

/* ------------------------------------------------------------------ step 4: bind */

typedef struct {
    djn_exec_t *x;
    const void *bytes;
    uint64_t n;
} s_same_t;

static bool s_same_fn(void *ctx, djn_stor_t *filed) {
    s_same_t *c = ctx;
    return djn_stor_nbytes(filed) == c->n && djn_exec_same(c->x, filed, c->bytes, c->n);
}

typedef struct {
    void *base;
    size_t len;
} s_map_t;

static djn_status_t s_map_file(s_model_t *x, uint32_t fi, s_map_t *maps, char *err, size_t errlen) {
    if (maps[fi].base)
        return DJN_OK;
    s_file_t *f = &x->files[fi];
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || (uint64_t)st.st_size != f->size ||
        s_mtime_ns(&st) != f->mtime_ns) {
        if (fd >= 0)
            close(fd);
        x->parsed = false; /* parsed again on the next load */
        snprintf(err, errlen,
                 "model '%s': '%s' is missing or changed since the server read it; load the "
                 "model again",
                 x->name, f->path);
        return DJN_ERR_IO;
    }
    void *p = f->size ? mmap(NULL, (size_t)f->size, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
    close(fd);
    if (p == MAP_FAILED || !p) {
        snprintf(err, errlen, "model '%s': cannot map '%s': %s", x->name, f->path, strerror(errno));
        return DJN_ERR_IO;
    }
    madvise(p, (size_t)f->size, MADV_SEQUENTIAL);
    maps[fi] = (s_map_t){p, (size_t)f->size};
    return DJN_OK;
}

static int s_tensor_cmp(const void *key, const void *t) {
    return strcmp((const char *)key, ((const djn_safet_tensor_t *)t)->name);
}

/* The Text storage of tensor i on dev, with a reference for the caller. */
static djn_status_t s_tensor_text(djn_models_t *m, s_model_t *x, djn_exec_t *ex, uint32_t dev,
                                  uint32_t i, s_map_t *maps, djn_text_key_t *key, djn_stor_t **out,
                                  uint64_t *read_bytes, char *err, size_t errlen) {
    djn_text_key_t *k = &x->keys[dev][i];
    if (k->serial && (*out = djn_text_acquire_key(m->text, k)) != NULL) {
        *key = *k;
        return DJN_OK;
    }
    const djn_safet_tensor_t *t = &x->tensors[i];
    djn_status_t st = s_map_file(x, x->tfile[i], maps, err, errlen);
    if (st != DJN_OK)
        return st;
    static const uint8_t none[1];
    uint64_t n = t->end - t->begin;
    const uint8_t *bytes = n ? (const uint8_t *)maps[x->tfile[i]].base + t->begin : none;
    djn_stor_t *stor = NULL;
    if ((st = djn_exec_upload(ex, bytes, n, &stor, err, errlen)) != DJN_OK)
        return st;
    uint64_t plain[2];
    *key = (djn_text_key_t){0, 0, dev, 0};
    djn_text_hash(m->text, bytes, n, key, plain);
    s_same_t same = {ex, bytes, n};
    djn_stor_t *filed = djn_text_share(m->text, key, UINT32_MAX, s_same_fn, &same);
    if (!filed)
        filed = djn_text_insert(m->text, key, plain, UINT32_MAX, stor, s_same_fn, &same);
    djn_stor_release(stor);
    if (!filed) {
        snprintf(err, errlen, "out of host memory filing model '%s'", x->name);
        return DJN_ERR_NOMEM;
    }
    *k = *key;
    *read_bytes += n;
    *out = filed;
    return DJN_OK;
}

static djn_status_t s_bind(djn_models_t *m, s_model_t *x, djn_exec_t *ex, uint32_t dev,
                           djn_session_t *s, const djn_load_req_t *req, djn_load_rep_t *rep,
                           char *err, size_t errlen) {
    if (!x->keys[dev] && x->ntensors &&
        !(x->keys[dev] = djn_calloc(x->ntensors, sizeof(djn_text_key_t)))) {
        snprintf(err, errlen, "out of memory");
        return DJN_ERR_NOMEM;
    }
    s_map_t *maps = djn_calloc(x->nfiles, sizeof(s_map_t));
    if (!maps) {
        snprintf(err, errlen, "out of memory");
        return DJN_ERR_NOMEM;
    }
    djn_status_t st = DJN_OK;
    djn_session_lock(s);
    for (uint32_t b = 0; st == DJN_OK && b < req->nbinds; b++) {
        const djn_model_bind_t *bd = &req->binds[b];
        const djn_safet_tensor_t *t =
            bsearch(bd->name, x->tensors, x->ntensors, sizeof(djn_safet_tensor_t), s_tensor_cmp);
        if (!t) {
            snprintf(err, errlen, "model '%s' has no tensor '%.300s'", x->name, bd->name);
            st = DJN_ERR_ARGS;
            break;
        }
        djn_text_key_t key;
        djn_stor_t *stor = NULL;
        st = s_tensor_text(m, x, ex, dev, (uint32_t)(t - x->tensors), maps, &key, &stor,
                           &rep->read_bytes, err, errlen);
        if (st != DJN_OK)
            break;
        st = djn_session_bind_text(s, bd->handle, &key, stor);
        if (st != DJN_OK) {
            djn_text_release(m->text, &key);
            snprintf(err, errlen,
                     st == DJN_ERR_QUOTA
                         ? "session quota exceeded binding model '%s' (--session-quota-bytes)"
                     : st == DJN_ERR_LIMIT ? "session handle limit reached binding model '%s' "
                                             "(--session-max-handles)"
                                           : "cannot bind a tensor of model '%s'",
                     x->name);
            break;
        }
        rep->bound++;
    }
    djn_session_unlock(s);
    for (uint32_t i = 0; i < x->nfiles; i++)
        if (maps[i].base)
            munmap(maps[i].base, maps[i].len);
    djn_free(maps, x->nfiles * sizeof(s_map_t));
    if (st == DJN_OK && rep->bound) {
        uint64_t total = 0;
        for (uint32_t i = 0; i < x->ntensors; i++)
            total += x->tensors[i].end - x->tensors[i].begin;
        atomic_store(&x->nbytes, total);
        atomic_fetch_or(&x->on_dev, 1ull << dev);
    }
    return st;
}

uint64_t djn_models_held(djn_models_t *m, const char *name, const char *acl, uint32_t dev) {
    if (!m || !name || dev >= DJN_MAX_DEVICES || !djn_models_allowed(acl, name))
        return 0;
    s_model_t *x = s_find(m, name); /* the table is fixed after the scan: no lock needed */
    if (!x || !(atomic_load(&x->on_dev) & (1ull << dev)))
        return 0;
    uint64_t n = atomic_load(&x->nbytes);
    return n ? n : 1;
}

djn_status_t djn_models_load(djn_models_t *m, djn_exec_t *ex, uint32_t dev, djn_session_t *s,
                             const djn_load_req_t *req, const char *acl, const char *tenant,
                             djn_arena_t *a, djn_load_rep_t *rep, char *err, size_t errlen) {
    memset(rep, 0, sizeof(*rep));
    rep->config = "";
    if (dev >= DJN_MAX_DEVICES) {
        snprintf(err, errlen, "device %u out of range", dev);
        return DJN_ERR_DEVICE;
    }
    pthread_mutex_lock(&m->mu);
    djn_status_t st;
    s_model_t *x = s_find(m, req->name);
    bool allowed = djn_models_allowed(acl, req->name);
    if (!x) {
        st = s_unknown(m, req->name, acl, err, errlen);
    } else if (!allowed) {
        snprintf(err, errlen,
                 "model '%s' is not available to tenant '%s' (the server's "
                 "certificate for it lists the models it may load)",
                 req->name, tenant && *tenant ? tenant : "(none)");
        st = DJN_ERR_DENIED;
    } else if ((st = s_parse(x, err, errlen)) != DJN_OK) {
        /* err says why */
    } else if (!req->nbinds) { /* step 3 */
        djn_model_tensor_t *ts = djn_arena_alloc(a, (x->ntensors + 1) * sizeof(*ts));
        size_t cl = strlen(x->config);
        char *cfg = djn_arena_alloc(a, cl + 1);
        if (!ts || !cfg) {
            snprintf(err, errlen, "out of memory");
            st = DJN_ERR_NOMEM;
        } else {
            memcpy(cfg, x->config, cl + 1);
            for (uint32_t i = 0; i < x->ntensors; i++) {
                const djn_safet_tensor_t *t = &x->tensors[i];
                size_t nl = strlen(t->name);
                char *nm = djn_arena_alloc(a, nl + 1);
                if (!nm) {
                    st = DJN_ERR_NOMEM;
                    snprintf(err, errlen, "out of memory");
                    break;
                }
                memcpy(nm, t->name, nl + 1);
                ts[i].name = nm;
                ts[i].dtype = t->dtype;
                ts[i].ndim = t->ndim;
                memcpy(ts[i].shape, t->shape, sizeof ts[i].shape);
            }
            rep->config = cfg;
            rep->tensors = ts;
            rep->ntensors = x->ntensors;
        }
    } else {
        st = s_bind(m, x, ex, dev, s, req, rep, err, errlen); /* step 4 */
    }
    pthread_mutex_unlock(&m->mu);
    return st;
}
