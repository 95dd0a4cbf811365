"""One numeric op with swappable implementations, chosen once per process.

Every op has a plain-PyTorch ``reference``; fast backends (Triton, CUDA packages) register
beside it under the same signature and :meth:`Op.select` picks one, with the reason that
``backends()`` and ``hybridnas doctor`` report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Op"]


@dataclass
class Op:
    name: str
    reference: Callable[..., Any]
    implementations: dict[str, Callable[..., Any]] = field(default_factory=dict)
    backend: str = "reference"
    reason: str = "plain PyTorch reference (no fast backend registered)"

    def __post_init__(self) -> None:
        self.implementations["reference"] = self.reference

    def select(self, backend: str, reason: str) -> None:
        if backend not in self.implementations:
            raise ValueError(
                f"kernel {self.name}: unknown backend {backend!r}, expected one of {', '.join(self.implementations)}"
            )
        self.backend, self.reason = backend, reason

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.implementations[self.backend](*args, **kwargs)

    @contextmanager
    def replaced_by(self, fn: Callable[..., Any]) -> Iterator[None]:
        """Route calls to ``fn`` inside the block (FLOP counting traces an opaque op)."""
        saved = dict(self.implementations), self.backend
        self.implementations["replacement"], self.backend = fn, "replacement"
        try:
            yield
        finally:
            self.implementations, self.backend = saved
