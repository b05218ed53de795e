/* djn_stats.c: the descriptor table of djn_stats.h, as data for encoders and tools. */
#include "djn_stats.h"

#include <stddef.h>

#define S_ISF_U64 false
#define S_ISF_F64 true
#define S_ROW(scope, type_, name_, ty, py_, doc_)                                                  \
    {scope, #name_, py_, doc_, S_ISF_##ty, offsetof(type_, name_)},
#define S_SERVER(name, ty, py, doc)                                                                \
    S_ROW(DJN_STATS_SCOPE_SERVER, djn_stats_server_t, name, ty, py, doc)
#define S_SESSION(name, ty, py, doc)                                                               \
    S_ROW(DJN_STATS_SCOPE_SESSION, djn_stats_session_t, name, ty, py, doc)
#define S_DEVICE(name, ty, py, doc)                                                                \
    S_ROW(DJN_STATS_SCOPE_DEVICE, djn_stats_device_t, name, ty, py, doc)
#define S_CLIENT(name, ty, py, doc)                                                                \
    S_ROW(DJN_STATS_SCOPE_CLIENT, djn_stats_client_t, name, ty, py, doc)

static const djn_stats_field_t s_fields[] = {DJN_STATS_SERVER(S_SERVER) DJN_STATS_SESSION(
    S_SESSION) DJN_STATS_DEVICE(S_DEVICE) DJN_STATS_CLIENT(S_CLIENT)};

const djn_stats_field_t *djn_stats_fields(uint32_t *n) {
    *n = (uint32_t)(sizeof s_fields / sizeof s_fields[0]);
    return s_fields;
}
