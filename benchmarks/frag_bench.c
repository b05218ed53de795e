/* frag_bench.c: external fragmentation of the Data heap (server/djn_heap.c) under
 * KV-cache churn, side by side with glibc malloc on the same trace.
 *
 * The trace is what a remote PyTorch client generating text does to the server's Data
 * segment: each session holds one K and one V tensor per layer; every decode step of a
 * session grows each of them by one token the way torch.cat does (allocate size + delta,
 * then free the old tensor); sessions end when they reach their length or, at random,
 * earlier (a client goes away), and new sessions with a prompt of random length take
 * their place. Three model shapes are mixed (per-tensor bytes per token 512, 1 KiB,
 * 2 KiB; 8, 32 and 64 tensors per session). The trace comes from a fixed-seed PRNG and
 * never depends on the addresses returned, so every allocator sees the same calls.
 *
 * Measured, per allocator, each in its own child process:
 *   live        bytes requested and not yet freed (the same for every allocator)
 *   footprint   highest live end minus the lowest address the allocator ever returned:
 *               the part of the region the allocator needs to hold what is live
 *   ext frag    (footprint - live) / footprint: free bytes trapped below the top
 *   at the end of the trace, averaged over samples every 100 steps after a 10% warm-up,
 *   and the peak footprint over the peak live bytes (how big the device region must be).
 * glibc rows: "brk" disables mmap (M_MMAP_MAX = 0) so every block comes from one
 * contiguous heap, the situation of a fixed device region, and the footprint is measured
 * from the addresses returned; "default" lets glibc mmap large blocks (they cannot
 * fragment, the MMU places them) and its footprint is mallinfo2() arena + hblkhd. glibc's
 * 16-byte chunk headers count against it; djn_heap's 256-byte rounding against it (all
 * sizes here are multiples of 512, so there is none).
 *
 *   frag_bench [--json] [--seed N] [--steps N] [--sessions N]
 * Prints a table (to stderr with --json, which prints JSON to stdout). Never asserts. */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "djn_heap.h"

#define S_MAX_SESSIONS 256
#define S_MAX_TENSORS 64
#define S_HEAP_CAPACITY (1ull << 40) /* 1 TiB of offsets: never the limit */
#define S_SAMPLE_EVERY 100
#define MiB (1024.0 * 1024.0)

typedef struct {
    const char *name;
    uint32_t tensors;         /* 2 * layers */
    uint64_t bytes_per_token; /* per tensor: kv_heads * head_dim * 2 (fp16) */
} s_model_t;

static const s_model_t s_models[] = {
    {"tiny (4 layers, 4x64)", 8, 4 * 64 * 2},
    {"1B-like (16 layers, 8x64)", 32, 8 * 64 * 2},
    {"8B-like (32 layers, 8x128)", 64, 8 * 128 * 2},
};
#define S_NMODELS (sizeof s_models / sizeof s_models[0])

typedef enum { S_DJN, S_GLIBC_BRK, S_GLIBC_DEFAULT, S_NKINDS } s_kind_t;

static const char *s_kind_name[S_NKINDS] = {
    "djn_heap best-fit",
    "glibc malloc (brk, no mmap)",
    "glibc malloc (default)",
};

typedef struct {
    uint64_t seed, steps, sessions;
} s_cfg_t;

typedef struct {
    int ok;
    char err[128];
    uint64_t allocs, frees, sessions_started, sessions_abandoned;
    double live_end, fp_end, frag_end, frag_mean, peak_live, peak_fp, seconds;
    /* djn_heap only */
    uint64_t heap_free_blocks, heap_allocs, heap_largest_free;
    double heap_fragmentation;
    /* glibc only */
    uint64_t arena, hblkhd, fordblks;
} s_result_t;

/* ------------------------------------------------------------------ allocators */

typedef struct {
    s_kind_t kind;
    djn_heap_t *heap;
    uint64_t base, max_end_ever;
} s_alloc_t;

static uint64_t s_alloc(s_alloc_t *a, uint64_t n) {
    uint64_t at = UINT64_MAX;
    if (a->kind == S_DJN) {
        if (djn_heap_alloc(a->heap, n, &at) != DJN_OK)
            return UINT64_MAX;
    } else {
        void *p = malloc(n);
        if (!p)
            return UINT64_MAX;
        at = (uint64_t)(uintptr_t)p;
    }
    if (at < a->base)
        a->base = at;
    if (at + n > a->max_end_ever)
        a->max_end_ever = at + n;
    return at;
}

static void s_free(s_alloc_t *a, uint64_t at) {
    if (a->kind == S_DJN)
        (void)djn_heap_free(a->heap, at);
    else
        free((void *)(uintptr_t)at);
}

