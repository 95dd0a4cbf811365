"""``HybridLM``: a language model assembled from a layout pattern.

    tokens -> embedding -> [x = x + layer(RMSNorm(x)) for each symbol] -> RMSNorm -> LM head

One table, ``LAYERS``, maps each pattern symbol to its module class. The model is plain
single-device PyTorch: precision, compilation and parallelism belong to the trainer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeAlias, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.types import Device

from hybridnas import kernels
from hybridnas.model.attention import Attention, SlidingWindowAttention
from hybridnas.model.cache import LayerCache, LMCache
from hybridnas.model.ffn import SwiGLU
from hybridnas.model.flags import RESIDUAL_OUT
from hybridnas.model.hybrid import ParallelHybrid
from hybridnas.model.mamba2 import Mamba2
from hybridnas.model.moe import MoE
from hybridnas.model.norms import RMSNorm
from hybridnas.search_space import ArchSpec

__all__ = ["HybridLM", "LAYERS", "LMLoss", "Block"]

LAYERS: dict[str, type[nn.Module]] = {
    "M": Mamba2,
    "*": Attention,
    "W": SlidingWindowAttention,
    "H": ParallelHybrid,
    "-": SwiGLU,
    "E": MoE,
}
MIXERS = frozenset("M*WH")  # the layers with a decode cache


class Mixer(Protocol):
    """What :class:`Block` uses of a mixer layer (``MIXERS``) beyond ``nn.Module``. Each
    class takes its own cache type; ``Any`` here, since the symbol picks the class."""

    def __call__(self, x: Tensor, cache: Any = None, /) -> Tensor: ...

    def step(self, x: Tensor, cache: Any, position: Tensor, /) -> Tensor: ...

    def allocate_cache(
        self, batch: int, max_len: int, /, *, device: Device = None, dtype: torch.dtype | None = None
    ) -> LayerCache: ...


if TYPE_CHECKING:  # mypy checks that every mixer class implements Mixer; nothing runs
    _MIXER_CLASSES: tuple[type[Mixer], ...] = (Mamba2, Attention, SlidingWindowAttention, ParallelHybrid)

INIT_STD = 0.02


BlockStep: TypeAlias = "Callable[[Block, Tensor, LayerCache | None, Tensor], Tensor]"  # Block.step as a function


class LMLoss(NamedTuple):
    total: Tensor  # lm + aux: what to backpropagate
    lm: Tensor  # next-token cross-entropy, nats per token
    aux: Tensor  # MoE load-balancing loss (0 without aux-loss MoE layers)


class Block(nn.Module):
    """Pre-norm residual wrapper of one pattern symbol: x + layer(norm(x))."""

    def __init__(self, symbol: str, spec: ArchSpec, layer_idx: int) -> None:
        super().__init__()
        if symbol not in LAYERS:
            raise ValueError(f"pattern[{layer_idx}]={symbol!r}: no layer class, expected one of {' '.join(LAYERS)}")
        self.symbol = symbol
        self.norm = RMSNorm(spec.d_model)
        self.layer = LAYERS[symbol](spec.d_model, layer_idx=layer_idx, spec=spec)

    @property
    def mixer(self) -> Mixer:
        """``layer`` as a mixer; only for ``symbol in MIXERS``."""
        # LAYERS[symbol] decides the class, which a type checker cannot follow from the symbol
        return cast(Mixer, self.layer)

    def forward(self, x: Tensor, cache: LayerCache | None = None) -> tuple[Tensor, Tensor | None]:
        """x [batch, T, d_model] -> (x + layer(norm(x)), aux loss or None)."""
        h = self.norm(x)
        if self.symbol in MIXERS:
            return x + self.layer(h, cache), None
        if self.symbol == "E":
            y, aux = self.layer(h)
            return x + y, aux
        return x + self.layer(h), None

    def step(self, x: Tensor, cache: LayerCache | None, position: Tensor) -> Tensor:
        """One token x [batch, d_model] at ``position`` (0-d tensor) -> [batch, d_model]."""
        h = self.norm(x)
        if self.symbol in MIXERS:
            return x + self.mixer.step(h, cache, position)
        y = self.layer(h)
        out: Tensor = x + (y[0] if self.symbol == "E" else y)
        return out


class HybridLM(nn.Module):
    """A causal LM for ``spec``. Weights are a deterministic function of ``seed``.

    forward(tokens [batch, T]) -> logits [batch, T, vocab]
    loss(tokens [batch, T+1]) -> scalar: next-token cross-entropy + MoE auxiliary loss
    allocate_cache(batch, max_len) -> LMCache; step(tokens [batch], cache) -> logits [batch, vocab]
    """

    def __init__(self, spec: ArchSpec, *, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(spec, ArchSpec):
            raise TypeError(f"HybridLM needs an ArchSpec, got {type(spec).__name__}")
        self.spec = spec
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embed = nn.Embedding(spec.vocab_size, spec.d_model)
            self.blocks = nn.ModuleList(Block(symbol, spec, i) for i, symbol in enumerate(spec.pattern))
            self.norm = RMSNorm(spec.d_model)
            self.lm_head = None if spec.tie_embeddings else nn.Linear(spec.d_model, spec.vocab_size, bias=False)
            self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """N(0, 0.02) for every matrix; outputs that add to the residual stream get
        0.02 / sqrt(2 * n_layers) (GPT-2), so the stream's variance does not grow with depth.
        Mamba-2's dt, A, D and conv keep their own initialisation."""
        residual_std = INIT_STD / math.sqrt(2 * len(self.spec.pattern))

        def init(weight: Tensor, owner: object) -> None:
            residual = getattr(owner, RESIDUAL_OUT, False)
            nn.init.normal_(weight, 0.0, residual_std if residual else INIT_STD)

        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                init(module.weight, module)
            elif isinstance(module, MoE):
                for weight in (module.w_gate, module.w_up, module.w_down):
                    init(weight, weight)

    @property
    def typed_blocks(self) -> Iterable[Block]:
        """``blocks``, to a type checker as what it holds (nn.ModuleList yields nn.Module)."""
        return cast("Iterable[Block]", self.blocks)

    # ---- training ----------------------------------------------------------------------

    def _trunk(self, tokens: Tensor, cache: LMCache | None = None) -> tuple[Tensor, Tensor]:
        x = self.embed(tokens)
        aux = x.new_zeros((), dtype=torch.float32)
        for i, block in enumerate(self.blocks):
            x, layer_aux = block(x, cache.layers[i] if cache is not None else None)
            if layer_aux is not None:
                aux = aux + layer_aux
        return self.norm(x), aux

    @property
    def head_weight(self) -> Tensor:
        """The LM head's [vocab, d_model] matrix: the embedding's when tied."""
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def _logits(self, x: Tensor) -> Tensor:
        return F.linear(x, self.embed.weight) if self.lm_head is None else self.lm_head(x)

    def forward(self, tokens: Tensor, cache: LMCache | None = None) -> Tensor:
        """tokens [batch, T] -> logits [batch, T, vocab]. With an empty ``cache``, also fills
        it (a prefill), so decoding can continue with :meth:`step`."""
        if cache is not None and cache.pos != 0:
            raise ValueError(f"prefill needs an empty cache, this one holds {cache.pos} tokens")
        x, _ = self._trunk(tokens, cache)
        if cache is not None:
            cache.pos = tokens.shape[1]
            cache.position.fill_(cache.pos)
        return self._logits(x)

    def losses(self, tokens: Tensor, targets: Tensor | None = None) -> LMLoss:
        """Next-token loss. Without ``targets``, tokens [batch, T+1] predict their own next
        position; with them, tokens and targets are both [batch, T]."""
        if targets is None:
            tokens, targets = tokens[:, :-1], tokens[:, 1:]
        x, aux = self._trunk(tokens)
        # the head and the loss in one op: on CUDA the [B*T, vocab] logits never exist in full
        lm = kernels.linear_cross_entropy(x.flatten(0, 1), self.head_weight, targets.flatten())
        return LMLoss(lm + aux, lm, aux)

    def loss(self, tokens: Tensor, targets: Tensor | None = None) -> Tensor:
        """The scalar to backpropagate: cross-entropy plus MoE auxiliary loss."""
        return self.losses(tokens, targets).total

    @property
    def has_moe(self) -> bool:
        """Whether any layer routes tokens to experts (data-dependent shapes: no CUDA graphs)."""
        return any(isinstance(module, MoE) for module in self.modules())

    def update_moe_balance(self, rate: float = 1e-3) -> None:
        """After each optimiser step: aux-loss-free MoE bias update (no-op without such layers)."""
        for module in self.modules():
            if isinstance(module, MoE):
                module.update_balance(rate)

    # ---- decoding ----------------------------------------------------------------------

    def allocate_cache(
        self, batch: int, max_len: int, *, device: Device = None, dtype: torch.dtype | None = None
    ) -> LMCache:
        """Empty decode state for ``batch`` sequences of up to ``max_len`` tokens."""
        param = self.embed.weight
        device, dtype = device or param.device, dtype or param.dtype
        layers = [
            block.mixer.allocate_cache(batch, max_len, device=device, dtype=dtype) if block.symbol in MIXERS else None
            for block in self.typed_blocks
        ]
        return LMCache(layers, max_len, torch.zeros((), dtype=torch.long, device=device))

    @torch.no_grad()
    def step(self, tokens: Tensor, cache: LMCache) -> Tensor:
        """Decode one position: tokens [batch] -> logits [batch, vocab]; advances ``cache``."""
        if cache.pos >= cache.max_len:
            raise ValueError(f"cache is full: max_len={cache.max_len}")
        logits = self.step_on_device(tokens, cache)
        cache.pos += 1
        return logits

    @torch.no_grad()
    def step_on_device(self, tokens: Tensor, cache: LMCache, block_step: BlockStep | None = None) -> Tensor:
        """:meth:`step`'s device work alone: no bounds check and no host bookkeeping
        (``cache.pos`` is left to the caller), so it can be captured in a CUDA graph.
        ``block_step(block, x, layer_cache, position)``, when given, stands in for
        ``block.step`` (``CUDAGraphStep`` passes a compiled one)."""
        x = self.embed(tokens)
        for block, layer_cache in zip(self.typed_blocks, cache.layers, strict=True):
            if block_step is None:
                x = block.step(x, layer_cache, cache.position)
            else:
                x = block_step(block, x, layer_cache, cache.position)
        cache.position.add_(1)
        return self._logits(self.norm(x))
