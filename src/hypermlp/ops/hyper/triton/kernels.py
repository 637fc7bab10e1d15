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
accumulators take that dtype. The lag tables are rank-major (heads, R, L): each rank of a tile
is one (M, N) gather along contiguous lags, so no (M, N, R) tensor is ever held in registers.
Products are tl.dot (exact "ieee" for float32) except for BLOCK_M = 1 (the decode step: tl.dot
needs 16 rows) and float64 (no float64 tl.dot on the NVIDIA backend): sums of broadcasts there.
"""

from __future__ import annotations

import triton
import triton.language as tl

@triton.jit
def _mm_nt(a, b, BLOCK_M: tl.constexpr):
    """a (M, K) @ b (N, K)^T -> (M, N) in a's dtype; exact (ieee) for float32. tl.dot needs 16
    rows, and the NVIDIA backend has no float64 tl.dot: those are sums of broadcasts."""
    if BLOCK_M >= 16 and a.dtype != tl.float64:
        return tl.dot(a, tl.trans(b), input_precision="ieee", out_dtype=a.dtype)
    else:
        return tl.sum(a[:, None, :] * b[None, :, :], axis=2)


@triton.jit
def _mm_nn(a, b, BLOCK_M: tl.constexpr):
    """a (M, K) @ b (K, N) -> (M, N) in a's dtype (as ``_mm_nt``)."""
    if BLOCK_M >= 16 and a.dtype != tl.float64:
        return tl.dot(a, b, input_precision="ieee", out_dtype=a.dtype)
    else:
        return tl.sum(a[:, :, None] * b[None, :, :], axis=1)


@triton.jit
def _mm_tn(a, b):
    """a (K, M)^T @ b (K, N) -> (M, N) in a's dtype (as ``_mm_nt``; K = BLOCK_M >= 16)."""
    if a.dtype != tl.float64:
        return tl.dot(tl.trans(a), b, input_precision="ieee", out_dtype=a.dtype)
    else:
        return tl.sum(a[:, :, None] * b[:, None, :], axis=0)


@triton.jit
def _times_lag_table(x, tab_ptr, lag, m, offs_r, L, R):
    """sum_j x[i, j] tab[:, lag[i, j]] -> (M, BLOCK_R): each row of scores against its lags' table
    rows. The table is rank-major (R, L), so each rank is one gather of an (M, N) tile along
    contiguous lags; no (M, N, R) tensor is ever held."""
    acc = tl.zeros([x.shape[0], offs_r.shape[0]], dtype=x.dtype)
    for rr in range(R):
        col = tl.load(tab_ptr + rr * L + lag, mask=m, other=0.0)
        acc += tl.where(offs_r[None, :] == rr, tl.sum(x * col, axis=1)[:, None], 0.0)
    return acc


@triton.jit
def _low_rank(us, tab_ptr, lag, m, offs_r, L, R):
    """sum_r us[i, r] tab[r, lag[i, j]] -> (M, N): the low-rank term (u s) B^T of a mixing."""
    acc = tl.zeros(lag.shape, dtype=us.dtype)
    for rr in range(R):
        col = tl.load(tab_ptr + rr * L + lag, mask=m, other=0.0)
        acc += tl.sum(tl.where(offs_r[None, :] == rr, us, 0.0), axis=1)[:, None] * col
    return acc


@triton.jit
def _scores(q, k_ptr, offs_j, offs_d, S, DK, m, BLOCK_M: tl.constexpr):
    """z0 = q k_j^T for the tile's keys (rows of a (S, DK) matrix), 0 where ~m."""
    k = tl.load(k_ptr + offs_j[:, None] * DK + offs_d[None, :],
                mask=(offs_j < S)[:, None] & (offs_d < DK)[None, :], other=0.0)
    return tl.where(m, _mm_nt(q, k, BLOCK_M), 0.0)


