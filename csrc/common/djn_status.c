/* djn_status.c: words for status codes. */
#include "djn_status.h"

const char *djn_status_str(djn_status_t st) {
    switch (st) {
    case DJN_OK:
        return "ok";
    case DJN_ERR_NOMEM:
        return "out of host memory";
    case DJN_ERR_PROTO:
        return "malformed message";
    case DJN_ERR_VERSION:
        return "protocol version mismatch";
    case DJN_ERR_LIMIT:
        return "message exceeds a protocol limit";
    case DJN_ERR_SESSION:
        return "unknown or expired session";
    case DJN_ERR_HANDLE:
        return "unknown tensor handle";
    case DJN_ERR_OP:
        return "operator failed";
    case DJN_ERR_ARGS:
        return "arguments do not match the operator schema";
    case DJN_ERR_DEVICE:
        return "device error";
    case DJN_ERR_TIMEOUT:
        return "timed out waiting for the peer";
    case DJN_ERR_IO:
        return "I/O error";
    case DJN_ERR_OOM:
        return "out of device memory";
    case DJN_ERR_QUOTA:
        return "session quota exceeded";
    case DJN_ERR_EVICTED:
        return "cached plan was evicted";
    case DJN_ERR_CLOSED:
        return "shutting down";
    case DJN_ERR_INTERNAL:
        return "internal error";
    case DJN_ERR_DENIED:
        return "refused by the server's policy";
    case DJN_STATUS_COUNT:
        break;
    }
    return "unknown status";
}

const char *djn_status_name(djn_status_t st) {
    static const char *names[DJN_STATUS_COUNT] = {
        "OK",     "NOMEM", "PROTO",   "VERSION", "LIMIT",    "SESSION",
        "HANDLE", "OP",    "ARGS",    "DEVICE",  "TIMEOUT",  "IO",
        "OOM",    "QUOTA", "EVICTED", "CLOSED",  "INTERNAL", "DENIED"};
    return st >= 0 && st < DJN_STATUS_COUNT ? names[st] : "UNKNOWN";
}
