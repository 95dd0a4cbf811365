"""Reference kernels against independently computed values.

SSD (chunked scan, decode step) against the step-by-step recurrence run in float64; the
causal conv against a Python loop; attention against an explicit softmax(QK^T/sqrt(d) + mask)V;
the MoE experts against a dense per-row SwiGLU; and the backend registry's bookkeeping.
Every oracle is computed in float64 from the same (float32 or bfloat16) input values, so the
comparisons measure only the kernel's own rounding.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import hybridnas.kernels as kernels
from hybridnas.kernels import attention, conv, loss, moe, norm, ssd
from hybridnas.kernels.attention import attention_decode, causal_attention, window_mask
from hybridnas.kernels.conv import causal_conv1d, causal_conv1d_step, conv_state_from_prefix
from hybridnas.kernels.loss import linear_cross_entropy
from hybridnas.kernels.moe import expert_swiglu
from hybridnas.kernels.norm import gated_rms_norm
from hybridnas.kernels.registry import Op
from hybridnas.kernels.ssd import ssd_chunked, ssd_sequential, ssd_step

F32 = {"rtol": 1e-5, "atol": 1e-5}  # fp32 kernel vs float64 oracle, values of order 1
F32_GRAD = {"rtol": 1e-4, "atol": 1e-5}  # gradients sum over more terms (longer reductions)


# ----------------------------------------------------------------------------- helpers


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randn(g, *shape, scale=1.0, dtype=torch.float32):
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


def ssd_inputs(seed=0, b=2, t=24, h=4, p=3, g=1, n=5, with_d=True, with_init=True, dt_shift=-2.0, a_scale=1.0):
    """Random SSD inputs in float32: dt = softplus(randn + dt_shift) > 0, A in -[0.5, 1.5] * a_scale.

    The defaults give per-step decays of ~0.9, so a step still matters ~20 steps later and
    the carry across chunks (and from the initial state) is exercised."""
    gen = _gen(seed)
    return {
        "x": _randn(gen, b, t, h, p),
        "dt": F.softplus(_randn(gen, b, t, h) + dt_shift),
        "A": -(0.5 + torch.rand(h, generator=gen)) * a_scale,
        "B": _randn(gen, b, t, g, n),
        "C": _randn(gen, b, t, g, n),
        "D": _randn(gen, h) if with_d else None,
        "initial_state": _randn(gen, b, h, p, n) if with_init else None,
    }


def _cast(inputs, dtype):
    return {k: None if v is None else v.to(dtype) for k, v in inputs.items()}


def per_head(inputs):
    """B and C spread to one group per head, written out here (head h uses group
    h // (H/G), the documented "G groups of H/G consecutive heads"), so that the oracle
    does not share the kernels' own group expansion."""
    h, g = inputs["x"].shape[2], inputs["B"].shape[2]
    group = torch.arange(h) // (h // g)
    return {**inputs, "B": inputs["B"][:, :, group], "C": inputs["C"][:, :, group]}


def oracle(inputs):
    """(y, final_state) of the step-by-step recurrence in float64, groups expanded per head."""
    return ssd_sequential(**per_head(_cast(inputs, torch.float64)))


def _leaves(inputs, dtype):
    """Fresh leaf tensors requiring grad (dt and A stay positive/negative: they are leaves
    holding valid values, not functions of unconstrained parameters)."""
    return {k: None if v is None else v.detach().to(dtype).requires_grad_() for k, v in inputs.items()}


def naive_conv(x, weight, bias, activation):
    """y[:, c, t] = sum_k w[c, k] * x[:, c, t-K+1+k] (zero before 0) + bias[c], then the activation."""
    b, ch, t = x.shape
    k = weight.shape[1]
    y = torch.zeros(b, ch, t, dtype=torch.float64)
    x64, w64 = x.double(), weight.double()
    for c in range(ch):
        for pos in range(t):
            acc = torch.zeros(b, dtype=torch.float64)
            for j in range(k):
                src = pos - k + 1 + j
                if src >= 0:
                    acc = acc + w64[c, j] * x64[:, c, src]
            if bias is not None:
                acc = acc + bias[c].double()
            y[:, c, pos] = acc
    if activation == "silu":
        y = y * torch.sigmoid(y)
    return y


def naive_attention(q, k, v, window=None):
    """softmax(QK^T / sqrt(d) + mask) V in float64, kv heads repeated for grouped queries
    (query head h uses kv head h // (Hq / Hkv)); mask allows j <= i and i - j < window."""
    q, k, v = q.double(), k.double(), v.double()
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    tq, tk = q.shape[2], k.shape[2]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    i = torch.arange(tq)[:, None]
    j = torch.arange(tk)[None, :]
    allowed = j <= i
    if window is not None:
        allowed = allowed & (i - j < window)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def attn_inputs(seed=0, b=2, hq=4, hkv=2, t=10, d=8):
    gen = _gen(seed)
    return _randn(gen, b, hq, t, d), _randn(gen, b, hkv, t, d), _randn(gen, b, hkv, t, d)


def moe_inputs(counts, seed=0, d=8, f=12):
    gen = _gen(seed)
    e, m = len(counts), sum(counts)
    return (
        _randn(gen, m, d),
        torch.tensor(counts, dtype=torch.long),
        _randn(gen, e, d, f, scale=d**-0.5),
        _randn(gen, e, d, f, scale=d**-0.5),
        _randn(gen, e, f, d, scale=f**-0.5),
    )


def dense_swiglu(x, counts, w_gate, w_up, w_down):
    """Each row with its own expert's weights, gathered per row (no split, no loop)."""
    expert = torch.repeat_interleave(torch.arange(len(counts)), counts)  # [M]
    gate = torch.einsum("md,mdf->mf", x, w_gate[expert])
    up = torch.einsum("md,mdf->mf", x, w_up[expert])
    return torch.einsum("mf,mfd->md", gate * torch.sigmoid(gate) * up, w_down[expert])


# ----------------------------------------------------------------------------- SSD


def test_ssd_sequential_is_the_documented_recurrence():
    """The oracle itself: ssd_sequential equals state_t = exp(dt_t A) state_{t-1} +
    dt_t outer(x_t, B_t), y_t = state_t C_t + D x_t, written out per batch, head and step."""
    inp = _cast(ssd_inputs(seed=1, b=2, t=6, h=4, p=3, g=2, n=5), torch.float64)
    x, dt, A, B, C, D, s0 = inp.values()
    y_want = torch.zeros_like(x)
    state_want = torch.zeros_like(s0)
    for b in range(2):
        for h in range(4):
            g = h // 2
            state = s0[b, h].clone()
            for t in range(6):
                state = torch.exp(dt[b, t, h] * A[h]) * state + dt[b, t, h] * torch.outer(x[b, t, h], B[b, t, g])
                y_want[b, t, h] = state @ C[b, t, g] + D[h] * x[b, t, h]
            state_want[b, h] = state
    y, state = ssd_sequential(**inp)
    torch.testing.assert_close(y, y_want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, state_want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 5, 6, 7, 8, 24, 64])
