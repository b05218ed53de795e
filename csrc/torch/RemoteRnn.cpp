// RemoteRnn.cpp: the fused LSTM/GRU cells PyTorch chooses for 'remote', on a CPU server.
//
// nn.LSTM and nn.GRU decompose on the client (CompositeImplicit), and for CUDA, XPU and
// PrivateUse1 inputs their cells call _thnn_fused_lstm_cell / _thnn_fused_gru_cell and
// their backward kernels, which exist for CUDA only. A server with GPUs runs them as
// captured; for a server device that is a CPU the client records these pointwise
// decompositions instead (the same arithmetic as the CUDA kernels, aten/src/ATen/native/
// cuda/RNN.cu), so what reaches the server is what its device can run. The workspace is
// what the CUDA kernels keep for the backward: the activated gates (LSTM: i, f, g, o;
// GRU: r, z, n, hx, and the hidden part of n).
#include <torch/library.h>

#include "remote.h"

namespace djinn {
namespace {

at::Tensor opt(const c10::IValue &v) {
    return v.isNone() ? at::Tensor() : v.toTensor();
}

// (input_gates, hidden_gates, cx, input_bias?, hidden_bias?) -> (hy, cy, workspace)
std::vector<c10::IValue> lstm_cell(const torch::jit::Stack &s, size_t f) {
    at::Tensor gates = s[f].toTensor() + s[f + 1].toTensor();
    at::Tensor ib = opt(s[f + 3]), hb = opt(s[f + 4]);
    if (ib.defined())
        gates = gates + ib;
    if (hb.defined())
        gates = gates + hb;
    auto c = gates.chunk(4, 1);
    at::Tensor i = c[0].sigmoid(), fg = c[1].sigmoid(), g = c[2].tanh(), o = c[3].sigmoid();
    at::Tensor cy = fg * s[f + 2].toTensor() + i * g;
    at::Tensor hy = o * cy.tanh();
    return {hy, cy, at::cat({i, fg, g, o}, 1)};
}

// (grad_hy?, grad_cy?, cx, cy, workspace, has_bias) -> (grad_gates, grad_cx, grad_bias?)
std::vector<c10::IValue> lstm_cell_backward(const torch::jit::Stack &s, size_t f) {
    at::Tensor ghy = opt(s[f]), gcy = opt(s[f + 1]);
    if (!ghy.defined() && !gcy.defined())
        return {at::Tensor(), at::Tensor(), at::Tensor()};
    at::Tensor cx = s[f + 2].toTensor(), cy = s[f + 3].toTensor(), ws = s[f + 4].toTensor();
    bool has_bias = s[f + 5].toBool();
    auto c = ws.chunk(4, 1);
    at::Tensor i = c[0], fg = c[1], g = c[2], o = c[3];
    at::Tensor tcy = cy.tanh();
    at::Tensor gc = gcy.defined() ? gcy : at::zeros_like(cy);
    at::Tensor go = at::zeros_like(o);
    if (ghy.defined()) {
        go = ghy * tcy;
        gc = ghy * o * (1 - tcy * tcy) + gc;
    }
    at::Tensor gi = gc * g * (1 - i) * i;
    at::Tensor gf = gc * cx * (1 - fg) * fg;
    at::Tensor gg = gc * i * (1 - g * g);
    go = go * (1 - o) * o;
    at::Tensor grad_gates = at::cat({gi, gf, gg, go}, 1);
    at::Tensor grad_bias = has_bias ? grad_gates.sum(0) : at::Tensor();
    return {grad_gates, gc * fg, grad_bias};
}

// (input_gates, hidden_gates, hx, input_bias?, hidden_bias?) -> (hy, workspace)
std::vector<c10::IValue> gru_cell(const torch::jit::Stack &s, size_t f) {
    at::Tensor ig = s[f].toTensor(), hg = s[f + 1].toTensor(), hx = s[f + 2].toTensor();
    at::Tensor ib = opt(s[f + 3]), hb = opt(s[f + 4]);
    if (ib.defined())
        ig = ig + ib;
    if (hb.defined())
        hg = hg + hb;
    auto a = ig.chunk(3, 1), b = hg.chunk(3, 1);
    at::Tensor r = (a[0] + b[0]).sigmoid(), z = (a[1] + b[1]).sigmoid();
    at::Tensor n = (a[2] + r * b[2]).tanh();
    at::Tensor hy = n + z * (hx - n);
    return {hy, at::cat({r, z, n, hx, b[2]}, 1)};
}

// (grad_hy, workspace, has_bias) -> (grad_input_gates, grad_hidden_gates, grad_hx,
//                                    grad_input_bias?, grad_hidden_bias?)
std::vector<c10::IValue> gru_cell_backward(const torch::jit::Stack &s, size_t f) {
    at::Tensor ghy = s[f].toTensor(), ws = s[f + 1].toTensor();
    bool has_bias = s[f + 2].toBool();
    auto w = ws.chunk(5, 1);
    at::Tensor r = w[0], z = w[1], n = w[2], hx = w[3], hn = w[4];
    at::Tensor gz = ghy * (hx - n) * (1 - z) * z;
    at::Tensor ghx = ghy * z;
    at::Tensor gn = ghy * (1 - z) * (1 - n * n);
    at::Tensor ghn = gn * r;
    at::Tensor gr = gn * hn * (1 - r) * r;
    at::Tensor gi = at::cat({gr, gz, gn}, 1), gh = at::cat({gr, gz, ghn}, 1);
    if (!has_bias)
        return {gi, gh, ghx, at::Tensor(), at::Tensor()};
    return {gi, gh, ghx, gi.sum(0), gh.sum(0)};
}

c10::DeviceIndex device_of(const torch::jit::Stack &s, size_t f) {
    for (size_t i = f; i < s.size(); i++)
        if (s[i].isTensor() && s[i].toTensor().defined() &&
            s[i].toTensor().device().type() == c10::DeviceType::PrivateUse1)
            return s[i].toTensor().device().index();
    return current_device();
}

void fused_cell(const c10::OperatorHandle &op, torch::jit::Stack *stack) {
    size_t f = stack->size() - op.schema().arguments().size();
    if (!server_device_is_cpu(device_of(*stack, f))) { // a GPU runs the fused kernel itself
        fallback(op, stack);
        return;
    }
    const std::string &name = op.schema().name();
    std::vector<c10::IValue> out;
    if (name == "aten::_thnn_fused_lstm_cell")
        out = lstm_cell(*stack, f);
    else if (name == "aten::_thnn_fused_lstm_cell_backward_impl")
        out = lstm_cell_backward(*stack, f);
    else if (name == "aten::_thnn_fused_gru_cell")
        out = gru_cell(*stack, f);
    else
        out = gru_cell_backward(*stack, f);
    torch::jit::drop(*stack, stack->size() - f);
    for (auto &v : out)
        stack->push_back(std::move(v));
}

} // namespace

TORCH_LIBRARY_IMPL(aten, PrivateUse1, m) {
    for (const char *name : {"_thnn_fused_lstm_cell", "_thnn_fused_lstm_cell_backward_impl",
                             "_thnn_fused_gru_cell", "_thnn_fused_gru_cell_backward"})
        m.impl(name, torch::CppFunction::makeFromBoxedFunction<&fused_cell>());
}

} // namespace djinn
