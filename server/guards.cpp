// guards.cpp: argument checks for ATen kernels that trust their arguments (djn_guard.h).
//
// ATen's public operators check what they are given; some of the operators they call
// underneath do not, because only ATen itself was meant to call them: a helper that
// writes into output tensors of the shape it assumes (_cummax_helper), a fused optimizer
// that walks raw pointers over numel() elements of every list entry, a backward kernel
// that indexes its gradient by saved indices it never range-checks (max pooling,
// embedding). A tenant can name any of them. Each guard here states, from the kernel's
// source, what it relies on and refuses anything else before the kernel runs: equal
// shapes and dtypes, contiguity, index values in range. Ranges are checked with one
// aminmax pass over the index tensor, which is small next to the kernel itself.
// Rejected alternative: denying these operators. Client-side autograd and the
// CompositeExplicitAutograd decompositions send them for ordinary programs (cummax,
// max_pool2d's gradient, nn.Embedding's gradient, torch.optim with fused=True).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <string>
#include <unordered_map>

#include "djn_guard.h"

namespace {

struct Args {
    const c10::FunctionSchema &s;
    const torch::jit::Stack &st;
    const c10::IValue &get(const char *name) const {
        auto i = s.argumentIndexWithName(name);
        if (!i)
            throw djn_guard_error(std::string("has no argument '") + name + "'");
        return st.at(*i);
    }
    bool has(const char *name) const { return s.argumentIndexWithName(name).has_value(); }
    at::Tensor t(const char *name) const {
        const auto &v = get(name);
        return v.isTensor() ? v.toTensor() : at::Tensor();
    }
    int64_t i(const char *name) const { return get(name).toInt(); }
    std::vector<at::Tensor> list(const char *name) const {
        const auto &v = get(name);
        return v.isTensorList() ? v.toTensorVector() : std::vector<at::Tensor>{};
    }
};

[[noreturn]] void fail(const std::string &m) {
    throw djn_guard_error(m);
}

std::string dims(c10::IntArrayRef d) {
    std::string s = "[";
    for (size_t k = 0; k < d.size(); k++)
        s += (k ? ", " : "") + std::to_string(d[k]);
    return s + "]";
}

void same_shape(const at::Tensor &a, const char *an, const at::Tensor &b, const char *bn) {
    if (a.sizes() != b.sizes())
        fail(std::string("'") + an + "' has shape " + dims(a.sizes()) + " but '" + bn +
             "' has shape " + dims(b.sizes()));
}

// Every value of an integer tensor in [0, hi): the one check the kernels below skip.
void in_range(const at::Tensor &idx, const char *name, int64_t hi) {
    if (!idx.defined() || idx.numel() == 0)
        return;
    if (!at::isIntegralType(idx.scalar_type(), /*includeBool=*/false))
        fail(std::string("'") + name + "' must hold integers");
    auto mm = at::aminmax(idx);
    int64_t lo = std::get<0>(mm).item<int64_t>(), top = std::get<1>(mm).item<int64_t>();
    if (lo < 0 || top >= hi)
        fail(std::string("'") + name + "' holds " + std::to_string(lo < 0 ? lo : top) +
             ", outside [0, " + std::to_string(hi) + ")");
}

void dim_ok(int64_t dim, int64_t ndim) {
    int64_t n = ndim ? ndim : 1;
    if (dim < -n || dim >= n)
        fail("dim " + std::to_string(dim) + " is out of range for a tensor of rank " +
             std::to_string(ndim));
}

// _cummax_helper / _cummin_helper(self, values!, indices!, dim): the CPU kernel walks
// values and indices with self's sizes and never resizes them.
void g_cum_helper(const Args &a) {
    at::Tensor self = a.t("self"), values = a.t("values"), indices = a.t("indices");
    same_shape(values, "values", self, "self");
    same_shape(indices, "indices", self, "self");
    if (values.scalar_type() != self.scalar_type() || indices.scalar_type() != at::kLong)
        fail("'values' must have self's dtype and 'indices' int64");
    dim_ok(a.i("dim"), self.dim());
}

// _scaled_dot_product_flash_attention_for_cpu (SDPA on a CPU server, and its backward):
// the CPU kernels (FlashAttentionKernel.cpp) check the dims, dropout and head sizes, then
// take the batch and head count from the query, the key length from the value, the KV
// head count from the key (head j reads KV head j / (H / H_kv)), and index all five
// tensors with those: every one must have the sizes they assume, and one dtype (data_ptr
// of the query's type; logsumexp of its accumulate type). Their block counts divide by
// the lengths (an empty one is a SIGFPE; SDPA itself sends those to the math path). The
// mask's shape is checked by the kernel's own view and expand.
void flash_qkv(const at::Tensor &q, const at::Tensor &k, const at::Tensor &v,
               const at::Tensor &mask) {
    if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4)
        fail("Accept only 4 dims inputs shape of {B, H, T, K} (query, key and value)");
    if (!at::isFloatingType(q.scalar_type()) || k.scalar_type() != q.scalar_type() ||
        v.scalar_type() != q.scalar_type())
        fail("query, key and value must have one floating dtype");
    if (k.size(0) != q.size(0) || v.size(0) != q.size(0))
        fail("key " + dims(k.sizes()) + " and value " + dims(v.sizes()) +
             " must have the query's batch size " + std::to_string(q.size(0)));
    if (k.size(1) != v.size(1) || k.size(2) != v.size(2))
        fail("key " + dims(k.sizes()) + " and value " + dims(v.sizes()) +
             " must have the same heads and length");
    if (q.size(2) < 1 || k.size(2) < 1 || q.size(3) < 1) // block counts divide by them
        fail("query " + dims(q.sizes()) + " and key " + dims(k.sizes()) +
             " must have non-empty lengths and head size");
    if (k.size(1) < 1 || q.size(1) % k.size(1) != 0)
        fail("the query's " + std::to_string(q.size(1)) +
             " heads must be a multiple of the key's " + std::to_string(k.size(1)));
    if (mask.defined() && mask.dim() != 2 && mask.dim() != 4)
        fail("'attn_mask' must be 2-D or 4-D");
}

