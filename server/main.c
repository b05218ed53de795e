/* main.c: djinn-server's command line: options and their defaults, then the server.
 *
 * Defaults are chosen to keep a host alive: the CPU Data segment is half of the host's
 * memory (or of the cgroup's limit), the stack slab an eighth of that (at most 2 GiB),
 * and one session may hold half of the Data segment unless --session-quota-bytes says
 * otherwise (an embedded server, which serves only its parent, gives it all). A server
 * that listens beyond this host must have keys, or be told --insecure. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "djn_exec.h"
#include "djn_log.h"
#include "djn_mem.h"
#include "djn_policy.h"
#include "djn_proto.h"
#include "djn_sched.h"
#include "djn_server.h"

static void s_usage(FILE *f) {
    fprintf(
        f,
        "usage: djinn-server [options]\n"
        "       djinn-server --stats ENDPOINT [--keys DIR]\n"
        "       djinn-server --check ENDPOINT [--keys DIR]\n"
        "       djinn-server keygen DIR NAME [--operator] [--realtime]\n"
        "\n"
        "Executes PyTorch graphs sent by Djinn clients (torch.device('remote')).\n"
        "\n"
        "options (environment variable in brackets):\n"
        "  --listen EP          ZeroMQ endpoint to bind [DJINN_LISTEN]\n"
        "                       (default tcp://127.0.0.1:5555; tcp://0.0.0.0:5555 for all)\n"
        "  --keys DIR           CURVE authentication: DIR/server.key_secret is this server's\n"
        "                       keypair, DIR/clients/NAME.key the tenants it admits [DJINN_KEYS]\n"
        "  --insecure           listen beyond this host without keys (anyone who can reach\n"
        "                       the port can use the server)\n"
        "  --device LIST        comma-separated devices: cpu, cuda:0, ... [DJINN_DEVICES]\n"
        "                       (default: every CUDA device, else cpu)\n"
        "  --lease-ms N         a session without traffic for N ms is reclaimed; 0 = never\n"
        "                       [DJINN_LEASE_MS] (default 10000)\n"
        "  --heartbeat-ms N     heartbeat interval advised to clients [DJINN_HEARTBEAT_MS]\n"
        "                       (default 1000)\n"
        "  --max-tensor-bytes N largest tensor frame accepted or sent (default 64 GiB)\n"
        "  --session-quota-bytes N  device bytes one session may hold; 0 = no limit\n"
        "                       [DJINN_SESSION_QUOTA_BYTES] (default: half the Data segment)\n"
        "  --session-max-queued N   fragments one session may have waiting\n"
        "                       [DJINN_SESSION_MAX_QUEUED] (default 256)\n"
        "  --data-bytes N       CPU devices: Data segment (weights, KV caches, held outputs)\n"
        "                       [DJINN_DATA_BYTES] (default: half the host's memory; 0 = no\n"
        "                       VMU, plain allocations)\n"
        "  --slab-bytes N       CPU devices: stack slab for one fragment's activations\n"
        "                       [DJINN_SLAB_BYTES] (default: an eighth of the Data segment,\n"
        "                       at most 2 GiB)\n"
        "  --models DIR         model store for ghost loading: Hugging Face folders\n"
        "                       (config.json + *.safetensors) read by the server [DJINN_MODELS]\n"
        "  --text-cache-bytes N shared weights (Text) kept after their last session, LRU:\n"
        "                       a rerun uploads nothing (default 4 GiB with --models, else 0)\n"
        "                       [DJINN_TEXT_CACHE_BYTES]\n"
        "  --text-cache DIR     also keep uploaded weights on disk: after a restart, a client\n"
        "                       resuming an upload sends only the rest [DJINN_TEXT_CACHE]\n"
        "  --session-max-handles N  handles one session may hold; 0 = no limit\n"
        "                       [DJINN_SESSION_MAX_HANDLES] (default 1048576); each also\n"
        "                       counts 128 bytes against the session's quota\n"
        "  --max-sessions N     open sessions on this server; 0 = no limit\n"
        "                       [DJINN_MAX_SESSIONS] (default 1024)\n"
        "  --max-sessions-per-connection N  open sessions one connection may hold\n"
        "                       [DJINN_MAX_SESSIONS_PER_CONNECTION] (default 64)\n"
        "  --plan-cache N       fragments kept in the plan cache (LRU); 0 = off\n"
        "                       [DJINN_PLAN_CACHE_ENTRIES] (default 1024)\n"
        "  --log-format F       text (default) or json: one JSON object per line with ts,\n"
        "                       level, msg and fields such as session, op [DJINN_LOG_FORMAT]\n"
        "  --log-level L        error, warn, info (default) or debug: debug adds every\n"
        "                       session and error reply [DJINN_LOG_LEVEL]\n"
        "  --verbose            the same as --log-level debug\n"
        "  --drain-timeout S    on SIGTERM, refuse new sessions and exit once the queued\n"
        "                       fragments ran, waiting at most S seconds; 0 = exit at once\n"
        "                       [DJINN_DRAIN_TIMEOUT] (default 30). A second SIGTERM, or\n"
        "                       SIGINT, stops at once\n"
        "  --realtime-tenants LIST  comma-separated tenant names (keys) that may claim the\n"
        "                       realtime class, besides keys made with keygen --realtime\n"
        "                       [DJINN_REALTIME_TENANTS]; without --keys the owner may\n"
        "  --qos-age-passes N   a batch fragment passed over N times by better classes goes\n"
        "                       next (aging; 0 = off) [DJINN_QOS_AGE_PASSES] (default 32)\n"
        "  --qos-age-ms N       ... or once it waited N ms [DJINN_QOS_AGE_MS] (default 200)\n"
        "  --qos-batch-share P  while batch work waits on a device, keep at least P percent\n"
        "                       of its time for batch: interactive work beyond the rest\n"
        "                       waits (0 = no share, interactive always first; at most 95)\n"
        "                       [DJINN_QOS_BATCH_SHARE] (default 75)\n"
        "  --lanes N            per CPU device, N more threads that run realtime and\n"
        "                       interactive fragments beside its worker, so that they never\n"
        "                       wait for a batch node to end (0 = none: such work runs\n"
        "                       nested between batch nodes; at most 4) [DJINN_LANES]\n"
        "                       (default 1 when this process may use more CPUs than\n"
        "                       there are CPU devices, else 0)\n"
        "  --threads N          intra-op threads ATen may use for one kernel on a CPU device\n"
        "                       (0 = ATen's default: one per core) [DJINN_THREADS] (default\n"
        "                       0; an embedded server (--parent-pid) shares the machine with\n"
        "                       its client: the CPUs left after one for the client and one\n"
        "                       per lane, at least 1)\n"
        "  --stats ENDPOINT     print the counters of a running server and exit\n"
        "  --check ENDPOINT     exit 0 if a server answers there, 1 otherwise (probes)\n"
        "  --announce-fd FD     write 'DJINN_ENDPOINT <ep>' to FD once listening\n"
        "  --parent-pid PID     exit when process PID is gone (embedded servers)\n"
        "  --remove-ipc-dir     at exit, remove the ipc endpoint's directory (embedded)\n"
        "  --help               this text\n"
        "\n"
        "keygen writes DIR/NAME.key (public: give it to the server, in its clients/\n"
        "directory) and DIR/NAME.key_secret (secret, mode 0600). Name the server's own pair\n"
        "'server'. --operator lets the tenant read server-wide STATS; --realtime lets it\n"
        "claim the realtime class.\n");
}

static void s_on_signal(int sig) {
    if (sig == SIGTERM)
        djn_server_drain();
    else
        djn_server_stop();
}

static const char *s_env(const char *name, const char *dflt) {
    const char *v = getenv(name);
    return v && *v ? v : dflt;
}

static int s_parse_u64(const char *s, unsigned long long *out) {
    char *end;
    if (!s || !*s || *s == '-')
        return 0;
    *out = strtoull(s, &end, 10);
    return end != s && *end == 0;
}

/* The host memory this process may use: physical memory, or a lower cgroup limit. */
static unsigned long long s_host_bytes(void) {
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    unsigned long long total = pages > 0 && psz > 0 ? (unsigned long long)pages * psz : 8ull << 30;
    FILE *f = fopen("/sys/fs/cgroup/memory.max", "r");
    if (f) {
        unsigned long long lim;
        if (fscanf(f, "%llu", &lim) == 1 && lim < total)
            total = lim;
        fclose(f);
    }
    return total;
}

