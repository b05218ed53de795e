"""Kernels that trust their arguments, named directly by a client (server/guards.cpp).

Each case calls an ATen operator whose CPU kernel reads or writes outside its tensors, or
divides by a size, when its arguments disagree (found by an attacker's review: the
public ops check what these private ones do not). Through the ordinary client the node
reaches the server, whose guard refuses it before the kernel runs: the error names the
op and what is wrong, and the session carries on. Without the guard these calls wrote
past a running_mean, read past a grad_output, or killed the server with SIGFPE. Raw
protocol cases for ops the client never sends as they are (ctc_loss,
_batch_norm_impl_index_backward) are in test_security.py (OOB_KERNELS).
"""

import re

import pytest
import torch

pytestmark = pytest.mark.usefixtures("remote")

R = "remote"
A = torch.ops.aten


def r(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype).to(R)


def ones(*shape, dtype=torch.float32):
    return torch.ones(*shape, dtype=dtype, device=R)


CASES = {
    "native_batch_norm": (
        lambda: A.native_batch_norm(r(4, 64), r(2), r(2), r(2), ones(2), True, 0.1, 1e-5),
        "'weight' has 2 elements where the input has 64 channels",
    ),
    "_native_batch_norm_legit": (
        lambda: A._native_batch_norm_legit(
            r(4, 64), ones(64), r(64), r(2), ones(2), False, 0.1, 1e-5
        ),
        "'running_mean' has 2 elements where the input has 64 channels",
    ),
    "batch_norm_update_stats": (
        lambda: A.batch_norm_update_stats(r(4, 64), r(2), ones(2), 0.1),
        "'running_mean' has 2 elements where the input has 64 channels",
    ),
    "batch_norm_backward": (
        lambda: A.batch_norm_backward(
            r(1, 4),
            r(1, 64),
            ones(64),
            r(64),
            ones(64),
            r(64),
            ones(64),
            True,
            1e-5,
            [True, True, True],
            torch.empty(0, device=R, dtype=torch.uint8),
        ),
        "'grad_out' has shape [1, 4] but 'input' has shape [1, 64]",
    ),
    "_adaptive_avg_pool2d_backward": (
        lambda: A._adaptive_avg_pool2d_backward(r(1, 64, 2, 2), r(1, 1, 2, 2)),
        "'grad_output' [1, 64, 2, 2] does not match 'self' [1, 1, 2, 2]",
    ),
    "_adaptive_avg_pool3d_backward": (
        lambda: A._adaptive_avg_pool3d_backward(r(1, 1, 2, 2, 2), r(1, 64, 2, 2, 2)),
        "'grad_output' [1, 1, 2, 2, 2] does not match 'self' [1, 64, 2, 2, 2]",
    ),
    "_transform_bias_rescale_qkv": (
        lambda: A._transform_bias_rescale_qkv(r(1, 2, 12), r(12), 0),
        "must be a positive multiple of 0 heads",
    ),
    "_transform_bias_rescale_qkv (short bias)": (
        lambda: A._transform_bias_rescale_qkv(r(1, 2, 12), r(3), 2),
        "'qkv_bias' must hold 3 x 4 values of the input's dtype",
    ),
    "_native_multi_head_attention": (
        lambda: A._native_multi_head_attention(
            r(1, 2, 4), r(1, 2, 4), r(1, 2, 4), 4, 0, r(12, 4), r(12), r(4, 4), r(4)
        ),
        "must be a positive multiple of 0 heads",
    ),
    "_native_multi_head_attention (half bias)": (
        lambda: A._native_multi_head_attention(
            r(1, 2, 4),
            r(1, 2, 4),
            r(1, 2, 4),
            4,
            2,
            r(12, 4),
            r(12, dtype=torch.float16),
            r(4, 4),
            r(4),
        ),
        "'qkv_bias' must hold 3 x 4 values of the input's dtype",
    ),
    "_transformer_encoder_layer_fwd": (
        lambda: A._transformer_encoder_layer_fwd(
            r(1, 2, 4),
            4,
            0,
            r(12, 4),
            r(12),
            r(4, 4),
            r(4),
            False,
            False,
            1e-5,
            ones(4),
            r(4),
            ones(4),
            r(4),
            r(8, 4),
            r(8),
            r(4, 8),
            r(4),
        ),
        "must be a positive multiple of 0 heads",
    ),
    "grid_sampler_2d_backward": (
        lambda: A.grid_sampler_2d_backward(
            r(1, 1, 2, 2), r(1, 1, 4, 4), r(1, 8, 8, 2), 0, 0, False, [True, True]
        ),
        "'grad_output' has shape [1, 1, 2, 2] where [1, 1, 8, 8]",
    ),
    "grid_sampler_3d_backward": (
        lambda: A.grid_sampler_3d_backward(
            r(1, 1, 2, 2, 2), r(1, 64, 2, 2, 2), r(1, 2, 2, 2, 3), 0, 0, False, [True, True]
        ),
        "'grad_output' has shape [1, 1, 2, 2, 2] where [1, 64, 2, 2, 2]",
    ),
    "_masked_softmax_backward": (
        lambda: A._masked_softmax_backward(r(4, 64), r(2, 2), ones(4, 64, dtype=torch.bool), 1),
        "'output' has shape [2, 2] but 'grad_output' has shape [4, 64]",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_trusting_kernel_is_refused_by_its_guard(case, djinn_mod):
    fn, msg = CASES[case]
    op = "aten::" + case.split(" ")[0]
    torch.remote.synchronize()
    with pytest.raises(djinn_mod.RemoteError, match=re.escape(op) + ".*" + re.escape(msg)):
        fn()
        torch.remote.synchronize()
    assert float(torch.ones(3, device=R).sum()) == 3.0  # the session carries on


def test_the_same_kernels_still_run_what_the_public_ops_send(djinn_mod):
    """The guards refuse only what the kernels cannot take: the public ops' own calls
    (batch norm forward and backward, adaptive pooling's and grid_sample's gradients,
    nn.MultiheadAttention's fast path) give CPU's results."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5)
    bn = torch.nn.BatchNorm2d(3)
    grid = torch.rand(4, 2, 2, 2) * 2 - 1
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    q = torch.randn(2, 3, 8)

    def run(dev):
        xs = x.to(dev, copy=True).requires_grad_()
        b = bn.to(dev).train()
        y = b(xs)
        y = torch.nn.functional.adaptive_avg_pool2d(y, 2)
        y = torch.nn.functional.grid_sample(y, grid.to(dev), align_corners=False)
        y.sum().backward()
        with torch.no_grad():
            m = mha.to(dev)(q.to(dev), q.to(dev), q.to(dev), need_weights=False)[0]
        return [t.detach().cpu().clone() for t in (y, xs.grad, b.running_mean, m)]

    want = run("cpu")
    bn.running_mean.zero_()
    bn.running_var.fill_(1)
    bn.num_batches_tracked.zero_()
    for g, w in zip(run(R), want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_quantization_observers_are_refused_at_the_call(djinn_mod):
    x = r(4, 8)
    with pytest.raises(
        djinn_mod.RemoteError,
        match="_fused_moving_avg_obs_fq_helper is refused by the server's operator policy: "
        "its kernel trusts the shapes of its statistics",
    ):
        torch.fused_moving_avg_obs_fake_quant(
            x,
            ones(1, dtype=torch.long),
            ones(1, dtype=torch.long),
            r(1),
            r(1),
            ones(1),
            torch.zeros(1, dtype=torch.int32, device=R),
            0.01,
            0,
            255,
            0,
        )
