"""Key and lag layouts (``hypermlp.ops.hyper.layout``) against naive gathers."""

import pytest
import torch

from hypermlp.ops.hyper.layout import (
    clear_for_unskew,
    lag_block,
    pad_rows,
    skew,
    skew_view,
    table_cols,
    table_rows,
    unskew,
    unskew_view,
    zero_future_keys,
    zero_future_lags,
)

from ._inputs import DT

SHAPES = [(1, 1), (1, 6), (2, 2), (3, 3), (3, 5), (4, 9), (5, 12)]


def naive_skew(x):
    """out[i, m] = x[i, m - (C-1-i)], 0 where the index is negative."""
    c, w = x.shape[-2:]
    out = torch.zeros_like(x)
    for i in range(c):
        for m in range(w):
            src = m - (c - 1 - i)
            if src >= 0:
                out[..., i, m] = x[..., i, src]
    return out


def naive_unskew(z):
    """out[i, j] = z[i, j + (C-1-i)], 0 where the index is beyond W-1."""
    c, w = z.shape[-2:]
    out = torch.zeros_like(z)
    for i in range(c):
        for j in range(w):
            src = j + (c - 1 - i)
            if src < w:
                out[..., i, j] = z[..., i, src]
    return out


def random(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def fill_storage(x, value):
    """Fill the whole storage behind a view, spare entries included (an uninitialised buffer)."""
    x.as_strided((x.untyped_storage().nbytes() // x.element_size(),), (1,), 0).fill_(value)


@pytest.mark.parametrize("c,w", SHAPES)
def test_skew_and_unskew_are_the_gathers(c, w):
    x = random(3, 2, c, w, seed=c * 13 + w)
    assert torch.equal(skew(x), naive_skew(x))
    assert torch.equal(unskew(x), naive_unskew(x))


def test_skew_and_unskew_shift_rows_by_position():
    c, w = 3, 5
    x = torch.arange(1, c * w + 1, dtype=DT).view(c, w)
    sk = skew(x)
    for i in range(c):
        for m in range(w):
            src = m - (c - 1 - i)
            assert sk[i, m] == (x[i, src] if src >= 0 else 0)
    # unskew inverts skew on the causal part (keys the row can see), and vice versa on the lags
    causal = torch.arange(w)[None, :] <= torch.arange(c)[:, None] + (w - c)
    assert torch.equal(unskew(skew(x * causal)), x * causal)
    visible_lags = torch.arange(w)[None, :] >= (c - 1 - torch.arange(c))[:, None]
    assert torch.equal(skew(unskew(x * visible_lags)), x * visible_lags)


@pytest.mark.parametrize("c,w", SHAPES)
def test_unskew_is_the_adjoint_of_skew(c, w):
    x, z = random(2, c, w, seed=1), random(2, c, w, seed=2)
    torch.testing.assert_close((skew(x) * z).sum(), (x * unskew(z)).sum(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("c,w", SHAPES)
def test_skew_view_inside_the_score_matmul(c, w):
    """The lag layout read as a view of x @ [zeros; keys]^T equals skew(x @ keys^T)."""
    chunk = 5
    x, keys = random(3, 2, c, 4, seed=c), random(3, 2, w, 4, seed=w)
    keys_p = pad_rows(keys, chunk - 1)  # as the chunked core pads once per call
    start = chunk - 1 - (c - 1)
    z = skew_view(x @ keys_p[:, :, start : start + w + c - 1].transpose(-1, -2))
    torch.testing.assert_close(z, naive_skew(x @ keys.transpose(-1, -2)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("c,w", SHAPES)
def test_unskew_view_of_a_cleared_lag_block(c, w):
    """Whatever the spare entries held, after clear_for_unskew the view is the unskew of the
    block's visible lags."""
    z = random(3, 2, c, w, seed=5)
    visible_lags = torch.arange(w)[None, :] >= (c - 1 - torch.arange(c))[:, None]
    buf = lag_block(z, z.shape)
    fill_storage(buf, 123.0)
    buf.copy_(z)
    clear_for_unskew(buf)
    assert torch.equal(buf, z * visible_lags)  # the lags beyond each row's position are cleared
    assert torch.equal(unskew_view(buf), naive_unskew(z))


@pytest.mark.parametrize("c,w", SHAPES)
def test_zero_future_lags_and_keys(c, w):
    i, j = torch.arange(c)[:, None], torch.arange(w)[None, :]
    z = random(2, c, w)
    lags = z.clone()
    zero_future_lags(lags)
    assert torch.equal(lags, z * (j >= c - 1 - i))
    keys = z.clone()
    zero_future_keys(keys)
    assert torch.equal(keys, z * (j <= w - c + i))


@pytest.mark.parametrize("layout", ["lag", "left"])
def test_table_cols_of_a_block_are_the_rows_each_query_uses(layout):
    """Column m of a block row, read in the reversed table at ``table_cols``, is the table row
    that ``table_rows`` gives that query for the same key."""
    total, c, w = 11, 4, 9  # block of positions 5..8 against keys 0..8, sequence of 11
    table = torch.arange(100, 100 + 16, dtype=DT)[None, :]  # (heads=1, L=16), value = row
    rev = table[:, :total].flip(1)
    cols = rev[0, table_cols(layout, w, total)]  # (W,), in the block's mixing layout
    for i in range(c):
        pos = w - c + i
        lag_rows = table[0, table_rows(layout, pos + 1, total)]  # lag order, lag 0 first
        for lag in range(pos + 1):
            key = pos - lag
            col = key + (c - 1 - i) if layout == "lag" else key  # lag layout vs key layout
            assert cols[col] == lag_rows[lag]