void g_sdpa_flash(const Args &a) {
    flash_qkv(a.t("query"), a.t("key"), a.t("value"), a.t("attn_mask"));
}

void g_sdpa_flash_backward(const Args &a) {
    at::Tensor q = a.t("query");
    flash_qkv(q, a.t("key"), a.t("value"), a.t("attn_mask"));
    at::Tensor g = a.t("grad_out"), out = a.t("out"), lse = a.t("logsumexp");
    same_shape(g, "grad_out", q, "query");
    same_shape(out, "out", q, "query");
    if (g.scalar_type() != q.scalar_type() || out.scalar_type() != q.scalar_type())
        fail("'grad_out' and 'out' must have the query's dtype");
    at::ScalarType acc = at::toOpMathType(q.scalar_type());
    if (lse.dim() != 3 || lse.size(0) != q.size(0) || lse.size(1) != q.size(1) ||
        lse.size(2) != q.size(2) || lse.scalar_type() != acc)
        fail("'logsumexp' has shape " + dims(lse.sizes()) + " where " +
             dims({q.size(0), q.size(1), q.size(2)}) + " of the accumulate dtype is needed");
}

// _fused_adam(w)_ / _fused_sgd_ / _fused_adagrad_: the CPU kernels check the list
// lengths, then read and write numel() contiguous elements of each entry through the
// first list's dtype, and one float of grad_scale, found_inf and a tensor lr.
void g_fused_optim(const Args &a) {
    std::vector<at::Tensor> self = a.list("self");
    for (const auto &arg : a.s.arguments()) {
        const char *name = arg.name().c_str();
        if (!a.get(name).isTensorList())
            continue;
        std::vector<at::Tensor> l = a.list(name);
        if (!l.empty() && l.size() != self.size())
            fail(std::string("'") + name + "' has " + std::to_string(l.size()) +
                 " tensors but 'self' has " + std::to_string(self.size()));
        bool steps = arg.name() == "state_steps";
        for (size_t k = 0; k < l.size(); k++) {
            if (!l[k].is_contiguous())
                fail(std::string("'") + name + "[" + std::to_string(k) + "]' is not contiguous");
            if (steps) {
                if (l[k].numel() < 1)
                    fail("'state_steps[" + std::to_string(k) + "]' is empty");
                continue;
            }
            if (l[k].sizes() != self[k].sizes() || l[k].scalar_type() != self[k].scalar_type())
                fail(std::string("'") + name + "[" + std::to_string(k) +
                     "]' must have the shape and dtype of 'self[" + std::to_string(k) + "]'");
        }
    }
    for (const char *name : {"grad_scale", "found_inf", "lr"})
        if (a.has(name)) {
            at::Tensor t = a.t(name);
            if (t.defined() && t.numel() < 1)
                fail(std::string("'") + name + "' is empty");
        }
}

