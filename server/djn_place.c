/* djn_place.c: the placement rule (see djn_place.h).
 *
 * In steps, over the devices in index order (the first best one wins a tie):
 *   1. content first: a device already holding the weights the client is about to use
 *      saves their upload (or their read from the model store) and their memory, which
 *      outweighs any difference in load;
 *   2. then load: sessions on the device plus its backlog, one unit each. Sessions count
 *      before they sent any work (PLACE records the choice), so clients that start
 *      together spread; the backlog sees a device busy with few sessions;
 *   3. then memory: the Data bytes in use, which outlast the work that made them.
 * Rejected: weighting backlog by run time (the server knows only past run times, and a
 * queue of one long batch fragment and one of many short ones look alike by count
 * anyway); free memory first (on CPU devices every VMU has the same capacity, and on
 * GPUs a model that fits anywhere is the common case). */
#include "djn_place.h"

static int s_cmp(const djn_place_dev_t *a, const djn_place_dev_t *b) {
    if (a->held != b->held) /* 1 */
        return a->held > b->held ? -1 : 1;
    uint64_t la = a->sessions + a->backlog, lb = b->sessions + b->backlog;
    if (la != lb) /* 2 */
        return la < lb ? -1 : 1;
    if (a->used != b->used) /* 3 */
        return a->used < b->used ? -1 : 1;
    return 0;
}

uint32_t djn_place_choose(const djn_place_dev_t *devs, uint32_t n) {
    uint32_t best = 0;
    for (uint32_t d = 1; d < n; d++)
        if (s_cmp(&devs[d], &devs[best]) < 0)
            best = d;
    return best;
}
