/* djn_policy.h: which operators a client may run.
 *
 * A tenant sends operator names; the server runs only operators that compute on their
 * tensor arguments. The allow-list is derived from PyTorch's own operator schemas, so it
 * follows the torch the server runs, with an explicit deny list on top (policy.cpp
 * states the rules in order). A refused operator gets DJN_ERR_DENIED and a message that
 * names it and the rule; the client sees djinn.RemoteError. The executor asks once per
 * operator and caches the answer. */
#ifndef DJN_POLICY_H
#define DJN_POLICY_H

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* NULL if the operator may run, else why not ("it reads or writes files"). An operator
 * PyTorch does not know is not this module's business (the executor says unknown). */
const char *djn_policy_check(const char *op, const char *overload);
/* `djinn-server --list-ops`: every operator with its verdict, one per line
 * ("allow aten::add.Tensor" / "deny  aten::from_file: it reads or writes files");
 * returns the number of allowed operators. */
int djn_policy_list(FILE *out);

#ifdef __cplusplus
}
#endif
#endif
