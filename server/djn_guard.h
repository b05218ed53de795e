/* djn_guard.h: argument checks for ATen kernels that trust their arguments (C++ only).
 *
 * Some operators a tenant may name (djn_policy.h) were written to be called by ATen
 * alone and skip checks their callers make: output shapes, list entry shapes, index
 * ranges. guards.cpp holds one check per such operator, stated from its kernel; the
 * executor runs it on the converted arguments before the kernel and refuses the node
 * (DJN_ERR_ARGS, naming the op and the argument) when it throws. */
#ifndef DJN_GUARD_H
#define DJN_GUARD_H

#include <ATen/core/function_schema.h>
#include <ATen/core/stack.h>

#include <stdexcept>
#include <string>

struct djn_guard_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

/* Whether the operator (qualified name, "aten::_cummax_helper") has a guard. */
bool djn_guard_has(const std::string &op);
/* Throws djn_guard_error when the arguments break what the operator's kernel assumes. */
void djn_guard_run(const c10::FunctionSchema &s, const torch::jit::Stack &st);

#endif