/* ------------------------------------------------------------------ trace */

static uint64_t s_rng_state;

static uint64_t s_rng(void) { /* splitmix64 */
    uint64_t z = (s_rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t s_between(uint64_t lo, uint64_t hi) {
    return lo + s_rng() % (hi - lo + 1);
}

typedef struct {
    int active;
    const s_model_t *model;
    uint64_t tokens, end_tokens;
    uint64_t at[S_MAX_TENSORS];
} s_session_t;

static s_session_t s_sess[S_MAX_SESSIONS];

static double s_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Footprint now: highest live end minus the lowest address ever returned. */
static uint64_t s_footprint(const s_alloc_t *a, const s_cfg_t *cfg, s_result_t *r) {
    if (a->kind == S_GLIBC_DEFAULT) {
        struct mallinfo2 mi = mallinfo2();
        r->arena = mi.arena;
        r->hblkhd = mi.hblkhd;
        r->fordblks = mi.fordblks;
        return (uint64_t)(mi.arena + mi.hblkhd);
    }
    uint64_t end = a->base;
    for (uint64_t i = 0; i < cfg->sessions; i++) {
        const s_session_t *s = &s_sess[i];
        if (!s->active)
            continue;
        uint64_t n = s->tokens * s->model->bytes_per_token;
        for (uint32_t t = 0; t < s->model->tensors; t++)
            if (s->at[t] + n > end)
                end = s->at[t] + n;
    }
    return end - a->base;
}

static void s_run(s_kind_t kind, const s_cfg_t *cfg, s_result_t *r) {
    memset(r, 0, sizeof(*r));
    memset(s_sess, 0, sizeof s_sess);
    s_alloc_t a = {.kind = kind, .base = UINT64_MAX};
    if (kind == S_DJN) {
        a.heap = djn_heap_new(S_HEAP_CAPACITY, 256);
        if (!a.heap) {
            snprintf(r->err, sizeof r->err, "djn_heap_new failed");
            return;
        }
    } else if (kind == S_GLIBC_BRK) {
        mallopt(M_MMAP_MAX, 0);
    }
    s_rng_state = cfg->seed;
    uint64_t live = 0, samples = 0, warmup = cfg->steps / 10;
    double frag_sum = 0;
    double t0 = s_now();
    for (uint64_t step = 0; step < cfg->steps; step++) {
        /* 1. keep `sessions` clients generating: new ones prefill their prompt */
        for (uint64_t i = 0; i < cfg->sessions; i++) {
            s_session_t *s = &s_sess[i];
            if (s->active)
                continue;
            s->active = 1;
            s->model = &s_models[s_rng() % S_NMODELS];
            s->tokens = s_between(16, 1024);                 /* prompt */
            s->end_tokens = s->tokens + s_between(16, 2048); /* + generated */
            uint64_t n = s->tokens * s->model->bytes_per_token;
            for (uint32_t t = 0; t < s->model->tensors; t++) {
                if ((s->at[t] = s_alloc(&a, n)) == UINT64_MAX)
                    goto oom;
                live += n;
                r->allocs++;
            }
            r->sessions_started++;
        }
        /* 2. one decode step of a random session: every K and V grows by one token,
         *    torch.cat style (the new tensor exists before the old one is freed) */
        s_session_t *s = &s_sess[s_rng() % cfg->sessions];
        uint64_t bpt = s->model->bytes_per_token, old_n = s->tokens * bpt, new_n = old_n + bpt;
        for (uint32_t t = 0; t < s->model->tensors; t++) {
            uint64_t at = s_alloc(&a, new_n);
            if (at == UINT64_MAX)
                goto oom;
            s_free(&a, s->at[t]);
            s->at[t] = at;
            live += bpt;
            r->allocs++;
            r->frees++;
        }
        s->tokens++;
        /* 3. finished, or the client went away (1 in 400 steps) */
        int abandoned = s_rng() % 400 == 0;
        if (s->tokens >= s->end_tokens || abandoned) {
            for (uint32_t t = 0; t < s->model->tensors; t++) {
                s_free(&a, s->at[t]);
                r->frees++;
            }
            live -= s->tokens * bpt * s->model->tensors;
            s->active = 0;
            r->sessions_abandoned += (uint64_t)abandoned;
        }
        if ((double)live > r->peak_live)
            r->peak_live = (double)live;
        /* 4. sample */
        if (step >= warmup && step % S_SAMPLE_EVERY == 0) {
            uint64_t fp = s_footprint(&a, cfg, r);
            if (kind == S_GLIBC_DEFAULT && (double)fp > r->peak_fp)
                r->peak_fp = (double)fp;
            if (fp) {
                frag_sum += (double)(fp - (live < fp ? live : fp)) / (double)fp;
                samples++;
            }
        }
    }
    r->seconds = s_now() - t0;
    uint64_t fp = s_footprint(&a, cfg, r);
    r->live_end = (double)live;
    r->fp_end = (double)fp;
    r->frag_end = fp ? (double)(fp - (live < fp ? live : fp)) / (double)fp : 0;
    r->frag_mean = samples ? frag_sum / (double)samples : 0;
    if (kind != S_GLIBC_DEFAULT)
        r->peak_fp = (double)(a.max_end_ever - a.base); /* exact: every block is live once */
    if (kind == S_DJN) {
        djn_heap_stats_t st;
        djn_heap_stats(a.heap, &st);
        r->heap_free_blocks = st.free_blocks;
        r->heap_allocs = st.allocs;
        r->heap_largest_free = st.largest_free;
        r->heap_fragmentation = st.fragmentation;
        djn_heap_destroy(&a.heap);
    } else if (kind == S_GLIBC_BRK) {
        struct mallinfo2 mi = mallinfo2();
        r->arena = mi.arena;
        r->hblkhd = mi.hblkhd;
        r->fordblks = mi.fordblks;
    }
    r->ok = 1;
    return;
oom:
    snprintf(r->err, sizeof r->err, "allocation failed at %" PRIu64 " live bytes", live);
    if (a.heap)
        djn_heap_destroy(&a.heap);
}

/* Runs one allocator in a child so glibc's state and mallopt settings stay its own. */
static void s_run_isolated(s_kind_t kind, const s_cfg_t *cfg, s_result_t *r) {
    int fd[2];
    memset(r, 0, sizeof(*r));
    if (pipe(fd) != 0) {
        snprintf(r->err, sizeof r->err, "pipe: %s", strerror(errno));
        return;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(r->err, sizeof r->err, "fork: %s", strerror(errno));
        close(fd[0]);
        close(fd[1]);
        return;
    }
    if (pid == 0) {
        close(fd[0]);
        s_result_t res;
        s_run(kind, cfg, &res);
        ssize_t w = write(fd[1], &res, sizeof res);
        _exit(w == (ssize_t)sizeof res ? 0 : 1);
    }
    close(fd[1]);
    size_t got = 0;
    while (got < sizeof(*r)) {
        ssize_t n = read(fd[0], (char *)r + got, sizeof(*r) - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (got != sizeof(*r)) {
        memset(r, 0, sizeof(*r));
        snprintf(r->err, sizeof r->err, "child failed (status %d)", status);
    }
}

/* ------------------------------------------------------------------ output */

static void s_print_table(FILE *f, const s_cfg_t *cfg, const s_result_t *res) {
    fprintf(f,
            "KV-cache churn: %" PRIu64 " concurrent sessions, %" PRIu64
            " decode steps, seed %" PRIu64 "\n",
            cfg->sessions, cfg->steps, cfg->seed);
    fprintf(f, "%-28s %10s %10s %9s %9s %10s %10s %8s %8s\n", "allocator", "live MiB", "fp MiB",
            "frag %", "mean %", "peak live", "peak fp", "fp/live", "ns/op");
    for (int k = 0; k < S_NKINDS; k++) {
        const s_result_t *r = &res[k];
        if (!r->ok) {
            fprintf(f, "%-28s failed: %s\n", s_kind_name[k], r->err);
            continue;
        }
        double ops = (double)(r->allocs + r->frees);
        fprintf(f, "%-28s %10.1f %10.1f %9.2f %9.2f %10.1f %10.1f %8.3f %8.1f\n", s_kind_name[k],
                r->live_end / MiB, r->fp_end / MiB, 100 * r->frag_end, 100 * r->frag_mean,
                r->peak_live / MiB, r->peak_fp / MiB,
                r->peak_live > 0 ? r->peak_fp / r->peak_live : 0,
                ops > 0 ? 1e9 * r->seconds / ops : 0);
    }
    const s_result_t *d = &res[S_DJN], *g = &res[S_GLIBC_BRK];
    if (d->ok) {
        fprintf(f,
                "%" PRIu64 " allocs, %" PRIu64 " frees, %" PRIu64 " sessions (%" PRIu64
                " abandoned); djn_heap at the end: %" PRIu64 " live blocks, %" PRIu64
                " free blocks (holes below the top: %" PRIu64 ")\n",
                d->allocs, d->frees, d->sessions_started, d->sessions_abandoned, d->heap_allocs,
                d->heap_free_blocks, d->heap_free_blocks ? d->heap_free_blocks - 1 : 0);
    }
    if (d->ok && g->ok && d->fp_end > 0 && d->peak_fp > 0)
        fprintf(f,
                "glibc (brk) / djn_heap: footprint at the end %.2fx, peak footprint %.2fx, "
                "mean fragmentation %.2f%% vs %.2f%%\n",
                g->fp_end / d->fp_end, g->peak_fp / d->peak_fp, 100 * g->frag_mean,
                100 * d->frag_mean);
}

static void s_print_json(const s_cfg_t *cfg, const s_result_t *res) {
    printf("{\"bench\": \"frag\", \"trace\": {\"kind\": \"kv_cache_churn\", \"seed\": %" PRIu64
           ", \"steps\": %" PRIu64 ", \"sessions\": %" PRIu64 ", \"models\": [",
           cfg->seed, cfg->steps, cfg->sessions);
    for (size_t m = 0; m < S_NMODELS; m++)
        printf("%s{\"name\": \"%s\", \"tensors\": %u, \"bytes_per_token\": %" PRIu64 "}",
               m ? ", " : "", s_models[m].name, s_models[m].tensors, s_models[m].bytes_per_token);
    printf("]}, \"results\": [");
    for (int k = 0; k < S_NKINDS; k++) {
        const s_result_t *r = &res[k];
        printf("%s{\"allocator\": \"%s\", \"ok\": %s", k ? ", " : "", s_kind_name[k],
               r->ok ? "true" : "false");
        if (!r->ok) {
            printf(", \"error\": \"%s\"}", r->err);
            continue;
        }
        printf(", \"allocs\": %" PRIu64 ", \"frees\": %" PRIu64
               ", \"live_bytes\": %.0f, \"footprint_bytes\": %.0f, \"ext_frag\": %.6f"
               ", \"ext_frag_mean\": %.6f, \"peak_live_bytes\": %.0f"
               ", \"peak_footprint_bytes\": %.0f, \"seconds\": %.4f",
               r->allocs, r->frees, r->live_end, r->fp_end, r->frag_end, r->frag_mean, r->peak_live,
               r->peak_fp, r->seconds);
        if (k == S_DJN)
            printf(", \"heap_live_blocks\": %" PRIu64 ", \"heap_free_blocks\": %" PRIu64
                   ", \"heap_largest_free\": %" PRIu64 ", \"heap_capacity\": %llu",
                   r->heap_allocs, r->heap_free_blocks, r->heap_largest_free,
                   (unsigned long long)S_HEAP_CAPACITY);
        else
            printf(", \"mallinfo2\": {\"arena\": %" PRIu64 ", \"hblkhd\": %" PRIu64
                   ", \"fordblks\": %" PRIu64 "}",
                   r->arena, r->hblkhd, r->fordblks);
        printf("}");
    }
    printf("]}\n");
}

static int s_parse_u64(const char *s, uint64_t *out) {
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || !end || *end || end == s)
        return 0;
    *out = v;
    return 1;
}

int main(int argc, char **argv) {
    s_cfg_t cfg = {.seed = 1, .steps = 60000, .sessions = 16};
    int json = 0;
    for (int i = 1; i < argc; i++) {
        uint64_t *dst = NULL;
        if (!strcmp(argv[i], "--json"))
            json = 1;
        else if (!strcmp(argv[i], "--seed"))
            dst = &cfg.seed;
        else if (!strcmp(argv[i], "--steps"))
            dst = &cfg.steps;
        else if (!strcmp(argv[i], "--sessions"))
            dst = &cfg.sessions;
        else {
            fprintf(stderr, "usage: %s [--json] [--seed N] [--steps N] [--sessions N]\n", argv[0]);
            return 2;
        }
        if (dst && (i + 1 >= argc || !s_parse_u64(argv[++i], dst))) {
            fprintf(stderr, "%s needs a number\n", argv[i - (i + 1 >= argc ? 0 : 1)]);
            return 2;
        }
    }
    if (cfg.sessions < 1 || cfg.sessions > S_MAX_SESSIONS || cfg.steps < 1) {
        fprintf(stderr, "--sessions must be 1..%d, --steps at least 1\n", S_MAX_SESSIONS);
        return 2;
    }
    s_result_t res[S_NKINDS];
    for (int k = 0; k < S_NKINDS; k++)
        s_run_isolated((s_kind_t)k, &cfg, &res[k]);
    s_print_table(json ? stderr : stdout, &cfg, res);
    if (json)
        s_print_json(&cfg, res);
    for (int k = 0; k < S_NKINDS; k++)
        if (!res[k].ok)
            return 1;
    return 0;
}
