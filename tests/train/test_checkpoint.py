"""Checkpoints: atomic writes leave no partial file, kill -9 in the middle of a checkpoint still
resumes bit for bit, and checkpoints written before the norm_eps rename still load."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from hypermlp.checkpoint import CheckpointError, latest_checkpoint, write_atomic, write_json_atomic
from hypermlp.config import ConfigError
from hypermlp.models import LanguageModel, ModelConfig
from hypermlp.train import TrainConfig, Trainer

from .helpers import recall_task, tiny_cfg, train_losses


class Crash(Exception):
    pass


def test_a_failed_atomic_write_leaves_the_old_file_and_no_partial_one(tmp_path):
    path = tmp_path / "data.bin"

    def half_then_crash(tmp):
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise Crash()

    with pytest.raises(Crash):
        write_atomic(str(path), half_then_crash)
    assert os.listdir(tmp_path) == []  # nothing at the target, no temp file either
    write_json_atomic(str(path), {"a": 1})
    with pytest.raises(Crash):
        write_atomic(str(path), half_then_crash)
    assert os.listdir(tmp_path) == ["data.bin"] and json.loads(path.read_text()) == {"a": 1}
    write_atomic(str(path), lambda tmp: open(tmp, "w").write("new"))
    assert os.listdir(tmp_path) == ["data.bin"] and path.read_text() == "new"


def test_language_model_save_is_atomic_and_loads_back(tmp_path):
    model = LanguageModel(tiny_cfg())
    model.save(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["checksums.json", "config.json", "model.safetensors"]
    again = LanguageModel.load(str(tmp_path))
    assert again.config == model.config
    assert all((a == b).all() for a, b in zip(model.state_dict().values(), again.state_dict().values()))


# A training run in its own process that SIGKILLs itself at a chosen point of the checkpoint of step 10.
KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    import torch
    import hypermlp.checkpoint as checkpoint
    from hypermlp.train import TrainConfig, Trainer
    from tests.train.helpers import recall_task, tiny_cfg

    torch.set_num_threads(1)
    out, where = sys.argv[1], sys.argv[2]
    real_save, real_pointer = torch.save, checkpoint._write_text_atomic
    calls = {"save": 0}

    def save(obj, path, *a, **k):  # the trainer state of the second checkpoint: half written, then death
        calls["save"] += 1
        real_save(obj, path, *a, **k)
        if where == "state" and calls["save"] == 2:
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
            os.kill(os.getpid(), signal.SIGKILL)

    def pointer(path, text):  # the second checkpoint is in place, the pointer not yet moved
        if where == "pointer" and text.startswith("step-00000010"):
            os.kill(os.getpid(), signal.SIGKILL)
        real_pointer(path, text)

    torch.save, checkpoint._write_text_atomic = save, pointer
    cfg = TrainConfig(steps=15, batch_size=16, lr=3e-3, ckpt_every=5, eval_every=5, warmup_steps=3, device="cpu")
    Trainer(tiny_cfg(), recall_task(), cfg, out_dir=out).fit()
""")


