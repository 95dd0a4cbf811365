"""Fidelity, measured: how far a study's cheap signals can be trusted to rank candidates.

Three questions, each answered over the candidates that *finished* (status ``complete``,
not a reused result, with a final ``val_loss``):

- **rungs**: does the loss at a rung (a fraction of the FLOP budget, where successive halving
  decides whom to stop) rank candidates as the final loss does? Kendall's τ-b and Spearman's
  ρ (``scipy.stats``) between each rung's losses and the final losses, over the finished
  candidates that recorded that rung. 1 means the rung ranks them exactly as the end does;
  0, no better than chance. Only finished candidates have a final loss, so this is measured
  on the survivors (and the never-stopped baselines): a pruned candidate that would have
  overtaken them cannot show up here.
- **seeds**: with ``seeds_per_candidate`` ≥ 2, is the spread between candidates larger than
  the spread between seeds of one candidate? See :class:`SeedSpread` for the definitions.
- **against**: do two studies (another budget, corpus or sequence length, say) rank the
  candidates they share, matched by ``spec_key`` (``ArchSpec.key``), alike on val_loss?
  With bootstrap 95% intervals.

The functions over rows are pure; :func:`load_fidelity` reads a study (read-only, like
:mod:`hybridnas.analysis.study`) and computes them all.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from hybridnas.analysis.study import load_study, stored_config
from hybridnas.errors import UserError

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "Agreement",
    "FidelityError",
    "FidelityReport",
    "Interval",
    "RungAgreement",
    "SeedSpread",
    "agreement_between",
    "finished",
    "load_fidelity",
    "rung_agreement",
    "seed_spread",
    "study_rung_fractions",
]

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
SEPARATION = 2.0  # a difference of means counts as real beyond this many standard errors


class FidelityError(UserError):
    """A fidelity question that cannot be answered on this input (no finished trials, fewer
    than two candidates to rank, nothing shared between two studies)."""


@dataclass(frozen=True)
class RungAgreement:
    """How one rung's losses rank the finished candidates against their final losses.
    ``kendall_tau``/``spearman`` are None when fewer than two candidates recorded the rung or
    the losses at it are all equal."""

    rung: int  # the rung's index in budget.rungs
    fraction: float  # budget.rungs[rung]; the index itself where the study's config is unknown
    kendall_tau: float | None
    spearman: float | None
    n: int


@dataclass(frozen=True)
class SeedSpread:
    """Seed noise against the differences between candidates, over the finished candidates
    with at least two per-seed losses (``metrics["val_loss_seeds"]``).

    - ``seed_std``: the mean over candidates of the sample std of their seeds' losses.
    - ``between_std``: the sample std of the candidates' means (the mean of their seeds).
    - ``ratio``: between_std / seed_std; well above 1, candidates differ by more than a reseed.
    - ``pooled_std``: the pooled within-candidate std, sqrt(Σ(kᵢ−1)sᵢ² / Σ(kᵢ−1)) for a
      candidate of kᵢ seeds with std sᵢ.
    - distinguishable: two candidates i, j are distinguishable from noise when
      |meanᵢ − meanⱼ| > 2 · pooled_std · sqrt(1/kᵢ + 1/kⱼ), twice the standard error of the
      difference of their means (≈ a 95% two-sided z-test). With two seeds each this is
      simply "more than 2× the pooled seed std apart".
      ``distinguishable_pairs`` of ``n_pairs`` pairs are; ``resolved`` candidates are
      distinguishable from every other one (their place in the ranking is not noise);
      ``tied_with_best`` candidates, the best included, are not distinguishable from the one
      with the lowest mean (the set a winner cannot be told apart from).
    """

    n_candidates: int
    seeds: int  # the most seeds a candidate has (the study's seeds_per_candidate)
    seed_std: float
    between_std: float
    ratio: float | None  # None when seed_std is 0
    pooled_std: float
    distinguishable_pairs: int
    n_pairs: int
    resolved: int
    tied_with_best: int

    def summary(self) -> str:
        """One line for the CLI, the report and the dashboard."""
        ratio = "-" if self.ratio is None else f"{self.ratio:.2f}"
        return (f"seeds: {self.n_candidates} candidates x up to {self.seeds} seeds; seed std {self.seed_std:.4f} "
                f"vs between-candidate std {self.between_std:.4f} (ratio {ratio}); {self.distinguishable_pairs}/"
                f"{self.n_pairs} pairs distinguishable (> 2 standard errors apart), {self.resolved} candidates "
                f"resolved, {self.tied_with_best} tied with the best")


@dataclass(frozen=True)
class Interval:
    """A bootstrap percentile interval (2.5%, 97.5%); None ends where no resample had a value."""

    low: float | None
    high: float | None


@dataclass(frozen=True)
class Agreement:
    """Rank agreement on val_loss between two studies over the candidates both finished,
    matched by ``spec_key``, with bootstrap 95% intervals (shared candidates resampled with
    replacement, ``resamples`` times, fixed seed)."""

    other: str
    n: int  # shared candidates
    kendall_tau: float | None
    spearman: float | None
    kendall_tau_ci: Interval
    spearman_ci: Interval
    resamples: int


@dataclass(frozen=True)
class FidelityReport:
    """Everything ``hybridnas fidelity`` answers about one study."""

    study: str
    n_finished: int
    rungs: list[RungAgreement]
    seeds: SeedSpread | None
    against: Agreement | None

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` output: {"study", "n_finished", "rungs": [...], "seeds", "against"}."""
        return {
            "study": self.study,
            "n_finished": self.n_finished,
            "rungs": [{"fraction": r.fraction, "rung": r.rung, "kendall_tau": r.kendall_tau,
                       "spearman": r.spearman, "n": r.n} for r in self.rungs],
            "seeds": asdict(self.seeds) if self.seeds is not None else None,
            "against": asdict(self.against) if self.against is not None else None,
        }


