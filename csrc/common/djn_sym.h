/* djn_sym.h: the integers of a fragment as bindings (symbolic sizes).
 *
 * A decode step with Hugging Face's default DynamicCache records the same operators,
 * dtypes, ranks and wiring every token, but the KV length (and with it sizes, strides,
 * offsets, view shapes, cache positions, allocation sizes) changes by one. The plan
 * cache therefore keys a fragment by its *structure* and treats every integer of its
 * nodes as a binding:
 *
 *   - the **skeleton** of the encoded nodes is their bytes with each msgpack integer
 *     replaced by one marker byte and the storage offset, sizes and strides of each
 *     tensor reference left out (slot, dtype and rank stay); the fingerprint is the
 *     XXH3-128 of the skeleton;
 *   - the **integers** of the nodes, in canonical order: node by node, args then outs,
 *     depth first through lists and maps (keys before values), each msgpack integer,
 *     and for a tensor reference its storage offset, then its sizes, then its strides.
 *     A node's flags, a bool, a float are structure, not integers;
 *   - the **template** of a cached fragment is what the GRAPH that filed it carried: the
 *     integers of its nodes, its binds, allocs and frees. A GRAPH_CACHED names the
 *     template by its digest (`tpl`) and sends only what differs: (position, delta)
 *     patches of the integers and of the allocation sizes, and run-length coded handle
 *     deltas for binds, allocs and frees (docs/PROTOCOL.md 7.4).
 *
 * The client scans its own encoded bytes (djn_sym_scan: one pass, no tree); the server
 * walks the decoded tree (djn_sym_node_ints) and applies patches to a copy of the cached
 * nodes (djn_sym_patch), re-checking each tensor reference exactly as the decoder does.
 * Both orders are the same by construction, and a unit test checks it on real bytes. */
#ifndef DJN_SYM_H
#define DJN_SYM_H

#include <stdbool.h>
#include <stdint.h>

#include "djn_codec.h"
#include "djn_proto.h"
#include "djn_vec.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Client: scan nnodes encoded nodes (concatenated, no outer array header). Appends the
 * integers to *ints (int64_t items) and sets fp to the XXH3-128 of the skeleton (built in
 * *skel, a scratch buffer). DJN_ERR_PROTO when the bytes are not nnodes well-formed
 * nodes, DJN_ERR_NOMEM on OOM; then fp is unchanged and *ints meaningless. */
djn_status_t djn_sym_scan(const uint8_t *nodes, size_t len, uint32_t nnodes, djn_buf_t *skel,
                          djn_vec_t *ints, uint64_t fp[2]);

/* The number of integers of one decoded node; with out != NULL, writes them there. */
uint32_t djn_sym_node_ints(const djn_node_t *n, int64_t *out);

/* The digest of a template (never 0): XXH3-64 chained over the integers, binds, allocs
 * (handle then nbytes) and frees, each list hashed as its length then its 64-bit words
 * (little-endian on every platform we build for), seeded with the previous hash. */
uint64_t djn_sym_digest(const int64_t *ints, uint32_t nints, const uint64_t *binds, uint32_t nbinds,
                        const djn_alloc_t *allocs, uint32_t nallocs, const uint64_t *frees,
                        uint32_t nfrees);

/* Server: a copy of the cached nodes with the integer patch applied: each delta added
 * (wrapping) to the integer at its position (positions ascending, as the decoder
 * guarantees; one at or past start[nnodes] is refused; start[i] is the position of node
 * i's first integer).
 * Nodes without a patched integer are shared with `nodes` (a shallow copy of the node
 * array); patched ones are deep copies in `a`. Every tensor reference of a patched node
 * is checked like the decoder checks it (its extent, its slot below nbinds): on failure
 * DJN_ERR_PROTO with `err` naming the node. */
djn_status_t djn_sym_patch(djn_arena_t *a, const djn_node_t *nodes, uint32_t nnodes,
                           const uint32_t *start, const djn_sym_patch_t *patch, uint32_t npatch,
                           uint32_t nbinds, const djn_node_t **out, char *err, size_t errlen);

/* Patterns (GRAPH_CACHED 'pal' + 'pat'/'pid'): positions over the template's integers,
 * then its allocation sizes, then its binds; a class index per position. */
#define DJN_SYM_MAX_CLASSES 4096
/* The hash a 'pid' names (never 0): XXH3-64 over (pos << 32 | class) words, in blocks of
 * 256 words, each block's hash seeding the next (the first seed: n). */
uint64_t djn_sym_pattern_hash(const djn_sym_patch_t *pat, uint32_t n);

/* Expand a run-length coded delta list against a template: runs[k] = {count, delta}; item
 * i of the result is tpl[i] + delta of its run (wrapping). False unless the counts add up
 * to exactly ntpl. out holds ntpl items. */
bool djn_sym_expand(const uint64_t *tpl, uint32_t ntpl, const djn_sym_run_t *runs, uint32_t nruns,
                    uint64_t *out);

/* Client: the run-length coded deltas of cur against tpl (same length n) appended to
 * *runs (djn_sym_run_t items). False on OOM. */
bool djn_sym_runs(const uint64_t *tpl, const uint64_t *cur, uint32_t n, djn_vec_t *runs);

#ifdef __cplusplus
}
#endif
#endif