@pytest.mark.parametrize("where", ["state", "pointer"])
def test_kill_9_during_a_checkpoint_still_resumes_bit_for_bit(tmp_path, where):
    cfg = TrainConfig(steps=15, batch_size=16, lr=3e-3, ckpt_every=5, eval_every=5, warmup_steps=3, device="cpu")
    Trainer(tiny_cfg(), recall_task(), cfg, out_dir=str(tmp_path / "straight")).fit()

    out = tmp_path / "killed"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run([sys.executable, "-c", KILLED_RUN, str(out), where], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == -9, run.stderr[-2000:]
    left = sorted(os.listdir(out / "checkpoints"))
    if where == "state":  # the half-written checkpoint never got its name: only its temp folder is left
        assert "step-00000010" not in left and any(n.startswith(".tmp-") for n in left)
    else:  # complete and in place, but `latest` still names the one before
        assert "step-00000010" in left
    assert latest_checkpoint(str(out)).endswith("step-00000005")

    resumed = Trainer(tiny_cfg(), recall_task(), cfg, out_dir=str(out), resume=True)
    assert resumed.step == 5
    resumed.fit()
    assert train_losses(out / "metrics.jsonl") == train_losses(tmp_path / "straight" / "metrics.jsonl")
    assert sorted(os.listdir(out / "checkpoints")) == ["latest", "step-00000015"]  # the debris is gone too


def test_old_norm_eps_key_still_loads(tmp_path):
    cfg = ModelConfig.from_dict({"vocab_size": 16, "d_model": 32, "norm_eps": 1e-5})
    assert cfg.rmsnorm_eps == 1e-5 and "norm_eps" not in cfg.to_dict()
    with pytest.raises(ConfigError, match="not both"):
        ModelConfig.from_dict({"vocab_size": 16, "norm_eps": 1e-5, "rmsnorm_eps": 1e-6})

    # a run whose checkpoint was written before the rename: generate loads it, train resumes it
    train_cfg = TrainConfig(steps=4, batch_size=16, ckpt_every=2, device="cpu")
    Trainer(tiny_cfg(), recall_task(), train_cfg, out_dir=str(tmp_path)).fit()
    ckpt = latest_checkpoint(str(tmp_path))
    saved = json.load(open(os.path.join(ckpt, "config.json")))
    saved["norm_eps"] = saved.pop("rmsnorm_eps")
    json.dump(saved, open(os.path.join(ckpt, "config.json"), "w"))
    os.remove(os.path.join(ckpt, "checksums.json"))  # nor did checkpoints of that time record checksums
    assert LanguageModel.load(ckpt).config == tiny_cfg()
    resumed = Trainer(tiny_cfg(), recall_task(), TrainConfig(steps=6, batch_size=16, device="cpu"),
                      out_dir=str(tmp_path), resume=True)
    assert resumed.step == 4

    other = tiny_cfg()
    other.rmsnorm_eps = 1e-3
    with pytest.raises(CheckpointError, match="rmsnorm_eps"):
        Trainer(other, recall_task(), train_cfg, out_dir=str(tmp_path), resume=True)


def test_a_shape_mismatch_names_the_tensors(tmp_path):
    LanguageModel(tiny_cfg()).save(str(tmp_path))
    cfg = json.load(open(tmp_path / "config.json"))
    cfg["mlp_hidden"] = 64  # the saved SwiGLU is 96 wide
    json.dump(cfg, open(tmp_path / "config.json", "w"))
    with pytest.raises(ValueError) as e:
        LanguageModel.load(str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and "blocks.0.mlp.gate_up.weight" in msg and "(192, 32)" in msg and "(128, 32)" in msg


def test_a_checkpoint_is_durable_before_it_is_named_and_the_old_one_goes_last(tmp_path, monkeypatch):
    """Every file and the folder are fsync'd before the rename; the pointer moves next; the
    previous checkpoint is removed only after that."""
    import hypermlp.checkpoint as ck

    events = []
    real_fsync, real_replace, real_rmtree = os.fsync, os.replace, ck.shutil.rmtree
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to name the file an fsync is for")

    def spy_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a), str(b))), real_replace(a, b))[1])
    monkeypatch.setattr(ck.shutil, "rmtree", lambda p, **k: (events.append(("rmtree", str(p))), real_rmtree(p, **k))[1])
    cfg = TrainConfig(steps=4, batch_size=16, ckpt_every=2, device="cpu", progress=False)
    Trainer(tiny_cfg(), recall_task(), cfg, out_dir=str(tmp_path)).fit()
    root = str(tmp_path / "checkpoints")
    i = next(k for k, e in enumerate(events) if e[0] == "replace" and e[2] == os.path.join(root, "step-00000004"))
    tmp = events[i][1]
    synced = {os.path.basename(e[1]) for e in events[:i] if e[0] == "fsync" and os.path.dirname(e[1]) == tmp}
    assert synced >= {"model.safetensors", "config.json", "trainer_state.pt", "checksums.json"}
    assert ("fsync", tmp) in events[:i]  # the folder itself
    j = next(k for k, e in enumerate(events) if k > i and e[0] == "replace" and e[2] == os.path.join(root, "latest"))
    gone = next(k for k, e in enumerate(events) if e == ("rmtree", os.path.join(root, "step-00000002")))
    assert i < j < gone


def test_saving_again_at_the_step_of_the_latest_checkpoint_never_leaves_none(tmp_path):
    from hypermlp.checkpoint import save_checkpoint

    trainer = Trainer(tiny_cfg(), recall_task(), TrainConfig(steps=2, batch_size=16, device="cpu"), out_dir=str(tmp_path))
    trainer.fit()
    first = latest_checkpoint(str(tmp_path))
    again = save_checkpoint(str(tmp_path), 2, trainer.task, trainer.model, trainer._state())
    assert again != first and latest_checkpoint(str(tmp_path)) == again and not os.path.exists(first)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["latest", os.path.basename(again)]
