/* djn_test.h: the smallest test harness that does what our C unit tests need.
 *
 * Include it first (it sets _POSIX_C_SOURCE for fork/waitpid). A test is a
 * `static void test_x(void)` that uses CHECK*; main() calls RUN(test_x) for each and
 * returns djn_test_report(). A check that fails prints file:line and the expression,
 * and the test keeps going, so one run shows every broken expectation.
 *
 * Every test also checks counted host memory (djn_mem.h): djn_mem_in_use() must be
 * back at its start value when the test returns, and the fault-injection countdown is
 * disarmed afterwards so a test that arms it cannot poison the next one.
 *
 * RUN forks: each test runs in a child process, so a sanitizer abort (undefined
 * behaviour under -fno-sanitize-recover, a heap overflow) or a crash fails that one test
 * and the run goes on; the child exits normally, so LeakSanitizer checks it too. Set
 * DJN_TEST_NOFORK=1 to run everything in one process (under a debugger, say), and
 * DJN_TEST_ONLY=substring to run only the tests whose names contain it.
 *
 * The last line printed is exactly "N passed, M failed" (N, M count test functions). */
#ifndef DJN_TEST_H
#define DJN_TEST_H

#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "djn_mem.h"

/* A tiny deterministic PRNG (splitmix64) for randomized traces and fuzzing. */
static uint64_t djn_t_rng_state;
static inline void rng_seed(uint64_t seed) {
    djn_t_rng_state = seed;
}
static inline uint64_t rng(void) {
    uint64_t z = (djn_t_rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static inline uint64_t rng_below(uint64_t n) {
    return n ? rng() % n : 0;
}

/* Whether the n bytes at p all equal byte. */
static inline int all_bytes(const void *p, int byte, uint64_t n) {
    const uint8_t *q = (const uint8_t *)p;
    for (uint64_t i = 0; i < n; i++)
        if (q[i] != (uint8_t)byte)
            return 0;
    return 1;
}

static int djn_t_checks_failed; /* failed checks in the running test */
static int djn_t_passed, djn_t_failed;

static inline void djn_t_fail(const char *file, int line, const char *what) {
    printf("%s:%d: check failed: %s\n", file, line, what);
    fflush(stdout);
    djn_t_checks_failed++;
}

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            djn_t_fail(__FILE__, __LINE__, #cond);                                                 \
    } while (0)

/* Compares as 64-bit integers (unsigned values above 2^63 compare bitwise). */
#define CHECK_EQ_INT(a, b)                                                                         \
    do {                                                                                           \
        long long djn_t_a = (long long)(a), djn_t_b = (long long)(b);                              \
        if (djn_t_a != djn_t_b) {                                                                  \
            char djn_t_m[512];                                                                     \
            snprintf(djn_t_m, sizeof djn_t_m, "%s == %s (%lld vs %lld)", #a, #b, djn_t_a,          \
                     djn_t_b);                                                                     \
            djn_t_fail(__FILE__, __LINE__, djn_t_m);                                               \
        }                                                                                          \
    } while (0)

#define CHECK_STR(a, b)                                                                            \
    do {                                                                                           \
        const char *djn_t_a = (a), *djn_t_b = (b);                                                 \
        if (!djn_t_a || !djn_t_b || strcmp(djn_t_a, djn_t_b) != 0) {                               \
            char djn_t_m[768];                                                                     \
            snprintf(djn_t_m, sizeof djn_t_m, "%s == %s (\"%.300s\" vs \"%.300s\")", #a, #b,       \
                     djn_t_a ? djn_t_a : "(null)", djn_t_b ? djn_t_b : "(null)");                  \
            djn_t_fail(__FILE__, __LINE__, djn_t_m);                                               \
        }                                                                                          \
    } while (0)

/* `hay` contains `needle`. */
#define CHECK_HAS(hay, needle)                                                                     \
    do {                                                                                           \
        const char *djn_t_h = (hay), *djn_t_n = (needle);                                          \
        if (!djn_t_h || !strstr(djn_t_h, djn_t_n)) {                                               \
            char djn_t_m[768];                                                                     \
            snprintf(djn_t_m, sizeof djn_t_m, "%s contains %s (\"%.300s\")", #hay, #needle,        \
                     djn_t_h ? djn_t_h : "(null)");                                                \
            djn_t_fail(__FILE__, __LINE__, djn_t_m);                                               \
        }                                                                                          \
    } while (0)

/* Runs fn in this process; returns the number of failed checks (leak included). */
static inline int djn_t_body(void (*fn)(void), const char *name) {
    djn_t_checks_failed = 0;
    int64_t mem0 = djn_mem_in_use();
    fn();
    djn_mem_fail_after(-1);
    int64_t mem1 = djn_mem_in_use();
    if (mem1 != mem0) {
        printf("%s: counted host memory went from %lld to %lld bytes (leak)\n", name,
               (long long)mem0, (long long)mem1);
        djn_t_checks_failed++;
    }
    return djn_t_checks_failed;
}

static inline void djn_t_record(const char *name, int ok) {
    printf("%s %s\n", ok ? "  ok  " : "  FAIL", name);
    fflush(stdout);
    if (ok)
        djn_t_passed++;
    else
        djn_t_failed++;
}

static inline void djn_t_run_here(void (*fn)(void), const char *name) {
    djn_t_record(name, djn_t_body(fn, name) == 0);
}

static inline void djn_t_run(void (*fn)(void), const char *name) {
    const char *only = getenv("DJN_TEST_ONLY");
    if (only && *only && !strstr(name, only))
        return;
    const char *nofork = getenv("DJN_TEST_NOFORK");
    if (nofork && *nofork && *nofork != '0') {
        djn_t_run_here(fn, name);
        return;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        printf("%s: fork failed, running in-process\n", name);
        djn_t_run_here(fn, name);
        return;
    }
    if (pid == 0) {
        int failed = djn_t_body(fn, name);
        fflush(stdout);
        exit(failed ? 1 : 0); /* exit, not _exit: LeakSanitizer runs at exit */
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            printf("%s: waitpid failed\n", name);
            status = 1 << 8; /* counts as a failure */
            break;
        }
    }
    if (WIFSIGNALED(status))
        printf("%s: crashed with signal %d\n", name, WTERMSIG(status));
    else if (WIFEXITED(status) && WEXITSTATUS(status) > 1)
        printf("%s: exited with status %d (sanitizer report above?)\n", name, WEXITSTATUS(status));
    djn_t_record(name, WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

#define RUN(fn) djn_t_run((fn), #fn)

/* Prints the final line; returns main's exit status. */
static inline int djn_test_report(void) {
    printf("%d passed, %d failed\n", djn_t_passed, djn_t_failed);
    fflush(stdout);
    return djn_t_failed ? 1 : 0;
}

#endif