@pytest.mark.parametrize("n_groups", [1, 2])
@pytest.mark.parametrize(("with_d", "with_init"), [(False, False), (True, False), (False, True), (True, True)])
def test_ssd_chunked_matches_sequential(chunk_size, n_groups, with_d, with_init):
    """Chunked SSD (fp32) gives the recurrence's y and final state (float64 oracle), for
    chunk sizes that divide T=24 and that do not, with/without D, initial state, 1 or 2 groups."""
    inp = ssd_inputs(seed=chunk_size * 10 + n_groups, g=n_groups, with_d=with_d, with_init=with_init)
    y, state = ssd_chunked(**inp, chunk_size=chunk_size)
    y_ref, state_ref = oracle(inp)
    assert y.dtype == state.dtype == torch.float32
    assert y.shape == inp["x"].shape and state.shape == (2, 4, 3, 5)
    torch.testing.assert_close(y, y_ref.float(), **F32)
    torch.testing.assert_close(state, state_ref.float(), **F32)


@pytest.mark.parametrize(
    ("t", "chunk_size", "dt_shift", "a_scale"),
    [
        (1, 8, -2.0, 1.0),  # a single step
        (33, 8, -2.0, 1.0),  # several chunks plus a 1-step remainder
        (40, 16, 1.0, 5.0),  # strong decay: dt*A ~ -7 per step, cumulative sums near -250
    ],
)
def test_ssd_chunked_edge_lengths_and_strong_decay(t, chunk_size, dt_shift, a_scale):
    """Chunked SSD stays finite and matches the recurrence for T=1, a short last chunk, and
    decays strong enough that exp of whole-chunk sums underflows."""
    inp = ssd_inputs(seed=t, t=t, g=2, dt_shift=dt_shift, a_scale=a_scale)
    y, state = ssd_chunked(**inp, chunk_size=chunk_size)
    y_ref, state_ref = oracle(inp)
    assert torch.isfinite(y).all() and torch.isfinite(state).all()
    torch.testing.assert_close(y, y_ref.float(), **F32)
    torch.testing.assert_close(state, state_ref.float(), **F32)


