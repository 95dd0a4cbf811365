"""Benchmark (c): decode tokens/s of pure attention, pure Mamba-2, Inter 1:5 and Intra 1:5 at
about 100M parameters, at contexts 2K / 8K / 32K (batch 4, bf16), on one CUDA device.

    python benchmarks/decode.py

Also prints prefill tokens/s and whether decode ran from a CUDA graph. See
hybridnas.proxies.speed for what is timed.
"""

import torch

from hybridnas import ArchSpec
from hybridnas.proxies.speed import measure_decode
from hybridnas.search_space import cost, layout

CONTEXTS = (2048, 8192, 32768)
# ~100M parameters each at d_model 768, vocab 8192 (Mamba-2 mixers are ~2.5x attention's, so fewer layers)
MODELS = {
    "attention": ArchSpec.from_pattern("*-" * 14, d_model=768),
    "mamba2": ArchSpec.from_pattern("M-" * 11, d_model=768),
    "inter 1:5": ArchSpec.from_pattern(layout(12, 2), d_model=768),
    "intra 1:5": ArchSpec.from_pattern(layout(12, 2, fusion="intra"), d_model=768),
}


def main():
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, batch 4, bf16")
    print("| model | params | " + " | ".join(f"decode tok/s @ {c // 1024}K" for c in CONTEXTS)
          + " | " + " | ".join(f"prefill tok/s @ {c // 1024}K" for c in CONTEXTS) + " |")
    print("|---|---|" + "---|" * (2 * len(CONTEXTS)))
    for name, spec in MODELS.items():
        report = measure_decode(spec, CONTEXTS)
        params = cost(spec).total.params / 1e6
        decode = " | ".join(f"{report.decode_tokens_per_s[c]:,.0f}" for c in CONTEXTS)
        prefill = " | ".join(f"{report.prefill_tokens_per_s[c]:,.0f}" for c in CONTEXTS)
        print(f"| {name} | {params:.0f}M | {decode} | {prefill} |  ({report.decode_mode})")
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
