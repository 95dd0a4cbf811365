"""Benchmark (a): each op, fast backend vs plain-PyTorch reference, on one CUDA device.

    python benchmarks/ops.py

Shapes follow DESIGN.md's SSD reference point (bf16, B=8, T=4096, 24 heads x 64, N=128).
Prints one table: op, shape, reference ms, fast ms, speed-up. Times are medians of CUDA-event
timings after warm-up; the SSD rows time forward + backward.
"""

import torch
import torch.nn.functional as F

import hybridnas.kernels as kernels
from hybridnas.kernels.attention import causal_attention
from hybridnas.kernels.conv import causal_conv1d
from hybridnas.kernels.loss import linear_cross_entropy
from hybridnas.kernels.norm import gated_rms_norm
from hybridnas.kernels.ssd import ssd_chunked, ssd_step
from hybridnas.proxies.speed import cuda_time


def timed(fn):
    """Median milliseconds of fn() by CUDA events, after warm-up."""
    return cuda_time(fn) * 1e3


def ssd_case(b=8, t=4096, h=24, p=64, g=1, n=128):
    x = torch.randn(b, t, h, p, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dt = F.softplus(torch.randn(b, t, h, device="cuda") - 2).requires_grad_()
    A = -torch.rand(h, device="cuda").add(0.5).requires_grad_()
    B = torch.randn(b, t, g, n, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    C = torch.randn(b, t, g, n, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    D = torch.randn(h, device="cuda", requires_grad=True)
    return x, dt, A, B, C, D


def fwd_bwd(fn, args):
    def run():
        y, state = fn(*args, chunk_size=256)
        (y.float().sum() + state.float().sum()).backward()

    return run


def main():
    rows = []
    args = ssd_case()
    rows.append(("ssd_scan fwd+bwd", "8x4096, 24x64, N=128", timed(fwd_bwd(ssd_chunked, args)),
                 timed(fwd_bwd(kernels.ssd_scan, args))))

    b, h, p, n = 8, 24, 64, 128
    state = torch.randn(b, h, p, n, device="cuda", dtype=torch.bfloat16)
    step_args = (torch.randn(b, h, p, device="cuda", dtype=torch.bfloat16),
                 F.softplus(torch.randn(b, h, device="cuda")),
                 -torch.rand(h, device="cuda"), torch.randn(b, 1, n, device="cuda", dtype=torch.bfloat16),
                 torch.randn(b, 1, n, device="cuda", dtype=torch.bfloat16), torch.randn(h, device="cuda"))
    rows.append(("ssd_step", "8 x 24x64, N=128", timed(lambda: ssd_step(state, *step_args)),
                 timed(lambda: kernels.ssd_step(state, *step_args))))

    q = torch.randn(8, 16, 4096, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    kv = torch.randn(8, 4, 4096, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    def attention_fwd_bwd(fn, window):
        return lambda: fn(q, kv, kv, window=window).float().sum().backward()

    global_ms = timed(attention_fwd_bwd(causal_attention, None))
    rows.append(("causal_attention fwd+bwd (SDPA flash, both)", "8x4096, 16q/4kv x 64", global_ms, global_ms))
    rows.append(("window 512 fwd+bwd (dense mask vs FlexAttention)", "8x4096, 16q/4kv x 64",
                 timed(attention_fwd_bwd(causal_attention, 512)),
                 timed(attention_fwd_bwd(kernels.causal_attention, 512))))

    k_cache = torch.randn(4, 4, 32768, 64, device="cuda", dtype=torch.bfloat16)
    q1 = torch.randn(4, 16, 1, 64, device="cuda", dtype=torch.bfloat16)
    n_valid = torch.tensor(32768, device="cuda")
    decode_ms = timed(lambda: kernels.attention_decode(q1, k_cache, k_cache, n_valid))
    rows.append(("attention_decode (SDPA, masked)", "4 x 16q/4kv x 64, 32K cache", decode_ms, decode_ms))

    # the model's layout: [B, C, T] as the transpose of a [B, T, C] activation
    xc = torch.randn(8, 4096, 3328, device="cuda", dtype=torch.bfloat16).transpose(1, 2).requires_grad_()
    wc = torch.randn(3328, 4, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    def conv_fwd_bwd(fn):
        return lambda: fn(xc, wc, None, "silu").float().sum().backward()

    rows.append(("causal_conv1d fwd+bwd", "8 x 4096 x 3328 ch, [B, T, C] memory",
                 timed(conv_fwd_bwd(causal_conv1d)), timed(conv_fwd_bwd(kernels.causal_conv1d))))

    xn = torch.randn(8, 2048, 1536, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    zn = torch.randn(8, 2048, 1536, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    wn = torch.ones(1536, device="cuda", requires_grad=True)

    def norm_fwd_bwd(fn):
        return lambda: fn(xn, zn, wn, 1536, 1e-5).float().sum().backward()

    rows.append(("gated_rms_norm fwd+bwd", "8 x 2048 x 1536", timed(norm_fwd_bwd(gated_rms_norm)),
                 timed(norm_fwd_bwd(kernels.gated_rms_norm))))

    xh = torch.randn(8 * 2048, 768, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    wh = (torch.randn(50304, 768, device="cuda", dtype=torch.bfloat16) / 30).requires_grad_()
    targets = torch.randint(0, 50304, (8 * 2048,), device="cuda")

    def head_fwd_bwd(fn):
        return lambda: fn(xh, wh, targets).backward()

    rows.append(("linear_cross_entropy fwd+bwd", "16K tokens x 768 -> 50304", timed(head_fwd_bwd(linear_cross_entropy)),
                 timed(head_fwd_bwd(kernels.linear_cross_entropy))))

    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"backends: { {k: v['backend'] for k, v in kernels.backends().items()} }")
    print("| op | shape | reference ms | fast ms | speed-up |")
    print("|---|---|---|---|---|")
    for name, shape, ref, fast in rows:
        print(f"| {name} | {shape} | {ref:.2f} | {fast:.2f} | {ref / fast:.1f}x |")


if __name__ == "__main__":
    main()