@pytest.mark.parametrize("chunk_size", [1, 5, 8, 24, 64])
@pytest.mark.parametrize("n_groups", [1, 2])
def test_ssd_chunked_gradients_match_sequential(chunk_size, n_groups):
    """d/d(x, dt, A, B, C, D, initial_state) of a random weighted sum of y and the final
    state: chunked (fp32) equals the recurrence differentiated in float64."""
    inp = ssd_inputs(seed=100 + chunk_size, g=n_groups)
    gen = _gen(7)
    w_y = _randn(gen, *inp["x"].shape)
    w_s = _randn(gen, *inp["initial_state"].shape)
    names = list(inp)

    leaves = _leaves(inp, torch.float32)
    y, state = ssd_chunked(**leaves, chunk_size=chunk_size)
    grads = torch.autograd.grad((y * w_y).sum() + (state * w_s).sum(), [leaves[k] for k in names])

    leaves64 = _leaves(inp, torch.float64)
    y64, state64 = ssd_sequential(**per_head(leaves64))
    loss64 = (y64 * w_y.double()).sum() + (state64 * w_s.double()).sum()
    grads64 = torch.autograd.grad(loss64, [leaves64[k] for k in names])

    for name, got, want in zip(names, grads, grads64, strict=True):
        assert got.shape == inp[name].shape, name
        assert want.abs().max() > 0, name  # the input really affects the loss
        torch.testing.assert_close(got, want.float(), **F32_GRAD, msg=lambda m, name=name: f"grad {name}: {m}")


@pytest.mark.parametrize("chunk_size", [8, 64])
def test_ssd_chunked_takes_raw_dt_with_bias_and_softplus(chunk_size):
    """Given the raw dt, dt_bias and dt_softplus=True, the scan is the recurrence with
    dt = log(1 + exp(dt + bias)) (float64 oracle), gradients to dt and dt_bias included, and
    bit for bit the scan of softplus(dt.float() + bias.float()) done by the caller (the
    model's math before the scan took it over)."""
    inp = ssd_inputs(seed=40 + chunk_size, g=2)
    gen = _gen(41)
    inp["dt"] = _randn(gen, *inp["dt"].shape)  # raw: either sign
    dt_bias = _randn(gen, inp["A"].shape[0]) - 2.0
    y, state = ssd_chunked(**inp, chunk_size=chunk_size, dt_bias=dt_bias, dt_softplus=True)
    caller = {**inp, "dt": F.softplus(inp["dt"].float() + dt_bias.float())}
    assert all(torch.equal(a, b) for a, b in zip((y, state), ssd_chunked(**caller, chunk_size=chunk_size), strict=True))

    leaves = _leaves({**inp, "dt_bias": dt_bias}, torch.float32)
    y, state = ssd_chunked(**leaves, chunk_size=chunk_size, dt_softplus=True)
    leaves64 = _leaves(inp, torch.float64)
    bias64 = dt_bias.double().requires_grad_()
    y64, state64 = ssd_sequential(**per_head({**leaves64, "dt": torch.log1p(torch.exp(leaves64["dt"] + bias64))}))
    torch.testing.assert_close(y, y64.float(), **F32)
    torch.testing.assert_close(state, state64.float(), **F32)
    w = _randn(gen, *y.shape)
    got = torch.autograd.grad((y * w).sum() + state.sum(), [leaves["dt"], leaves["dt_bias"]])
    want = torch.autograd.grad((y64 * w.double()).sum() + state64.sum(), [leaves64["dt"], bias64])
    for name, g, wt in zip(("dt", "dt_bias"), got, want, strict=True):
        assert wt.abs().max() > 0, name
        torch.testing.assert_close(g, wt.float(), **F32_GRAD, msg=lambda m, name=name: f"grad {name}: {m}")


