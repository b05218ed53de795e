"""Hugging Face models on 'remote' against the same models on CPU (issue 9): greedy
decoding, seeded sampling, beam search, and fine-tuning a model whose embeddings are
tied (GPT-2's lm_head is its wte), all equal to CPU. Tiny models built from configs: no
hub access."""

import copy

import pytest
import torch
import transformers

from conftest import assert_close

pytestmark = pytest.mark.usefixtures("remote")

R = "remote"


def _gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=96,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return transformers.GPT2LMHeadModel(cfg).eval()


def _llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        tie_word_embeddings=True,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def pair(request):
    cpu = {"gpt2": _gpt2, "llama": _llama}[request.param]()
    return cpu, copy.deepcopy(cpu).to(R)


PROMPT = torch.tensor([[0, 5, 17, 42, 8], [0, 9, 3, 77, 21]])


def test_tied_weights_stay_one_parameter():
    cpu = _gpt2()
    n = len(list(cpu.parameters()))
    assert cpu.lm_head.weight is cpu.transformer.wte.weight
    rem = copy.deepcopy(cpu).to(R)
    assert rem.lm_head.weight is rem.transformer.wte.weight
    assert len(list(rem.parameters())) == n
    assert rem.lm_head.weight.device.type == "remote"
    # a CPU -> remote -> CPU round trip keeps the tie too
    back = rem.to("cpu")
    assert back.lm_head.weight is back.transformer.wte.weight
    assert_close(back.to(R).lm_head.weight, cpu.lm_head.weight)


def test_tied_weight_uploaded_once():
    import djinn

    cpu = _gpt2()
    wte = cpu.transformer.wte.weight.numel() * 4
    djinn.reset_bytes_moved()
    rem = copy.deepcopy(cpu).to(R)
    torch.remote.synchronize()
    total = sum(p.numel() * 4 for p in rem.parameters()) + sum(
        b.numel() * b.element_size() for b in rem.buffers()
    )
    sent = djinn.bytes_moved()["bytes_sent"]
    assert sent < total + wte // 2, (sent, total, wte)


def test_greedy_generate_equals_cpu(pair):
    cpu, rem = pair
    with torch.no_grad():
        exp = cpu.generate(PROMPT, max_new_tokens=8, do_sample=False)
        got = rem.generate(PROMPT.to(R), max_new_tokens=8, do_sample=False)
    assert_close(got, exp)


def test_seeded_sampling_equals_cpu(pair):
    """The server draws from the session's generator, seeded by torch.manual_seed: on a
    CPU server the stream is CPU's, so the sampled tokens are the same."""
    cpu, rem = pair
    kw = dict(max_new_tokens=8, do_sample=True, top_k=20, top_p=0.9, temperature=0.8)
    with torch.no_grad():
        torch.manual_seed(1234)
        exp = cpu.generate(PROMPT, **kw)
        torch.manual_seed(1234)
        got = rem.generate(PROMPT.to(R), **kw)
    assert_close(got, exp)


def test_beam_search_equals_cpu(pair):
    cpu, rem = pair
    kw = dict(max_new_tokens=6, num_beams=3, do_sample=False, num_return_sequences=2)
    with torch.no_grad():
        exp = cpu.generate(PROMPT, **kw)
        got = rem.generate(PROMPT.to(R), **kw)
    assert_close(got, exp)


def test_gpt2_tied_finetuning_equals_cpu():
    """Three SGD-with-momentum steps on GPT-2 (tied lm_head/wte): losses and every
    parameter equal CPU's after each step, and the tie holds throughout. (SGD: Adam's
    update g/sqrt(v) turns gradients of order 1e-9, where summation order decides the
    last bits, into steps of order lr.)"""
    cpu = _gpt2().train()
    rem = copy.deepcopy(cpu).to(R)
    ocpu = torch.optim.SGD(cpu.parameters(), lr=0.1, momentum=0.9)
    orem = torch.optim.SGD(rem.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(7)
    for step in range(3):
        ids = torch.randint(2, 96, (2, 12), generator=g)
        lc = cpu(ids, labels=ids).loss
        lr = rem(ids.to(R), labels=ids.to(R)).loss
        lc.backward()
        lr.backward()
        assert_close(lr, lc, rtol=1e-4, atol=1e-5)
        ocpu.step()
        orem.step()
        ocpu.zero_grad()
        orem.zero_grad()
        assert rem.lm_head.weight is rem.transformer.wte.weight
        for (n, pc), (_, pr) in zip(cpu.named_parameters(), rem.named_parameters()):
            assert_close(pr, pc.detach(), rtol=1e-4, atol=1e-5)