# ---- over rows -----------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def finished(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The rows of candidates that finished: complete, trained (not a reused result) and with
    a finite final val_loss."""
    return [r for r in rows if r.get("status") == "complete" and r.get("reused_from") is None
            and _number(r.get("val_loss")) is not None]


def _correlations(x: Sequence[float], y: Sequence[float]) -> tuple[float | None, float | None]:
    """(Kendall τ-b, Spearman ρ); None for fewer than two points or a constant side."""
    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return None, None
    tau = float(stats.kendalltau(x, y).statistic)
    rho = float(stats.spearmanr(x, y).statistic)
    return (tau if math.isfinite(tau) else None), (rho if math.isfinite(rho) else None)


def _require_rankable(rows: Sequence[Mapping[str, Any]], study: str) -> list[Mapping[str, Any]]:
    done = finished(rows)
    if not done:
        raise FidelityError(f"study {study!r}: no finished trials (complete, not reused, with a val_loss)")
    if len(done) < 2:
        raise FidelityError(f"study {study!r}: only 1 finished candidate; ranking needs at least 2")
    return done


def rung_agreement(rows: Sequence[Mapping[str, Any]], fractions: Sequence[float] | None = None,
                   *, study: str = "study") -> list[RungAgreement]:
    """Kendall τ and Spearman ρ between each rung's val_loss and the final val_loss over the
    finished candidates (see :func:`finished`) that recorded the rung, one entry per rung
    index any of them has, in rung order. ``fractions[i]`` is rung i's budget fraction (the
    study's ``budget.rungs``); without it, or past its end, the index stands in. Raises
    :class:`FidelityError` when fewer than two candidates finished."""
    done = _require_rankable(rows, study)
    by_rung: dict[int, list[tuple[float, float]]] = {}
    for row in done:
        final = _number(row.get("val_loss"))
        assert final is not None  # finished() kept only rows with one
        seen: set[int] = set()
        for record in row.get("rungs") or []:
            if not isinstance(record, Mapping):
                continue
            index, loss = record.get("rung"), _number(record.get("val_loss"))
            if isinstance(index, int) and not isinstance(index, bool) and loss is not None and index not in seen:
                seen.add(index)
                by_rung.setdefault(index, []).append((loss, final))
    out = []
    for index in sorted(by_rung):
        pairs = by_rung[index]
        tau, rho = _correlations([p[0] for p in pairs], [p[1] for p in pairs])
        fraction = float(fractions[index]) if fractions is not None and 0 <= index < len(fractions) else float(index)
        out.append(RungAgreement(index, fraction, tau, rho, len(pairs)))
    return out


def _seed_losses(row: Mapping[str, Any]) -> list[float]:
    seeds = row.get("val_loss_seeds") or (row.get("metrics") or {}).get("val_loss_seeds") or []
    values = [_number(s) for s in seeds] if isinstance(seeds, (list, tuple)) else []
    return [v for v in values if v is not None]


def seed_spread(rows: Sequence[Mapping[str, Any]], *, separation: float = SEPARATION) -> SeedSpread | None:
    """Seed-to-seed against between-candidate spread over the finished candidates with at
    least two per-seed losses (definitions in :class:`SeedSpread`); None when fewer than two
    candidates have them (a study of one seed per candidate)."""
    groups = [s for s in (_seed_losses(r) for r in finished(rows)) if len(s) >= 2]
    if len(groups) < 2:
        return None
    means = [statistics.fmean(g) for g in groups]
    stds = [statistics.stdev(g) for g in groups]
    dof = sum(len(g) - 1 for g in groups)
    pooled = math.sqrt(sum((len(g) - 1) * s * s for g, s in zip(groups, stds, strict=True)) / dof)
    seed_std, between = statistics.fmean(stds), statistics.stdev(means)
    n = len(groups)

    def apart(i: int, j: int) -> bool:
        return abs(means[i] - means[j]) > separation * pooled * math.sqrt(1 / len(groups[i]) + 1 / len(groups[j]))

    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    separated = {(i, j) for i, j in pairs if apart(i, j)}
    resolved = sum(all((min(i, j), max(i, j)) in separated for j in range(n) if j != i) for i in range(n))
    best = min(range(n), key=means.__getitem__)
    tied = sum(i == best or (min(i, best), max(i, best)) not in separated for i in range(n))
    return SeedSpread(
        n_candidates=n, seeds=max(len(g) for g in groups), seed_std=seed_std, between_std=between,
        ratio=between / seed_std if seed_std > 0 else None, pooled_std=pooled,
        distinguishable_pairs=len(separated), n_pairs=len(pairs), resolved=resolved, tied_with_best=tied,
    )


def _final_by_key(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """{spec_key: final val_loss} of the finished candidates (the mean, were a key finished twice)."""
    losses: dict[str, list[float]] = {}
    for row in finished(rows):
        key = row.get("spec_key")
        if key:
            losses.setdefault(str(key), []).append(float(row["val_loss"]))
    return {k: statistics.fmean(v) for k, v in losses.items()}


def _interval(values: list[float]) -> Interval:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return Interval(None, None)
    low, high = np.percentile(finite, [2.5, 97.5])
    return Interval(float(low), float(high))


def agreement_between(rows: Sequence[Mapping[str, Any]], other_rows: Sequence[Mapping[str, Any]], *,
                      study: str = "study", other: str = "other", resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = BOOTSTRAP_SEED) -> Agreement:
    """τ and ρ between two studies' final val_loss over the candidates both finished, matched
    by ``spec_key``, with percentile bootstrap 95% intervals: the shared candidates resampled
    with replacement ``resamples`` times (``numpy.random.default_rng(seed)``); a resample
    whose losses are constant on one side has no value and is left out. Raises
    :class:`FidelityError` when fewer than two candidates are shared."""
    mine, theirs = _final_by_key(rows), _final_by_key(other_rows)
    shared = sorted(mine.keys() & theirs.keys())
    if not shared:
        raise FidelityError(f"--against {other}: no finished candidate (spec_key) is shared with {study}")
    if len(shared) < 2:
        raise FidelityError(f"--against {other}: only 1 finished candidate is shared with {study}; "
                            "ranking needs at least 2")
    x = np.array([mine[k] for k in shared])
    y = np.array([theirs[k] for k in shared])
    tau, rho = _correlations(list(x), list(y))
    rng = np.random.default_rng(seed)
    taus, rhos = [], []
    for _ in range(resamples):
        pick = rng.integers(0, len(shared), len(shared))
        t, r = _correlations(list(x[pick]), list(y[pick]))
        taus.append(math.nan if t is None else t)
        rhos.append(math.nan if r is None else r)
    return Agreement(other, len(shared), tau, rho, _interval(taus), _interval(rhos), resamples)


# ---- reading a study -----------------------------------------------------------------------


def study_rung_fractions(storage: str, study: str) -> tuple[float, ...] | None:
    """``budget.rungs`` of the study's config (kept by the driver in Optuna's study
    attributes), or None for rows no hybridnas driver wrote."""
    try:
        return tuple(float(f) for f in (stored_config(storage, study) or {})["budget"]["rungs"])
    except (KeyError, TypeError, ValueError):
        return None


def load_fidelity(storage: str, study: str, against: str | None = None) -> FidelityReport:
    """The fidelity of ``study`` (and its agreement with ``against``, in the same database),
    read-only. Raises :class:`~hybridnas.analysis.study.StudyNotFound` for an unknown study
    and :class:`FidelityError` for one that cannot be ranked."""
    data = load_study(storage, study)
    rungs = rung_agreement(data.rows, study_rung_fractions(storage, study), study=study)
    agreement = None
    if against is not None:
        other = load_study(storage, against)
        agreement = agreement_between(data.rows, other.rows, study=study, other=against)
    return FidelityReport(study, len(finished(data.rows)), rungs, seed_spread(data.rows), agreement)