@pytest.mark.parametrize("chunk_size", [8, 64])
def test_ssd_chunked_bfloat16(chunk_size):
    """bf16 inputs give bf16 outputs within bf16 rounding of the oracle run on the same
    (upcast) values: the work inside is fp32, so only the final cast rounds."""
    inp = _cast(ssd_inputs(seed=3, g=2), torch.bfloat16)
    y, state = ssd_chunked(**inp, chunk_size=chunk_size)
    assert y.dtype == state.dtype == torch.bfloat16
    y_ref, state_ref = oracle(inp)
    for got, want in ((y, y_ref), (state, state_ref)):
        # bf16 keeps 8 significant bits, so one rounding is at most 2^-8 ~ 3.9e-3 relative:
        # allow one bf16 ulp (2^-7 ~ 7.8e-3), plus an absolute floor of 0.1% of the largest
        # value for entries near zero.
        torch.testing.assert_close(got.double(), want, rtol=8e-3, atol=1e-3 * want.abs().max().item())
        # one final rounding has a median relative error ~1e-3; carrying the scan in bf16
        # (no fp32 inside) gives ~4e-3
        assert ((got.double() - want).abs() / want.abs().clamp_min(1e-3)).median() < 2.5e-3


@pytest.mark.parametrize("n_groups", [1, 2])
@pytest.mark.parametrize("with_d", [False, True])
def test_ssd_step_reproduces_sequential(n_groups, with_d):
    """ssd_step token by token from an initial state gives the recurrence's y at every step
    and, in the state tensor it updates in place, its final state."""
    inp = ssd_inputs(seed=11 + n_groups, t=12, g=n_groups, with_d=with_d)
    y_ref, state_ref = oracle(inp)
    state = inp["initial_state"].clone()
    initial = state.clone()
    ptr = state.data_ptr()
    ys = []
    for i in range(inp["x"].shape[1]):
        y = ssd_step(state, inp["x"][:, i], inp["dt"][:, i], inp["A"], inp["B"][:, i], inp["C"][:, i], inp["D"])
        assert y.shape == (2, 4, 3) and y.dtype == torch.float32
        if i == 0:
            assert not torch.equal(state, initial)  # updated in place after the first token
        ys.append(y)
    assert state.data_ptr() == ptr
    torch.testing.assert_close(torch.stack(ys, dim=1), y_ref.float(), **F32)
    torch.testing.assert_close(state, state_ref.float(), **F32)


def test_ssd_step_continues_chunked_prefill():
    """Prefill with ssd_chunked, then decode the rest with ssd_step from its final state:
    together they give the recurrence over the whole sequence."""
    inp = ssd_inputs(seed=21, t=20, g=2)
    t0 = 13
    y_ref, state_ref = oracle(inp)
    prefix = {k: v[:, :t0] if k in ("x", "dt", "B", "C") else v for k, v in inp.items()}
    y_pre, state = ssd_chunked(**prefix, chunk_size=4)
    ys = [y_pre]
    for i in range(t0, 20):
        y = ssd_step(state, inp["x"][:, i], inp["dt"][:, i], inp["A"], inp["B"][:, i], inp["C"][:, i], inp["D"])
        ys.append(y[:, None])
    torch.testing.assert_close(torch.cat(ys, dim=1), y_ref.float(), **F32)
    torch.testing.assert_close(state, state_ref.float(), **F32)


# ----------------------------------------------------------------------------- conv


CONV_CASES = [(k, bias, act) for k in (2, 4) for bias in (False, True) for act in (None, "silu")]


def conv_inputs(k, with_bias, seed=0, b=2, c=3, t=9):
    gen = _gen(seed)
    return _randn(gen, b, c, t), _randn(gen, c, k), _randn(gen, c) if with_bias else None


@pytest.mark.parametrize(("k", "with_bias", "activation"), CONV_CASES)
def test_causal_conv1d_matches_loop(k, with_bias, activation):
    """causal_conv1d equals the definition written as a Python loop."""
    x, w, bias = conv_inputs(k, with_bias, seed=k)
    y = causal_conv1d(x, w, bias, activation)
    assert y.shape == x.shape
    torch.testing.assert_close(y, naive_conv(x, w, bias, activation).float(), **F32)


@pytest.mark.parametrize(("k", "with_bias", "activation"), CONV_CASES)
def test_causal_conv1d_step_from_zero_state(k, with_bias, activation):
    """Stepping through every position from a zero state gives the loop's outputs, and the
    state ends holding the last K inputs."""
    x, w, bias = conv_inputs(k, with_bias, seed=10 + k)
    want = naive_conv(x, w, bias, activation).float()
    state = torch.zeros(2, 3, k)
    for t in range(x.shape[-1]):
        torch.testing.assert_close(causal_conv1d_step(x[:, :, t], state, w, bias, activation), want[:, :, t], **F32)
    torch.testing.assert_close(state, x[:, :, -k:], rtol=0, atol=0)


