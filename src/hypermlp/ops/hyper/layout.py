"""Key and lag layouts of one query block, and the moves between them (docs/math.md §2.4, §3).

A block holds C queries, row i at absolute position W-C+i, against the W keys 0 .. W-1 its last
row can see. Its C x W scores can be laid out two ways:

* key layout: column j is key j. Row i sees keys j <= W-C+i; the keys after that are the
  future of the row (the C*(C-1)/2 entries of the top-right triangle).
* lag layout: column m is lag W-1-m, i.e. key m - (C-1-i) of row i (oldest lag first; see
  ``table_cols`` for why reversed). Row i sees lags 0 .. W-C+i, columns m >= C-1-i; the
  lags beyond the row's position are the top-left triangle.

The chunked core mixes in the lag layout (a DPLR mixing is then two thin matmuls against the
tables) and reads out and differentiates the scores in the key layout. The moves:

    skew(x)[..., i, m]   = x[..., i, m - (C-1-i)]   (0 where the index is < 0)
    unskew(z)[..., i, j] = z[..., i, j + (C-1-i)]   (0 where the index is > W-1)

Row i moves right (skew) or left (unskew) by C-1-i. ``unskew`` is the adjoint of ``skew``
(<skew x, z> = <x, unskew z>), so the backward of a skew is an unskew and vice versa.

Both are free in the chunked core, through strided views of buffers whose spare entries are
zero (README.md next to this file has the pictures):

* ``skew_view``: a row-major (C, C-1+W) matrix whose rows start with C-1 zeros, read with row
  stride one larger, is the skew of its last W columns. The score matmul against the keys
  behind C-1 zero rows produces exactly such a matrix (``pad_rows``).
* ``unskew_view``: a lag-layout block stored with row stride W+1 (``lag_block``), read with row
  stride W from C-1 elements further on, is its unskew, once each row's spare column and its
  lags beyond its position are zero (``clear_for_unskew``).

``skew`` and ``unskew`` below are the general versions for any tensor, built from the same
views; the tests check all of them against the gathers above.
"""

from __future__ import annotations

import functools

import torch

LAYOUTS = ("lag", "left")


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


# ----------------------------------------------------------------------------------------------
# which table rows a query uses


def table_rows(layout: str, n: int, total_len: int) -> slice:
    """Rows of the (lag-indexed) tables used by a query that sees ``n`` keys, in lag order.

    lag layout: lag l uses row l, so the query at position t uses rows 0..t whatever the
    sequence length (docs/math.md §3: the operator at length t is the top-left block of any
    longer one). left layout (ablation, ours): the tables are indexed by key position counted
    back from the end of the *current sequence*: key j uses row total_len-1-j. In lag order
    (key j = t - l) that is rows total_len-n .. total_len-1. It depends on the sequence length,
    which is why it breaks truncation invariance and cached decoding; at the last position both
    layouts coincide.
    """
    if layout == "lag":
        return slice(0, n)
    return slice(total_len - n, total_len)


def table_cols(layout: str, w: int, total_len: int) -> slice:
    """Rows of the *reversed* tables ``table[:, :total_len].flip(1)`` that the W columns of a
    block use, in column order.

    lag layout: column m is lag W-1-m, table row W-1-m, reversed row total_len-W+m: the last W
    rows, the same for every row of the block. That is why the lag layout runs oldest lag
    first: in that order a block's mixing is a plain matmul against a slice of the reversed
    table. left layout: column j is key j, table row total_len-1-j, reversed row j: the first W
    (the left layout mixes in the key layout, no skew needed).
    """
    if layout == "lag":
        return slice(total_len - w, total_len)
    return slice(0, w)


# ----------------------------------------------------------------------------------------------
# the lags (or keys) beyond each row's position


@functools.lru_cache(maxsize=256)
def _triangle(kind: str, c: int, device: torch.device) -> torch.Tensor:
    """Bool masks of the entries beyond each row's position, cached (built once per block size):
    "lag": (C, C-1), True where m < C-1-i (first C-1 columns of the lag layout);
    "key": (C, C-1), True where m >= i (last C-1 columns of the key layout);
    "window": (C, C), True where m <= C-1-i (see ``clear_for_unskew``)."""
    i = torch.arange(c, device=device)[:, None]
    if kind == "window":
        return torch.arange(c, device=device)[None, :] <= c - 1 - i
    m = torch.arange(c - 1, device=device)[None, :]
    return m < c - 1 - i if kind == "lag" else m >= i


def zero_future_lags(z: torch.Tensor) -> None:
    """In place: zero the C*(C-1)/2 lags beyond each row's position of a lag-layout block
    (..., C, W). A ``masked_fill_`` of the (C, C-1) corner, not a multiply by a full mask."""
    c = z.shape[-2]
    if c > 1:
        z[..., : c - 1].masked_fill_(_triangle("lag", c, z.device), 0)


