/* djn_spawn.c: the embedded server's process management (see djn_spawn.h). */
#define _GNU_SOURCE
#include "djn_spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static long long s_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

djn_status_t djn_spawn_server(const char *bin, int timeout_ms, pid_t *pid_out, char *endpoint,
                              size_t endpoint_len, char *err, size_t errlen) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        return DJN_ERR_IO;
    }
    char ppid[32];
    snprintf(ppid, sizeof ppid, "%d", (int)getpid());
    /* the embedded server listens where only this user can reach it: an ipc socket in a
     * fresh directory of mode 0700 (never a loopback port, which every local user sees) */
    const char *tmp = getenv("XDG_RUNTIME_DIR");
    char dir[256], listen[320];
    snprintf(dir, sizeof dir, "%s/djinn-XXXXXX", tmp && *tmp && strlen(tmp) < 64 ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        snprintf(err, errlen, "cannot make a private directory for the embedded server: %s",
                 strerror(errno));
        close(fds[0]);
        close(fds[1]);
        return DJN_ERR_IO;
    }
    snprintf(listen, sizeof listen, "ipc://%s/djinn.sock", dir);
    /* extra flags for the embedded server, e.g. "--device cpu,cpu" */
    const char *extra = getenv("DJINN_SERVER_ARGS");
    char *extra_copy = extra ? strdup(extra) : NULL;
    char *argv[64];
    int argc = 0;
    argv[argc++] = (char *)bin;
    argv[argc++] = "--listen";
    argv[argc++] = listen;
    argv[argc++] = "--remove-ipc-dir";
    argv[argc++] = "--parent-pid";
    argv[argc++] = ppid;
    argv[argc++] = "--announce-fd";
    argv[argc++] = "3";
    if (extra_copy) {
        char *save = NULL;
        for (char *tok = strtok_r(extra_copy, " \t", &save); tok && argc < 62;
             tok = strtok_r(NULL, " \t", &save))
            argv[argc++] = tok;
    }
    argv[argc] = NULL;

    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 3);
    pid_t pid;
    int rc = posix_spawn(&pid, bin, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    free(extra_copy);
    close(fds[1]);
    if (rc != 0) {
        close(fds[0]);
        rmdir(dir);
        snprintf(err, errlen, "cannot start the embedded server '%s': %s", bin, strerror(rc));
        return DJN_ERR_IO;
    }
    char line[512];
    size_t got = 0;
    long long deadline = s_now_ms() + timeout_ms;
    djn_status_t st = DJN_ERR_TIMEOUT;
    for (;;) {
        long long left = deadline - s_now_ms();
        if (left <= 0)
            break;
        struct pollfd p = {fds[0], POLLIN, 0};
        int pr = poll(&p, 1, (int)left);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            break;
        ssize_t n = read(fds[0], line + got, sizeof line - 1 - got);
        if (n <= 0) {
            st = DJN_ERR_IO;
            break;
        }
        got += (size_t)n;
        line[got] = 0;
        char *nl = strchr(line, '\n');
        if (nl) {
            *nl = 0;
            const char *tag = "DJINN_ENDPOINT ";
            if (strncmp(line, tag, strlen(tag)) == 0) {
                snprintf(endpoint, endpoint_len, "%s", line + strlen(tag));
                st = DJN_OK;
            } else {
                st = DJN_ERR_IO;
            }
            break;
        }
        if (got >= sizeof line - 1) {
            st = DJN_ERR_IO;
            break;
        }
    }
    close(fds[0]);
    if (st != DJN_OK) {
        int status = 0;
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid && WIFEXITED(status))
            snprintf(err, errlen,
                     "the embedded server '%s' exited with status %d before listening "
                     "(see its messages above)",
                     bin, WEXITSTATUS(status));
        else
            snprintf(err, errlen,
                     "the embedded server '%s' did not announce an endpoint within %d ms", bin,
                     timeout_ms);
        djn_spawn_stop(pid, 1000);
        djn_spawn_cleanup(listen);
        return st;
    }
    *pid_out = pid;
    return DJN_OK;
}

void djn_spawn_cleanup(const char *endpoint) {
    if (!endpoint || strncmp(endpoint, "ipc://", 6) != 0)
        return;
    char path[512];
    snprintf(path, sizeof path, "%s", endpoint + 6);
    unlink(path); /* the server removes both itself; a server killed hard cannot */
    char *slash = strrchr(path, '/');
    if (slash) {
        *slash = 0;
        rmdir(path);
    }
}

bool djn_spawn_exited(pid_t pid, char *why, size_t len) {
    int status;
    if (pid <= 0 || waitpid(pid, &status, WNOHANG) != pid)
        return false;
    if (WIFSIGNALED(status))
        snprintf(why, len, "was killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(why, len, "exited with status %d", WEXITSTATUS(status));
    return true;
}

void djn_spawn_stop(pid_t pid, int timeout_ms) {
    if (pid <= 0)
        return;
    kill(pid, SIGTERM);
    long long deadline = s_now_ms() + timeout_ms;
    for (;;) {
        int status;
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid || (w < 0 && errno == ECHILD))
            return;
        if (s_now_ms() >= deadline)
            break;
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}
