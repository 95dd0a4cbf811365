"""What one trial holds (``[resources]``): the study file's values, the "auto" rule that sizes a
trial from its candidate, and the check that some Ray node can hold it, before a study row
exists (Tune would otherwise wait for an impossible trial forever)."""

import os
import subprocess
import sys

import optuna
import pytest

from hybridnas import ArchSpec
from hybridnas.search_space import layout
from hybridnas.studies.config import StudyConfigError, load_study_config
from hybridnas.studies.resources import (
    GPU_SHARES,
    Cluster,
    ResourcesConfig,
    ResourcesError,
    auto_gpus,
    check_placeable,
    trial_resources,
)
from hybridnas.trainer import TrainConfig

H200 = 143_771_566_080  # bytes, as torch reports an H200's memory
GPU_NODE = Cluster(((16.0, 1.0),), H200)
CPU_NODE = Cluster(((2.0, 0.0),))
# the sizes: the six-trial study's ~35M candidates, the ~125M benchmark model, ~350M
GPU_TRAINER = TrainConfig(seq_len=2048, batch_tokens=8 * 2048, vocab_size=50304, device="cuda")


def _inter(d_model: int, n_mixers: int) -> ArchSpec:
    return ArchSpec.from_pattern(layout(n_mixers, n_mixers // 6), d_model=d_model, vocab_size=50304)


@pytest.mark.parametrize(("setting", "shown"), [
    ("1.5", "above 1 it must be a whole number of GPUs"),
    ("-1", "resources.gpus_per_trial"),
    ("65", "resources.gpus_per_trial"),
    ("0.333333", "at most 4 decimals"),
    ('"half"', "resources.gpus_per_trial"),
])
def test_a_bad_gpus_per_trial_is_one_line_naming_the_key(setting, shown):
    with pytest.raises(StudyConfigError) as caught:
        load_study_config("test-tiny", **{"resources.gpus_per_trial": float(setting) if setting[0] != '"' else "half",
                                          "trainer.device": "auto"})
    message = str(caught.value)
    assert shown in message and "resources.gpus_per_trial" in message and "\n" not in message


@pytest.mark.parametrize(("key", "value", "shown"), [
    ("resources.cpus_per_trial", 0, "resources.cpus_per_trial"),
    ("resources.cpus_per_trial", 5000, "resources.cpus_per_trial"),
    ("resources.gpus_per_trial", 0.5, "GPUs for trials that train on trainer.device = 'cpu'"),
    ("resources.gpus_per_per_trial", 1, "gpus_per_per_trial"),
])
def test_resources_that_contradict_the_trainer_or_bounds_are_refused(key, value, shown):
    with pytest.raises(StudyConfigError, match=shown):
        load_study_config("test-tiny", **{key: value})


def test_whole_gpus_above_one_train_data_parallel():
    assert ResourcesConfig(gpus_per_trial=4).data_parallel == 4
    assert ResourcesConfig(gpus_per_trial=0.25).data_parallel == 1
    assert ResourcesConfig().data_parallel == 1  # "auto" never asks for data parallel


def test_auto_packs_small_candidates_and_gives_large_ones_more():
    small, medium, large = _inter(384, 8), _inter(768, 12), _inter(1024, 24)  # 36M, 136M, 397M
    shares = [auto_gpus(spec, GPU_TRAINER, H200) for spec in (small, medium, large)]
    assert shares[0] == GPU_SHARES[0]  # a ~35M candidate: an eighth of an H200, not all of it
    assert shares == sorted(shares) and shares[2] > shares[0]
    assert all(share in GPU_SHARES for share in shares)
    # the same candidate on a smaller GPU, or at a larger micro-batch, takes a larger share
    assert auto_gpus(small, GPU_TRAINER, 16 << 30) > shares[0]
    wide_batch = GPU_TRAINER.model_copy(update={"batch_tokens": 128 * 2048})
    assert auto_gpus(medium, wide_batch, H200) > shares[1]


def test_auto_takes_no_gpu_where_there_is_none_or_the_trainer_is_on_cpu():
    spec = _inter(384, 8)
    assert trial_resources(ResourcesConfig(), spec, GPU_TRAINER, CPU_NODE).bundle() == {"CPU": 1.0}
    on_cpu = GPU_TRAINER.model_copy(update={"device": "cpu"})
    assert trial_resources(ResourcesConfig(), spec, on_cpu, GPU_NODE).bundle() == {"CPU": 1.0}
    packed = trial_resources(ResourcesConfig(), spec, GPU_TRAINER, GPU_NODE)
    assert packed.gpus == 0.125 and packed.cpus == 2.0
    four = trial_resources(ResourcesConfig(gpus_per_trial=4), spec, GPU_TRAINER, Cluster(((6.0, 8.0),)))
    assert four.bundle() == {"CPU": 6.0, "GPU": 4.0}  # 2 CPUs per GPU, at most what the node has
    explicit = trial_resources(ResourcesConfig(gpus_per_trial=0.25, cpus_per_trial=3), spec, GPU_TRAINER, GPU_NODE)
    assert explicit.bundle() == {"CPU": 3.0, "GPU": 0.25}


@pytest.mark.parametrize(("resources", "cluster", "shown"), [
    (ResourcesConfig(gpus_per_trial=1), CPU_NODE, "the Ray cluster has no GPU"),
    (ResourcesConfig(gpus_per_trial=2), Cluster(((16.0, 1.0), (16.0, 1.0))), "no Ray node has that many"),
    (ResourcesConfig(cpus_per_trial=64), CPU_NODE, "resources.cpus_per_trial: 64 CPUs"),
])
def test_a_trial_no_node_can_hold_is_refused(resources, cluster, shown):
    wanted = trial_resources(resources, _inter(512, 12), GPU_TRAINER, cluster)
    with pytest.raises(ResourcesError, match=shown):
        check_placeable(wanted, cluster)


def test_launch_refuses_a_trial_this_host_cannot_hold_before_writing_the_study(tmp_path):
    """The real CLI with its embedded Ray: one error line, exit 2, no study in the database."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    done = subprocess.run([sys.executable, "-m", "hybridnas", "launch", "test-tiny", "--storage", url,
                           "--set", f"resources.cpus_per_trial={(os.cpu_count() or 1) + 62}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "resources.cpus_per_trial" in errors[0] and "Traceback" not in done.stderr
    assert optuna.get_all_study_names(url) == []
