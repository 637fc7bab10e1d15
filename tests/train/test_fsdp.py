"""FSDP (``--fsdp``, torch.distributed.fsdp.fully_shard) with two CPU processes on gloo: the same
losses and weights as one process with the same global batch, through a checkpoint and a resume."""

import math
import os
import subprocess
import sys

import torch

from hypermlp.checkpoint import latest_checkpoint
from hypermlp.models import LanguageModel

from .helpers import train_losses


def test_fsdp_two_processes_match_one_and_resume(tmp_path):
    args = ["train", "--task", "mad:noisy_in_context_recall", "--data-arg", "seq_len=32", "--data-arg", "num_train=128",
            "--data-arg", "num_test=32", "--d-model", "32", "--batch-size", "16", "--lr", "1e-3",
            "--eval-every", "3", "--ckpt-every", "3", "--no-progress", "--device", "cpu",
            "--cache-dir", str(tmp_path / "cache")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "true"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "hypermlp"]
    one = subprocess.run([sys.executable, "-m", "hypermlp", *args, "--steps", "6", "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr
    # FSDP over 2 processes, 2 micro-batches each (gradient sync only on the last), stopped at step 3
    fsdp = [*args, "--fsdp", "--grad-accum", "2", "--out", str(tmp_path / "fsdp")]
    first = subprocess.run([*torchrun, *fsdp, "--steps", "3"], env=env, capture_output=True, text=True, timeout=180)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "2 process(es) (FSDP)" in first.stdout
    # the full state dicts were gathered on rank 0: a plain checkpoint that loads without FSDP
    ckpt = latest_checkpoint(str(tmp_path / "fsdp"))
    assert ckpt.endswith("step-00000003")
    LanguageModel.load(ckpt)
    resumed = subprocess.run([*torchrun, *fsdp, "--steps", "6", "--resume"], env=env, capture_output=True, text=True,
                             timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a, b = train_losses(tmp_path / "one" / "metrics.jsonl"), train_losses(tmp_path / "fsdp" / "metrics.jsonl")
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3, 4, 5, 6]
    for (_, la), (_, lb) in zip(a, b):
        assert math.isclose(la, lb, rel_tol=1e-5), (a, b)
    assert a[-1][1] < a[0][1]  # it trained, so agreement is not trivial
    wa = LanguageModel.load(latest_checkpoint(str(tmp_path / "one"))).state_dict()
    wb = LanguageModel.load(latest_checkpoint(str(tmp_path / "fsdp"))).state_dict()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-4, atol=1e-5)