// Max-pooling backward kernels (max_pool*_with_indices, adaptive, fractional) add each
// grad_output element into grad_input's plane at the saved index, unchecked.
template <int K> void g_pool_backward(const Args &a) {
    at::Tensor go = a.t("grad_output"), self = a.t("self"), idx = a.t("indices");
    same_shape(idx, "indices", go, "grad_output");
    if (go.dim() != self.dim() || self.dim() < K)
        fail("'grad_output' and 'self' must have the same rank, at least " + std::to_string(K));
    int64_t plane = 1;
    for (int64_t d = 0; d < self.dim(); d++) {
        if (d < self.dim() - K && go.size(d) != self.size(d))
            fail("'grad_output' has shape " + dims(go.sizes()) + " for an input of shape " +
                 dims(self.sizes()));
        if (d >= self.dim() - K)
            plane *= self.size(d);
    }
    in_range(idx, "indices", plane);
}

// embedding_dense_backward counts and accumulates rows by index, unchecked.
void g_embedding_backward(const Args &a) {
    int64_t n = a.i("num_weights");
    if (n < 0)
        fail("'num_weights' is negative");
    in_range(a.t("indices"), "indices", n);
}

// The offset2bag an embedding-bag backward kernel reads. CPU's forward leaves it empty
// on its 'sum' fast path; _embedding_bag_backward and the per-sample-weights backward
// then rebuild it from offsets (bag of each index: the offsets at or before it, less
// one), so the mapping they will build is what gets checked, not the empty one.
at::Tensor offset2bag_used(const Args &a, const at::Tensor &indices) {
    at::Tensor o2b = a.t("offset2bag");
    if (o2b.numel() == 0 && indices.numel() != 0 && a.has("offsets")) {
        at::Tensor offsets = a.t("offsets");
        if (!offsets.defined() || offsets.dim() != 1 || offsets.numel() == 0)
            fail("'offsets' must be a non-empty 1-D tensor");
        in_range(offsets, "offsets", indices.numel() + 1);
        at::Tensor off = offsets.to(at::kCPU, at::kLong);
        o2b = at::zeros({indices.numel() + 1}, off.options());
        o2b.index_add_(0, off, at::ones_like(off));
        o2b[0] -= 1;
        return o2b.cumsum(0).narrow(0, 0, indices.numel());
    }
    if (o2b.numel() < indices.numel())
        fail("'offset2bag' is shorter than 'indices'");
    return o2b;
}

// _embedding_bag_*backward: rows by index, bags by offset2bag, max mode by
// maximum_indices, all through raw pointers.
void g_embedding_bag_backward(const Args &a) {
    g_embedding_backward(a);
    at::Tensor grad = a.t("grad"), indices = a.t("indices");
    at::Tensor bag_size = a.t("bag_size");
    if (grad.dim() != 2)
        fail("'grad' must be 2-D");
    at::Tensor o2b = offset2bag_used(a, indices);
    in_range(o2b, "offset2bag", std::min<int64_t>(grad.size(0), bag_size.numel()));
    if (a.has("maximum_indices")) {
        at::Tensor mi = a.t("maximum_indices");
        if (a.i("mode") == 2) {
            if (!mi.defined() || mi.dim() != 2 || mi.size(0) != bag_size.numel() ||
                mi.size(1) != grad.size(1))
                fail("'maximum_indices' must be [bags, embedding_dim]");
            in_range(mi, "maximum_indices", a.i("num_weights"));
        }
    }
    at::Tensor psw = a.t("per_sample_weights");
    if (psw.defined() && psw.numel() < indices.numel())
        fail("'per_sample_weights' is shorter than 'indices'");
}

void g_embedding_bag_psw_backward(const Args &a) {
    at::Tensor grad = a.t("grad"), weight = a.t("weight"), indices = a.t("indices");
    if (grad.dim() != 2 || weight.dim() != 2)
        fail("'grad' and 'weight' must be 2-D");
    in_range(indices, "indices", weight.size(0));
    in_range(offset2bag_used(a, indices), "offset2bag", grad.size(0));
}

// CTC: the CPU kernels index log_probs by the target labels within target_lengths and,
// backward, log_alpha by (batch, time, 2 * target + 1), trusting both.
std::vector<int64_t> int_list(const c10::IValue &v) {
    if (!v.isTensor())
        return v.toIntVector();
    at::Tensor t = v.toTensor().to(at::kCPU, at::kLong).contiguous();
    return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
}

