/* test_loadmsg.c: LOAD_MODEL's request and reply (csrc/common/djn_msgs.c).
 *
 *   1. Round trips: a describe request (no binds), a bind request, a describe reply and
 *      a bind reply, compared field by field.
 *   2. Malformed requests refused with the exact words: missing or wrong fields, names
 *      empty, too long or holding a NUL, server handles, binds of the wrong shape.
 *   3. Malformed replies refused: unknown dtypes, negative sizes, too many dims.
 *   4. Fault injection over decoding. */
#include "djn_test.h"

#include "djn_codec.h"
#include "djn_proto.h"
#include "djn_tmsg.h"

#define ERRLEN 256

static void test_rt_load_req(void) {
    djn_buf_t b = {0};
    djn_msg_hdr_t h = {DJN_MSG_LOAD_MODEL, 7, 8};
    djn_load_req_t r = {3, "sentence-transformers/all-MiniLM-L6-v2", 0, NULL};
    djn_load_req_encode(&b, &h, &r);
    djn_msg_t *m = decode_expect(&b, DJN_OK, NULL);
    CHECK(m != NULL);
    if (m) {
        CHECK_EQ_INT(m->type, DJN_MSG_LOAD_MODEL);
        CHECK(m->sid == 7 && m->seq == 8);
        CHECK_EQ_INT(m->u.load.device, 3);
        CHECK_STR(m->u.load.name, "sentence-transformers/all-MiniLM-L6-v2");
        CHECK_EQ_INT(m->u.load.nbinds, 0);
    }
    djn_msg_free(&m);
    static const djn_model_bind_t binds[3] = {
        {"embeddings.word_embeddings.weight", 1},
        {"encoder.layer.0.attention.self.query.bias", (1ull << 62) - 1},
        {"x", 1ull << 44},
    };
    r = (djn_load_req_t){0, "m", 3, binds};
    djn_buf_reset(&b);
    djn_load_req_encode(&b, &h, &r);
    m = decode_expect(&b, DJN_OK, NULL);
    CHECK(m != NULL);
    if (m) {
        CHECK_EQ_INT(m->u.load.nbinds, 3);
        for (uint32_t i = 0; i < 3 && i < m->u.load.nbinds; i++) {
            CHECK_STR(m->u.load.binds[i].name, binds[i].name);
            CHECK(m->u.load.binds[i].handle == binds[i].handle);
        }
    }
    djn_msg_free(&m);
    djn_buf_release(&b);
}

static void test_rt_load_rep(void) {
    djn_model_tensor_t ts[2] = {{"w", DJN_DTYPE_F32, 2, {30522, 384}},
                                {"s", DJN_DTYPE_BF16, 0, {0}}};
    djn_load_rep_t r = {"{\"model_type\": \"bert\"}", 2, ts, 0, 0};
    djn_msg_hdr_t h = {DJN_MSG_REPLY, 1, 2};
    djn_buf_t b = {0};
    djn_load_rep_encode(&b, &h, &r);
    djn_reply_t *rep = NULL;
    char err[ERRLEN];
    CHECK_EQ_INT(djn_reply_decode(b.data, b.len, &rep, err, ERRLEN), DJN_OK);
    djn_load_rep_t out;
    CHECK_EQ_INT(djn_load_rep_parse(rep, &out, err, ERRLEN), DJN_OK);
    CHECK_STR(out.config, "{\"model_type\": \"bert\"}");
    CHECK_EQ_INT(out.ntensors, 2);
    CHECK_STR(out.tensors[0].name, "w");
    CHECK_EQ_INT(out.tensors[0].dtype, DJN_DTYPE_F32);
    CHECK_EQ_INT(out.tensors[0].ndim, 2);
    CHECK_EQ_INT(out.tensors[0].shape[0], 30522);
    CHECK_EQ_INT(out.tensors[1].dtype, DJN_DTYPE_BF16);
    CHECK_EQ_INT(out.tensors[1].ndim, 0);
    djn_reply_free(&rep);
    r = (djn_load_rep_t){NULL, 0, NULL, 201, 90868376};
    djn_buf_reset(&b);
    djn_load_rep_encode(&b, &h, &r);
    CHECK_EQ_INT(djn_reply_decode(b.data, b.len, &rep, err, ERRLEN), DJN_OK);
    CHECK_EQ_INT(djn_load_rep_parse(rep, &out, err, ERRLEN), DJN_OK);
    CHECK_STR(out.config, "");
    CHECK_EQ_INT(out.ntensors, 0);
    CHECK_EQ_INT(out.bound, 201);
    CHECK_EQ_INT(out.read_bytes, 90868376);
    djn_reply_free(&rep);
    djn_buf_release(&b);
}

