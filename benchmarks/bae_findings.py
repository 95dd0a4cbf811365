"""Bae et al. 2025's findings, checked against finished runs of the ``bae-small`` preset.

Reads the studies named on the command line (the same preset at several budgets) and prints,
in Markdown, each candidate's validation loss (mean over its seeds, ± the seeds' half-range)
per study, then for each finding the loss difference it predicts the sign of, per study, with
a verdict: ``reproduced`` when the difference has the predicted sign and exceeds 2 standard
errors of seed noise, ``within noise`` when it does not exceed them, ``opposite`` when it has the other
sign beyond them. The standard error is the two candidates' own: their seed variances
pooled, times sqrt(1/n_a + 1/n_b) (an unstable candidate widens only its own comparisons;
with 2 seeds each it is a rough estimate). Nothing is typed in: docs/findings.md pastes this script's output.

    python benchmarks/bae_findings.py --storage sqlite:///data/bae.db bae-small-quarter bae-small
"""

from __future__ import annotations

import argparse
import math
import statistics

from hybridnas.analysis.study import load_study

# (finding, the candidate predicted better (lower loss), the one predicted worse)
BAE_INTRA = "intra 1:5 group/sub/none/separate 1:1"  # their best H block
FINDINGS = [
    ("hybrids beat homogeneous models at equal FLOPs (1B): Inter 1:5 < attention", "inter 1:5 even", "pure attention"),
    ("hybrids beat homogeneous models at equal FLOPs (1B): Intra 1:5 < attention", BAE_INTRA,
     "pure attention"),
    ("hybrids beat homogeneous models at equal FLOPs (1B): Inter 1:5 < Mamba-2", "inter 1:5 even", "pure Mamba-2"),
    ("attention at the first layer is worse than pure Mamba-2", "pure Mamba-2", "inter 1:5 front"),
    ("per-branch normalization matters: GroupNorm < none", BAE_INTRA,
     "intra 1:5 none/sub/none/separate 1:1"),
    ("the sigmoid gate hurts", BAE_INTRA, "intra 1:5 group/sub/sigmoid/separate 1:1"),
    ("separate output projections help (2:1 split)", "intra 1:5 group/sub/none/separate 2:1",
     "intra 1:5 group/sub/none/joint 2:1"),
    ("Intra 1:5 < Inter 1:5 (1B)", BAE_INTRA, "inter 1:5 even"),
    ("ratio trend: more attention is better, 1:1 < 1:3", "inter 1:1 even", "inter 1:3 even"),
    ("ratio trend: more attention is better, 1:3 < 1:5", "inter 1:3 even", "inter 1:5 even"),
    ("pure Mamba-2 leads on NLL at small scale (100M): Mamba-2 < Intra 1:5", "pure Mamba-2",
     BAE_INTRA),
    ("pure Mamba-2 leads on NLL at small scale (100M): Mamba-2 < Inter 1:5", "pure Mamba-2", "inter 1:5 even"),
    ("merge-attention beats averaging (mean)", "intra 1:5 group/merge_attention/none/separate 1:1",
     "intra 1:5 group/mean/none/separate 1:1"),
]


def label(row: dict) -> str:
    """A candidate's name from its columns: the same in every study of the preset."""
    n_attn, n = row["n_attn"], row["n_mixers"]
    if row["fusion"] == "none":
        return "pure Mamba-2" if n_attn == 0 else "pure attention"
    ratio = f"1:{round((n - n_attn) / n_attn)}"
    if row["fusion"] == "inter":
        return f"inter {ratio} {row['placement']}"
    split = {0.5: "1:1", round(2 / 3, 6): "2:1"}.get(round(row["attn_fraction"], 6), str(row["attn_fraction"]))
    return (f"intra {ratio} {row['merge_norm']}/{row['merge_op']}/{row['merge_gate']}/{row['merge_out_proj']} "
            f"{split}")


def losses(storage: str, study: str) -> dict[str, list[float]]:
    """{label: the seeds' validation losses} of the complete trials."""
    data = load_study(storage, study)
    return {label(r): list(r["val_loss_seeds"] or [r["val_loss"]]) for r in data.complete()}


def standard_error(a: list[float], b: list[float]) -> float:
    """Of mean(b) - mean(a): the two candidates' seed variances pooled (NaN with one seed each)."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    pooled = ((len(a) - 1) * statistics.variance(a) + (len(b) - 1) * statistics.variance(b)) / (len(a) + len(b) - 2)
    return math.sqrt(pooled * (1 / len(a) + 1 / len(b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("studies", nargs="+")
    parser.add_argument("--storage", required=True)
    args = parser.parse_args()
    results = {s: losses(args.storage, s) for s in args.studies}

    print("| candidate | " + " | ".join(f"{s} val_loss" for s in args.studies) + " |")
    print("|---|" + "---|" * len(args.studies))
    names = sorted({n for by_label in results.values() for n in by_label})
    for name in names:
        cells = []
        for s in args.studies:
            seeds = results[s].get(name)
            cells.append(f"{statistics.mean(seeds):.4f} ± {(max(seeds) - min(seeds)) / 2:.4f}" if seeds else "-")
        print(f"| {name} | " + " | ".join(cells) + " |")

    print("\n| finding | " + " | ".join(f"{s}: worse - better (2 SE), verdict" for s in args.studies) + " |")
    print("|---|" + "---|" * len(args.studies))
    for finding, better, worse in FINDINGS:
        cells = []
        for s in args.studies:
            by_label = results[s]
            if better not in by_label or worse not in by_label:
                cells.append("not run")
                continue
            a, b = by_label[better], by_label[worse]
            diff = statistics.mean(b) - statistics.mean(a)
            se = standard_error(a, b)
            verdict = "within noise" if abs(diff) <= 2 * se else ("reproduced" if diff > 0 else "opposite")
            cells.append(f"{diff:+.4f} ({2 * se:.4f}), {verdict}")
        print(f"| {finding} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
