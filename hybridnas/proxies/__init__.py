"""Everything that scores a candidate: FLOP cross-checks (``flops``), measured speed (``speed``),
synthetic recall tasks (``synthetic``, ``recall``) and long-context probes (``longctx``); import
each from its own module. The analytic cost model lives in :mod:`hybridnas.search_space.cost`."""
