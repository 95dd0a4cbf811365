"""The MoE FFN ``E``: routed SwiGLU experts plus optional shared experts, dropless.

Routing (per token): scores = softmax or sigmoid of the router logits; the top_k experts
are chosen by score (plus, for aux-loss-free balancing, a per-expert bias that only affects
the choice); the chosen scores weight the expert outputs, renormalised to sum to 1 when
top_k > 1 (with top_k = 1 that would make every weight 1 and cut the router's gradient).

Load balancing (``moe.balance``):
- ``aux_loss``: Switch Transformer's  coef * E * sum_i f_i * P_i  (f_i: share of routed
  slots on expert i; P_i: mean normalised score), returned for the trainer to add.
- ``aux_free``: DeepSeek-V3's bias. ``forward`` counts each expert's tokens while training;
  the trainer calls :meth:`MoE.update_balance` after each optimiser step, which moves every
  bias by ``rate`` towards equal load and resets the counts.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hybridnas import kernels
from hybridnas.model.ffn import SwiGLU
from hybridnas.model.flags import RESIDUAL_OUT, set_flag
from hybridnas.search_space import ArchSpec

__all__ = ["MoE"]

INIT_STD = 0.02


class MoE(nn.Module):
    """[..., d_model] -> ([..., d_model], aux_loss scalar)."""

    # buffers, registered in __init__ (declared here for type checkers)
    expert_bias: Tensor  # [E] aux-loss-free routing bias
    expert_load: Tensor  # [E] tokens per expert since the last update_balance

    def __init__(self, d_model: int, *, layer_idx: int, spec: ArchSpec) -> None:
        super().__init__()
        m = spec.moe
        self.layer_idx = layer_idx
        self.n_experts, self.top_k, self.router_kind = m.n_experts, m.top_k, m.router
        self.balance, self.aux_loss_coef = m.balance, m.aux_loss_coef
        self.router = nn.Linear(d_model, m.n_experts, bias=False)
        self.w_gate = nn.Parameter(torch.randn(m.n_experts, d_model, m.d_expert) * INIT_STD)
        self.w_up = nn.Parameter(torch.randn(m.n_experts, d_model, m.d_expert) * INIT_STD)
        self.w_down = nn.Parameter(torch.randn(m.n_experts, m.d_expert, d_model) * INIT_STD)
        set_flag(self.w_down, RESIDUAL_OUT)
        self.shared = (
            SwiGLU(d_model, layer_idx=layer_idx, spec=spec, d_ffn=m.n_shared * m.d_expert) if m.n_shared else None
        )
        # buffers, not parameters: moved by the balancing rule, not by gradients
        self.register_buffer("expert_bias", torch.zeros(m.n_experts))
        self.register_buffer("expert_load", torch.zeros(m.n_experts))

    def route(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [N, d_model] -> (expert ids [N, k], weights [N, k], scores [N, E])."""
        logits = self.router(x).float()
        scores = logits.softmax(-1) if self.router_kind == "softmax" else logits.sigmoid()
        choose_by = scores + self.expert_bias if self.balance == "aux_free" else scores
        experts = choose_by.topk(self.top_k, dim=-1).indices
        weights = scores.gather(-1, experts)
        if self.top_k > 1:
            weights = weights / weights.sum(-1, keepdim=True)
        return experts, weights, scores

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        flat = x.reshape(-1, x.shape[-1])
        experts, weights, scores = self.route(flat)
        # dropless dispatch: sort the N * k (token, expert) slots by expert
        slots = experts.flatten()
        order = slots.argsort(stable=True)
        token_of = order // self.top_k
        counts = slots.new_zeros(self.n_experts).index_add_(0, slots, torch.ones_like(slots))  # meta-friendly bincount
        out = kernels.expert_swiglu(flat[token_of], counts, self.w_gate, self.w_up, self.w_down)
        # combine in fp32: under autocast the experts' outputs are bf16, the stream is not
        out = out.float() * weights.flatten()[order].unsqueeze(-1)
        y = torch.zeros(flat.shape, dtype=torch.float32, device=flat.device).index_add_(0, token_of, out)
        if self.shared is not None:
            y = y + self.shared(flat)
        return y.to(x.dtype).view(x.shape), self._balance_loss(counts, scores)

    def _balance_loss(self, counts: Tensor, scores: Tensor) -> Tensor:
        if self.balance == "aux_loss":
            share = counts.float() / counts.sum()
            mean_score = (scores / scores.sum(-1, keepdim=True)).mean(0)
            return self.aux_loss_coef * self.n_experts * (share * mean_score).sum()
        if self.training:
            self.expert_load += counts.detach().float()
        return scores.new_zeros(())

    @torch.no_grad()
    def update_balance(self, rate: float = 1e-3) -> None:
        """Aux-loss-free balancing: raise the bias of under-loaded experts, lower the others'."""
        if self.balance != "aux_free":
            return  # (no check for an empty count: it would sync with the GPU every step)
        self.expert_bias += rate * torch.sign(self.expert_load.mean() - self.expert_load)
        self.expert_load.zero_()