void g_ctc(const Args &a) {
    at::Tensor lp = a.t("log_probs"), targets = a.t("targets");
    // ctc_loss (public, composite: it calls _ctc_loss without these checks) also takes an
    // unbatched (time, classes) input with 1-D targets: one batch entry
    bool unbatched = lp.dim() == 2 && a.s.name() == "aten::ctc_loss";
    if (lp.dim() != 3 && !unbatched)
        fail("'log_probs' must be 3-D (time, batch, classes)");
    int64_t classes = lp.size(-1), batch = unbatched ? 1 : lp.size(1), blank = a.i("blank");
    if (blank < 0 || blank >= classes)
        fail("'blank' is outside the classes");
    std::vector<int64_t> il = int_list(a.get("input_lengths"));
    std::vector<int64_t> tl = int_list(a.get("target_lengths"));
    if ((int64_t)il.size() != batch || (int64_t)tl.size() != batch)
        fail("one input and one target length per batch entry are expected");
    int64_t max_in = 0, max_t = 0, sum_t = 0;
    for (int64_t b = 0; b < batch; b++) {
        if (il[b] < 0 || il[b] > lp.size(0) || tl[b] < 0)
            fail("a length is out of range");
        max_in = std::max(max_in, il[b]);
        max_t = std::max(max_t, tl[b]);
        sum_t += tl[b];
    }
    if (targets.dim() == 2) {
        if (targets.size(0) < batch || targets.size(1) < max_t)
            fail("'targets' is shorter than 'target_lengths' say");
        at::Tensor len = at::tensor(tl, at::kLong).to(targets.device());
        at::Tensor used =
            at::arange(max_t, len.options()).unsqueeze(0) < len.unsqueeze(1); // [batch, max_t]
        in_range(targets.narrow(0, 0, batch).narrow(1, 0, max_t).masked_select(used), "targets",
                 classes);
    } else {
        if (targets.dim() != 1 || targets.numel() < sum_t)
            fail("'targets' is shorter than 'target_lengths' say");
        in_range(targets.narrow(0, 0, sum_t), "targets", classes);
    }
    if (!a.has("log_alpha"))
        return;
    at::Tensor la = a.t("log_alpha"), nll = a.t("neg_log_likelihood"), grad = a.t("grad");
    if (la.dim() != 3 || la.size(0) < batch || la.size(1) < max_in || la.size(2) < 2 * max_t + 1)
        fail("'log_alpha' is smaller than the lengths need");
    if (nll.numel() < batch || grad.numel() < 1)
        fail("'neg_log_likelihood' and 'grad' need one value per batch entry");
}

// segment_reduce(unsafe=True) skips its own length checks, and its backward never makes
// them: the kernels walk data by lengths or offsets through raw pointers.
void g_segment(const Args &a) {
    at::Tensor data = a.t("data"), lengths = a.t("lengths"), offsets = a.t("offsets");
    int64_t axis = a.i("axis");
    dim_ok(axis, data.dim());
    axis = c10::maybe_wrap_dim(axis, std::max<int64_t>(data.dim(), 1));
    int64_t n = data.dim() ? data.size(axis) : 1;
    at::Tensor seg = lengths.defined() ? lengths : offsets;
    if (!seg.defined())
        fail("one of 'lengths' and 'offsets' is needed");
    if (seg.dim() != axis + 1)
        fail("'lengths' / 'offsets' must have rank axis + 1");
    for (int64_t d = 0; d < axis; d++)
        if (seg.size(d) != data.size(d))
            fail("'lengths' / 'offsets' do not match data's leading dimensions");
    int64_t segments = seg.size(axis) - (lengths.defined() ? 0 : 1);
    if (lengths.defined()) {
        in_range(lengths, "lengths", n + 1);
        if (lengths.numel() && !at::equal(lengths.sum(-1), at::full_like(lengths.sum(-1), n)))
            fail("'lengths' do not add up to data's size along 'axis'");
    } else {
        in_range(offsets, "offsets", n + 1);
        if (offsets.size(axis) < 1)
            fail("'offsets' is empty");
        if (offsets.size(axis) > 1 && (offsets.diff(1, -1) < 0).any().item<bool>())
            fail("'offsets' must not decrease");
    }
    if (!a.has("grad"))
        return;
    at::Tensor grad = a.t("grad"), output = a.t("output");
    std::vector<int64_t> want = data.sizes().vec();
    if (!want.empty())
        want[axis] = segments;
    if (output.sizes() != c10::IntArrayRef(want) || grad.sizes() != output.sizes())
        fail("'grad' and 'output' must have data's shape with " + std::to_string(segments) +
             " segments along 'axis'");
}

