/* djn_safet.h: the safetensors file format, read strictly (the model store's input).
 *
 * A safetensors file is: an 8-byte little-endian header length N, N bytes of JSON
 *   {"__metadata__": {str: str}, NAME: {"dtype": "F32", "shape": [d0, ...],
 *                                        "data_offsets": [begin, end]}, ...}
 * and then the raw tensor bytes, offsets relative to the end of the header. The model
 * directory is the operator's, but a file may come from anywhere (a hub download), so
 * the reader is bounded and hostile-input-safe: the header length is capped, the JSON
 * reader is limited in depth and object count and accepts only what RFC 8259 allows,
 * every tensor must have a known dtype, a shape whose element count matches its byte
 * span without overflow, a span inside the file, and no two tensors may overlap.
 *
 * The same JSON reader parses model.safetensors.index.json (sharded checkpoints): its
 * "weight_map" names the file of each tensor. Pure C: no device, no sockets, no
 * msgpack (the parsed JSON is a djn_value_t tree in a djn_arena). */
#ifndef DJN_SAFET_H
#define DJN_SAFET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "djn_codec.h"
#include "djn_proto.h"
#include "djn_status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DJN_SAFET_MAX_HEADER (100u << 20) /* the format's own limit */
#define DJN_SAFET_MAX_TENSORS 65536u
#define DJN_SAFET_MAX_NAME DJN_MAX_TENSOR_NAME

typedef struct djn_safet_tensor {
    const char *name; /* NUL-terminated, in the caller's arena */
    uint8_t dtype;    /* djn_dtype_t */
    uint8_t ndim;
    int64_t shape[DJN_MAX_DIMS];
    uint64_t begin, end; /* absolute byte offsets in the file */
} djn_safet_tensor_t;

/* Parse a JSON text of len bytes into a djn_value_t tree in `a` (objects become MAPs
 * with string keys, arrays LISTs, integers INTs, other numbers FLOATs). Strict: one
 * value, optional whitespace around it, depth <= DJN_MAX_DEPTH + 8, valid escapes and
 * UTF-8 in strings. DJN_ERR_PROTO with err naming the byte offset on bad input. */
djn_status_t djn_json_parse(const char *text, size_t len, djn_arena_t *a, djn_value_t **out,
                            char *err, size_t errlen);

/* The header length (first 8 bytes) of a file of file_size bytes: checked against the
 * cap and the file. */
djn_status_t djn_safet_header_len(const uint8_t first8[8], uint64_t file_size, uint64_t *hlen,
                                  char *err, size_t errlen);
/* Parse the JSON header (hlen bytes, what follows the length) of a file of file_size
 * bytes. *tensors (in `a`) gets *n tensors in header order. */
djn_status_t djn_safet_parse(const char *header, uint64_t hlen, uint64_t file_size, djn_arena_t *a,
                             djn_safet_tensor_t **tensors, uint32_t *n, char *err, size_t errlen);
/* The dtype code of a safetensors dtype name ("F32", "BF16"...); false if unknown. */
bool djn_safet_dtype(const char *name, uint8_t *out);

#ifdef __cplusplus
}
#endif
#endif
