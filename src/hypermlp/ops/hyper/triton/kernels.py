"""The Triton kernels of the Hyper core (docs/math.md §2.4 - §2.8); README.md next to the
package, "Triton kernel", derives them. Importing this module imports triton; ``core.py`` does
that lazily, so ``import hypermlp`` never does.

One program handles a block of BLOCK_M queries of one (batch row, readout head) and streams over
the key blocks of BLOCK_N keys its last query can see; nothing of size T x T ever reaches memory.
A tile is laid out by key: entry (i, j) is query i against key j, at lag t_i - j, and the
lag-indexed tables are read at rows t_i - j by pointer arithmetic (a gather per tile). Per row:

    pass 1 (R(1) on):  u1 = sum_j z0[j] A1[lag]                         (r)
    pass 2:            z1 = z0 (1 + p1[lag]) + (u1 s1) B1[lag]^T, masked;
                       rho^2 = sum g^2;  u2 = sum_j act[j] A2[lag]        (R(2) on)
                       or, with R(2) off, the readout o += act @ v here
    pass 3 (R(2) on):  y = act (1 + p2[lag]) + (u2 s2) B2[lag]^T, masked;  o += y @ v
    out = o / sqrt(rho^2 + eps)

act is not normalised: R(2) and the readout are linear in it, so 1/rho scales the readout
(docs/math.md §2.6). HyperGLU: the program holds both score heads of its readout head h, the
gate branch h and the scale branch H + h; act = softplus(scale) * relu(gate), rho over the gate.

All operands are contiguous and in one floating dtype (the compute dtype, ``precision.py``);
accumulators take that dtype. BLOCK_M = 1 (the decode step) computes its products as sums of
broadcasts: tl.dot needs at least 16 rows.
"""

from __future__ import annotations

import triton
import triton.language as tl

@triton.jit
def _mm_nt(a, b, BLOCK_M: tl.constexpr):
    """a (M, K) @ b (N, K)^T -> (M, N) in a's dtype; exact (ieee) for float32."""
    if BLOCK_M >= 16:
        return tl.dot(a, tl.trans(b), input_precision="ieee", out_dtype=a.dtype)
    else:
        return tl.sum(a[:, None, :] * b[None, :, :], axis=2)


@triton.jit
def _mm_nn(a, b, BLOCK_M: tl.constexpr):
    """a (M, K) @ b (K, N) -> (M, N) in a's dtype."""
    if BLOCK_M >= 16:
        return tl.dot(a, b, input_precision="ieee", out_dtype=a.dtype)
    else:
        return tl.sum(a[:, :, None] * b[None, :, :], axis=1)


@triton.jit
def _lag_table(tab_ptr, lag, m, offs_r, R):
    """Rows ``lag`` (M, N) of a (L, R) table: the (M, N, BLOCK_R) gather, 0 where ~m."""
    ptrs = tab_ptr + lag[:, :, None] * R + offs_r[None, None, :]
    return tl.load(ptrs, mask=m[:, :, None] & (offs_r < R)[None, None, :], other=0.0)


@triton.jit
def _times_lag_table(x, tab_ptr, lag, m, offs_r, R):
    """sum_j x[i, j] tab[lag[i, j], :] -> (M, BLOCK_R): a row of scores against its table rows."""
    return tl.sum(x[:, :, None] * _lag_table(tab_ptr, lag, m, offs_r, R), axis=1)


@triton.jit
def _low_rank(us, tab_ptr, lag, m, offs_r, R):
    """sum_r us[i, r] tab[lag[i, j], r] -> (M, N): the low-rank term (u s) B^T of a mixing."""
    return tl.sum(us[:, None, :] * _lag_table(tab_ptr, lag, m, offs_r, R), axis=2)


@triton.jit
def _scores(q, k_ptr, offs_j, offs_d, S, DK, m, BLOCK_M: tl.constexpr):
    """z0 = q k_j^T for the tile's keys (rows of a (S, DK) matrix), 0 where ~m."""
    k = tl.load(k_ptr + offs_j[:, None] * DK + offs_d[None, :],
                mask=(offs_j < S)[:, None] & (offs_d < DK)[None, :], other=0.0)
    return tl.where(m, _mm_nt(q, k, BLOCK_M), 0.0)


