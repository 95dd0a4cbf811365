"""Everything that scores a candidate. ``cost`` is analytic and needs no torch; import the
heavier proxies (FLOP cross-checks, speed, recall tasks) from their own modules."""

from hybridnas.proxies.cost import CostReport, LayerCost, cost, train_flops_per_token

__all__ = ["cost", "CostReport", "LayerCost", "train_flops_per_token"]
