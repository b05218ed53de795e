/* djn_crash.c: the fatal-signal log line (see djn_crash.h). Everything the handler
 * touches is a thread-local fixed buffer or a constant string: no allocation, no stdio. */
#define _GNU_SOURCE
#include "djn_crash.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static __thread char t_what[384]; /* "aten::x of session 0x.. (tenant '..')" */
static __thread char *t_altstack;

static const int s_signals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};

static void s_put(const char *s) {
    ssize_t r = write(2, s, strlen(s));
    (void)r;
}

static void s_handler(int sig) {
    char num[16];
    int n = 0, v = sig;
    char rev[16];
    do
        rev[n++] = (char)('0' + v % 10);
    while ((v /= 10) && n < 15);
    for (int i = 0; i < n; i++)
        num[i] = rev[n - 1 - i];
    num[n] = 0;
    s_put("djinn-server: fatal signal ");
    s_put(num);
    s_put(" (");
    s_put(sig == SIGSEGV  ? "SIGSEGV"
          : sig == SIGBUS ? "SIGBUS"
          : sig == SIGFPE ? "SIGFPE"
          : sig == SIGILL ? "SIGILL"
                          : "SIGABRT");
    s_put(") ");
    s_put(t_what[0] ? "in " : "outside any op");
    s_put(t_what);
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
    if (!op) {
        t_what[0] = 0;
        return;
    }
    snprintf(t_what, sizeof t_what, "%s%s%s of session 0x%llx (tenant '%s')", op,
             overload && *overload ? "." : "", overload ? overload : "", (unsigned long long)sid,
             tenant ? tenant : "");
}
