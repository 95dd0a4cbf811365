"""CUDA fast paths against the references (outputs, states, gradients; dtype-aware
tolerances), and our Mamba-2 mixer against mamba-ssm's own module with the same weights."""

import pytest
import torch
import torch.nn.functional as F

import hybridnas.kernels as kernels
from hybridnas import ArchSpec
from hybridnas.kernels.attention import causal_attention as causal_attention_ref
from hybridnas.kernels.ssd import ssd_chunked, ssd_step
from hybridnas.model import Mamba2

pytestmark = pytest.mark.gpu

TOL = {torch.float32: {"rtol": 1e-3, "atol": 1e-3}, torch.bfloat16: {"rtol": 3e-2, "atol": 3e-2}}


def ssd_inputs(b=2, t=200, h=8, p=32, g=2, n=32, dtype=torch.float32, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device="cuda")

    return {
        "x": randn(b, t, h, p).to(dtype),
        "dt": F.softplus(randn(b, t, h) - 2.0),
        "A": -(0.5 + torch.rand(h, generator=gen, device="cuda")),
        "B": randn(b, t, g, n).to(dtype),
        "C": randn(b, t, g, n).to(dtype),
        "D": randn(h),
        "initial_state": randn(b, h, p, n),
    }


def test_backends_choose_triton_for_the_scan():
    report = kernels.backends()
    assert report["ssd_scan"]["backend"] == "triton", report["ssd_scan"]
    assert report["ssd_step"]["backend"] == "triton", report["ssd_step"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("t", "chunk"), [(200, 64), (256, 256), (100, 128)])
def test_triton_scan_matches_reference(dtype, t, chunk):
    inputs = ssd_inputs(t=t, dtype=dtype)
    y, state = kernels.ssd_scan(**inputs, chunk_size=chunk)
    y_ref, state_ref = ssd_chunked(**inputs, chunk_size=chunk)
    scale = y_ref.float().abs().max()
    torch.testing.assert_close(y.float() / scale, y_ref.float() / scale, **TOL[dtype])
    torch.testing.assert_close(state.float(), state_ref.float(), **TOL[dtype])


def test_triton_scan_gradients_match_reference():
    leaves = {k: v.detach().requires_grad_() for k, v in ssd_inputs(t=160).items()}
    weights = torch.randn(2, 160, 8, 32, device="cuda")
    grads = {}
    for name, fn in (("fast", kernels.ssd_scan), ("reference", ssd_chunked)):
        y, state = fn(**leaves, chunk_size=64)
        grads[name] = torch.autograd.grad((y * weights).sum() + state.sum(), list(leaves.values()))
    for key, fast, ref in zip(leaves, grads["fast"], grads["reference"], strict=True):
        scale = ref.abs().max()
        torch.testing.assert_close(fast / scale, ref / scale, rtol=2e-3, atol=2e-3, msg=key)