@triton.jit
def _mixed_scores(q, k_ptr, us1, B1_ptr, p1_ptr, offs_j, offs_d, offs_r, lag, m, S, DK, R,
                  MIX1: tl.constexpr, BLOCK_M: tl.constexpr):
    """z1 = R(1) z0 = z0 (1 + p1[lag]) + (u1 s1) B1[lag]^T, masked (z0 itself without R(1))."""
    z = _scores(q, k_ptr, offs_j, offs_d, S, DK, m, BLOCK_M)
    if MIX1:
        p = tl.load(p1_ptr + lag, mask=m, other=0.0)
        z = tl.where(m, z + z * p + _low_rank(us1, B1_ptr, lag, m, offs_r, R), 0.0)
    return z


@triton.jit
def _softplus(x):
    """torch's softplus (threshold 20), written to be stable for large |x|."""
    return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x))))


@triton.jit
def _activation(zg, zc, GLU: tl.constexpr):
    """relu(g) (HyperMLP) or softplus(c) * relu(g) (HyperGLU), before 1/rho."""
    if GLU:
        return _softplus(zc) * tl.maximum(zg, 0.0)
    else:
        return tl.maximum(zg, 0.0)


@triton.jit
def hyper_fwd_kernel(
    q_ptr, k_ptr, v_ptr,  # (b, Hq, T, DK), (b, Hq, S, DK), (b, H, S, DV)
    s1_ptr, s2_ptr,  # (b, Hq, T, R), (b, H, T, R)
    A1_ptr, B1_ptr, p1_ptr,  # (Hq, L, R), (Hq, L, R), (Hq, L)
    A2_ptr, B2_ptr, p2_ptr,  # (H, L, R), (H, L, R), (H, L)
    valid_ptr,  # (b, S) int8, 1 = a real key
    o_ptr,  # (b, H, T, DV) out
    T, S, offset, H, L, DK, DV, R, eps,
    GLU: tl.constexpr, MIX1: tl.constexpr, MIX2: tl.constexpr, HAS_VALID: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """The Hyper core's forward; grid (cdiv(T, BLOCK_M), b * H). The module docstring has the
    passes."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    bi = pid_bh // H
    h = pid_bh % H
    HQ = 2 * H if GLU else H
    hc = H + h  # the scale branch's score head (HyperGLU)

    offs_i = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # query rows of the call
    pos = offset + offs_i  # their absolute positions
    row_ok = offs_i < T
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    offs_r = tl.arange(0, BLOCK_R)
    r_ok = offs_r < R
    key_end = tl.minimum(S, offset + (pid_m + 1) * BLOCK_M)  # keys the block's last row sees

    q_mask = row_ok[:, None] & (offs_d < DK)[None, :]
    qg = tl.load(q_ptr + ((bi * HQ + h) * T + offs_i[:, None]) * DK + offs_d[None, :], mask=q_mask, other=0.0)
    qc = qg
    if GLU:
        qc = tl.load(q_ptr + ((bi * HQ + hc) * T + offs_i[:, None]) * DK + offs_d[None, :], mask=q_mask, other=0.0)
    dt = qg.dtype
    kg_ptr = k_ptr + (bi * HQ + h) * S * DK
    kc_ptr = k_ptr + (bi * HQ + hc) * S * DK
    v_base = v_ptr + (bi * H + h) * S * DV

    # ---- pass 1: u1 = sum_j z0[j] A1[lag], then the gated us1 = u1 * s1 of each score head
    r_mask = row_ok[:, None] & r_ok[None, :]
    us1g = tl.zeros([BLOCK_M, BLOCK_R], dtype=dt)
    us1c = tl.zeros([BLOCK_M, BLOCK_R], dtype=dt)
    if MIX1:
        for j0 in range(0, key_end, BLOCK_N):
            offs_j = j0 + tl.arange(0, BLOCK_N)
            m = row_ok[:, None] & (offs_j[None, :] <= pos[:, None]) & (offs_j < S)[None, :]
            if HAS_VALID:
                m = m & (tl.load(valid_ptr + bi * S + offs_j, mask=offs_j < S, other=0) != 0)[None, :]
            lag = tl.where(m, pos[:, None] - offs_j[None, :], 0)
            zg = _scores(qg, kg_ptr, offs_j, offs_d, S, DK, m, BLOCK_M)
            us1g += _times_lag_table(zg, A1_ptr + h * L * R, lag, m, offs_r, R)
            if GLU:
                zc = _scores(qc, kc_ptr, offs_j, offs_d, S, DK, m, BLOCK_M)
                us1c += _times_lag_table(zc, A1_ptr + hc * L * R, lag, m, offs_r, R)
        s_off = offs_i[:, None] * R + offs_r[None, :]
        us1g = us1g * tl.load(s1_ptr + (bi * HQ + h) * T * R + s_off, mask=r_mask, other=0.0)
        if GLU:
            us1c = us1c * tl.load(s1_ptr + (bi * HQ + hc) * T * R + s_off, mask=r_mask, other=0.0)

    # ---- pass 2: rho^2 and u2 = sum_j act[j] A2[lag] (or, without R(2), the readout)
    rho2 = tl.zeros([BLOCK_M], dtype=dt)
    us2 = tl.zeros([BLOCK_M, BLOCK_R], dtype=dt)
    o = tl.zeros([BLOCK_M, BLOCK_DV], dtype=dt)
    for j0 in range(0, key_end, BLOCK_N):
        offs_j = j0 + tl.arange(0, BLOCK_N)
        m = row_ok[:, None] & (offs_j[None, :] <= pos[:, None]) & (offs_j < S)[None, :]
        if HAS_VALID:
            m = m & (tl.load(valid_ptr + bi * S + offs_j, mask=offs_j < S, other=0) != 0)[None, :]
        lag = tl.where(m, pos[:, None] - offs_j[None, :], 0)
        zg = _mixed_scores(qg, kg_ptr, us1g, B1_ptr + h * L * R, p1_ptr + h * L, offs_j, offs_d, offs_r, lag, m,
                           S, DK, R, MIX1, BLOCK_M)
        zc = zg
        if GLU:
            zc = _mixed_scores(qc, kc_ptr, us1c, B1_ptr + hc * L * R, p1_ptr + hc * L, offs_j, offs_d, offs_r,
                               lag, m, S, DK, R, MIX1, BLOCK_M)
        rho2 += tl.sum(zg * zg, axis=1)
        act = _activation(zg, zc, GLU)
        if MIX2:
            us2 += _times_lag_table(act, A2_ptr + h * L * R, lag, m, offs_r, R)
        else:
            v = tl.load(v_base + offs_j[:, None] * DV + offs_dv[None, :],
                        mask=(offs_j < S)[:, None] & (offs_dv < DV)[None, :], other=0.0)
            o += _mm_nn(act, v, BLOCK_M)

    # ---- pass 3 (R(2) on): y = R(2) act, masked, and the readout o = y @ v
    if MIX2:
        us2 = us2 * tl.load(s2_ptr + (bi * H + h) * T * R + offs_i[:, None] * R + offs_r[None, :], mask=r_mask,
                            other=0.0)
        for j0 in range(0, key_end, BLOCK_N):
            offs_j = j0 + tl.arange(0, BLOCK_N)
            m = row_ok[:, None] & (offs_j[None, :] <= pos[:, None]) & (offs_j < S)[None, :]
            if HAS_VALID:
                m = m & (tl.load(valid_ptr + bi * S + offs_j, mask=offs_j < S, other=0) != 0)[None, :]
            lag = tl.where(m, pos[:, None] - offs_j[None, :], 0)
            zg = _mixed_scores(qg, kg_ptr, us1g, B1_ptr + h * L * R, p1_ptr + h * L, offs_j, offs_d, offs_r, lag,
                               m, S, DK, R, MIX1, BLOCK_M)
            zc = zg
            if GLU:
                zc = _mixed_scores(qc, kc_ptr, us1c, B1_ptr + hc * L * R, p1_ptr + hc * L, offs_j, offs_d, offs_r,
                                   lag, m, S, DK, R, MIX1, BLOCK_M)
            act = _activation(zg, zc, GLU)
            p2 = tl.load(p2_ptr + h * L + lag, mask=m, other=0.0)
            y = tl.where(m, act + act * p2 + _low_rank(us2, B2_ptr + h * L * R, lag, m, offs_r, R), 0.0)
            v = tl.load(v_base + offs_j[:, None] * DV + offs_dv[None, :],
                        mask=(offs_j < S)[:, None] & (offs_dv < DV)[None, :], other=0.0)
            o += _mm_nn(y, v, BLOCK_M)

    o = o / tl.sqrt(rho2 + eps)[:, None]
    o_ptrs = o_ptr + ((bi * H + h) * T + offs_i[:, None]) * DV + offs_dv[None, :]
    tl.store(o_ptrs, o.to(o_ptr.dtype.element_ty), mask=row_ok[:, None] & (offs_dv < DV)[None, :])


# whether the kernels were decorated for the interpreter (TRITON_INTERPRET=1 set before this
# module was first imported): only then do they run on CPU tensors
INTERPRETED = not isinstance(hyper_fwd_kernel, triton.runtime.JITFunction)