// Backward kernels that walk their gradient and saved tensors by the shape of one of
// them (softmax's, layer and batch norm's, pdist's, cdist's, weight norm's): every
// tensor must have the shape the forward gave it.
void g_softmax_backward(const Args &a) {
    at::Tensor g = a.t("grad_output"), out = a.t("output");
    same_shape(g, "grad_output", out, "output");
    dim_ok(a.i("dim"), out.dim());
}

void numel_is(const at::Tensor &t, const char *name, int64_t n) {
    if (t.defined() && t.numel() != n)
        fail(std::string("'") + name + "' has " + std::to_string(t.numel()) + " elements where " +
             std::to_string(n) + " are needed");
}

void g_layer_norm_backward(const Args &a) {
    at::Tensor g = a.t("grad_out"), in = a.t("input");
    same_shape(g, "grad_out", in, "input");
    std::vector<int64_t> ns = a.get("normalized_shape").toIntVector();
    int64_t k = (int64_t)ns.size();
    if (k < 1 || k > in.dim())
        fail("'normalized_shape' " + dims(ns) + " does not fit an input of shape " +
             dims(in.sizes()));
    int64_t m = 1, n = 1;
    for (int64_t d = 0; d < in.dim(); d++) {
        if (d < in.dim() - k) {
            m *= in.size(d);
        } else {
            if (in.size(d) != ns[d - (in.dim() - k)])
                fail("'normalized_shape' " + dims(ns) + " is not the end of the input's shape " +
                     dims(in.sizes()));
            n *= in.size(d);
        }
    }
    numel_is(a.t("mean"), "mean", m);
    numel_is(a.t("rstd"), "rstd", m);
    numel_is(a.t("weight"), "weight", n);
    numel_is(a.t("bias"), "bias", n);
}

// The batch norm backward kernel, by any of its names: native_batch_norm_backward,
// batch_norm_backward (update, save_var) and _batch_norm_impl_index_backward (train,
// save_var_transform), which reach it without the checks of the public ops.
void bn_backward(const Args &a, const char *grad, const char *train_arg, const char *invstd) {
    at::Tensor g = a.t(grad), in = a.t("input");
    same_shape(g, grad, in, "input");
    if (in.dim() < 2)
        fail("'input' must have a channel dimension");
    int64_t c = in.size(1);
    numel_is(a.t("weight"), "weight", c);
    bool train = a.get(train_arg).toBool();
    // the kernel reads the saved statistics in training, the running ones otherwise
    const char *used[2] = {train ? "save_mean" : "running_mean", train ? invstd : "running_var"};
    for (const char *n : used) {
        at::Tensor t = a.t(n);
        if (!t.defined())
            fail(std::string("'") + n + "' is needed");
        numel_is(t, n, c);
    }
    for (const char *n : {"running_mean", "running_var", "save_mean", invstd}) {
        at::Tensor t = a.t(n);
        if (t.defined() && t.numel() != 0)
            numel_is(t, n, c);
    }
}

void g_batch_norm_backward(const Args &a) {
    bn_backward(a, "grad_out", "train", "save_invstd");
}

void g_bn_backward_update(const Args &a) {
    bn_backward(a, "grad_out", "update", "save_var");
}

void g_bn_impl_index_backward(const Args &a) {
    bn_backward(a, "grad_output", "train", "save_var_transform");
}

// The batch norm forward kernels (batch_norm_cpu and its stats updates) index weight,
// bias and the running statistics by channel without comparing their sizes with the
// input's channels; only the composite batch_norm does (a write past running_mean).
void g_batch_norm(const Args &a) {
    at::Tensor in = a.t("input");
    if (in.dim() < 2)
        fail("'input' must have a channel dimension");
    for (const char *n : {"weight", "bias", "running_mean", "running_var"}) {
        if (!a.has(n))
            continue;
        at::Tensor t = a.t(n);
        if (t.defined() && t.numel() != in.size(1))
            fail(std::string("'") + n + "' has " + std::to_string(t.numel()) +
                 " elements where the input has " + std::to_string(in.size(1)) + " channels");
    }
}

