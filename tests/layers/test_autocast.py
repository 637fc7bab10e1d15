"""Mixed precision: a LanguageModel with every mixer trains under CPU autocast (bfloat16, float16)
with finite losses and gradients; the parameters (the DPLR tables among them) and their gradients
stay float32, and the first loss is the float32 one to half-precision tolerance. The Hyper cores
compute in float32 inside (ops/hyper/precision.py); the same code runs under CUDA autocast."""

import pytest
import torch

from hypermlp.models.lm import LanguageModel, ModelConfig

MIXERS = ["hyperglu", "hypermlp", "relu", "softmax"]


def hybrid() -> LanguageModel:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=48, d_model=32, n_layers=len(MIXERS), mixer=MIXERS,
                      mixer_args={"n_heads": 2, "chunk_size": 16}, max_len=96)
    return LanguageModel(cfg)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_model_with_every_mixer_trains_under_autocast(dtype):
    model = hybrid()
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 48, (2, 70), generator=g)  # 70: not a multiple of the chunk
    targets = torch.randint(0, 48, (2, 70), generator=g)
    with torch.no_grad():
        loss_fp32 = model(idx, targets)[1]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(3):
        with torch.autocast("cpu", dtype=dtype):
            logits, loss = model(idx, targets)
        assert logits.dtype == dtype and loss.dtype == torch.float32
        assert torch.isfinite(loss), f"step {step}: loss {loss}"
        if step == 0:
            torch.testing.assert_close(loss, loss_fp32, rtol=2e-2, atol=0)
        opt.zero_grad()
        loss.backward()
        for name, p in model.named_parameters():
            assert p.dtype == torch.float32 and p.grad.dtype == torch.float32, name
            assert torch.isfinite(p.grad).all(), f"step {step}: non-finite grad of {name}"
        opt.step()
    tables = [p for n, p in model.named_parameters() if ".seq_mix" in n]
    assert len(tables) == 3 * 4  # A, B, p of R(1) and R(2) in the HyperGLU and HyperMLP layers
    assert all(p.dtype == torch.float32 and p.grad.abs().sum() > 0 for p in tables)


def test_a_long_sequence_stays_finite_under_bf16_autocast():
    # the longest CI can afford (T = 8192 runs ~1 min on 2 CPU cores; the CUDA bench checks it)
    from hypermlp.layers import HyperGLU

    torch.manual_seed(0)
    t = 2048
    layer = HyperGLU(d_model=16, n_heads=1, max_len=t, seq_rank=4, chunk_size=256)
    x = (torch.randn(1, t, 16) * 4).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    y.float().square().mean().backward()
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    assert torch.isfinite(x.grad).all()
    for name, p in layer.named_parameters():
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name
