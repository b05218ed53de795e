/* test_placemsg.c: PLACE's request and reply (csrc/common/djn_msgs.c, PROTOCOL.md 5.6).
 *
 *   1. Round trips: an empty request, one with every field, a reply with and without
 *      the operators' load figures, compared field by field.
 *   2. Malformed requests refused with the exact words: a model that is empty, too long,
 *      not a string or holding a NUL; a probe that is not a boolean; hashes that are not
 *      triples of integers, or more than DJN_MAX_PLACE_HASHES of them.
 *   3. Malformed replies refused: no device, a device past DJN_MAX_DEVICES; a load of
 *      the wrong shape is ignored (the figures are advisory).
 *   4. Fault injection over decoding. */
#include "djn_test.h"

#include <string.h>

#include "djn_codec.h"
#include "djn_proto.h"
#include "djn_tmsg.h"

#define ERRLEN 256

static void test_rt_place_req(void) {
    djn_buf_t b = {0};
    djn_msg_hdr_t h = {DJN_MSG_PLACE, 7, 8};
    djn_place_req_t r = {0};
    djn_place_req_encode(&b, &h, &r);
    djn_msg_t *m = decode_expect(&b, DJN_OK, NULL);
    CHECK(m && m->type == DJN_MSG_PLACE && m->sid == 7 && m->seq == 8);
    CHECK(m && !m->u.place.model && !m->u.place.nhashes && !m->u.place.probe);
    djn_msg_free(&m);
    static djn_place_hash_t hs[DJN_MAX_PLACE_HASHES];
    for (uint32_t i = 0; i < DJN_MAX_PLACE_HASHES; i++)
        hs[i] = (djn_place_hash_t){UINT64_MAX - i, i, (uint64_t)i << 40};
    r = (djn_place_req_t){"org/model", DJN_MAX_PLACE_HASHES, hs, true};
    djn_buf_reset(&b);
    djn_place_req_encode(&b, &h, &r);
    m = decode_expect(&b, DJN_OK, NULL);
    CHECK(m != NULL);
    if (m) {
        CHECK_STR(m->u.place.model, "org/model");
        CHECK(m->u.place.probe);
        CHECK_EQ_INT(m->u.place.nhashes, DJN_MAX_PLACE_HASHES);
        for (uint32_t i = 0; i < m->u.place.nhashes; i++)
            CHECK(!memcmp(&m->u.place.hashes[i], &hs[i], sizeof hs[i]));
    }
    djn_msg_free(&m);
    djn_buf_release(&b);
}

static void test_rt_place_rep(void) {
    djn_msg_hdr_t h = {DJN_MSG_REPLY, 1, 2};
    djn_place_rep_t in[2] = {{3, 1ull << 33, true, 4, 2, 1ull << 40}, {63, 0, false, 9, 9, 9}};
    for (int k = 0; k < 2; k++) {
        djn_buf_t b = {0};
        djn_place_rep_encode(&b, &h, &in[k]);
        djn_reply_t *rep = NULL;
        char err[ERRLEN];
        CHECK_EQ_INT(djn_reply_decode(b.data, b.len, &rep, err, ERRLEN), DJN_OK);
        djn_place_rep_t out;
        CHECK_EQ_INT(djn_place_rep_parse(rep, &out, err, ERRLEN), DJN_OK);
        CHECK_EQ_INT(out.device, in[k].device);
        CHECK(out.held == in[k].held && out.has_load == in[k].has_load);
        if (k == 0)
            CHECK(out.sessions == 4 && out.backlog == 2 && out.used == 1ull << 40);
        else
            CHECK(out.sessions == 0 && out.backlog == 0 && out.used == 0);
        djn_reply_free(&rep);
        djn_buf_release(&b);
    }
}

/* A PLACE whose body is one field, written by `fn`. */
static void s_place(djn_buf_t *b, void (*fn)(djn_buf_t *)) {
    djn_buf_reset(b);
    djn_enc_map(b, 4);
    djn_enc_cstr(b, "type");
    djn_enc_uint(b, DJN_MSG_PLACE);
    djn_enc_cstr(b, "sid");
    djn_enc_uint(b, 1);
    djn_enc_cstr(b, "seq");
    djn_enc_uint(b, 2);
    djn_enc_cstr(b, "body");
    djn_enc_map(b, 1);
    fn(b);
}