/* tcp:// endpoints on a loopback address (or ipc://, inproc://) stay on this host. */
/* Only what this host alone can reach may go without keys: ipc and inproc endpoints and
 * tcp on a loopback address. Every other transport (ws, wss, pgm, tcp on an interface
 * or a wildcard) is remote. */
static int s_local_endpoint(const char *ep) {
    if (!strncmp(ep, "ipc://", 6) || !strncmp(ep, "inproc://", 9))
        return 1;
    if (strncmp(ep, "tcp://", 6) != 0)
        return 0;
    const char *h = ep + 6;
    return !strncmp(h, "127.", 4) || !strncmp(h, "localhost:", 10) || !strncmp(h, "[::1]:", 6);
}

typedef struct {
    const char *flag, *env;
    unsigned long long *dst;
} s_num_opt_t;

/* The CPUs this process may run on. */
static long s_usable_cpus(void) {
    cpu_set_t set;
    return sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set)
                                                       : sysconf(_SC_NPROCESSORS_ONLN);
}

/* --lanes by default: one lane per CPU device when this process may run on more CPUs
 * than there are CPU devices (a lane then has a core beside its worker), else none (a
 * lane would only take the worker's core, outside the batch share's sight). */
static uint32_t s_auto_lanes(const djn_server_cfg_t *cfg) {
    int cpu_devices = 0;
    for (int i = 0; i < cfg->ndevices; i++)
        cpu_devices += !strncmp(cfg->devices[i], "cpu", 3);
    return s_usable_cpus() > cpu_devices ? 1 : 0;
}

