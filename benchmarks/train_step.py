"""Benchmark (b): one training step of HybridLM (Inter 1:5 and Intra 1:5) vs mamba-ssm's
MambaLMHeadModel with the Inter layout vs a plain PyTorch GPT of the same size, side by side in
one run (bf16 autocast, fused AdamW, gradient clipping, same batch and sequence length), on one
CUDA device.

    python benchmarks/train_step.py [--batch 8] [--seq-len 2048] [--eager]

HybridLM is timed through the trainer's own step (hybridnas.proxies.speed.measure_training),
compiled (``--eager`` adds the uncompiled Inter step); the others through the same loop
written out here. The "plain GPT" is our attention-only HybridLM (Llama-style blocks in plain
PyTorch, SDPA flash attention).
"""

import argparse

import torch
import torch.nn.functional as F

from hybridnas import ArchSpec, HybridLM, kernels
from hybridnas.kernels.cuda import import_mamba_ssm_models
from hybridnas.proxies.speed import cuda_time, measure_training
from hybridnas.search_space import cost, layout, placement_indices
from hybridnas.trainer import peak_flops

D_MODEL, N_MIXERS, VOCAB = 768, 12, 50304


def timed_step(model, loss_fn, batch, seq_len, repeats=5, warmup=3):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    tokens = torch.randint(0, VOCAB, (batch, seq_len + 1), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(tokens)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return batch * seq_len / cuda_time(step, repeats, warmup)


def mamba_ssm_model(spec: ArchSpec):
    MambaLMHeadModel = import_mamba_ssm_models().MambaLMHeadModel
    from mamba_ssm.models.config_mamba import MambaConfig

    s, a = spec.ssm, spec.attn
    config = MambaConfig(
        d_model=spec.d_model, d_intermediate=spec.d_ffn, n_layer=N_MIXERS, vocab_size=VOCAB,
        ssm_cfg={"layer": "Mamba2", "d_state": s.d_state, "headdim": s.head_dim, "expand": s.expand,
                 "ngroups": s.n_groups, "chunk_size": s.chunk_size, "use_mem_eff_path": False},
        attn_layer_idx=list(placement_indices(N_MIXERS, 2, "even")),
        attn_cfg={"num_heads": a.n_heads, "num_heads_kv": a.n_kv_heads, "causal": True, "rotary_emb_dim": 0},
        rms_norm=True, residual_in_fp32=True, fused_add_norm=True, tie_embeddings=True, pad_vocab_size_multiple=8,
    )
    return MambaLMHeadModel(config, device="cuda", dtype=torch.float32)


def mamba_ssm_row(spec: ArchSpec, batch: int, seq_len: int) -> tuple:
    """The mamba-ssm row of the table. The model is built, timed and released in here, so its
    memory is free again (for the next model) once this returns."""
    theirs = mamba_ssm_model(spec)

    def their_loss(tokens):
        logits = theirs(tokens[:, :-1]).logits
        return F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())

    return ("mamba-ssm MambaLMHeadModel, same layout", sum(p.numel() for p in theirs.parameters()),
            timed_step(theirs, their_loss, batch, seq_len), cost(spec, seq_len).total.train_flops_per_token)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--eager", action="store_true", help="also time the uncompiled Inter step")
    args = parser.parse_args()
    b, t = args.batch, args.seq_len

    inter = ArchSpec.from_pattern(layout(N_MIXERS, 2), d_model=D_MODEL, vocab_size=VOCAB, attn={"rope": False})
    intra = ArchSpec.from_pattern(layout(N_MIXERS, 2, fusion="intra"), d_model=D_MODEL, vocab_size=VOCAB,
                                  attn={"rope": False})
    gpt = ArchSpec.from_pattern("*-" * 16, d_model=D_MODEL, vocab_size=VOCAB, attn={"rope": False})  # ~ the same size
    peak = peak_flops("cuda")  # MFU against this device's bf16 peak (None: a GPU the trainer does not know)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16 autocast, batch {b} x {t}")
    print(f"backends: { {name: entry['backend'] for name, entry in kernels.backends().items()} }")
    print("| model | params | tokens/s | MFU |")
    print("|---|---|---|---|", flush=True)
    rows = []

    def row(name, params, tps, fpt):
        """Print a row as soon as it is measured: a run cut short keeps what it measured."""
        rows.append((name, tps))
        mfu = f"{tps * fpt / peak:.1%}" if peak else "-"
        print(f"| {name} | {params / 1e6:.0f}M | {tps:,.0f} | {mfu} |", flush=True)

    runs = [("inter", inter, False)] if args.eager else []
    for label, spec, compiled in [*runs, ("inter", inter, True), ("intra", intra, True)]:
        ours = measure_training(spec, b, t, compile=compiled)
        name = f"HybridLM {label} 1:5 (hybridnas trainer step" + (", torch.compile)" if compiled else ")")
        row(name, cost(spec).total.params, ours.train_tokens_per_s, cost(spec, t).total.train_flops_per_token)
        torch.cuda.empty_cache()

    row(*mamba_ssm_row(inter, b, t))  # its model is released on return
    torch.cuda.empty_cache()

    gpt_model = HybridLM(gpt).cuda()
    row("plain PyTorch GPT (attention-only HybridLM)", cost(gpt).total.params,
        timed_step(gpt_model, gpt_model.loss, b, t), cost(gpt, t).total.train_flops_per_token)

    theirs = next(tps for name, tps in rows if name.startswith("mamba-ssm"))
    for name, tps in rows:
        if name.startswith("HybridLM"):
            print(f"{name}: {tps / theirs:.2f}x mamba-ssm's model")


if __name__ == "__main__":
    main()