static void b_model_empty(djn_buf_t *b) {
    djn_enc_cstr(b, "model");
    djn_enc_cstr(b, "");
}
static void b_model_int(djn_buf_t *b) {
    djn_enc_cstr(b, "model");
    djn_enc_uint(b, 7);
}
static void b_model_nul(djn_buf_t *b) {
    djn_enc_cstr(b, "model");
    djn_enc_str(b, "a\0b", 3);
}
static void b_model_long(djn_buf_t *b) {
    char name[DJN_MAX_NAME + 2];
    memset(name, 'm', sizeof name - 1);
    name[sizeof name - 1] = 0;
    djn_enc_cstr(b, "model");
    djn_enc_cstr(b, name);
}
static void b_probe_int(djn_buf_t *b) {
    djn_enc_cstr(b, "probe");
    djn_enc_uint(b, 1);
}
static void b_hashes_map(djn_buf_t *b) {
    djn_enc_cstr(b, "hashes");
    djn_enc_map(b, 0);
}
static void b_hash_pair(djn_buf_t *b) {
    djn_enc_cstr(b, "hashes");
    djn_enc_array(b, 1);
    djn_enc_array(b, 2);
    djn_enc_uint(b, 1);
    djn_enc_uint(b, 2);
}
static void b_hash_str(djn_buf_t *b) {
    djn_enc_cstr(b, "hashes");
    djn_enc_array(b, 1);
    djn_enc_array(b, 3);
    djn_enc_uint(b, 1);
    djn_enc_cstr(b, "2");
    djn_enc_uint(b, 3);
}
static void b_hashes_many(djn_buf_t *b) {
    djn_enc_cstr(b, "hashes");
    djn_enc_array(b, DJN_MAX_PLACE_HASHES + 1);
    for (uint32_t i = 0; i <= DJN_MAX_PLACE_HASHES; i++) {
        djn_enc_array(b, 3);
        djn_enc_uint(b, i);
        djn_enc_uint(b, i);
        djn_enc_uint(b, i);
    }
}

#define S_MODEL "PLACE: 'model' must be a model name of at most 256 bytes"
#define S_HASHES "PLACE: 'hashes' must be an array of at most 64 [hash_hi, hash_lo, nbytes]"

static void test_reject_place_req(void) {
    static const struct {
        void (*body)(djn_buf_t *);
        const char *why;
    } cases[] = {
        {b_model_empty, S_MODEL},
        {b_model_int, S_MODEL},
        {b_model_nul, S_MODEL},
        {b_model_long, S_MODEL},
        {b_probe_int, "PLACE: 'probe' must be true or false"},
        {b_hashes_map, S_HASHES},
        {b_hash_pair, S_HASHES},
        {b_hash_str, S_HASHES},
        {b_hashes_many, S_HASHES},
    };
    djn_buf_t b = {0};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        s_place(&b, cases[i].body);
        djn_msg_t *m = decode_expect(&b, DJN_ERR_PROTO, cases[i].why);
        CHECK(m == NULL);
        djn_msg_free(&m);
    }
    djn_buf_release(&b);
}

static void test_reject_place_rep(void) {
    static const struct {
        int64_t dev; /* < 0: absent */
        int load;    /* items in "load" */
        djn_status_t st;
    } cases[] = {{-1, 3, DJN_ERR_PROTO}, {DJN_MAX_DEVICES, 3, DJN_ERR_PROTO}, {1, 2, DJN_OK}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        djn_buf_t b = {0};
        djn_enc_map(&b, 4);
        djn_enc_cstr(&b, "type");
        djn_enc_uint(&b, DJN_MSG_REPLY);
        djn_enc_cstr(&b, "sid");
        djn_enc_uint(&b, 1);
        djn_enc_cstr(&b, "seq");
        djn_enc_uint(&b, 2);
        djn_enc_cstr(&b, "body");
        djn_enc_map(&b, cases[i].dev >= 0 ? 2 : 1);
        if (cases[i].dev >= 0) {
            djn_enc_cstr(&b, "dev");
            djn_enc_uint(&b, (uint64_t)cases[i].dev);
        }
        djn_enc_cstr(&b, "load");
        djn_enc_array(&b, (uint32_t)cases[i].load);
        for (int k = 0; k < cases[i].load; k++)
            djn_enc_uint(&b, 5);
        djn_reply_t *rep = NULL;
        char err[ERRLEN] = "";
        CHECK_EQ_INT(djn_reply_decode(b.data, b.len, &rep, err, ERRLEN), DJN_OK);
        djn_place_rep_t out;
        CHECK_EQ_INT(djn_place_rep_parse(rep, &out, err, ERRLEN), cases[i].st);
        if (cases[i].st != DJN_OK)
            CHECK_STR(err, "malformed reply: PLACE needs 'dev' (a device index)");
        else
            CHECK(!out.has_load);
        djn_reply_free(&rep);
        djn_buf_release(&b);
    }
}

static void test_place_fault_injection(void) {
    static const djn_place_hash_t hs[3] = {{1, 2, 3}, {4, 5, 6}, {7, 8, 9}};
    djn_place_req_t r = {"m", 3, hs, false};
    djn_msg_hdr_t h = {DJN_MSG_PLACE, 1, 2};
    djn_buf_t b = {0};
    djn_place_req_encode(&b, &h, &r);
    decode_under_fault_injection(&b);
    djn_buf_release(&b);
}

int main(void) {
    RUN(test_rt_place_req);
    RUN(test_rt_place_rep);
    RUN(test_reject_place_req);
    RUN(test_reject_place_rep);
    RUN(test_place_fault_injection);
    return djn_test_report();
}