def zero_future_keys(z: torch.Tensor) -> None:
    """In place: zero the keys after each row's position of a key-layout block (..., C, W)."""
    c, w = z.shape[-2:]
    if c > 1:
        z[..., w - c + 1 :].masked_fill_(_triangle("key", c, z.device), 0)


# ----------------------------------------------------------------------------------------------
# the two free views, and the buffers they need


def pad_rows(x: torch.Tensor, pad: int, dtype=None) -> torch.Tensor:
    """(..., S, d) -> a contiguous (..., pad+S, d) copy with ``pad`` zero rows in front (in
    ``dtype``, default x's), for ``skew_view``: a block of C queries multiplies the C-1 zero rows
    before its keys, and that product is the zero-padded key-layout block ``skew_view`` reads."""
    out = x.new_empty(*x.shape[:-2], pad + x.shape[-2], x.shape[-1], dtype=dtype)
    out[..., :pad, :] = 0
    out[..., pad:, :] = x
    return out


def skew_view(xp: torch.Tensor) -> torch.Tensor:
    """(..., C, C-1+W) whose rows start with C-1 zeros -> the lag layout (..., C, W) of its last W
    columns, as a view (no copy).

    Row i of the result is row i of ``xp`` from column i on: read with row stride one larger.
    Its first C-1-i entries are padding zeros, which are the lags beyond the row's position;
    the keys after the row's position fall off the end. ``xp`` needs unit column stride and
    rows one after the other (e.g. a matmul output)."""
    c, width = xp.shape[-2:]
    w = width - (c - 1)
    assert xp.stride(-1) == 1 and (c == 1 or xp.stride(-2) >= width)
    return xp.as_strided((*xp.shape[:-2], c, w), (*xp.stride()[:-2], xp.stride(-2) + 1, 1), xp.storage_offset())


def lag_block(like: torch.Tensor, shape) -> torch.Tensor:
    """An uninitialised lag-layout block (..., C, W) stored for ``unskew_view``: rows with stride
    W+1 (a spare column after each row) and one spare element in front of the first row, in
    ``like``'s dtype and on its device."""
    *lead, c, w = shape
    strides, size = [], c * (w + 1)
    for d in reversed(lead):
        strides.insert(0, size)
        size *= d
    flat = like.new_empty(size + 1)
    return flat.as_strided((*lead, c, w), (*strides, w + 1, 1), 1)


def clear_for_unskew(z: torch.Tensor) -> None:
    """In place: zero what ``unskew_view`` reads besides each row's valid lags, i.e. each row's
    spare column and its lags beyond its position (``zero_future_lags`` included).

    Seen from one element before each row, the spare column of the previous row and the row's
    invalid lags are one run: a (C, C) window per plane, entry (i, m) to clear for m <= C-1-i;
    one ``masked_fill_`` covers both (the element before row 0 is ``lag_block``'s spare one)."""
    c = z.shape[-2]
    if c == 1:  # a single row never reads its spare column
        return
    window = z.as_strided((*z.shape[:-1], c), z.stride(), z.storage_offset() - 1)
    window.masked_fill_(_triangle("window", c, z.device), 0)


def unskew_view(z: torch.Tensor) -> torch.Tensor:
    """Lag layout -> key layout (..., C, W), as a view of ``z``, which must come from
    ``lag_block`` and be cleared by ``clear_for_unskew``.

    Key (i, j) is lag entry (i, j + C-1-i), which lies (C-1) + i*W + j elements after the
    block's first entry when rows have stride W+1: row stride W from offset C-1. The keys after
    a row's position read its spare column and the next row's cleared lags."""
    c, w = z.shape[-2:]
    assert z.stride(-2) == w + 1 and z.stride(-1) == 1
    return z.as_strided(z.shape, (*z.stride()[:-2], w, 1), z.storage_offset() + c - 1)


# ----------------------------------------------------------------------------------------------
# the general moves, for any tensor (tests, docs, the key-padding mask)


def skew(x: torch.Tensor) -> torch.Tensor:
    """Key layout (..., C, W) -> lag layout (..., C, W): out[i, m] = x[i, m - (C-1-i)], 0 where
    the index is negative. One copy: ``x`` written through the unskew view of a fresh
    ``lag_block`` (on the valid entries the skew is the unskew's inverse), then the future lags
    zeroed. The result can be read back by ``unskew_view`` after ``clear_for_unskew``."""
    z = lag_block(x, x.shape)
    unskew_view(z).copy_(x)
    zero_future_lags(z)
    return z


def unskew(z: torch.Tensor) -> torch.Tensor:
    """Lag layout (..., C, W) -> key layout (..., C, W): out[i, j] = z[i, j + (C-1-i)], 0 where
    the index is beyond W-1. One copy into a ``lag_block``, then ``unskew_view``."""
    buf = lag_block(z, z.shape)
    buf.copy_(z)
    clear_for_unskew(buf)
    return unskew_view(buf)