def test_non_power_of_two_chunks_fall_back_to_the_reference():
    inputs = ssd_inputs(t=50)
    y, _ = kernels.ssd_scan(**inputs, chunk_size=24)
    torch.testing.assert_close(y, ssd_chunked(**inputs, chunk_size=24)[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_state_update_matches_reference(dtype):
    inputs = ssd_inputs(t=6, dtype=dtype)
    state_fast = inputs["initial_state"].clone()
    state_ref = inputs["initial_state"].clone()
    for i in range(6):
        args = (inputs["x"][:, i], inputs["dt"][:, i], inputs["A"], inputs["B"][:, i], inputs["C"][:, i], inputs["D"])
        y = kernels.ssd_step(state_fast, *args)
        y_ref = ssd_step(state_ref, *args)
        torch.testing.assert_close(y.float(), y_ref.float(), **TOL[dtype])
    torch.testing.assert_close(state_fast, state_ref, **TOL[dtype])


# ---- attention ---------------------------------------------------------------------------


def test_backends_choose_flex_for_windows():
    assert kernels.backends()["causal_attention"]["backend"] == "flex"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("t", "window", "hq", "hkv"), [(300, 64, 4, 4), (256, 200, 8, 2), (1024, 128, 4, 1)])
def test_flex_window_attention_matches_reference(dtype, t, window, hq, hkv):
    """Outputs and the gradients of q, k and v, lengths that are and are not multiples of
    FlexAttention's 128-token blocks, windows smaller and larger than a block, GQA."""
    gen = torch.Generator(device="cuda").manual_seed(t + window)
    q, k, v = (
        torch.randn(2, h, t, 32, generator=gen, device="cuda").to(dtype).requires_grad_() for h in (hq, hkv, hkv)
    )
    weights = torch.randn(2, hq, t, 32, generator=gen, device="cuda")
    results = {}
    for name, fn in (("fast", kernels.causal_attention), ("reference", causal_attention_ref)):
        y = fn(q, k, v, window=window)
        results[name] = (y, *torch.autograd.grad((y.float() * weights).sum(), (q, k, v)))
    for what, fast, ref in zip(("y", "dq", "dk", "dv"), results["fast"], results["reference"], strict=True):
        scale = ref.float().abs().max()
        torch.testing.assert_close(fast.float() / scale, ref.float() / scale, **TOL[dtype], msg=what)


def test_masked_decode_matches_sliced_decode_on_cuda():
    gen = torch.Generator(device="cuda").manual_seed(3)
    q = torch.randn(3, 8, 1, 64, generator=gen, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(3, 2, 50, 64, generator=gen, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for n in (1, 17, 50):
        masked = kernels.attention_decode(q, k, v, torch.tensor(n, device="cuda"))
        torch.testing.assert_close(masked.float(), kernels.attention_decode(q, k, v, n).float(), **TOL[torch.bfloat16])


# ---- our Mamba2 against mamba-ssm's ---------------------------------------------------------


def _mamba_ssm_mamba2(spec: ArchSpec, dtype):
    from hybridnas.kernels.cuda import import_mamba_ssm_models

    TheirMamba2 = import_mamba_ssm_models().Mamba2

    s = spec.ssm
    return TheirMamba2(
        spec.d_model, d_state=s.d_state, d_conv=s.conv_kernel, expand=s.expand, headdim=s.head_dim,
        ngroups=s.n_groups, chunk_size=s.chunk_size, use_mem_eff_path=False, layer_idx=0,
        device="cuda", dtype=dtype,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_our_mamba2_reproduces_mamba_ssm_given_the_same_weights(dtype):
    """The parameter names and layouts match one to one: the weight mapping is the identity."""
    spec = ArchSpec.from_pattern("M", d_model=256, ssm={"d_state": 64, "n_groups": 2, "chunk_size": 64})
    ours = Mamba2(spec.d_model, layer_idx=0, spec=spec).to("cuda", dtype)
    theirs = _mamba_ssm_mamba2(spec, dtype)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    theirs.load_state_dict(ours.state_dict())
    u = torch.randn(2, 300, spec.d_model, device="cuda", dtype=dtype)
    with torch.no_grad():
        y_ours, y_theirs = ours(u), theirs(u)
    scale = y_theirs.float().abs().max()
    torch.testing.assert_close(y_ours.float() / scale, y_theirs.float() / scale, **TOL[dtype])

    # decode: the same cache layout (conv state of K inputs, SSM state [H, P, N])
    cache = ours.allocate_cache(2, 16, device="cuda", dtype=dtype)
    conv_state, ssm_state = theirs.allocate_inference_cache(2, 16, dtype=dtype)
    with torch.no_grad():
        for i in range(8):
            step_ours = ours.step(u[:, i], cache, i)
            step_theirs, conv_state, ssm_state = theirs.step(u[:, i : i + 1], conv_state, ssm_state)
            torch.testing.assert_close(step_ours.float() / scale, step_theirs[:, 0].float() / scale, **TOL[dtype])
