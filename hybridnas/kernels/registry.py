"""One numeric op with swappable implementations.

Every op has a plain-PyTorch ``reference`` that runs anywhere. A fast backend registers for
CUDA tensors under the same signature (:meth:`Op.register_cuda`); calls dispatch on the
device of the first tensor argument, so CPU tensors always take the reference.
``HYBRIDNAS_BACKEND_<OP>=reference`` (e.g. ``HYBRIDNAS_BACKEND_SSD_SCAN``) turns a fast
backend off; ``backends()`` and ``hybridnas doctor`` report each choice and why.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["Op"]


@dataclass
class Op:
    name: str
    reference: Callable[..., Any]
    cuda: Callable[..., Any] | None = None
    cuda_backend: str = "reference"
    reason: str = "plain PyTorch reference: no fast backend available"
    _replacement: Callable[..., Any] | None = None

    @property
    def env_var(self) -> str:
        return f"HYBRIDNAS_BACKEND_{self.name.upper()}"

    def register_cuda(self, backend: str, fn: Callable[..., Any], reason: str) -> None:
        """Use ``fn`` for CUDA tensors, unless the environment asks for the reference."""
        forced = os.environ.get(self.env_var)
        if forced is not None and forced != backend:
            self.reason = f"{self.env_var}={forced}: {backend} not used"
            return
        self.cuda, self.cuda_backend, self.reason = fn, backend, reason

    @property
    def backend(self) -> str:
        """The implementation CUDA tensors get (CPU tensors always get the reference)."""
        return self.cuda_backend if self.cuda is not None else "reference"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._replacement is not None:
            return self._replacement(*args, **kwargs)
        first = args[0] if args else next(iter(kwargs.values()), None)
        if self.cuda is not None and getattr(first, "is_cuda", False):
            return self.cuda(*args, **kwargs)
        return self.reference(*args, **kwargs)

    @contextmanager
    def replaced_by(self, fn: Callable[..., Any]) -> Iterator[None]:
        """Route every call to ``fn`` inside the block (FLOP counting traces an opaque op)."""
        saved, self._replacement = self._replacement, fn
        try:
            yield
        finally:
            self._replacement = saved