// Adaptive average pooling's backward kernels take the batch and channels from one of
// grad_output and self and index the other with them.
void g_adaptive_avg_backward(const Args &a) {
    at::Tensor g = a.t("grad_output"), self = a.t("self");
    int64_t spatial = a.s.name().find("3d") != std::string::npos ? 3 : 2;
    if (g.dim() != self.dim() || self.dim() < spatial + 1 ||
        g.sizes().slice(0, g.dim() - spatial) != self.sizes().slice(0, self.dim() - spatial))
        fail("'grad_output' " + dims(g.sizes()) + " does not match 'self' " + dims(self.sizes()) +
             " outside the pooled dims");
}

// _transform_bias_rescale_qkv (and the fused attention ops that call it unchecked): it
// divides by num_heads and reads qkv_bias as qkv's dtype over qkv's last dim.
void qkv_bias_ok(const at::Tensor &bias, const at::Tensor &like, int64_t width, int64_t heads) {
    if (heads < 1 || width < 1 || width % heads != 0)
        fail("the embedding width " + std::to_string(width) + " must be a positive multiple of " +
             std::to_string(heads) + " heads");
    if (bias.dim() != 1 || bias.numel() != 3 * width || bias.scalar_type() != like.scalar_type())
        fail("'qkv_bias' must hold 3 x " + std::to_string(width) + " values of the input's dtype");
}

void g_transform_qkv(const Args &a) {
    at::Tensor qkv = a.t("qkv");
    if (qkv.dim() != 3 || qkv.size(2) % 3 != 0)
        fail("'qkv' must be 3-D with a last dim of 3 x the embedding width");
    qkv_bias_ok(a.t("qkv_bias"), qkv, qkv.size(2) / 3, a.i("num_heads"));
}

void g_native_mha(const Args &a) {
    at::Tensor q = a.t("query");
    qkv_bias_ok(a.t("qkv_bias"), q, a.i("embed_dim"), a.i("num_head"));
}

void g_encoder_layer(const Args &a) {
    at::Tensor src = a.t("src");
    qkv_bias_ok(a.t("qkv_bias"), src, a.i("embed_dim"), a.i("num_heads"));
}

// grid_sampler backward kernels index grad_output by the input's batch and channels and
// the grid's spatial sizes.
void g_grid_sampler_backward(const Args &a) {
    at::Tensor g = a.t("grad_output"), in = a.t("input"), grid = a.t("grid");
    int64_t nd = in.dim();
    if ((nd != 4 && nd != 5) || grid.dim() != nd)
        fail("'input' and 'grid' must both be 4-D or 5-D");
    std::vector<int64_t> want = {in.size(0), in.size(1)};
    for (int64_t d = 1; d < nd - 1; d++)
        want.push_back(grid.size(d));
    if (g.sizes() != c10::IntArrayRef(want) || g.scalar_type() != in.scalar_type())
        fail("'grad_output' has shape " + dims(g.sizes()) + " where " + dims(want) +
             " of the input's dtype is needed");
}

// _masked_softmax_backward checks grad_output against the mask, never output.
void g_masked_softmax_backward(const Args &a) {
    at::Tensor g = a.t("grad_output"), out = a.t("output");
    same_shape(out, "output", g, "grad_output");
    if (out.scalar_type() != g.scalar_type())
        fail("'output' must have grad_output's dtype");
}

// _weight_int4pack_mm_for_cpu reads one scale/zero row per group of the reduction dim.
void g_int4pack_mm(const Args &a) {
    at::Tensor x = a.t("self"), qsz = a.t("qScaleAndZeros");
    int64_t gs = a.i("qGroupSize");
    if (gs < 1 || x.dim() != 2 || qsz.dim() != 3 || qsz.size(0) != (x.size(1) + gs - 1) / gs)
        fail("'qScaleAndZeros' must have one row per group of " + std::to_string(gs) +
             " of the input's " + std::to_string(x.dim() == 2 ? x.size(1) : 0) + " columns");
}

void g_pdist_backward(const Args &a) {
    at::Tensor g = a.t("grad"), x = a.t("self"), d = a.t("pdist");
    if (x.dim() != 2)
        fail("'self' must be 2-D");
    int64_t n = x.size(0);
    numel_is(g, "grad", n * (n - 1) / 2);
    numel_is(d, "pdist", n * (n - 1) / 2);
}

