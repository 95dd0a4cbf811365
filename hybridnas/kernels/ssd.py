"""SSD, the scan of Mamba-2 (Dao & Gu 2024, "Transformers are SSMs"): reference implementations.

Per head h, with a scalar decay per step, the recurrence over time t is::

    state_t = exp(dt_t * A) * state_{t-1} + dt_t * outer(x_t, B_t)      state: [P, N]
    y_t     = state_t @ C_t + D * x_t

Shapes (mamba_ssm's conventions, so fast kernels share the interface):
    x  [batch, T, H, P]   inputs, H heads of P channels
    dt [batch, T, H]      step sizes, positive; or, with ``dt_bias`` [H] and ``dt_softplus``,
                          the raw projection, which the scan turns into softplus(dt + dt_bias)
    A  [H]                decay rates, negative
    B, C [batch, T, G, N] input/output projections, G groups shared by H/G heads each
    D  [H] or None        skip connection
    initial_state / final state [batch, H, P, N]

``ssd_chunked`` is the reference used for training: quadratic attention-like work inside
chunks of ``chunk_size`` steps, a linear recurrence across chunks. ``ssd_sequential`` is the
step-by-step oracle that tests compare against. ``ssd_step`` advances a decode cache by one
token, in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ssd_chunked", "ssd_sequential", "ssd_step", "step_sizes"]


def _heads(bc: Tensor, n_heads: int) -> Tensor:
    """[..., G, N] -> [..., H, N]: each group serves H/G consecutive heads."""
    return bc.repeat_interleave(n_heads // bc.shape[-2], dim=-2)


def _segsum(a: Tensor) -> Tensor:
    """[..., L] -> [..., L, L] with out[i, j] = a[j+1] + ... + a[i] for j <= i, else -inf.

    Built from masked cumulative sums rather than differences of one cumsum, which loses
    precision when the decays are large."""
    length = a.shape[-1]
    a = a.unsqueeze(-1).expand(*a.shape, length)  # [..., i, j] = a[i]
    ones = torch.ones(length, length, dtype=torch.bool, device=a.device)
    a = a.masked_fill(~torch.tril(ones, diagonal=-1), 0.0)
    sums = a.cumsum(dim=-2)  # sum over j < k <= i
    return sums.masked_fill(~torch.tril(ones), float("-inf"))


def _segsum_from_cumsum(a_cum: Tensor) -> Tensor:
    """:func:`_segsum` of ``a`` from its cumulative sum a_cum [..., L]: a_cum[i] - a_cum[j]
    for j <= i, else -inf. As mamba_ssm's kernels do, at a fraction of the masked cumsums'
    cost. The differences lose absolute precision ~ |a_cum| * 1e-7 (fp32); within one chunk
    |a_cum| is bounded by that chunk's decay, which keeps the loss far below the tests'
    tolerance against the recurrence, while the carry across a long sequence's chunks, whose
    sums grow without bound, keeps the masked form."""
    length = a_cum.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=a_cum.device).tril()
    return (a_cum.unsqueeze(-1) - a_cum.unsqueeze(-2)).masked_fill(~causal, float("-inf"))


def step_sizes(dt: Tensor, dt_bias: Tensor | None = None, dt_softplus: bool = False) -> Tensor:
    """dt [..., H] in fp32, + dt_bias [H] when given, through softplus when asked (Mamba-2's
    dt = softplus(W_dt u + bias)). The fast scan does the same inside its kernel."""
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    return F.softplus(dt) if dt_softplus else dt


def _pad_time(t: Tensor, pad: int) -> Tensor:
    """Zero-pad dim 1 (time) at the end. dt = 0 there means no decay and no input, so the
    padded steps leave the state unchanged."""
    return F.pad(t, [0, 0] * (t.dim() - 2) + [0, pad]) if pad else t


def ssd_chunked(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    initial_state: Tensor | None = None,
    chunk_size: int = 256,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
) -> tuple[Tensor, Tensor]:
    """Chunked SSD in plain PyTorch (fp32 inside). Returns (y [b, T, H, P], final_state [b, H, P, N])."""
    in_dtype = x.dtype
    b, t, h, p = x.shape
    x32, dt32, A32 = x.float(), step_sizes(dt, dt_bias, dt_softplus), A.float()
    Bh, Ch = _heads(B.float(), h), _heads(C.float(), h)  # [b, T, H, N]
    n = Bh.shape[-1]
    length = min(chunk_size, t)
    pad = (-t) % length
    xdt = _pad_time(x32 * dt32.unsqueeze(-1), pad)
    dt32, Bh, Ch = (_pad_time(v, pad) for v in (dt32, Bh, Ch))
    c = (t + pad) // length
    xdt = xdt.reshape(b, c, length, h, p)
    Bh, Ch = Bh.reshape(b, c, length, h, n), Ch.reshape(b, c, length, h, n)
    a = (dt32 * A32).reshape(b, c, length, h).permute(0, 3, 1, 2)  # [b, H, c, L] log-decays
    a_cum = a.cumsum(dim=-1)

    # 1. within each chunk: y_l = sum_{s <= l} C_l . B_s * decay(s -> l) * dt_s x_s
    decay = torch.exp(_segsum_from_cumsum(a_cum))  # [b, H, c, L, L]
    scores = torch.einsum("bclhn,bcshn->bhcls", Ch, Bh) * decay  # two contractions, in this order
    y = torch.einsum("bhcls,bcshp->bclhp", scores, xdt)

    # 2. each chunk's contribution to the state at its end
    decay_to_end = torch.exp(a_cum[..., -1:] - a_cum)  # [b, H, c, L]
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bh, decay_to_end, xdt)

    if c == 1 and initial_state is None:
        # one chunk from a zero state (training at T <= chunk_size): nothing enters the
        # chunk, and the state at its end is the final state
        final_state = chunk_states[:, 0]
    else:
        # 3. carry states across chunks: entering chunk z, the state is every earlier chunk's
        #    contribution (and the initial state) decayed through the chunks in between
        if initial_state is None:
            initial_state = x32.new_zeros(b, h, p, n)
        states = torch.cat([initial_state.float().unsqueeze(1), chunk_states], dim=1)  # [b, c+1, H, P, N]
        chunk_decay = torch.exp(_segsum(F.pad(a_cum[..., -1], (1, 0))))  # [b, H, c+1, c+1]
        states = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay, states)
        entering, final_state = states[:, :-1], states[:, -1]

        # 4. the entering state's effect on each position of its chunk
        y = y + torch.einsum("bclhn,bchpn,bhcl->bclhp", Ch, entering, torch.exp(a_cum))
    y = y.reshape(b, c * length, h, p)[:, :t]
    if D is not None:
        y = y + x32 * D.float()[:, None]
    return y.to(in_dtype), final_state.to(in_dtype)


def _recurrence(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """One step for all heads: state [b, H, P, N], x [b, H, P], dt [b, H], B/C [b, H, N]."""
    decay = torch.exp(dt * A)[..., None, None]
    state = state * decay + (dt.unsqueeze(-1) * x).unsqueeze(-1) * B.unsqueeze(-2)
    return torch.einsum("bhpn,bhn->bhp", state, C), state


def ssd_sequential(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The recurrence one step at a time: the oracle for tests. Same shapes as ssd_chunked."""
    b, t, h, p = x.shape
    Bh, Ch = _heads(B, h), _heads(C, h)
    state = x.new_zeros(b, h, p, B.shape[-1]) if initial_state is None else initial_state
    ys = []
    for i in range(t):
        y, state = _recurrence(state, x[:, i], dt[:, i], A, Bh[:, i], Ch[:, i])
        ys.append(y)
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + x * D[:, None]
    return y, state


def ssd_step(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None) -> Tensor:
    """Advance ``state`` [b, H, P, N] by one token in place; returns y [b, H, P].

    x [b, H, P], dt [b, H], B/C [b, G, N]."""
    h = x.shape[1]
    y, new_state = _recurrence(
        state.float(), x.float(), dt.float(), A.float(), _heads(B, h).float(), _heads(C, h).float()
    )
    state.copy_(new_state)
    if D is not None:
        y = y + x.float() * D.float()[:, None]
    return y.to(x.dtype)