@pytest.mark.parametrize("t0", [0, 1, 3, 4, 7])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_conv_state_from_prefix_then_step(t0, activation):
    """conv_state_from_prefix(x[..., :t0], K) then steps for the rest gives the loop's
    outputs at t0.. (K=4: prefixes shorter than, equal to and longer than K)."""
    k = 4
    x, w, bias = conv_inputs(k, True, seed=30 + t0)
    want = naive_conv(x, w, bias, activation).float()
    state = conv_state_from_prefix(x[..., :t0], k)
    assert state.shape == (2, 3, k)
    expected_state = torch.cat([torch.zeros(2, 3, max(0, k - t0)), x[..., max(0, t0 - k) : t0]], dim=-1)
    torch.testing.assert_close(state, expected_state, rtol=0, atol=0)
    state = state.clone()  # the prefix state may be a view of x; stepping writes into it
    for t in range(t0, x.shape[-1]):
        torch.testing.assert_close(causal_conv1d_step(x[:, :, t], state, w, bias, activation), want[:, :, t], **F32)


def test_causal_conv1d_rejects_unknown_activation():
    """An activation other than None or 'silu' is an error, not silently the identity."""
    x, w, _ = conv_inputs(3, False)
    with pytest.raises(ValueError, match="gelu"):
        causal_conv1d(x, w, None, "gelu")


# ----------------------------------------------------------------------------- attention


@pytest.mark.parametrize("window", [None, 1, 3, 9, 10, 15])  # T=10: smaller, equal, larger
@pytest.mark.parametrize(("hq", "hkv"), [(2, 2), (8, 2)])
def test_causal_attention_matches_naive(window, hq, hkv):
    """causal_attention equals softmax(QK^T/sqrt(d) + causal/window mask) V, global and
    sliding-window, with equal heads and 4 query heads per kv head."""
    q, k, v = attn_inputs(seed=hq + (window or 0), hq=hq, hkv=hkv)
    out = causal_attention(q, k, v, window=window)
    assert out.shape == q.shape
    torch.testing.assert_close(out, naive_attention(q, k, v, window).float(), **F32)


def test_window_mask_definition():
    """window_mask(T, w)[i, j] is True exactly when i - w < j <= i."""
    m = window_mask(6, 3, torch.device("cpu"))
    want = torch.tensor([[i - 3 < j <= i for j in range(6)] for i in range(6)])
    assert torch.equal(m, want)


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("t", [0, 4, 8])
def test_causal_attention_is_causal(window, t):
    """Changing q, k, v at positions > t leaves outputs at positions <= t unchanged (and
    does change later outputs); with a window, keys older than the window do not matter."""
    q, k, v = attn_inputs(seed=5, hq=8, hkv=2)
    out = causal_attention(q, k, v, window=window)
    gen = _gen(99)
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    for tensor in (q2, k2, v2):
        tensor[:, :, t + 1 :] = _randn(gen, *tensor[:, :, t + 1 :].shape, scale=10.0)
    out2 = causal_attention(q2, k2, v2, window=window)
    torch.testing.assert_close(out2[:, :, : t + 1], out[:, :, : t + 1], rtol=0, atol=1e-6)
    assert not torch.allclose(out2[:, :, t + 1 :], out[:, :, t + 1 :])
    if window is not None and t >= window:
        # row t sees keys t-w+1..t only: change everything older
        k3, v3 = k.clone(), v.clone()
        k3[:, :, : t - window + 1] = 50.0
        v3[:, :, : t - window + 1] = -50.0
        out3 = causal_attention(q, k3, v3, window=window)
        torch.testing.assert_close(out3[:, :, t], out[:, :, t], rtol=0, atol=1e-6)


@pytest.mark.parametrize(("hq", "hkv"), [(2, 2), (8, 2)])
def test_attention_decode_matches_row_t(hq, hkv):
    """A cache holding positions 0..t (later slots filled with garbage) queried with
    position t's query equals row t of causal attention."""
    q, k, v = attn_inputs(seed=40 + hq, hq=hq, hkv=hkv, t=9)
    ref = naive_attention(q, k, v).float()
    full = causal_attention(q, k, v)
    s = 12
    gen = _gen(1)
    k_cache = _randn(gen, 2, hkv, s, 8, scale=30.0)
    v_cache = _randn(gen, 2, hkv, s, 8, scale=30.0)
    for t in range(9):
        k_cache[:, :, t], v_cache[:, :, t] = k[:, :, t], v[:, :, t]
        out = attention_decode(q[:, :, t : t + 1], k_cache, v_cache, n_valid=t + 1)
        assert out.shape == (2, hq, 1, 8)
        torch.testing.assert_close(out[:, :, 0], ref[:, :, t], **F32)
        torch.testing.assert_close(out[:, :, 0], full[:, :, t], **F32)