/* --threads by default: ATen's (one per core) for a server of its own; an embedded one
 * leaves a CPU to its client and one to each lane, since an intra-op pool sized for the
 * whole machine spins on the cores the client captures on. */
static uint32_t s_auto_threads(const djn_server_cfg_t *cfg) {
    if (!cfg->parent_pid)
        return 0;
    long left = s_usable_cpus() - 1 - (long)cfg->lanes;
    return left > 1 ? (uint32_t)left : 1;
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "keygen")) {
        if (argc < 4) {
            fprintf(stderr, "usage: djinn-server keygen DIR NAME [--operator] [--realtime]\n");
            return 2;
        }
        int op = 0, rt = 0;
        for (int i = 4; i < argc; i++) {
            if (!strcmp(argv[i], "--operator"))
                op = 1;
            else if (!strcmp(argv[i], "--realtime"))
                rt = 1;
            else {
                fprintf(stderr, "djinn-server keygen: unknown option '%s'\n", argv[i]);
                return 2;
            }
        }
        return djn_server_keygen(argv[2], argv[3], op, rt);
    }
    djn_server_cfg_t cfg = {0};
    cfg.listen = s_env("DJINN_LISTEN", "tcp://127.0.0.1:5555");
    cfg.keys_dir = s_env("DJINN_KEYS", NULL);
    cfg.models_dir = s_env("DJINN_MODELS", NULL);
    cfg.text_cache_dir = s_env("DJINN_TEXT_CACHE", NULL);
    const char *devices = s_env("DJINN_DEVICES", NULL), *stats_ep = NULL, *check_ep = NULL;
    unsigned long long lease = 10000, hb = 1000, maxt = DJN_MAX_TENSOR_BYTES, quota = ~0ull,
                       data = ~0ull, slab = ~0ull, plan = 1024, queued = 256, fd = ~0ull, ppid = 0,
                       handles = 1u << 20, max_sess = 1024, per_conn = 64, drain_s = 30,
                       tcache = ~0ull, age_passes = DJN_SCHED_AGE_PASSES,
                       age_ms = DJN_SCHED_AGE_NS / 1000000, batch_share = DJN_SCHED_BATCH_SHARE,
                       lanes = ~0ull;   /* auto: s_auto_lanes */
    unsigned long long threads = ~0ull; /* auto: s_auto_threads */
    int insecure = 0, no_inline = 0;
    s_num_opt_t nums[] = {
        {"--lease-ms", "DJINN_LEASE_MS", &lease},
        {"--heartbeat-ms", "DJINN_HEARTBEAT_MS", &hb},
        {"--max-tensor-bytes", NULL, &maxt},
        {"--session-quota-bytes", "DJINN_SESSION_QUOTA_BYTES", &quota},
        {"--session-max-queued", "DJINN_SESSION_MAX_QUEUED", &queued},
        {"--data-bytes", "DJINN_DATA_BYTES", &data},
        {"--slab-bytes", "DJINN_SLAB_BYTES", &slab},
        {"--plan-cache", "DJINN_PLAN_CACHE_ENTRIES", &plan},
        {"--session-max-handles", "DJINN_SESSION_MAX_HANDLES", &handles},
        {"--max-sessions", "DJINN_MAX_SESSIONS", &max_sess},
        {"--max-sessions-per-connection", "DJINN_MAX_SESSIONS_PER_CONNECTION", &per_conn},
        {"--text-cache-bytes", "DJINN_TEXT_CACHE_BYTES", &tcache},
        {"--qos-age-passes", "DJINN_QOS_AGE_PASSES", &age_passes},
        {"--qos-age-ms", "DJINN_QOS_AGE_MS", &age_ms},
        {"--qos-batch-share", "DJINN_QOS_BATCH_SHARE", &batch_share},
        {"--lanes", "DJINN_LANES", &lanes},
        {"--threads", "DJINN_THREADS", &threads},
        {"--announce-fd", NULL, &fd},
        {"--parent-pid", NULL, &ppid},
        {"--drain-timeout", "DJINN_DRAIN_TIMEOUT", &drain_s},
    };
    const char *log_format = s_env("DJINN_LOG_FORMAT", "text"),
               *log_level = s_env("DJINN_LOG_LEVEL", "info");
    const int nnums = (int)(sizeof nums / sizeof nums[0]);
    for (int k = 0; k < nnums; k++) {
        const char *v = nums[k].env ? getenv(nums[k].env) : NULL;
        if (v && *v && !s_parse_u64(v, nums[k].dst)) {
            fprintf(stderr, "djinn-server: %s expects a number, got '%s'\n", nums[k].env, v);
            return 2;
        }
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        int k;
        for (k = 0; k < nnums && strcmp(a, nums[k].flag); k++) {
        }
        if (k < nnums) {
            if (!s_parse_u64(val, nums[k].dst)) {
                fprintf(stderr, "djinn-server: %s expects a number, got '%s'\n", a,
                        val ? val : "nothing");
                return 2;
            }
            i++;
            continue;
        }
        const char **str = !strcmp(a, "--listen")                              ? &cfg.listen
                           : !strcmp(a, "--device") || !strcmp(a, "--devices") ? &devices
                           : !strcmp(a, "--keys")                              ? &cfg.keys_dir
                           : !strcmp(a, "--models")                            ? &cfg.models_dir
                           : !strcmp(a, "--text-cache")                        ? &cfg.text_cache_dir
                           : !strcmp(a, "--realtime-tenants") ? &cfg.realtime_tenants
                           : !strcmp(a, "--stats")            ? &stats_ep
                           : !strcmp(a, "--check")            ? &check_ep
                           : !strcmp(a, "--log-format")       ? &log_format
                           : !strcmp(a, "--log-level")        ? &log_level
                                                              : NULL;
        if (str) {
            if (!val) {
                fprintf(stderr, "djinn-server: %s needs a value\n", a);
                return 2;
            }
            *str = val;
            i++;
        } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            s_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--verbose") || !strcmp(a, "-v")) {
            log_level = "debug";
        } else if (!strcmp(a, "--insecure")) {
            insecure = 1;
        } else if (!strcmp(a, "--list-ops")) {
            int n = djn_policy_list(stdout);
            fprintf(stderr, "djinn-server: %d operators allowed\n", n);
            return 0;
        } else if (!strcmp(a, "--no-inline")) {
            no_inline = 1;
        } else if (!strcmp(a, "--remove-ipc-dir")) {
            cfg.remove_ipc_dir = true;
        } else {
            fprintf(stderr, "djinn-server: unknown option '%s' (see --help)\n", a);
            return 2;
        }
    }
    djn_log_format_t lf;
    djn_log_level_t ll;
    if (!djn_log_parse_format(log_format, &lf)) {
        fprintf(stderr, "djinn-server: --log-format is text or json, not '%s'\n", log_format);
        return 2;
    }
    if (!djn_log_parse_level(log_level, &ll)) {
        fprintf(stderr, "djinn-server: --log-level is error, warn, info or debug, not '%s'\n",
                log_level);
        return 2;
    }
    if (drain_s > 86400) {
        fprintf(stderr, "djinn-server: --drain-timeout is at most 86400 seconds\n");
        return 2;
    }
    djn_log_configure(lf, ll);
    if (stats_ep)
        return djn_server_print_stats(stats_ep, cfg.keys_dir, 3000);
    if (check_ep)
        return djn_server_check(check_ep, cfg.keys_dir, 3000);
    if (!cfg.keys_dir && !insecure && !s_local_endpoint(cfg.listen)) {
        fprintf(stderr,
                "djinn-server: refusing to listen on '%s' without keys: anyone who can reach it "
                "could read and write every tenant's tensors. Give --keys DIR (make them with "
                "'djinn-server keygen'), listen on 127.0.0.1, or pass --insecure.\n",
                cfg.listen);
        return 2;
    }
    if (data == ~0ull)
        data = s_host_bytes() / 2;
    if (slab == ~0ull)
        slab = data / 8 < (2ull << 30) ? data / 8 : 2ull << 30;
    if (quota == ~0ull) /* an embedded server serves only its parent */
        quota = ppid ? 0 : (data ? data : s_host_bytes()) / 2;
    cfg.lease_ms = lease;
    cfg.heartbeat_ms = hb;
    cfg.max_tensor_bytes = maxt;
    cfg.session_quota_bytes = quota;
    cfg.session_max_queued = (uint32_t)queued;
    cfg.session_max_handles = handles > UINT32_MAX ? UINT32_MAX : (uint32_t)handles;
    cfg.max_sessions = max_sess > UINT32_MAX ? UINT32_MAX : (uint32_t)max_sess;
    cfg.max_sessions_per_connection = per_conn > UINT32_MAX ? UINT32_MAX : (uint32_t)per_conn;
    cfg.data_bytes = data;
    cfg.slab_bytes = slab;
    cfg.plan_cache_entries = (uint32_t)plan;
    cfg.text_cache_bytes = tcache != ~0ull ? tcache : cfg.models_dir ? 4ull << 30 : 0;
    cfg.announce_fd = fd == ~0ull ? -1 : (int)fd;
    cfg.parent_pid = (int)ppid;
    cfg.inline_small = !no_inline;
    cfg.drain_timeout_ms = drain_s * 1000;
    cfg.qos_age_passes = age_passes > UINT32_MAX ? UINT32_MAX : (uint32_t)age_passes;
    cfg.qos_age_ns = age_ms > UINT64_MAX / 1000000 ? UINT64_MAX : age_ms * 1000000;
    if (batch_share > 95) {
        fprintf(stderr, "djinn-server: --qos-batch-share is a percentage of at most 95\n");
        return 2;
    }
    cfg.qos_batch_share = (uint32_t)batch_share;
    if (lanes != ~0ull && lanes > DJN_SCHED_MAX_LANES) {
        fprintf(stderr, "djinn-server: --lanes is at most %u\n", DJN_SCHED_MAX_LANES);
        return 2;
    }
    if (!cfg.realtime_tenants)
        cfg.realtime_tenants = s_env("DJINN_REALTIME_TENANTS", NULL);
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
            free(copy);
            return 2;
        }
        cfg.devices[cfg.ndevices++] = tok;
    }
    if (!cfg.ndevices) {
        fprintf(stderr, "djinn-server: --device needs at least one device\n");
        free(copy);
        return 2;
    }
    cfg.lanes = lanes == ~0ull ? s_auto_lanes(&cfg) : (uint32_t)lanes;
    if (threads != ~0ull && threads > 1024) {
        fprintf(stderr, "djinn-server: --threads is at most 1024\n");
        free(copy);
        return 2;
    }
    cfg.threads = threads == ~0ull ? s_auto_threads(&cfg) : (uint32_t)threads;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* the threads the server starts (workers, reaper, ZeroMQ's) block SIGTERM and SIGINT,
     * so that the kernel delivers them to this thread, whose poll they interrupt */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    char err[512];
    djn_server_t *srv = djn_server_new(&cfg, err, sizeof err);
    pthread_sigmask(SIG_UNBLOCK, &sigs, NULL);
    if (!srv) {
        djn_log(DJN_LOG_ERROR, err);
        free(copy);
        return 1;
    }
    djn_server_run(srv);
    djn_server_destroy(&srv);
    free(copy);
    int64_t held = djn_mem_in_use();
    if (held) /* every counted host byte comes back when the server stops: a leak says so */
        djn_log(DJN_LOG_ERROR, "host memory was not given back", DJN_KV_U64("bytes", held));
    djn_log(DJN_LOG_INFO, "stopped");
    return 0;
}
