"""CUDA fast paths against the references (outputs, states, gradients; dtype-aware
tolerances), and our Mamba-2 mixer against mamba-ssm's own module with the same weights."""

import pytest
import torch
import torch.nn.functional as F

import hybridnas.kernels as kernels
from hybridnas import ArchSpec
from hybridnas.kernels.attention import causal_attention as causal_attention_ref
from hybridnas.kernels.conv import causal_conv1d as causal_conv1d_ref
from hybridnas.kernels.conv import causal_conv1d_step as causal_conv1d_step_ref
from hybridnas.kernels.loss import linear_cross_entropy as linear_cross_entropy_ref
from hybridnas.kernels.norm import gated_rms_norm as gated_rms_norm_ref
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


# ---- the Mamba-2 glue and the LM head: scan with dt bias, conv, gated norm, fused loss -------

GRAD_TOL = {torch.float32: {"rtol": 2e-3, "atol": 2e-3}, torch.bfloat16: {"rtol": 5e-2, "atol": 5e-2}}


def _close(fast, ref, tol, what):
    """Relative to the reference's largest magnitude, as mamba_ssm's tests compare."""
    scale = ref.float().abs().max()
    torch.testing.assert_close(fast.float() / scale, ref.float() / scale, **tol, msg=what)


def _run(fn, leaves, weights):
    """fn's outputs and the gradients of a weighted sum of them with respect to ``leaves``."""
    out = fn(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    loss = sum((o.float() * w).sum() for o, w in zip(outs, weights, strict=True))
    return outs, torch.autograd.grad(loss, leaves)


def _compare(fast, ref, leaves, weights, dtype, names):
    (outs, grads), (outs_ref, grads_ref) = _run(fast, leaves, weights), _run(ref, leaves, weights)
    for i, (o, o_ref) in enumerate(zip(outs, outs_ref, strict=True)):
        assert o.dtype == o_ref.dtype and o.shape == o_ref.shape, i
        _close(o, o_ref, TOL[dtype], f"output {i}")
    for name, g, g_ref in zip(names, grads, grads_ref, strict=True):
        assert g_ref.abs().max() > 0, name
        _close(g, g_ref, GRAD_TOL[dtype], f"grad {name}")


def test_backends_choose_the_fast_mamba2_and_loss_paths():
    report = kernels.backends()
    assert report["causal_conv1d"]["backend"] in ("causal-conv1d", "fla"), report["causal_conv1d"]
    assert report["causal_conv1d_step"]["backend"] == report["causal_conv1d"]["backend"]
    assert report["gated_rms_norm"]["backend"] == "triton", report["gated_rms_norm"]
    assert report["linear_cross_entropy"]["backend"] == "liger-kernel", report["linear_cross_entropy"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scan_with_dt_bias_and_softplus_matches_reference(dtype):
    """The model's call: the raw dt as a strided slice of the projection, dt_bias and softplus
    inside the scan; outputs, final state and the gradients of every input, dt_bias included."""
    inputs = ssd_inputs(t=200, dtype=dtype)
    gen = torch.Generator(device="cuda").manual_seed(1)
    h = inputs["A"].shape[0]
    projection = torch.randn(2, 200, h + 5, generator=gen, device="cuda").to(dtype)
    values = {**inputs, "dt": projection[..., 3 : 3 + h], "dt_bias": torch.randn(h, generator=gen, device="cuda") - 2}
    names = ["x", "dt", "A", "B", "C", "D", "initial_state", "dt_bias"]
    leaves = [values[k].detach().requires_grad_() for k in names]
    weights = [torch.randn(2, 200, h, 32, generator=gen, device="cuda"), torch.randn(2, h, 32, 32, device="cuda")]

    def scan(fn):
        return lambda *a: fn(*a[:7], chunk_size=64, dt_bias=a[7], dt_softplus=True)

    _compare(scan(kernels.ssd_scan), scan(ssd_chunked), leaves, weights, dtype, names)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_conv_matches_reference(dtype):
    """x as the model passes it, the [B, C, T] transpose of a slice of a [B, T, ...]
    projection; fp32 weight and bias (bf16 under autocast, as in training)."""
    gen = torch.Generator(device="cuda").manual_seed(2)
    projection = torch.randn(2, 300, 200, generator=gen, device="cuda").to(dtype)
    leaves = [
        projection[..., 10:170].detach().requires_grad_(),
        (torch.randn(160, 4, generator=gen, device="cuda") / 2).requires_grad_(),
        torch.randn(160, generator=gen, device="cuda").requires_grad_(),
    ]
    weights = [torch.randn(2, 160, 300, generator=gen, device="cuda")]

    def conv(fn):
        return lambda x, w, b: fn(x.transpose(1, 2), w, b, "silu")

    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        _compare(conv(kernels.causal_conv1d), conv(causal_conv1d_ref), leaves, weights, dtype, ["x", "weight", "bias"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_conv_step_matches_reference(dtype):
    gen = torch.Generator(device="cuda").manual_seed(3)
    weight = torch.randn(160, 4, generator=gen, device="cuda").to(dtype)
    bias = torch.randn(160, generator=gen, device="cuda").to(dtype)
    state = torch.randn(3, 160, 4, generator=gen, device="cuda").to(dtype)
    state_ref = state.clone()
    for _ in range(5):
        x = torch.randn(3, 170, generator=gen, device="cuda").to(dtype)[:, 5:165]  # a slice, as in the model
        y = kernels.causal_conv1d_step(x, state, weight, bias, "silu")
        _close(y, causal_conv1d_step_ref(x, state_ref, weight, bias, "silu"), TOL[dtype], "y")
    _close(state, state_ref, TOL[dtype], "state")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group_size", [64, 256])
def test_fast_gated_rms_norm_matches_reference(dtype, group_size):
    """z as in the model, a strided slice of the projection; outputs and grads of x, z, weight."""
    gen = torch.Generator(device="cuda").manual_seed(group_size)
    projection = torch.randn(2, 100, 700, generator=gen, device="cuda").to(dtype)
    leaves = [
        torch.randn(2, 100, 256, generator=gen, device="cuda").to(dtype).requires_grad_(),
        projection[..., 50:306].detach().requires_grad_(),
        torch.randn(256, generator=gen, device="cuda").requires_grad_(),
    ]
    weights = [torch.randn(2, 100, 256, generator=gen, device="cuda")]

    def norm(fn):
        return lambda x, z, w: fn(x, z, w, group_size, 1e-5)

    _compare(norm(kernels.gated_rms_norm), norm(gated_rms_norm_ref), leaves, weights, dtype, ["x", "z", "weight"])


def _liger_head_loss():
    """The fused head + loss itself (the registered op sends shapes this small to the reference)."""
    import importlib

    from hybridnas.kernels import custom_ops

    return custom_ops.linear_cross_entropy(importlib.import_module("liger_kernel.ops.fused_linear_cross_entropy"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_linear_cross_entropy_matches_reference(dtype):
    """Liger's fused head + loss: the loss and the gradients of x and weight (scaled by an
    incoming gradient of 2), with ignored targets; fp32, and bf16 autocast over fp32 x and
    weight as in training. Without grad mode the loss alone is the same."""
    fused = _liger_head_loss()
    gen = torch.Generator(device="cuda").manual_seed(4)
    leaves = [
        torch.randn(1000, 256, generator=gen, device="cuda").requires_grad_(),
        (torch.randn(5000, 256, generator=gen, device="cuda") / 16).requires_grad_(),
    ]
    targets = torch.randint(0, 5000, (1000,), generator=gen, device="cuda")
    targets[::7] = -100
    weights = [torch.tensor(2.0, device="cuda")]

    def head(fn):
        return lambda x, w: fn(x, w, targets)

    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        _compare(head(fused), head(linear_cross_entropy_ref), leaves, weights, dtype, "xw")
        with torch.no_grad():
            value, want = fused(*leaves, targets), linear_cross_entropy_ref(*leaves, targets)
            registered = kernels.linear_cross_entropy(*leaves, targets)
    assert value.shape == () and value.dtype == torch.float32
    _close(value, want, TOL[dtype], "no-grad loss")
    assert torch.equal(registered, want)  # 20 MB of logits: the registered op runs the reference


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


# ---- split-KV attention decode ---------------------------------------------------------------

DECODE_TOL = {**TOL, torch.float16: {"rtol": 5e-3, "atol": 5e-3}}


def _decode_inputs(batch, hq, hkv, slots, dtype, d=64, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (torch.randn(batch, h, n, d, generator=gen, device="cuda").to(dtype)
               for h, n in ((hq, 1), (hkv, slots), (hkv, slots)))
    return q, k, v


def _assert_decode_close(fast, ref, dtype, msg=""):
    """Relative to the output's largest entry: averaged over 32K random values, outputs are
    ~0.01, where an absolute tolerance would pass anything."""
    scale = ref.float().abs().max()
    torch.testing.assert_close(fast.float() / scale, ref.float() / scale, **DECODE_TOL[dtype], msg=msg)


def test_backends_choose_split_kv_for_decode():
    assert kernels.backends()["attention_decode"]["backend"] == "split-kv"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("batch", "hq", "hkv", "slots", "d"),
    [(1, 4, 4, 17, 64), (4, 12, 3, 2081, 64), (2, 6, 1, 32768, 64), (3, 16, 2, 5000, 128), (2, 4, 2, 300, 16)],
)
def test_split_kv_decode_matches_reference(dtype, batch, hq, hkv, slots, d):
    """Cache lengths of one block to 32K (one to 128 ranges), MHA and GQA ratios 4 and 6,
    every n_valid form: int, 0-d tensor, and per sequence ragged down to one slot."""
    from hybridnas.kernels.attention import attention_decode as reference

    q, k, v = _decode_inputs(batch, hq, hkv, slots, dtype, d, seed=slots)
    ragged = torch.linspace(1, slots, batch, device="cuda").long()
    for n_valid in (slots, max(1, slots // 3), torch.tensor(slots, device="cuda"), ragged):
        fast = kernels.attention_decode(q, k, v, n_valid)
        ref = reference(q, k, v, n_valid)
        assert fast.shape == ref.shape == (batch, hq, 1, d) and fast.dtype == dtype
        _assert_decode_close(fast, ref, dtype, msg=f"n_valid={n_valid}")


def test_split_kv_decode_reads_strided_query_heads():
    """Attention.step's query is a transposed view [batch, Hq, 1, d] of [batch, 1, Hq, d]."""
    from hybridnas.kernels.attention import attention_decode as reference

    q, k, v = _decode_inputs(2, 8, 2, 1000, torch.bfloat16)
    q = q.transpose(1, 2).contiguous().transpose(1, 2)
    n = torch.tensor([1000, 3], device="cuda")
    _assert_decode_close(kernels.attention_decode(q, k, v, n), reference(q, k, v, n), torch.bfloat16)


def test_split_kv_decode_inside_a_cuda_graph():
    """Captured once, replayed with new counts and cache contents: the same ranges, and
    each replay reads the counts from the device."""
    from hybridnas.kernels.attention import attention_decode as reference

    q, k, v = _decode_inputs(4, 12, 3, 8192, torch.bfloat16)
    n_valid = torch.tensor([8192, 100, 4097, 1], device="cuda")
    kernels.attention_decode(q, k, v, n_valid)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = kernels.attention_decode(q, k, v, n_valid)
    for step in range(3):
        fresh = _decode_inputs(4, 12, 3, 8192, torch.bfloat16, seed=step + 1)
        for static, value in zip((q, k, v), fresh, strict=True):
            static.copy_(value)
        n_valid.copy_(torch.tensor([8192 - step, 100 + step, 5000, 2 + step]))
        graph.replay()
        _assert_decode_close(out, reference(q, k, v, n_valid), torch.bfloat16, msg=f"replay {step}")
