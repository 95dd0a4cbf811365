"""HybridLM on CUDA with the reference kernels: bf16 training steps and decoding for every
layer symbol, merge variant and MoE variant. (The fast kernels get their own tests.)"""

import pytest
import torch

from hybridnas import HybridLM
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
