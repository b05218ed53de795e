/* main.c: djinn-server's command line. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "djn_exec.h"
#include "djn_proto.h"
#include "djn_server.h"

static void s_usage(FILE *f) {
    fprintf(f,
            "usage: djinn-server [options]\n"
            "       djinn-server --stats ENDPOINT\n"
            "\n"
            "Executes PyTorch graphs sent by Djinn clients (torch.device('remote')).\n"
            "\n"
            "options (environment variable in brackets):\n"
            "  --listen EP          ZeroMQ endpoint to bind [DJINN_LISTEN]\n"
            "                       (default tcp://127.0.0.1:5555; tcp://0.0.0.0:5555 for all)\n"
            "  --device LIST        comma-separated devices: cpu, cuda:0, ... [DJINN_DEVICES]\n"
            "                       (default: every CUDA device, else cpu)\n"
            "  --lease-ms N         a session without traffic for N ms is reclaimed; 0 = never\n"
            "                       [DJINN_LEASE_MS] (default 10000)\n"
            "  --heartbeat-ms N     heartbeat interval advised to clients [DJINN_HEARTBEAT_MS]\n"
            "                       (default 1000)\n"
            "  --max-tensor-bytes N largest tensor frame accepted or sent (default 64 GiB)\n"
            "  --session-quota-bytes N  private device bytes one session may hold; 0 = no limit\n"
            "                       [DJINN_SESSION_QUOTA_BYTES] (default 0)\n"
            "  --session-max-queued N   fragments one session may have waiting [DJINN_SESSION_MAX_QUEUED]\n"
            "                       (default 256)\n"
            "  --data-bytes N       CPU devices: Data segment (weights, KV caches, held outputs);\n"
            "                       address space reserved, pages used on touch [DJINN_DATA_BYTES]\n"
            "                       (default 32 GiB; 0 = no VMU, plain allocations)\n"
            "  --slab-bytes N       CPU devices: stack slab for one fragment's activations\n"
            "                       [DJINN_SLAB_BYTES] (default 2 GiB)\n"
            "  --plan-cache N       fragments kept in the plan cache (LRU); 0 = off [DJINN_PLAN_CACHE]\n"
            "                       (default 1024)\n"
            "  --verbose            log sessions and error replies to stderr\n"
            "  --stats ENDPOINT     print the counters of a running server and exit\n"
            "  --announce-fd FD     write 'DJINN_ENDPOINT <ep>' to FD once listening\n"
            "  --parent-pid PID     exit when process PID is gone (embedded servers)\n"
            "  --help               this text\n");
}

static void s_on_signal(int sig) {
    (void)sig;
    djn_server_stop();
}

static const char *s_env(const char *name, const char *dflt) {
    const char *v = getenv(name);
    return v && *v ? v : dflt;
}

static int s_parse_u64(const char *s, unsigned long long *out) {
    char *end;
    *out = strtoull(s, &end, 10);
    return end != s && *end == 0;
}

int main(int argc, char **argv) {
    djn_server_cfg_t cfg = {0};
    cfg.listen = s_env("DJINN_LISTEN", "tcp://127.0.0.1:5555");
    const char *devices = s_env("DJINN_DEVICES", NULL);
    unsigned long long v;
    cfg.lease_ms = s_parse_u64(s_env("DJINN_LEASE_MS", "10000"), &v) ? v : 10000;
    cfg.heartbeat_ms = s_parse_u64(s_env("DJINN_HEARTBEAT_MS", "1000"), &v) ? v : 1000;
    cfg.max_tensor_bytes = DJN_MAX_TENSOR_BYTES;
    cfg.session_quota_bytes = s_parse_u64(s_env("DJINN_SESSION_QUOTA_BYTES", "0"), &v) ? v : 0;
    cfg.data_bytes = s_parse_u64(s_env("DJINN_DATA_BYTES", "34359738368"), &v) ? v : 32ull << 30;
    cfg.slab_bytes = s_parse_u64(s_env("DJINN_SLAB_BYTES", "2147483648"), &v) ? v : 2ull << 30;
    cfg.plan_cache_entries = s_parse_u64(s_env("DJINN_PLAN_CACHE", "1024"), &v) ? (uint32_t)v : 1024;
    cfg.session_max_queued = s_parse_u64(s_env("DJINN_SESSION_MAX_QUEUED", "256"), &v) ? (uint32_t)v : 256;
    cfg.announce_fd = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
#define NEEDVAL()                                                                                  \
    do {                                                                                           \
        if (!val) {                                                                                \
            fprintf(stderr, "djinn-server: %s needs a value\n", a);                                \
            return 2;                                                                              \
        }                                                                                          \
        i++;                                                                                       \
    } while (0)
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            s_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--listen")) {
            NEEDVAL();
            cfg.listen = val;
        } else if (!strcmp(a, "--device") || !strcmp(a, "--devices")) {
            NEEDVAL();
            devices = val;
        } else if (!strcmp(a, "--lease-ms") || !strcmp(a, "--heartbeat-ms") ||
                   !strcmp(a, "--max-tensor-bytes") || !strcmp(a, "--announce-fd") ||
                   !strcmp(a, "--parent-pid") || !strcmp(a, "--session-quota-bytes") ||
                   !strcmp(a, "--session-max-queued") || !strcmp(a, "--plan-cache") ||
                   !strcmp(a, "--data-bytes") || !strcmp(a, "--slab-bytes")) {
            NEEDVAL();
            if (!s_parse_u64(val, &v)) {
                fprintf(stderr, "djinn-server: %s expects a number, got '%s'\n", a, val);
                return 2;
            }
            if (!strcmp(a, "--lease-ms")) cfg.lease_ms = v;
            else if (!strcmp(a, "--heartbeat-ms")) cfg.heartbeat_ms = v;
            else if (!strcmp(a, "--max-tensor-bytes")) cfg.max_tensor_bytes = v;
            else if (!strcmp(a, "--announce-fd")) cfg.announce_fd = (int)v;
            else if (!strcmp(a, "--session-quota-bytes")) cfg.session_quota_bytes = v;
            else if (!strcmp(a, "--session-max-queued")) cfg.session_max_queued = (uint32_t)v;
            else if (!strcmp(a, "--plan-cache")) cfg.plan_cache_entries = (uint32_t)v;
            else if (!strcmp(a, "--data-bytes")) cfg.data_bytes = v;
            else if (!strcmp(a, "--slab-bytes")) cfg.slab_bytes = v;
            else cfg.parent_pid = (int)v;
        } else if (!strcmp(a, "--verbose") || !strcmp(a, "-v")) {
            cfg.verbose = true;
        } else if (!strcmp(a, "--stats")) {
            NEEDVAL();
            return djn_server_print_stats(val, 3000);
        } else {
            fprintf(stderr, "djinn-server: unknown option '%s' (see --help)\n", a);
            return 2;
        }
    }
    char devbuf[1024];
    if (!devices) {
        int n = djn_exec_cuda_count();
        devbuf[0] = 0;
        for (int i = 0; i < n && i < DJN_SERVER_MAX_DEVICES; i++) {
            size_t l = strlen(devbuf);
            snprintf(devbuf + l, sizeof devbuf - l, "%scuda:%d", i ? "," : "", i);
        }
        devices = n ? devbuf : "cpu";
    } else {
        snprintf(devbuf, sizeof devbuf, "%s", devices);
        devices = devbuf;
    }
    char *copy = strdup(devices), *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (cfg.ndevices == DJN_SERVER_MAX_DEVICES) {
            fprintf(stderr, "djinn-server: at most %d devices\n", DJN_SERVER_MAX_DEVICES);
            return 2;
        }
        cfg.devices[cfg.ndevices++] = tok;
    }
    if (!cfg.ndevices) {
        fprintf(stderr, "djinn-server: --device needs at least one device\n");
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    char err[512];
    djn_server_t *srv = djn_server_new(&cfg, err, sizeof err);
    if (!srv) {
        fprintf(stderr, "djinn-server: %s\n", err);
        free(copy);
        return 1;
    }
    djn_server_run(srv);
    djn_server_destroy(&srv);
    free(copy);
    fprintf(stderr, "djinn-server: stopped\n");
    return 0;
}
