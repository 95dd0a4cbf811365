"""HybridLM on CUDA with the reference kernels: bf16 training steps and decoding for every
layer symbol, merge variant and MoE variant. (The fast kernels get their own tests.)"""

import pytest
import torch

from hybridnas import HybridLM
from hybridnas.model import CUDAGraphStep, GraphCaptureError
from specs import SPECS, VOCAB

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", SPECS)
def test_bf16_forward_backward_on_cuda(name):
    model = HybridLM(SPECS[name]).cuda()
    tokens = torch.randint(0, VOCAB, (4, 65), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model.loss(tokens)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", SPECS)
def test_decode_matches_forward_on_cuda(name):
    """fp32 on the GPU: tight; bf16 weights and cache: bf16 tolerance."""
    model = HybridLM(SPECS[name]).cuda().eval()
    tokens = torch.randint(0, VOCAB, (2, 21), device="cuda")
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 5e-2)):
        model = model.to(dtype)
        with torch.no_grad():
            full = model(tokens).float()
        cache = model.allocate_cache(2, 21)
        stepped = torch.stack([model.step(tokens[:, i], cache) for i in range(21)], dim=1).float()
        scale = full.abs().max()
        torch.testing.assert_close(stepped / scale, full / scale, rtol=0, atol=tol)


def _prefilled_twice(name: str):
    """The bf16 model of SPECS[name], 21 random tokens for 2 sequences, and two caches each
    prefilled with the first 8: one for the eager step, one for the graphed step."""
    model = HybridLM(SPECS[name]).cuda().to(torch.bfloat16).eval()
    tokens = torch.randint(0, VOCAB, (2, 21), device="cuda")
    caches = [model.allocate_cache(2, 21) for _ in range(2)]
    with torch.no_grad():
        for cache in caches:
            model(tokens[:, :8], cache)
    return model, tokens, caches


@pytest.mark.parametrize("name", [n for n in SPECS if not n.startswith("moe")])
def test_cuda_graph_decode_matches_eager_decode(name):
    """After a prefill, the graphed step gives the eager step's logits token for token,
    through the window's ring-buffer wrap-around (window 5, 13 decoded tokens)."""
    model, tokens, caches = _prefilled_twice(name)
    graphed = CUDAGraphStep(model, caches[1])
    for i in range(8, 21):
        eager = model.step(tokens[:, i], caches[0])
        torch.testing.assert_close(graphed(tokens[:, i]).float(), eager.float(), rtol=1e-2, atol=1e-2)
    assert caches[1].pos == 21
    with pytest.raises(ValueError, match="cache is full"):
        graphed(tokens[:, 0])


def test_cuda_graph_refuses_moe():
    model = HybridLM(SPECS["moe-0"]).cuda().eval()
    with pytest.raises(GraphCaptureError, match="MoE"):
        CUDAGraphStep(model, model.allocate_cache(1, 8))


@pytest.mark.parametrize("name", ["inter", "intra-0-sub"])
def test_compiled_cuda_graph_decode_matches_eager_decode(name):
    """compile=True (every block symbol: M, *, W, H, -): the compiled, graphed step follows
    the eager step through 13 tokens and the window's wrap-around. bf16 tolerance relative
    to the logits: inductor rounds to bf16 once per fused kernel, the eager step once per op."""
    model, tokens, caches = _prefilled_twice(name)
    graphed = CUDAGraphStep(model, caches[1], compile=True)
    assert graphed.compiled, graphed.why_not_compiled
    for i in range(8, 21):
        eager = model.step(tokens[:, i], caches[0]).float()
        scale = eager.abs().max()
        torch.testing.assert_close(graphed(tokens[:, i]).float() / scale, eager / scale, rtol=0, atol=5e-2)
