"""Token tasks: MAD compression's encoder-decoder and its checkpoint."""

import os

import torch

from hypermlp.models import LanguageModel
from hypermlp.tasks import CompressionModel, build_task
from hypermlp.train import TrainConfig, Trainer, latest_checkpoint

from ..train.helpers import tiny_cfg


def test_compression_task_encoder_decoder_and_checkpoint(tmp_path):
    task = build_task("mad:compression", {"seq_len": 12, "num_train": 128, "num_test": 32})[0]
    cfg = tiny_cfg(max_len=12)
    trainer = Trainer(cfg, task, TrainConfig(steps=30, batch_size=32, lr=3e-3, weight_decay=0.0), out_dir=str(tmp_path))
    res = trainer.fit()
    assert isinstance(trainer.model, CompressionModel)
    losses = [l for _, l in res["train_loss"]]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    x = task.data.test_inputs[:2].clone()
    with torch.no_grad():
        out = trainer.model(x)
        assert out.shape == (2, 12, 16)
        # the decoder sees the encoder's last position only
        last = trainer.model.encoder.hidden_states(x)[:, -1]
        m = trainer.model
        by_hand = m.out(torch.nn.functional.gelu(m.fc(m.norm(last[:, None] + m.query[None]))))
        torch.testing.assert_close(out, by_hand)
    # weights come back exactly from the checkpoint (encoder + decoder)
    again = Trainer(cfg, task, TrainConfig(steps=30, batch_size=32), out_dir=str(tmp_path), resume=True)
    with torch.no_grad():
        assert torch.equal(again.model(x), out)
    assert LanguageModel.load(latest_checkpoint(str(tmp_path))).config == cfg
    assert "decoder.safetensors" in os.listdir(latest_checkpoint(str(tmp_path)))  # the head, beside the encoder


def test_corrupting_the_test_labels_changes_no_validation_metric_and_no_choice():
    """Selection (early stopping, the best grid point) reads validation only: scramble every
    test label and the runs, their validation metrics and the chosen grid point stay the same."""
    import dataclasses

    from hypermlp.data import IGNORE_INDEX, make_task
    from hypermlp.tasks import TokenTask

    data = make_task("in_context_recall", vocab_size=16, seq_len=32, num_train=256, num_test=64, num_val=64, seed=0)
    scored = data.test_targets != IGNORE_INDEX
    bad = data.test_targets.clone()
    bad[scored] = (bad[scored] + 1 + torch.randint(0, 15, (int(scored.sum()),), generator=torch.Generator().manual_seed(0))) % 16
    assert (bad[scored] != data.test_targets[scored]).all()  # every test label is now wrong
    corrupt = dataclasses.replace(data, test_targets=bad)

    def grid(d):
        out = {}
        for lr in (1e-3, 3e-3):
            cfg = TrainConfig(epochs=4, batch_size=32, lr=lr, eval_each_epoch=True, early_stop_at=0.215,
                              device="cpu", progress=False)
            out[lr] = Trainer(tiny_cfg(), TokenTask(d), cfg).fit()
        return out

    clean, dirty = grid(data), grid(corrupt)
    pick = lambda runs: max(runs, key=lambda lr: runs[lr]["final"]["val_acc"])  # noqa: E731
    assert pick(clean) == pick(dirty)
    for lr in clean:
        a, b = clean[lr], dirty[lr]
        assert a["train_loss"] == b["train_loss"] and a["step"] == b["step"] and a["stopped_early"] == b["stopped_early"]
        val = lambda r: [{k: v for k, v in e.items() if k.startswith("val_")} for e in r["evals"]]  # noqa: E731
        assert val(a) == val(b)
        assert a["final"]["test_acc"] != b["final"]["test_acc"]  # the test metrics did see the change
    assert any(r["stopped_early"] for r in clean.values())  # early stopping took part (lr 1e-3: step 24 of 32)