/* A LOAD_MODEL header around a body that `body` writes. */
static void s_msg(djn_buf_t *b, void (*body)(djn_buf_t *)) {
    djn_buf_reset(b);
    djn_enc_map(b, 4);
    djn_enc_cstr(b, "type");
    djn_enc_uint(b, DJN_MSG_LOAD_MODEL);
    djn_enc_cstr(b, "sid");
    djn_enc_uint(b, 1);
    djn_enc_cstr(b, "seq");
    djn_enc_uint(b, 2);
    djn_enc_cstr(b, "body");
    body(b);
}

static void b_empty(djn_buf_t *b) {
    djn_enc_map(b, 0);
}
static void b_dev_big(djn_buf_t *b) {
    djn_enc_map(b, 2);
    djn_enc_cstr(b, "dev");
    djn_enc_uint(b, DJN_MAX_DEVICES);
    djn_enc_cstr(b, "name");
    djn_enc_cstr(b, "m");
}
static void b_name_empty(djn_buf_t *b) {
    djn_enc_map(b, 2);
    djn_enc_cstr(b, "dev");
    djn_enc_uint(b, 0);
    djn_enc_cstr(b, "name");
    djn_enc_cstr(b, "");
}
static void b_name_nul(djn_buf_t *b) {
    djn_enc_map(b, 2);
    djn_enc_cstr(b, "dev");
    djn_enc_uint(b, 0);
    djn_enc_cstr(b, "name");
    djn_enc_str(b, "a\0b", 3);
}
static void b_name_long(djn_buf_t *b) {
    char n[DJN_MAX_NAME + 2];
    memset(n, 'a', sizeof n);
    djn_enc_map(b, 2);
    djn_enc_cstr(b, "dev");
    djn_enc_uint(b, 0);
    djn_enc_cstr(b, "name");
    djn_enc_str(b, n, DJN_MAX_NAME + 1);
}
static void s_binds_head(djn_buf_t *b) {
    djn_enc_map(b, 3);
    djn_enc_cstr(b, "dev");
    djn_enc_uint(b, 0);
    djn_enc_cstr(b, "name");
    djn_enc_cstr(b, "m");
    djn_enc_cstr(b, "binds");
}
static void b_binds_map(djn_buf_t *b) {
    s_binds_head(b);
    djn_enc_map(b, 0);
}
static void b_bind_short(djn_buf_t *b) {
    s_binds_head(b);
    djn_enc_array(b, 1);
    djn_enc_array(b, 1);
    djn_enc_cstr(b, "w");
}
static void b_bind_server_handle(djn_buf_t *b) {
    s_binds_head(b);
    djn_enc_array(b, 1);
    djn_enc_array(b, 2);
    djn_enc_cstr(b, "w");
    djn_enc_uint(b, 1ull << 62);
}
static void b_bind_zero_handle(djn_buf_t *b) {
    s_binds_head(b);
    djn_enc_array(b, 1);
    djn_enc_array(b, 2);
    djn_enc_cstr(b, "w");
    djn_enc_uint(b, 0);
}
static void b_bind_name_int(djn_buf_t *b) {
    s_binds_head(b);
    djn_enc_array(b, 1);
    djn_enc_array(b, 2);
    djn_enc_uint(b, 5);
    djn_enc_uint(b, 5);
}

#define S_NEEDS                                                                                    \
    "LOAD_MODEL: needs 'dev' (a device index) and 'name' (a model name of at most 256 bytes)"
#define S_BIND "LOAD_MODEL: each bind must be [tensor name, handle]"