void g_cdist_backward(const Args &a) {
    at::Tensor g = a.t("grad"), x1 = a.t("x1"), x2 = a.t("x2"), d = a.t("cdist");
    if (x1.dim() < 2 || x1.dim() != x2.dim() || x1.size(-1) != x2.size(-1))
        fail("'x1' " + dims(x1.sizes()) + " and 'x2' " + dims(x2.sizes()) +
             " must be [..., r, m] alike");
    std::vector<int64_t> want(x1.sizes().begin(), x1.sizes().end() - 1);
    want.push_back(x2.size(-2));
    for (int64_t k = 0; k < x1.dim() - 2; k++)
        if (x1.size(k) != x2.size(k))
            fail("'x1' and 'x2' must have the same batch shape");
    if (g.sizes() != c10::IntArrayRef(want))
        fail("'grad' has shape " + dims(g.sizes()) + " where " + dims(want) + " is needed");
    same_shape(d, "cdist", g, "grad");
}

// weight norm: g and the norms hold one value per slice of v along dim (0 or the last)
void g_weight_norm(const Args &a) {
    at::Tensor v = a.t(a.has("saved_v") ? "saved_v" : "v");
    at::Tensor g = a.t(a.has("saved_g") ? "saved_g" : "g");
    int64_t dim = a.i("dim");
    if (v.dim() < 1)
        fail("'v' must have a dimension");
    dim_ok(dim, v.dim());
    if (dim < 0)
        dim += v.dim();
    numel_is(g, "g", v.size(dim));
    if (a.has("saved_norms")) {
        numel_is(a.t("saved_norms"), "saved_norms", v.size(dim));
        same_shape(a.t("grad_w"), "grad_w", v, "saved_v");
    }
}

// matrix_exp's helper: input [k, ...] combined by coefficients [m, k]
void g_linear_combination(const Args &a) {
    at::Tensor in = a.t("input"), c = a.t("coefficients");
    if (c.dim() != 2 || in.dim() < 1 || c.size(1) != in.size(0))
        fail("'coefficients' " + dims(c.sizes()) + " must be [m, " +
             std::to_string(in.dim() ? in.size(0) : 0) + "] for an input of shape " +
             dims(in.sizes()));
}

// Orthogonal polynomials of degree n loop n times per element when no closed form
// applies: a degree is data, so a few bytes could hold the worker (or the transport
// thread, for an inline run) for days. Degrees are bounded.
constexpr double kMaxDegree = 4096;
void g_polynomial(const Args &a) {
    const c10::IValue &n = a.get("n");
    double top = 0;
    if (n.isTensor()) {
        at::Tensor t = n.toTensor();
        if (t.numel())
            top = at::abs(t.to(at::kDouble)).max().item<double>();
    } else {
        top = std::abs(n.toScalar().toDouble());
    }
    if (!(top <= kMaxDegree)) // NaN too
        fail("degree 'n' of " + std::to_string(top) + " is above this server's limit of " +
             std::to_string((int)kMaxDegree));
}

using Guard = void (*)(const Args &);

