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
