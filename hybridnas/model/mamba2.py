"""The Mamba-2 mixer ``M`` (Dao & Gu 2024), laid out like mamba_ssm's ``Mamba2`` so weights
map one to one: in_proj -> causal conv -> SSD -> gated RMSNorm -> out_proj."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.types import Device

from hybridnas import kernels
from hybridnas.kernels.conv import conv_state_from_prefix
from hybridnas.kernels.ssd import step_sizes
from hybridnas.model.cache import Mamba2Cache
from hybridnas.model.flags import NO_WEIGHT_DECAY, RESIDUAL_OUT, set_flag
from hybridnas.model.norms import GatedRMSNorm
from hybridnas.search_space import ArchSpec

__all__ = ["Mamba2"]

# mamba_ssm's defaults: dt ~ log-uniform in [1e-3, 1e-1] (floored at 1e-4); A ~ U[1, 16]
DT_MIN, DT_MAX, DT_FLOOR = 1e-3, 1e-1, 1e-4
A_INIT_RANGE = (1.0, 16.0)


class Mamba2(nn.Module):
    """[batch, T, d_model] -> [batch, T, d_model].

    Channels: d_inner = expand * d_model, split into n_heads heads of ssm.head_dim, each
    with its own decay A and step dt; B and C (d_state each) are shared by groups of heads.
    The intra-layer hybrid reuses it as its SSM branch with a narrower ``d_inner`` and no
    output projection (then the output is [batch, T, d_inner])."""

    def __init__(
        self, d_model: int, *, layer_idx: int, spec: ArchSpec, d_inner: int | None = None, out_proj: bool = True
    ) -> None:
        super().__init__()
        s = spec.ssm
        self.layer_idx = layer_idx
        self.d_inner = d_inner or spec.dims.d_ssm
        self.head_dim, self.d_state, self.n_groups = s.head_dim, s.d_state, s.n_groups
        self.n_heads = self.d_inner // s.head_dim
        self.chunk_size = s.chunk_size
        self.conv_dim = self.d_inner + 2 * s.n_groups * s.d_state  # x, B and C go through the conv

        self.in_proj = nn.Linear(d_model, self.d_inner + self.conv_dim + self.n_heads, bias=False)  # z, xBC, dt
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, s.conv_kernel, groups=self.conv_dim, bias=True)
        self.dt_bias = nn.Parameter(torch.empty(self.n_heads))
        self.A_log = nn.Parameter(torch.empty(self.n_heads))
        self.D = nn.Parameter(torch.empty(self.n_heads))
        self.norm = GatedRMSNorm(self.d_inner, group_size=self.d_inner // s.n_groups)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False) if out_proj else None
        if self.out_proj is not None:
            set_flag(self.out_proj, RESIDUAL_OUT)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """dt_bias = softplus^-1(dt) with dt log-uniform; A = -exp(A_log) with A ~ U[1, 16]; D = 1."""
        dt = torch.exp(torch.rand(self.n_heads) * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN))
        dt = dt.clamp(min=DT_FLOOR)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log.copy_(torch.log(torch.empty(self.n_heads).uniform_(*A_INIT_RANGE)))
        self.D.fill_(1.0)
        for p in (self.dt_bias, self.A_log, self.D):
            set_flag(p, NO_WEIGHT_DECAY)

    def _split(self, zxbcdt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """in_proj's output [..., d_inner + conv_dim + H] -> z [..., d_inner], xBC [..., conv_dim], dt [..., H]."""
        z, xbc, dt = torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.n_heads], dim=-1)
        return z, xbc, dt

    def _ssm_inputs(self, xbc: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Split the conv output [..., conv_dim] into x [..., H, P], B and C [..., G, N]; A [H]."""
        gn = self.n_groups * self.d_state
        x, B, C = torch.split(xbc, [self.d_inner, gn, gn], dim=-1)
        x = torch.unflatten(x, -1, (self.n_heads, self.head_dim))
        B = torch.unflatten(B, -1, (self.n_groups, self.d_state))
        C = torch.unflatten(C, -1, (self.n_groups, self.d_state))
        A = -torch.exp(self.A_log.float())
        return x, A, B, C

    def _out(self, y: Tensor, z: Tensor) -> Tensor:
        """y, z [..., d_inner] -> [..., d_model] (or [..., d_inner] without out_proj)."""
        y = self.norm(y, z)
        if self.out_proj is None:
            return y
        out: Tensor = self.out_proj(y)
        return out

    def forward(self, u: Tensor, cache: Mamba2Cache | None = None) -> Tensor:
        """u [batch, T, d_model]; with ``cache`` (empty), also fills it: a prefill."""
        batch, t, _ = u.shape
        z, xbc, dt = self._split(self.in_proj(u))
        xbc = xbc.transpose(1, 2)  # [batch, conv_dim, T]
        if cache is not None:
            cache.conv.copy_(conv_state_from_prefix(xbc, cache.conv.shape[-1]))
        xbc = kernels.causal_conv1d(xbc, self.conv1d.weight.squeeze(1), self.conv1d.bias, "silu").transpose(1, 2)
        x, A, B, C = self._ssm_inputs(xbc)
        # the raw dt: the scan takes softplus(dt + dt_bias) itself (in its dt kernel, on CUDA)
        y, final_state = kernels.ssd_scan(
            x, dt, A, B, C, D=self.D, chunk_size=self.chunk_size, dt_bias=self.dt_bias, dt_softplus=True
        )
        if cache is not None:
            cache.ssm.copy_(final_state)
        return self._out(y.flatten(-2), z)

    def allocate_cache(
        self, batch: int, max_len: int, *, device: Device = None, dtype: torch.dtype | None = None
    ) -> Mamba2Cache:
        """Constant in ``max_len``: the SSM state [batch, H, P, N] and the last K conv inputs
        [batch, conv_dim, K], zeroed."""
        conv = torch.zeros(batch, self.conv_dim, self.conv1d.kernel_size[0], device=device, dtype=dtype)
        ssm = torch.zeros(batch, self.n_heads, self.head_dim, self.d_state, device=device, dtype=dtype)
        return Mamba2Cache(conv, ssm)

    def step(self, u: Tensor, cache: Mamba2Cache, position: Tensor | None = None) -> Tensor:
        """One token u [batch, d_model] -> [batch, d_model]; advances the cache in place.
        (``position`` is unused: the state carries all that is needed.)"""
        z, xbc, dt = self._split(self.in_proj(u))
        xbc = kernels.causal_conv1d_step(xbc, cache.conv, self.conv1d.weight.squeeze(1), self.conv1d.bias, "silu")
        x, A, B, C = self._ssm_inputs(xbc)
        y = kernels.ssd_step(cache.ssm, x, step_sizes(dt, self.dt_bias, dt_softplus=True), A, B, C, D=self.D)
        return self._out(y.flatten(-2), z)