static void test_reject_load_req(void) {
    static const struct {
        void (*body)(djn_buf_t *);
        const char *why;
    } cases[] = {
        {b_empty, S_NEEDS},
        {b_dev_big, S_NEEDS},
        {b_name_empty, S_NEEDS},
        {b_name_nul, S_NEEDS},
        {b_name_long, S_NEEDS},
        {b_binds_map, "LOAD_MODEL: 'binds' must be an array"},
        {b_bind_short, S_BIND},
        {b_bind_name_int, S_BIND},
        {b_bind_server_handle, "LOAD_MODEL: client handles must be in [1, 2^62)"},
        {b_bind_zero_handle, "LOAD_MODEL: client handles must be in [1, 2^62)"},
    };
    djn_buf_t b = {0};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        s_msg(&b, cases[i].body);
        djn_msg_t *m = decode_expect(&b, DJN_ERR_PROTO, cases[i].why);
        CHECK(m == NULL);
        djn_msg_free(&m);
    }
    djn_buf_release(&b);
}

static void s_rep(djn_buf_t *b, uint64_t dtype, int64_t size, uint32_t ndim) {
    djn_buf_reset(b);
    djn_enc_map(b, 4);
    djn_enc_cstr(b, "type");
    djn_enc_uint(b, DJN_MSG_REPLY);
    djn_enc_cstr(b, "sid");
    djn_enc_uint(b, 1);
    djn_enc_cstr(b, "seq");
    djn_enc_uint(b, 2);
    djn_enc_cstr(b, "body");
    djn_enc_map(b, 2);
    djn_enc_cstr(b, "config");
    djn_enc_cstr(b, "{}");
    djn_enc_cstr(b, "tensors");
    djn_enc_array(b, 1);
    djn_enc_array(b, 3);
    djn_enc_cstr(b, "w");
    djn_enc_uint(b, dtype);
    djn_enc_array(b, ndim);
    for (uint32_t d = 0; d < ndim; d++)
        djn_enc_int(b, size);
}

static void test_reject_load_rep(void) {
    static const struct {
        uint64_t dtype;
        int64_t size;
        uint32_t ndim;
        const char *why;
    } cases[] = {
        {DJN_DTYPE_F32, 4, 1, NULL},
        {12, 4, 1, "malformed reply: LOAD_MODEL tensors must be [name, dtype, [sizes]]"},
        {256 + DJN_DTYPE_F32, 4, 1,
         "malformed reply: LOAD_MODEL tensors must be [name, dtype, [sizes]]"},
        {DJN_DTYPE_F32, -1, 1, "malformed reply: LOAD_MODEL sizes must be non-negative integers"},
        {DJN_DTYPE_F32, 1, DJN_MAX_DIMS + 1,
         "malformed reply: LOAD_MODEL tensors must be [name, dtype, [sizes]]"},
    };
    djn_buf_t b = {0};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        s_rep(&b, cases[i].dtype, cases[i].size, cases[i].ndim);
        djn_reply_t *rep = NULL;
        char err[ERRLEN] = "";
        CHECK_EQ_INT(djn_reply_decode(b.data, b.len, &rep, err, ERRLEN), DJN_OK);
        djn_load_rep_t out;
        djn_status_t st = djn_load_rep_parse(rep, &out, err, ERRLEN);
        CHECK_EQ_INT(st, cases[i].why ? DJN_ERR_PROTO : DJN_OK);
        if (cases[i].why)
            CHECK_STR(err, cases[i].why);
        djn_reply_free(&rep);
    }
    djn_buf_release(&b);
}

static void test_load_fault_injection(void) {
    static const djn_model_bind_t binds[2] = {{"a", 1}, {"b", 2}};
    djn_load_req_t r = {0, "m", 2, binds};
    djn_msg_hdr_t h = {DJN_MSG_LOAD_MODEL, 1, 2};
    djn_buf_t b = {0};
    djn_load_req_encode(&b, &h, &r);
    decode_under_fault_injection(&b);
    djn_buf_release(&b);
}

int main(void) {
    RUN(test_rt_load_req);
    RUN(test_rt_load_rep);
    RUN(test_reject_load_req);
    RUN(test_reject_load_rep);
    RUN(test_load_fault_injection);
    return djn_test_report();
}