@triton.jit
def _mixed_scores(q, k_ptr, us1, B1_ptr, p1_ptr, offs_j, offs_d, offs_r, lag, m, S, DK, L, R,
                  MIX1: tl.constexpr, BLOCK_M: tl.constexpr):
    """z1 = R(1) z0 = z0 (1 + p1[lag]) + (u1 s1) B1[lag]^T, masked (z0 itself without R(1))."""
    z = _scores(q, k_ptr, offs_j, offs_d, S, DK, m, BLOCK_M)
    if MIX1:
        p = tl.load(p1_ptr + lag, mask=m, other=0.0)
        z = tl.where(m, z + z * p + _low_rank(us1, B1_ptr, lag, m, offs_r, L, R), 0.0)
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
    u1_ptr, u2_ptr, inv_rho_ptr, o_raw_ptr,  # SAVE: (b, Hq, T, R), (b, H, T, R), (b, H, T), (b, H, T, DV)
    T, S, offset, H, L, DK, DV, R, eps,
    GLU: tl.constexpr, MIX1: tl.constexpr, MIX2: tl.constexpr, HAS_VALID: tl.constexpr, SAVE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """The Hyper core's forward; grid (cdiv(T, BLOCK_M), b * H). The module docstring has the
    passes. SAVE: also store what the backward reads (u = z A of each mixing, 1/rho and the raw
    readout before 1/rho), all linear in T."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    bi = (pid_bh // H).to(tl.int64)  # int64: the offsets of large (b, heads, S, d) tensors pass 2^31
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
            us1g += _times_lag_table(zg, A1_ptr + h * L * R, lag, m, offs_r, L, R)
            if GLU:
                zc = _scores(qc, kc_ptr, offs_j, offs_d, S, DK, m, BLOCK_M)
                us1c += _times_lag_table(zc, A1_ptr + hc * L * R, lag, m, offs_r, L, R)
        s_off = offs_i[:, None] * R + offs_r[None, :]
        if SAVE:
            tl.store(u1_ptr + (bi * HQ + h) * T * R + s_off, us1g, mask=r_mask)
            if GLU:
                tl.store(u1_ptr + (bi * HQ + hc) * T * R + s_off, us1c, mask=r_mask)
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
                           S, DK, L, R, MIX1, BLOCK_M)
        zc = zg
        if GLU:
            zc = _mixed_scores(qc, kc_ptr, us1c, B1_ptr + hc * L * R, p1_ptr + hc * L, offs_j, offs_d, offs_r,
                               lag, m, S, DK, L, R, MIX1, BLOCK_M)
        rho2 += tl.sum(zg * zg, axis=1)
        act = _activation(zg, zc, GLU)
        if MIX2:
            us2 += _times_lag_table(act, A2_ptr + h * L * R, lag, m, offs_r, L, R)
        else:
            v = tl.load(v_base + offs_j[:, None] * DV + offs_dv[None, :],
                        mask=(offs_j < S)[:, None] & (offs_dv < DV)[None, :], other=0.0)
            o += _mm_nn(act, v, BLOCK_M)

    # ---- pass 3 (R(2) on): y = R(2) act, masked, and the readout o = y @ v
    if MIX2:
        if SAVE:
            tl.store(u2_ptr + (bi * H + h) * T * R + offs_i[:, None] * R + offs_r[None, :], us2, mask=r_mask)
        us2 = us2 * tl.load(s2_ptr + (bi * H + h) * T * R + offs_i[:, None] * R + offs_r[None, :], mask=r_mask,
                            other=0.0)
        for j0 in range(0, key_end, BLOCK_N):
            offs_j = j0 + tl.arange(0, BLOCK_N)
            m = row_ok[:, None] & (offs_j[None, :] <= pos[:, None]) & (offs_j < S)[None, :]
            if HAS_VALID:
                m = m & (tl.load(valid_ptr + bi * S + offs_j, mask=offs_j < S, other=0) != 0)[None, :]
            lag = tl.where(m, pos[:, None] - offs_j[None, :], 0)
            zg = _mixed_scores(qg, kg_ptr, us1g, B1_ptr + h * L * R, p1_ptr + h * L, offs_j, offs_d, offs_r, lag,
                               m, S, DK, L, R, MIX1, BLOCK_M)
            zc = zg
            if GLU:
                zc = _mixed_scores(qc, kc_ptr, us1c, B1_ptr + hc * L * R, p1_ptr + hc * L, offs_j, offs_d, offs_r,
                                   lag, m, S, DK, L, R, MIX1, BLOCK_M)
            act = _activation(zg, zc, GLU)
            p2 = tl.load(p2_ptr + h * L + lag, mask=m, other=0.0)
            y = tl.where(m, act + act * p2 + _low_rank(us2, B2_ptr + h * L * R, lag, m, offs_r, L, R), 0.0)
            v = tl.load(v_base + offs_j[:, None] * DV + offs_dv[None, :],
                        mask=(offs_j < S)[:, None] & (offs_dv < DV)[None, :], other=0.0)
            o += _mm_nn(y, v, BLOCK_M)

    inv_rho = 1.0 / tl.sqrt(rho2 + eps)
    o_off = ((bi * H + h) * T + offs_i[:, None]) * DV + offs_dv[None, :]
    o_mask = row_ok[:, None] & (offs_dv < DV)[None, :]
    if SAVE:
        tl.store(inv_rho_ptr + (bi * H + h) * T + offs_i, inv_rho, mask=row_ok)
        tl.store(o_raw_ptr + o_off, o, mask=o_mask)
    o = o * inv_rho[:, None]
    tl.store(o_ptr + o_off, o.to(o_ptr.dtype.element_ty), mask=o_mask)


# ----------------------------------------------------------------------------------------------
# backward


@triton.jit
def _add_outer_to_lag_table(tab_ptr, x, g, lag, m, offs_r, L, R):
    """tab[r, lag[i, j]] += x[i, j] g[i, r] for every entry of the tile and every rank (atomics:
    lags repeat along the tile's diagonals, and other programs add to the same lags)."""
    for rr in range(R):
        g_r = tl.sum(tl.where(offs_r[None, :] == rr, g, 0.0), axis=1)
        tl.atomic_add(tab_ptr + rr * L + lag, x * g_r[:, None], mask=m, sem="relaxed")


@triton.jit
def _sigmoid_below_20(x):
    """d softplus / dx as torch has it: sigmoid(x), 1 above the threshold 20."""
    return tl.where(x > 20.0, 1.0, 1.0 / (1.0 + tl.exp(-x)))


@triton.jit
def _score_grads(zg, zc, dy, d_u2, A2_ptr, p2_ptr, lag, m, coef, offs_r, L, R, GLU: tl.constexpr, MIX2: tl.constexpr):
    """d_z1 of the gate (or only) branch and of the scale branch, from dy = dL/dy (masked):
    d_act = dy (1 + p2[lag]) + d_u2 A2[lag]^T (R(2)'s adjoint), then the activation and rho:
    d_g = d_act act'(g) - inv_rho^3 d_inv g (``coef`` = -inv_rho^3 d_inv per row)."""
    d_act = dy
    if MIX2:
        p2 = tl.load(p2_ptr + lag, mask=m, other=0.0)
        d_act = dy + dy * p2 + _low_rank(d_u2, A2_ptr, lag, m, offs_r, L, R)
    if GLU:
        sp = _softplus(zc)
        d_g = tl.where(zg > 0.0, d_act * sp, 0.0) + coef[:, None] * zg
        d_c = tl.where(zg > 0.0, d_act * zg, 0.0) * _sigmoid_below_20(zc)
    else:
        d_g = tl.where(zg > 0.0, d_act, 0.0) + coef[:, None] * zg
        d_c = d_g
    return d_g, d_c


@triton.jit
def _score_head_backward(d_z1, z0, q, k_ptr, dk_ptr, A1_ptr, dA1_ptr, dB1_ptr, dp1_ptr, p1_ptr, us1, d_u1,
                         offs_j, offs_d, offs_r, lag, m, S, DK, L, R, MIX1: tl.constexpr):
    """One score head's last steps: R(1)'s table gradients and adjoint (d_z0), then the scores':
    dk_j += d_z0^T q (atomics), returns dq's part d_z0 k of this tile."""
    d_z0 = d_z1
    if MIX1:
        tl.atomic_add(dp1_ptr + lag, d_z1 * z0, mask=m, sem="relaxed")
        _add_outer_to_lag_table(dB1_ptr, d_z1, us1, lag, m, offs_r, L, R)
        _add_outer_to_lag_table(dA1_ptr, z0, d_u1, lag, m, offs_r, L, R)
        p1 = tl.load(p1_ptr + lag, mask=m, other=0.0)
        d_z0 = tl.where(m, d_z1 + d_z1 * p1 + _low_rank(d_u1, A1_ptr, lag, m, offs_r, L, R), 0.0)
    k_off = offs_j[:, None] * DK + offs_d[None, :]
    k_mask = (offs_j < S)[:, None] & (offs_d < DK)[None, :]
    k = tl.load(k_ptr + k_off, mask=k_mask, other=0.0)
    dk = _mm_tn(d_z0, q)  # (BLOCK_N, BLOCK_D)
    tl.atomic_add(dk_ptr + k_off, dk, mask=k_mask, sem="relaxed")
    return _mm_nn(d_z0, k, 16)  # 16: the backward always has BLOCK_M >= 16 rows (tl.dot)


@triton.jit
def hyper_bwd_kernel(
    q_ptr, k_ptr, v_ptr, s1_ptr, s2_ptr, A1_ptr, B1_ptr, p1_ptr, A2_ptr, B2_ptr, p2_ptr, valid_ptr,
    u1_ptr, u2_ptr,  # saved by the forward: z A of each mixing (b, Hq, T, R), (b, H, T, R)
    d_o_ptr, coef_ptr,  # dL/d o_raw = dO / rho (b, H, T, DV) and -inv_rho^3 (dO . o_raw) (b, H, T)
    dq_ptr, dk_ptr, dv_ptr, ds1_ptr, ds2_ptr,  # dq, ds1, ds2 written; dk, dv accumulated (zeroed)
    dA1_ptr, dB1_ptr, dp1_ptr, dA2_ptr, dB2_ptr, dp2_ptr,  # accumulated over batch rows and queries
    T, S, offset, H, L, DK, DV, R,
    GLU: tl.constexpr, MIX1: tl.constexpr, MIX2: tl.constexpr, HAS_VALID: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """The Hyper core's backward, recomputing the forward tile by tile; grid and programs as in
    ``hyper_fwd_kernel``. Per query block:

        pass 1 (R(2) on): d_us2 = sum_j dy[j] B2[lag], dy = (d_o v_j) masked -> ds2, d_u2 = d_us2 s2
        pass 2 (R(1) on): d_us1 = sum_j d_z1[j] B1[lag] per score head -> ds1, d_u1 = d_us1 s1
        pass 3: every entry's gradient: the tables' (atomics per lag row), dv, dk (atomics), dq
    """
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    bi = (pid_bh // H).to(tl.int64)  # int64: the offsets of large (b, heads, S, d) tensors pass 2^31
    h = pid_bh % H
    HQ = 2 * H if GLU else H
    hc = H + h

    offs_i = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pos = offset + offs_i
    row_ok = offs_i < T
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    offs_r = tl.arange(0, BLOCK_R)
    key_end = tl.minimum(S, offset + (pid_m + 1) * BLOCK_M)

    q_off = offs_i[:, None] * DK + offs_d[None, :]
    q_mask = row_ok[:, None] & (offs_d < DK)[None, :]
    qg = tl.load(q_ptr + (bi * HQ + h) * T * DK + q_off, mask=q_mask, other=0.0)
    qc = qg
    if GLU:
        qc = tl.load(q_ptr + (bi * HQ + hc) * T * DK + q_off, mask=q_mask, other=0.0)
    dt = qg.dtype
    kg_ptr = k_ptr + (bi * HQ + h) * S * DK
    kc_ptr = k_ptr + (bi * HQ + hc) * S * DK
    v_base = v_ptr + (bi * H + h) * S * DV
    o_off = ((bi * H + h) * T + offs_i[:, None]) * DV + offs_dv[None, :]
    d_o = tl.load(d_o_ptr + o_off, mask=row_ok[:, None] & (offs_dv < DV)[None, :], other=0.0)
    coef = tl.load(coef_ptr + (bi * H + h) * T + offs_i, mask=row_ok, other=0.0)

    r_off = offs_i[:, None] * R + offs_r[None, :]
    r_mask = row_ok[:, None] & (offs_r < R)[None, :]
    g_off1 = (bi * HQ + h) * T * R + r_off  # the gate (or only) score head's (T, R) rows
    c_off1 = (bi * HQ + hc) * T * R + r_off
    off2 = (bi * H + h) * T * R + r_off
    zeros_r = tl.zeros([BLOCK_M, BLOCK_R], dtype=dt)
    u1g, s1g, u1c, s1c = zeros_r, zeros_r, zeros_r, zeros_r
    if MIX1:
        u1g = tl.load(u1_ptr + g_off1, mask=r_mask, other=0.0)
        s1g = tl.load(s1_ptr + g_off1, mask=r_mask, other=0.0)
        if GLU:
            u1c = tl.load(u1_ptr + c_off1, mask=r_mask, other=0.0)
            s1c = tl.load(s1_ptr + c_off1, mask=r_mask, other=0.0)
    u2, s2 = zeros_r, zeros_r
    if MIX2:
        u2 = tl.load(u2_ptr + off2, mask=r_mask, other=0.0)
        s2 = tl.load(s2_ptr + off2, mask=r_mask, other=0.0)
    us1g, us1c, us2 = u1g * s1g, u1c * s1c, u2 * s2

    # ---- pass 1: R(2)'s gate gradient needs dy of the whole row
    d_u2 = zeros_r
    if MIX2:
        d_us2 = zeros_r
        for j0 in range(0, key_end, BLOCK_N):
            offs_j = j0 + tl.arange(0, BLOCK_N)
            m = row_ok[:, None] & (offs_j[None, :] <= pos[:, None]) & (offs_j < S)[None, :]
            if HAS_VALID:
                m = m & (tl.load(valid_ptr + bi * S + offs_j, mask=offs_j < S, other=0) != 0)[None, :]
            lag = tl.where(m, pos[:, None] - offs_j[None, :], 0)
            v = tl.load(v_base + offs_j[:, None] * DV + offs_dv[None, :],
                        mask=(offs_j < S)[:, None] & (offs_dv < DV)[None, :], other=0.0)
            dy = tl.where(m, _mm_nt(d_o, v, BLOCK_M), 0.0)
            d_us2 += _times_lag_table(dy, B2_ptr + h * L * R, lag, m, offs_r, L, R)
        tl.store(ds2_ptr + off2, d_us2 * u2, mask=r_mask)
        d_u2 = d_us2 * s2

    # ---- pass 2: R(1)'s gate gradients need d_z1 of the whole row
    d_u1g, d_u1c = zeros_r, zeros_r
    if MIX1:
        d_us1g, d_us1c = zeros_r, zeros_r
        for j0 in range(0, key_end, BLOCK_N):
            offs_j = j0 + tl.arange(0, BLOCK_N)
            m = row_ok[:, None] & (offs_j[None, :] <= pos[:, None]) & (offs_j < S)[None, :]
            if HAS_VALID:
                m = m & (tl.load(valid_ptr + bi * S + offs_j, mask=offs_j < S, other=0) != 0)[None, :]
            lag = tl.where(m, pos[:, None] - offs_j[None, :], 0)
            zg = _mixed_scores(qg, kg_ptr, us1g, B1_ptr + h * L * R, p1_ptr + h * L, offs_j, offs_d, offs_r, lag,
                               m, S, DK, L, R, MIX1, BLOCK_M)
            zc = zg
            if GLU:
                zc = _mixed_scores(qc, kc_ptr, us1c, B1_ptr + hc * L * R, p1_ptr + hc * L, offs_j, offs_d, offs_r,
                                   lag, m, S, DK, L, R, MIX1, BLOCK_M)
            v = tl.load(v_base + offs_j[:, None] * DV + offs_dv[None, :],
                        mask=(offs_j < S)[:, None] & (offs_dv < DV)[None, :], other=0.0)
            dy = tl.where(m, _mm_nt(d_o, v, BLOCK_M), 0.0)
            d_g, d_c = _score_grads(zg, zc, dy, d_u2, A2_ptr + h * L * R, p2_ptr + h * L, lag, m, coef, offs_r, L, R,
                                    GLU, MIX2)
            d_us1g += _times_lag_table(d_g, B1_ptr + h * L * R, lag, m, offs_r, L, R)
            if GLU:
                d_us1c += _times_lag_table(d_c, B1_ptr + hc * L * R, lag, m, offs_r, L, R)
        tl.store(ds1_ptr + g_off1, d_us1g * u1g, mask=r_mask)
        d_u1g = d_us1g * s1g
        if GLU:
            tl.store(ds1_ptr + c_off1, d_us1c * u1c, mask=r_mask)
            d_u1c = d_us1c * s1c

    # ---- pass 3: every entry's gradient
    dqg = tl.zeros([BLOCK_M, BLOCK_D], dtype=dt)
    dqc = tl.zeros([BLOCK_M, BLOCK_D], dtype=dt)
    dkg_ptr = dk_ptr + (bi * HQ + h) * S * DK
    dkc_ptr = dk_ptr + (bi * HQ + hc) * S * DK
    dv_base = dv_ptr + (bi * H + h) * S * DV
    for j0 in range(0, key_end, BLOCK_N):
        offs_j = j0 + tl.arange(0, BLOCK_N)
        m = row_ok[:, None] & (offs_j[None, :] <= pos[:, None]) & (offs_j < S)[None, :]
        if HAS_VALID:
            m = m & (tl.load(valid_ptr + bi * S + offs_j, mask=offs_j < S, other=0) != 0)[None, :]
        lag = tl.where(m, pos[:, None] - offs_j[None, :], 0)
        # recompute the scores before and after R(1), the activation and R(2)'s output
        z0g = _scores(qg, kg_ptr, offs_j, offs_d, S, DK, m, BLOCK_M)
        zg = z0g
        if MIX1:
            p1g = tl.load(p1_ptr + h * L + lag, mask=m, other=0.0)
            zg = tl.where(m, z0g + z0g * p1g + _low_rank(us1g, B1_ptr + h * L * R, lag, m, offs_r, L, R), 0.0)
        z0c, zc = z0g, zg
        if GLU:
            z0c = _scores(qc, kc_ptr, offs_j, offs_d, S, DK, m, BLOCK_M)
            zc = z0c
            if MIX1:
                p1c = tl.load(p1_ptr + hc * L + lag, mask=m, other=0.0)
                zc = tl.where(m, z0c + z0c * p1c + _low_rank(us1c, B1_ptr + hc * L * R, lag, m, offs_r, L, R), 0.0)
        act = _activation(zg, zc, GLU)
        v_off = offs_j[:, None] * DV + offs_dv[None, :]
        v_mask = (offs_j < S)[:, None] & (offs_dv < DV)[None, :]
        v = tl.load(v_base + v_off, mask=v_mask, other=0.0)
        dy = tl.where(m, _mm_nt(d_o, v, BLOCK_M), 0.0)
        y = act
        if MIX2:
            p2 = tl.load(p2_ptr + h * L + lag, mask=m, other=0.0)
            y = tl.where(m, act + act * p2 + _low_rank(us2, B2_ptr + h * L * R, lag, m, offs_r, L, R), 0.0)
            tl.atomic_add(dp2_ptr + h * L + lag, dy * act, mask=m, sem="relaxed")
            _add_outer_to_lag_table(dB2_ptr + h * L * R, dy, us2, lag, m, offs_r, L, R)
            _add_outer_to_lag_table(dA2_ptr + h * L * R, act, d_u2, lag, m, offs_r, L, R)
        # dv_j += y^T d_o
        dv = _mm_tn(y, d_o)
        tl.atomic_add(dv_base + v_off, dv, mask=v_mask, sem="relaxed")
        d_g, d_c = _score_grads(zg, zc, dy, d_u2, A2_ptr + h * L * R, p2_ptr + h * L, lag, m, coef, offs_r, L, R,
                                GLU, MIX2)
        dqg += _score_head_backward(d_g, z0g, qg, kg_ptr, dkg_ptr, A1_ptr + h * L * R, dA1_ptr + h * L * R,
                                    dB1_ptr + h * L * R, dp1_ptr + h * L, p1_ptr + h * L, us1g, d_u1g,
                                    offs_j, offs_d, offs_r, lag, m, S, DK, L, R, MIX1)
        if GLU:
            dqc += _score_head_backward(d_c, z0c, qc, kc_ptr, dkc_ptr, A1_ptr + hc * L * R, dA1_ptr + hc * L * R,
                                        dB1_ptr + hc * L * R, dp1_ptr + hc * L, p1_ptr + hc * L, us1c, d_u1c,
                                        offs_j, offs_d, offs_r, lag, m, S, DK, L, R, MIX1)
    tl.store(dq_ptr + (bi * HQ + h) * T * DK + q_off, dqg, mask=q_mask)
    if GLU:
        tl.store(dq_ptr + (bi * HQ + hc) * T * DK + q_off, dqc, mask=q_mask)


# whether the kernels were decorated for the interpreter (TRITON_INTERPRET=1 set before this
# module was first imported): only then do they run on CPU tensors
INTERPRETED = not isinstance(hyper_fwd_kernel, triton.runtime.JITFunction)