const std::unordered_map<std::string, Guard> &table() {
    static const std::unordered_map<std::string, Guard> t = {
        {"aten::_cummax_helper", g_cum_helper},
        {"aten::_scaled_dot_product_flash_attention_for_cpu", g_sdpa_flash},
        {"aten::_scaled_dot_product_flash_attention_for_cpu_backward", g_sdpa_flash_backward},
        {"aten::_cummin_helper", g_cum_helper},
        {"aten::_fused_adam", g_fused_optim},
        {"aten::_fused_adam_", g_fused_optim},
        {"aten::_fused_adamw", g_fused_optim},
        {"aten::_fused_adamw_", g_fused_optim},
        {"aten::_fused_sgd", g_fused_optim},
        {"aten::_fused_sgd_", g_fused_optim},
        {"aten::_fused_adagrad", g_fused_optim},
        {"aten::_fused_adagrad_", g_fused_optim},
        {"aten::max_pool2d_with_indices_backward", g_pool_backward<2>},
        {"aten::max_pool3d_with_indices_backward", g_pool_backward<3>},
        {"aten::adaptive_max_pool2d_backward", g_pool_backward<2>},
        {"aten::adaptive_max_pool3d_backward", g_pool_backward<3>},
        {"aten::fractional_max_pool2d_backward", g_pool_backward<2>},
        {"aten::fractional_max_pool3d_backward", g_pool_backward<3>},
        {"aten::embedding_dense_backward", g_embedding_backward},
        {"aten::embedding_backward", g_embedding_backward},
        {"aten::_embedding_bag_backward", g_embedding_bag_backward},
        {"aten::_embedding_bag_dense_backward", g_embedding_bag_backward},
        {"aten::_embedding_bag_sparse_backward", g_embedding_bag_backward},
        {"aten::_embedding_bag_per_sample_weights_backward", g_embedding_bag_psw_backward},
        {"aten::_ctc_loss", g_ctc},
        {"aten::_ctc_loss_backward", g_ctc},
        {"aten::segment_reduce", g_segment},
        {"aten::_segment_reduce_backward", g_segment},
        {"aten::_softmax_backward_data", g_softmax_backward},
        {"aten::_log_softmax_backward_data", g_softmax_backward},
        {"aten::native_layer_norm_backward", g_layer_norm_backward},
        {"aten::native_batch_norm_backward", g_batch_norm_backward},
        {"aten::batch_norm_backward", g_bn_backward_update},
        {"aten::_batch_norm_impl_index_backward", g_bn_impl_index_backward},
        {"aten::native_batch_norm", g_batch_norm},
        {"aten::_native_batch_norm_legit", g_batch_norm},
        {"aten::_native_batch_norm_legit_functional", g_batch_norm},
        {"aten::_native_batch_norm_legit_no_training", g_batch_norm},
        {"aten::_batch_norm_with_update", g_batch_norm},
        {"aten::_batch_norm_with_update_functional", g_batch_norm},
        {"aten::_batch_norm_no_update", g_batch_norm},
        {"aten::batch_norm_update_stats", g_batch_norm},
        {"aten::ctc_loss", g_ctc},
        {"aten::_adaptive_avg_pool2d_backward", g_adaptive_avg_backward},
        {"aten::_adaptive_avg_pool3d_backward", g_adaptive_avg_backward},
        {"aten::adaptive_avg_pool3d_backward", g_adaptive_avg_backward},
        {"aten::_transform_bias_rescale_qkv", g_transform_qkv},
        {"aten::_native_multi_head_attention", g_native_mha},
        {"aten::_transformer_encoder_layer_fwd", g_encoder_layer},
        {"aten::grid_sampler_2d_backward", g_grid_sampler_backward},
        {"aten::grid_sampler_3d_backward", g_grid_sampler_backward},
        {"aten::_grid_sampler_2d_cpu_fallback_backward", g_grid_sampler_backward},
        {"aten::_masked_softmax_backward", g_masked_softmax_backward},
        {"aten::_weight_int4pack_mm_for_cpu", g_int4pack_mm},
        {"aten::_pdist_backward", g_pdist_backward},
        {"aten::_cdist_backward", g_cdist_backward},
        {"aten::_weight_norm_interface", g_weight_norm},
        {"aten::_weight_norm_interface_backward", g_weight_norm},
        {"aten::_compute_linear_combination", g_linear_combination},
        {"aten::special_chebyshev_polynomial_t", g_polynomial},
        {"aten::special_chebyshev_polynomial_u", g_polynomial},
        {"aten::special_chebyshev_polynomial_v", g_polynomial},
        {"aten::special_chebyshev_polynomial_w", g_polynomial},
        {"aten::special_shifted_chebyshev_polynomial_t", g_polynomial},
        {"aten::special_shifted_chebyshev_polynomial_u", g_polynomial},
        {"aten::special_shifted_chebyshev_polynomial_v", g_polynomial},
        {"aten::special_shifted_chebyshev_polynomial_w", g_polynomial},
        {"aten::special_hermite_polynomial_h", g_polynomial},
        {"aten::special_hermite_polynomial_he", g_polynomial},
        {"aten::special_laguerre_polynomial_l", g_polynomial},
        {"aten::special_legendre_polynomial_p", g_polynomial},
    };
    return t;
}

void run(const c10::FunctionSchema &s, const torch::jit::Stack &st, Guard g) {
    try {
        g(Args{s, st});
    } catch (const djn_guard_error &) {
        throw;
    } catch (const std::exception &e) { // a value of the wrong kind: refused all the same
        throw djn_guard_error(std::string("arguments this server cannot check: ") + e.what());
    }
}

} // namespace

bool djn_guard_has(const std::string &op) {
    return table().count(op) != 0;
}

void djn_guard_run(const c10::FunctionSchema &s, const torch::jit::Stack &st) {
    auto it = table().find(s.name());
    if (it != table().end())
        run(s, st, it->second);
}