@pytest.mark.parametrize(("hq", "hkv"), [(4, 4), (8, 2)])
def test_attention_decode_ring_buffer_window(hq, hkv):
    """A sliding-window ring buffer of S=window slots, position pos written at slot pos % S:
    decoding every position (including t > S, after wrap-around) equals windowed attention."""
    window, t_total = 4, 13
    q, k, v = attn_inputs(seed=50 + hq, hq=hq, hkv=hkv, t=t_total)
    ref = naive_attention(q, k, v, window).float()
    full = causal_attention(q, k, v, window=window)
    k_cache = torch.full((2, hkv, window, 8), float("nan"))  # unfilled slots must never be read
    v_cache = torch.full((2, hkv, window, 8), float("nan"))
    for pos in range(t_total):
        k_cache[:, :, pos % window], v_cache[:, :, pos % window] = k[:, :, pos], v[:, :, pos]
        out = attention_decode(q[:, :, pos : pos + 1], k_cache, v_cache, n_valid=min(pos + 1, window))
        torch.testing.assert_close(out[:, :, 0], ref[:, :, pos], **F32)
        torch.testing.assert_close(out[:, :, 0], full[:, :, pos], **F32)


@pytest.mark.parametrize(("hq", "hkv"), [(2, 2), (8, 2)])
def test_attention_decode_with_a_device_count_masks_unfilled_slots(hq, hkv):
    """n_valid as a tensor (the CUDA-graph form: fixed shapes, every slot read): 0-d or one
    count per sequence; large finite garbage in unfilled slots changes nothing."""
    q, k, v = attn_inputs(seed=60 + hq, hq=hq, hkv=hkv, t=9)
    gen = _gen(2)
    k_cache = _randn(gen, 2, hkv, 12, 8, scale=30.0)
    v_cache = _randn(gen, 2, hkv, 12, 8, scale=30.0)
    k_cache[:, :, :9], v_cache[:, :, :9] = k, v
    q_last = q[:, :, 8:9]
    for n in (1, 5, 9):
        masked = attention_decode(q[:, :, n - 1 : n], k_cache, v_cache, n_valid=torch.tensor(n))
        torch.testing.assert_close(masked, attention_decode(q[:, :, n - 1 : n], k_cache, v_cache, n_valid=n), **F32)
    per_sequence = attention_decode(q_last, k_cache, v_cache, n_valid=torch.tensor([9, 4]))
    torch.testing.assert_close(per_sequence[:1], attention_decode(q_last[:1], k_cache[:1], v_cache[:1], 9), **F32)
    torch.testing.assert_close(per_sequence[1:], attention_decode(q_last[1:], k_cache[1:], v_cache[1:], 4), **F32)


# ----------------------------------------------------------------------------- MoE experts


@pytest.mark.parametrize("counts", [[3, 0, 5, 2], [0, 4, 6, 1], [4, 3, 3, 0], [10, 0, 0, 0], [1, 1, 1, 1]])
def test_expert_swiglu_matches_dense(counts):
    """Each row gets its own expert's SwiGLU, also when some experts have no rows."""
    x, cnt, wg, wu, wd = moe_inputs(counts, seed=sum(i * c for i, c in enumerate(counts)))
    out = expert_swiglu(x, cnt, wg, wu, wd)
    assert out.shape == x.shape
    want = dense_swiglu(*(t.double() if t.is_floating_point() else t for t in (x, cnt, wg, wu, wd)))
    torch.testing.assert_close(out, want.float(), **F32)


@pytest.mark.parametrize("counts", [[3, 0, 5, 2], [0, 4, 6, 1]])
def test_expert_swiglu_gradients_match_dense(counts):
    """Gradients w.r.t. x and the three weight tensors equal the dense version's; the weights
    of an expert with no rows get zero gradient."""
    x, cnt, wg, wu, wd = moe_inputs(counts, seed=3)
    w_out = _randn(_gen(4), *x.shape)
    leaves = [t.clone().requires_grad_() for t in (x, wg, wu, wd)]
    got = torch.autograd.grad((expert_swiglu(leaves[0], cnt, *leaves[1:]) * w_out).sum(), leaves)
    leaves64 = [t.double().requires_grad_() for t in (x, wg, wu, wd)]
    want = torch.autograd.grad((dense_swiglu(leaves64[0], cnt, *leaves64[1:]) * w_out.double()).sum(), leaves64)
    for name, g, w in zip(("x", "w_gate", "w_up", "w_down"), got, want, strict=True):
        torch.testing.assert_close(g, w.float(), **F32, msg=lambda m, name=name: f"grad {name}: {m}")
    empty = counts.index(0)
    for g in got[1:]:
        assert torch.equal(g[empty], torch.zeros_like(g[empty]))


