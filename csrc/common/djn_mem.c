/* djn_mem.c: counted host allocation with fault injection (see djn_mem.h). */
#include "djn_mem.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static _Atomic int64_t s_in_use;
static _Atomic int64_t s_fail_countdown = -1;

static int s_should_fail(void) {
    int64_t c = atomic_load_explicit(&s_fail_countdown, memory_order_relaxed);
    if (c < 0)
        return 0;
    c = atomic_fetch_sub(&s_fail_countdown, 1);
    if (c == 0) {
        atomic_store(&s_fail_countdown, -1);
        return 1;
    }
    return 0;
}

void *djn_malloc(size_t n) {
    if (s_should_fail())
        return NULL;
    void *p = malloc(n ? n : 1);
    if (p)
        atomic_fetch_add_explicit(&s_in_use, (int64_t)n, memory_order_relaxed);
    return p;
}

void *djn_calloc(size_t count, size_t n) {
    if (n && count > SIZE_MAX / n)
        return NULL;
    void *p = djn_malloc(count * n);
    if (p)
        memset(p, 0, count * n);
    return p;
}

void *djn_realloc(void *p, size_t old_n, size_t new_n) {
    if (s_should_fail())
        return NULL;
    void *q = realloc(p, new_n ? new_n : 1);
    if (q)
        atomic_fetch_add_explicit(&s_in_use, (int64_t)new_n - (int64_t)old_n, memory_order_relaxed);
    return q;
}

void djn_free(void *p, size_t n) {
    if (!p)
        return;
    atomic_fetch_sub_explicit(&s_in_use, (int64_t)n, memory_order_relaxed);
    free(p);
}

char *djn_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = djn_malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

void djn_strfree(char *s) {
    if (s)
        djn_free(s, strlen(s) + 1);
}

int64_t djn_mem_in_use(void) {
    return atomic_load(&s_in_use);
}

void djn_mem_fail_after(int64_t n) {
    atomic_store(&s_fail_countdown, n);
}
