/* djn_crash.c: the fatal-signal log line (see djn_crash.h). Everything the handler
 * touches is a thread-local fixed buffer or a constant string: no allocation, no stdio. */
#define _GNU_SOURCE
#include "djn_crash.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* what this thread runs: pointers into the message being run, valid while it runs */
static __thread const char *t_op, *t_ovl, *t_tenant;
static __thread uint64_t t_sid;
static __thread char *t_altstack;

static const int s_signals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};

static void s_put(const char *s) {
    ssize_t r = write(2, s, strlen(s));
    (void)r;
}

static void s_put_u64(uint64_t v, int base) {
    char rev[24], out[24];
    int n = 0;
    do
        rev[n++] = "0123456789abcdef"[v % (uint64_t)base];
    while ((v /= (uint64_t)base) && n < 23);
    for (int i = 0; i < n; i++)
        out[i] = rev[n - 1 - i];
    out[n] = 0;
    s_put(out);
}

static void s_handler(int sig) {
    s_put("djinn-server: fatal signal ");
    s_put_u64((uint64_t)sig, 10);
    s_put(" (");
    s_put(sig == SIGSEGV  ? "SIGSEGV"
          : sig == SIGBUS ? "SIGBUS"
          : sig == SIGFPE ? "SIGFPE"
          : sig == SIGILL ? "SIGILL"
                          : "SIGABRT");
    s_put(") ");
    if (t_op) {
        s_put("in ");
        s_put(t_op);
        if (t_ovl && *t_ovl) {
            s_put(".");
            s_put(t_ovl);
        }
        s_put(" of session 0x");
        s_put_u64(t_sid, 16);
        s_put(" (tenant '");
        s_put(t_tenant ? t_tenant : "");
        s_put("')");
    } else {
        s_put("outside any op");
    }
    s_put("; every session of this server is lost\n");
    signal(sig, SIG_DFL); /* die of it as we would have: exit status and core as before */
    raise(sig);
}

void djn_crash_thread(void) {
    stack_t cur;
    if (t_altstack || (sigaltstack(NULL, &cur) == 0 && !(cur.ss_flags & SS_DISABLE)))
        return; /* this thread has one (a sanitizer's, say): keep it */
    size_t sz = 64 * 1024;
    t_altstack = malloc(sz);
    if (!t_altstack)
        return;
    stack_t ss = {.ss_sp = t_altstack, .ss_size = sz, .ss_flags = 0};
    sigaltstack(&ss, NULL);
}

void djn_crash_install(void) {
    djn_crash_thread();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_handler;
    sa.sa_flags = SA_ONSTACK | SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof s_signals / sizeof s_signals[0]; i++)
        sigaction(s_signals[i], &sa, NULL);
}

void djn_crash_note(const char *op, const char *overload, uint64_t sid, const char *tenant) {
    t_op = op; /* no formatting here: this runs before every node */
    t_ovl = overload;
    t_sid = sid;
    t_tenant = tenant;
}