# ----------------------------------------------------------------------------- norm and loss


def naive_gated_rms_norm(x, z, weight, group_size, eps):
    """Per token and group of channels, written as loops in float64: y = x * z * sigmoid(z),
    y / sqrt(mean(y^2) + eps) * weight."""
    x64, z64, w64 = x.double(), z.double(), weight.double()
    y = x64 * z64 * torch.sigmoid(z64)
    out = torch.empty_like(y)
    for row in range(y.shape[0]):
        for start in range(0, y.shape[1], group_size):
            group = y[row, start : start + group_size]
            rms = math.sqrt(sum(v * v for v in group.tolist()) / group_size + eps)
            out[row, start : start + group_size] = group / rms * w64[start : start + group_size]
    return out


@pytest.mark.parametrize("group_size", [3, 12])
def test_gated_rms_norm_matches_naive(group_size):
    """gated_rms_norm equals the per-group loop (one group, and four groups of 3 channels),
    for [..., C] inputs with several leading dims, and keeps x's dtype."""
    gen = _gen(group_size)
    x, z = _randn(gen, 2, 3, 12), _randn(gen, 2, 3, 12)
    weight = _randn(gen, 12)
    y = kernels.gated_rms_norm(x, z, weight, group_size, 1e-5)
    assert y.shape == x.shape and y.dtype == torch.float32
    want = naive_gated_rms_norm(x.reshape(6, 12), z.reshape(6, 12), weight, group_size, 1e-5).reshape(2, 3, 12)
    torch.testing.assert_close(y, want.float(), **F32)
    assert gated_rms_norm(x.bfloat16(), z.bfloat16(), weight, group_size, 1e-5).dtype == torch.bfloat16


def naive_linear_cross_entropy(x, weight, targets):
    """mean over kept tokens (targets != -100) of logsumexp(l) - l[target], l = weight @ x, in float64."""
    x64, w64 = x.double(), weight.double()
    losses = []
    for row, target in enumerate(targets.tolist()):
        if target == -100:
            continue
        logits = [float(w64[v] @ x64[row]) for v in range(w64.shape[0])]
        top = max(logits)
        losses.append(top + math.log(sum(math.exp(v - top) for v in logits)) - logits[target])
    return sum(losses) / len(losses)


def test_linear_cross_entropy_matches_naive():
    """The head + loss equals the per-token formula, ignored targets left out of the mean,
    as a 0-d fp32 tensor, whose gradients are those of the float64 formula."""
    gen = _gen(5)
    x, weight = _randn(gen, 7, 6).requires_grad_(), _randn(gen, 11, 6).requires_grad_()
    targets = torch.tensor([3, 0, -100, 10, 5, -100, 1])
    value = kernels.linear_cross_entropy(x, weight, targets)
    assert value.shape == () and value.dtype == torch.float32
    assert value.item() == pytest.approx(naive_linear_cross_entropy(x.detach(), weight.detach(), targets), rel=1e-6)
    x64, w64 = x.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    kept = targets != -100
    want = F.cross_entropy((x64 @ w64.T)[kept], targets[kept])  # the formula's own autograd in float64
    assert want.item() == pytest.approx(value.item(), rel=1e-6)
    for got, wt in zip(torch.autograd.grad(value, [x, weight]), torch.autograd.grad(want, [x64, w64]), strict=True):
        torch.testing.assert_close(got, wt.float(), **F32_GRAD)
    assert linear_cross_entropy is kernels.linear_cross_entropy.reference



def test_the_head_loss_is_fused_only_where_its_fp32_logits_are_large():
    """A fused backend replaces the reference from 4 GiB of fp32 logits on: the benchmark's
    16K tokens x 50,304 (3.3 GB) stays on the faster reference, 32K x 50,304 does not."""
    assert not loss.worth_fusing(8 * 2048, 50304)
    assert loss.worth_fusing(16 * 2048, 50304)
    assert loss.worth_fusing(1 << 20, 1024) and not loss.worth_fusing((1 << 20) - 1, 1024)


