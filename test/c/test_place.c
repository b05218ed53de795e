/* test_place.c: the placement rule (server/djn_place.c).
 *
 * Covers: content held wins over any load; among equals the least sessions + backlog,
 * then the least Data in use, then the lowest index; one device; an idle server's
 * sessions spread in order when each choice is counted before the next. */
#include "djn_test.h"

#include "djn_place.h"

static void test_content_first(void) {
    djn_place_dev_t d[3] = {{0, 0, 0, 0}, {4096, 9, 9, 1u << 30}, {1, 5, 0, 0}};
    CHECK_EQ_INT(djn_place_choose(d, 3), 1);
    d[2].held = 4096; /* equal content: the lighter load */
    CHECK_EQ_INT(djn_place_choose(d, 3), 2);
}

static void test_load_then_memory_then_index(void) {
    djn_place_dev_t d[3] = {{0, 2, 0, 0}, {0, 1, 1, 0}, {0, 0, 1, 0}};
    CHECK_EQ_INT(djn_place_choose(d, 3), 2); /* sessions + backlog: 2, 2, 1 */
    d[2].backlog = 2;                        /* 2, 2, 2: memory decides */
    d[0].used = 10;
    d[1].used = 5;
    d[2].used = 7;
    CHECK_EQ_INT(djn_place_choose(d, 3), 1);
    d[1].used = 7; /* 10, 7, 7: the lower index */
    CHECK_EQ_INT(djn_place_choose(d, 3), 1);
    CHECK_EQ_INT(djn_place_choose(d, 1), 0);
}

static void test_sessions_spread(void) {
    djn_place_dev_t d[3] = {{0}};
    for (int k = 0; k < 6; k++) {
        uint32_t at = djn_place_choose(d, 3);
        CHECK_EQ_INT(at, k % 3);
        d[at].sessions++; /* what PLACE records */
    }
}

int main(void) {
    RUN(test_content_first);
    RUN(test_load_then_memory_then_index);
    RUN(test_sessions_spread);
    return djn_test_report();
}
