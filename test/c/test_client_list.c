/* test_client_list.c: the servers of DJINN_SERVER in the client core (djn_client.c).
 *
 * Covers, without connecting anywhere: a comma-separated list becomes one server per
 * entry, in order, blanks around entries and empty entries ignored; an unset or empty
 * DJINN_SERVER is one (embedded) server; more entries than the client takes, or an
 * entry too long for an endpoint, are refused with words that say so; a handle no
 * server holds is freed without effect; every byte comes back at destroy. */
#include "djn_test.h"

#include <stdlib.h>

#include "djn_client.h"

static void test_list_in_order(void) {
    setenv("DJINN_SERVER", " tcp://127.0.0.1:1 ,,tcp://127.0.0.1:2,\ttcp://[::1]:3 ", 1);
    djn_client_t *c = djn_client_new("");
    CHECK_EQ_INT(djn_client_server_count(c), 3);
    djn_client_server_t s;
    CHECK(djn_client_server_info(c, 0, &s) && !strcmp(s.endpoint, "tcp://127.0.0.1:1"));
    CHECK(s.first_device == -1 && s.ndevices == -1 && s.session_id == 0);
    CHECK(djn_client_server_info(c, 1, &s) && !strcmp(s.endpoint, "tcp://127.0.0.1:2"));
    CHECK(djn_client_server_info(c, 2, &s) && !strcmp(s.endpoint, "tcp://[::1]:3"));
    CHECK(!djn_client_server_info(c, 3, &s) && !djn_client_server_info(c, -1, &s));
    CHECK_STR(djn_client_endpoint(c), "tcp://127.0.0.1:1,tcp://127.0.0.1:2,tcp://[::1]:3");
    djn_client_free(c, 1ull << 44); /* held by no server: nothing to do */
    CHECK(djn_client_nbytes_hint(c, 1ull << 44) == 0);
    djn_client_destroy(&c);
    CHECK(c == NULL);
    unsetenv("DJINN_SERVER");
}

static void test_unset_is_one_embedded_server(void) {
    unsetenv("DJINN_SERVER");
    djn_client_t *c = djn_client_new("");
    CHECK_EQ_INT(djn_client_server_count(c), 1);
    djn_client_destroy(&c);
    setenv("DJINN_SERVER", " , ", 1);
    c = djn_client_new("");
    CHECK_EQ_INT(djn_client_server_count(c), 1);
    djn_client_destroy(&c);
    unsetenv("DJINN_SERVER");
}

static void test_too_many_or_too_long(void) {
    char list[8192] = "";
    for (int i = 0; i < 33; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%stcp://127.0.0.1:%d",
                 i ? "," : "", 1000 + i);
    setenv("DJINN_SERVER", list, 1);
    djn_client_t *c = djn_client_new("");
    CHECK_EQ_INT(djn_client_server_count(c), 0);
    CHECK(djn_client_connect(c) == DJN_ERR_ARGS);
    CHECK_HAS(djn_client_errmsg(), "more than 32 servers");
    djn_client_destroy(&c);
    char longep[400] = "tcp://";
    memset(longep + 6, 'a', 300);
    setenv("DJINN_SERVER", longep, 1);
    c = djn_client_new("");
    CHECK(djn_client_connect(c) == DJN_ERR_ARGS);
    CHECK_HAS(djn_client_errmsg(), "too long");
    djn_client_destroy(&c);
    unsetenv("DJINN_SERVER");
}

int main(void) {
    RUN(test_list_in_order);
    RUN(test_unset_is_one_embedded_server);
    RUN(test_too_many_or_too_long);
    return djn_test_report();
}