# ----------------------------------------------------------------------------- registry

OP_NAMES = {
    "ssd_scan",
    "ssd_step",
    "causal_attention",
    "attention_decode",
    "causal_conv1d",
    "causal_conv1d_step",
    "expert_swiglu",
    "gated_rms_norm",
    "linear_cross_entropy",
}


def test_backends_report_reference_for_every_op():
    """backends() lists exactly the ops of OP_NAMES, each with a reason; without CUDA every op runs
    its reference, and each op's reference is the plain-PyTorch function of its module."""
    report = kernels.backends()
    assert set(report) == OP_NAMES
    for name, entry in report.items():
        if not torch.cuda.is_available():
            assert entry["backend"] == "reference", name
        assert isinstance(entry["reason"], str) and entry["reason"].strip(), name
    expected = {
        "ssd_scan": ssd.ssd_chunked,
        "ssd_step": ssd.ssd_step,
        "causal_attention": attention.causal_attention,
        "attention_decode": attention.attention_decode,
        "causal_conv1d": conv.causal_conv1d,
        "causal_conv1d_step": conv.causal_conv1d_step,
        "expert_swiglu": moe.expert_swiglu,
        "gated_rms_norm": norm.gated_rms_norm,
        "linear_cross_entropy": loss.linear_cross_entropy,
    }
    for name, fn in expected.items():
        assert kernels.OPS[name].reference is fn, name
        assert getattr(kernels, name) is kernels.OPS[name]


def test_op_call_routes_to_reference():
    """Calling an Op runs its reference: the conv op gives the loop's values."""
    x, w, bias = conv_inputs(3, True, seed=77)
    torch.testing.assert_close(kernels.causal_conv1d(x, w, bias, "silu"), naive_conv(x, w, bias, "silu").float(), **F32)


def test_replaced_by_routes_and_restores():
    """Inside replaced_by calls go to the replacement (with their arguments); after the
    block, normally or through an exception, the reference is back and the report unchanged."""
    op = kernels.causal_conv1d
    x, w, _ = conv_inputs(2, False, seed=8)
    want = naive_conv(x, w, None, None).float()
    before = kernels.backends()
    seen = []

    def replacement(*args, **kwargs):
        seen.append((args, kwargs))
        return "replaced"

    with op.replaced_by(replacement):
        assert op(x, w, activation=None) == "replaced"
        assert kernels.ssd_scan.backend == "reference"  # other ops untouched
    assert len(seen) == 1 and seen[0][0][0] is x and seen[0][1] == {"activation": None}
    assert kernels.backends() == before
    torch.testing.assert_close(op(x, w), want, **F32)

    with pytest.raises(RuntimeError, match="boom"):
        with op.replaced_by(replacement):
            assert op(x, w) == "replaced"
            raise RuntimeError("boom")
    assert kernels.backends() == before
    torch.testing.assert_close(op(x, w), want, **F32)


def test_cuda_backend_serves_only_cuda_tensors():
    """A registered CUDA backend never runs on CPU tensors; replaced_by overrides both."""
    op = Op("toy", lambda a: a + 1)
    op.register_cuda("fast", lambda a: a + 2, "testing")
    assert (op.backend, op.reason) == ("fast", "testing")
    assert op(torch.zeros(1)).item() == 1  # a CPU tensor takes the reference
    with op.replaced_by(lambda a: a + 3):
        assert op(torch.zeros(1)).item() == 3
    assert op(torch.zeros(1)).item() == 1 and op.backend == "fast"


def test_environment_can_keep_the_reference(monkeypatch):
    """HYBRIDNAS_BACKEND_<OP>=reference declines a fast backend, and the reason says so."""
    monkeypatch.setenv("HYBRIDNAS_BACKEND_TOY_OP", "reference")
    op = Op("toy_op", lambda a: a)
    op.register_cuda("triton", lambda a: a, "fast")
    assert op.backend == "reference" and op.cuda is None
    assert op.reason == "HYBRIDNAS_BACKEND_TOY_OP=reference: triton not used"


def test_ops_dispatch_on_keyword_only_calls():
    """Ops called with keywords only still find their tensor (to choose the device)."""
    x, w, bias = conv_inputs(3, True, seed=78)
    torch.testing.assert_close(
        kernels.causal_conv1d(x=x, weight=w, bias=bias, activation="silu"),
        naive_conv(x, w, bias, "silu").float(),
        **F32,
    )
