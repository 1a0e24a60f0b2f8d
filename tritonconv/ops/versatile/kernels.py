"""Triton kernels for VersatileConv2d (SPEC section 4): every secondary filter from one pass over the
primary's window.

Columns of the GEMMs are ``q = j*n_w + f`` (channel offset j, primary filter f); output channel
``s*NQ + q`` with ``NQ = n_c*n_w`` is secondary s of that column. Column q reads input channel
``c`` with weight row ``c - j*g`` (zero outside ``[0, c_hat)``), so one loaded input tile serves every
channel offset of the column tile. Tap (th, tw) lies ``ring`` rings inside the window and belongs to
secondaries 0..ring: the forward adds its product once, into the accumulator of its ring, and
secondary s is the sum of the accumulators of rings >= s. Tensors are addressed through explicit
strides (NCHW and channels_last take the same code); ``w_ptr`` is the contiguous [n_w, c_hat, K, K]
weight. Index arithmetic that can pass 2^31 elements is int64.
"""

import triton
import triton.language as tl


@triton.jit
def versatile_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr,
    B, C, H, W, Ho, Wo,
    sxb, sxc, sxh, sxw,
    syb, syc, syh, syw,
    C_HAT, N_W, NQ, G,
    K: tl.constexpr, S_NUM: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr,
    HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y[b, s*NQ + q, ho, wo] for a [BLOCK_M pixels, BLOCK_N columns] tile and every secondary s.

    The columns of one program share one channel offset j (q = j*n_w + f, f in a block of n_w), so
    the program reads exactly that window's channels [j*g, j*g + c_hat): an input channel outside
    a filter's window is never multiplied, not even by zero (a NaN there must not reach the output).
    """
    pid_pixels = tl.program_id(0)
    pid_cols = tl.program_id(1)
    filter_tiles = tl.cdiv(N_W, BLOCK_N)
    j = pid_cols // filter_tiles
    f = (pid_cols % filter_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N] primary filters
    q = j * N_W + f  # [BLOCK_N] columns
    q_mask = f < N_W
    w_cols = w_ptr + f.to(tl.int64) * (C_HAT * K * K)  # [BLOCK_N]
    c_lo = j * G
    c_hi = c_lo + C_HAT

    pixel = pid_pixels.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    pixel_mask = pixel < B * Ho * Wo
    b = pixel // (Ho * Wo)
    ho = (pixel // Wo) % Ho
    wo = pixel % Wo
    x_rows = x_ptr + b * sxb  # [BLOCK_M]

    # acc_r: sum over the taps exactly r rings inside the window. [BLOCK_M, BLOCK_N] each.
    acc0 = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    acc1 = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    acc3 = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    # Rings and taps are unrolled at compile time (a local assignment would make the ring a run-time
    # value): each tap's product goes straight into its ring's accumulator.
    for ring in tl.static_range(S_NUM):
        for tap in tl.static_range(K * K):
            if min(min(tap // K, tap % K), min(K - 1 - tap // K, K - 1 - tap % K)) == ring:
                hi = ho * STRIDE - PAD + (tap // K) * DIL
                wi = wo * STRIDE - PAD + (tap % K) * DIL
                inside = pixel_mask & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
                x_tap = x_rows + hi * sxh + wi * sxw  # [BLOCK_M]
                for c0 in range(c_lo, c_hi, BLOCK_K):
                    c = c0 + tl.arange(0, BLOCK_K)  # [BLOCK_K]
                    c_mask = c < c_hi
                    a = tl.load(x_tap[:, None] + c.to(tl.int64)[None, :] * sxc,
                                mask=inside[:, None] & c_mask[None, :], other=0.0)  # [BLOCK_M, BLOCK_K]
                    row = c - c_lo  # [BLOCK_K] weight row: the same for every column of the tile
                    wt = tl.load(w_cols[None, :] + row[:, None] * (K * K) + tap,
                                 mask=c_mask[:, None] & q_mask[None, :], other=0.0)  # [BLOCK_K, BLOCK_N]
                    if ring == 0:
                        acc0 = tl.dot(a, wt, acc0, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
                    elif ring == 1:
                        acc1 = tl.dot(a, wt, acc1, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
                    elif ring == 2:
                        acc2 = tl.dot(a, wt, acc2, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
                    else:
                        acc3 = tl.dot(a, wt, acc3, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)

    # Secondary s = the sum of the rings >= s: built innermost first, each stored once.
    mask = pixel_mask[:, None] & q_mask[None, :]
    y_rows = y_ptr + b[:, None] * syb + ho[:, None] * syh + wo[:, None] * syw  # [BLOCK_M, 1]
    out = acc3
    if S_NUM > 3:
        _store_secondary(y_rows, syc, bias_ptr, out, 3, NQ, q, q_mask, mask, HAS_BIAS, ACC_DTYPE)
    out += acc2
    if S_NUM > 2:
        _store_secondary(y_rows, syc, bias_ptr, out, 2, NQ, q, q_mask, mask, HAS_BIAS, ACC_DTYPE)
    out += acc1
    if S_NUM > 1:
        _store_secondary(y_rows, syc, bias_ptr, out, 1, NQ, q, q_mask, mask, HAS_BIAS, ACC_DTYPE)
    out += acc0
    _store_secondary(y_rows, syc, bias_ptr, out, 0, NQ, q, q_mask, mask, HAS_BIAS, ACC_DTYPE)


@triton.jit
def _store_secondary(y_rows, syc, bias_ptr, out, s, NQ, q, q_mask, mask, HAS_BIAS: tl.constexpr,
                     ACC_DTYPE: tl.constexpr):
    """Store secondary s of the column tile (output channels s*NQ + q), bias added."""
    channel = (s * NQ + q).to(tl.int64)  # [BLOCK_N]
    if HAS_BIAS:
        out = out + tl.load(bias_ptr + channel, mask=q_mask, other=0.0).to(ACC_DTYPE)[None, :]
    tl.store(y_rows + channel[None, :] * syc, out.to(y_rows.dtype.element_ty), mask=mask)


@triton.jit
def versatile_bwd_input_kernel(
    dy_ptr, w_ptr, dx_ptr,
    B, C, H, W, Ho, Wo,
    sdyb, sdyc, sdyh, sdyw,
    sdxb, sdxc, sdxh, sdxw,
    C_HAT, N_W, NQ, G, N_C,
    K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dx[b, c, hi, wi]: rows input pixels, cols input channels, reduce (tap, column q).

    For a tap of ring r the upstream gradient of column q is the sum of its secondaries 0..r (each
    of them used the tap): that sum is the A tile, so each tap costs one dot.
    """
    pid_pixels = tl.program_id(0)
    pid_channels = tl.program_id(1)
    c = pid_channels * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    c_mask = c < C
    # Columns whose channel window [j*g, j*g + c_hat) meets this channel tile.
    c_first = pid_channels * BLOCK_N
    c_last = tl.minimum(c_first + BLOCK_N, C) - 1
    j_lo = tl.maximum(c_first - C_HAT + G, 0) // G  # ceil((c_first - c_hat + 1) / g), clamped at 0
    j_hi = tl.minimum(c_last // G, N_C - 1)
    q_lo = j_lo * N_W
    q_hi = (j_hi + 1) * N_W

    pixel = pid_pixels.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    pixel_mask = pixel < B * H * W
    b = pixel // (H * W)
    hi = (pixel // W) % H
    wi = pixel % W

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    # Rings and taps unrolled at compile time, so the ring bounds the static secondary loop.
    for ring in tl.static_range((K + 1) // 2):
        for tap in tl.static_range(K * K):
            if min(min(tap // K, tap % K), min(K - 1 - tap // K, K - 1 - tap % K)) == ring:
                ho_strided = hi + PAD - (tap // K) * DIL
                wo_strided = wi + PAD - (tap % K) * DIL
                ho = ho_strided // STRIDE
                wo = wo_strided // STRIDE
                hit = (pixel_mask & (ho_strided >= 0) & (wo_strided >= 0) & (ho_strided % STRIDE == 0)
                       & (wo_strided % STRIDE == 0) & (ho < Ho) & (wo < Wo))
                dy_tap = dy_ptr + b * sdyb + ho * sdyh + wo * sdyw  # [BLOCK_M]
                for q0 in range(q_lo, q_hi, BLOCK_K):
                    q = q0 + tl.arange(0, BLOCK_K)  # [BLOCK_K]
                    q_mask = q < q_hi
                    a = tl.zeros((BLOCK_M, BLOCK_K), dtype=ACC_DTYPE)
                    for s in tl.static_range(ring + 1):
                        a += tl.load(dy_tap[:, None] + (s * NQ + q).to(tl.int64)[None, :] * sdyc,
                                     mask=hit[:, None] & q_mask[None, :], other=0.0).to(ACC_DTYPE)  # [BLOCK_M, BLOCK_K]
                    row = c[None, :] - ((q // N_W) * G)[:, None]  # [BLOCK_K, BLOCK_N]
                    wt = tl.load(w_ptr + (q % N_W).to(tl.int64)[:, None] * (C_HAT * K * K) + row * (K * K) + tap,
                                 mask=(row >= 0) & (row < C_HAT) & q_mask[:, None] & c_mask[None, :],
                                 other=0.0)  # [BLOCK_K, BLOCK_N]
                    acc = tl.dot(a.to(wt.dtype), wt, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)

    dx_ptrs = dx_ptr + b[:, None] * sdxb + c.to(tl.int64)[None, :] * sdxc + hi[:, None] * sdxh + wi[:, None] * sdxw
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=pixel_mask[:, None] & c_mask[None, :])


@triton.jit
def versatile_bwd_weight_kernel(
    x_ptr, dy_ptr, partial_ptr,
    B, C, H, W, Ho, Wo,
    sxb, sxc, sxh, sxw,
    sdyb, sdyc, sdyh, sdyw,
    C_HAT, N_W, NQ, G, N_C, PIXELS_PER_SPLIT,
    K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Partial dw[f, c, tap] over one split of the output pixels: [BLOCK_N filters, BLOCK_C channels] of
    one tap (program axis 1 walks taps x channel chunks). Sums over every channel offset j and every
    secondary that uses the tap. Partials go to ``partial_ptr[split]``; the launcher sums them in a
    fixed order (deterministic)."""
    pid_filters = tl.program_id(0)
    pid_columns = tl.program_id(1)
    split = tl.program_id(2)
    f = pid_filters * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    f_mask = f < N_W
    chunks = tl.cdiv(C_HAT, BLOCK_C)
    tap = pid_columns // chunks
    c = (pid_columns % chunks) * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C] weight row
    c_mask = c < C_HAT
    th = tap // K
    tw = tap % K
    ring = tl.minimum(tl.minimum(th, tw), tl.minimum(K - 1 - th, K - 1 - tw))

    acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=ACC_DTYPE)
    p_range = tl.arange(0, BLOCK_P)
    first = split.to(tl.int64) * PIXELS_PER_SPLIT
    for p0 in range(0, PIXELS_PER_SPLIT, BLOCK_P):
        pixel = first + p0 + p_range  # [BLOCK_P]
        pixel_mask = (pixel < B * Ho * Wo) & (p0 + p_range < PIXELS_PER_SPLIT)
        b = pixel // (Ho * Wo)
        ho = (pixel // Wo) % Ho
        wo = pixel % Wo
        hi = ho * STRIDE - PAD + th * DIL
        wi = wo * STRIDE - PAD + tw * DIL
        inside = pixel_mask & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
        dy_pixels = dy_ptr + b * sdyb + ho * sdyh + wo * sdyw  # [BLOCK_P]
        x_pixels = x_ptr + b * sxb + hi * sxh + wi * sxw  # [BLOCK_P]
        for j in range(0, N_C):
            dy = tl.zeros((BLOCK_N, BLOCK_P), dtype=ACC_DTYPE)
            for s in range(0, ring + 1):
                channel = (s * NQ + j * N_W + f).to(tl.int64)  # [BLOCK_N]
                dy += tl.load(dy_pixels[None, :] + channel[:, None] * sdyc,
                              mask=f_mask[:, None] & pixel_mask[None, :], other=0.0).to(ACC_DTYPE)
            x = tl.load(x_pixels[:, None] + (j * G + c).to(tl.int64)[None, :] * sxc,
                        mask=inside[:, None] & c_mask[None, :], other=0.0)  # [BLOCK_P, BLOCK_C]
            acc = tl.dot(dy.to(x.dtype), x, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)

    out = (partial_ptr + split.to(tl.int64) * N_W * C_HAT * K * K + f.to(tl.int64)[:, None] * (C_HAT * K * K)
           + c[None, :] * (K * K) + tap)
    tl.store(out, acc, mask=f_mask[:, None] & c_mask[None, :])


@triton.jit
def channel_sum_kernel(
    dy_ptr, partial_ptr,
    B, O, Ho, Wo,
    sdyb, sdyc, sdyh, sdyw,
    PIXELS_PER_SPLIT,
    ACC_DTYPE: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Partial grad bias: partial[split, o] = sum of dy[:, o] over one split of the pixels."""
    pid_channels = tl.program_id(0)
    split = tl.program_id(1)
    o = pid_channels * BLOCK_O + tl.arange(0, BLOCK_O)  # [BLOCK_O]
    o_mask = o < O
    acc = tl.zeros((BLOCK_O,), dtype=ACC_DTYPE)
    p_range = tl.arange(0, BLOCK_P)
    first = split.to(tl.int64) * PIXELS_PER_SPLIT
    for p0 in range(0, PIXELS_PER_SPLIT, BLOCK_P):
        pixel = first + p0 + p_range  # [BLOCK_P]
        pixel_mask = (pixel < B * Ho * Wo) & (p0 + p_range < PIXELS_PER_SPLIT)
        b = pixel // (Ho * Wo)
        ho = (pixel // Wo) % Ho
        wo = pixel % Wo
        dy = tl.load(dy_ptr + o.to(tl.int64)[:, None] * sdyc + (b * sdyb + ho * sdyh + wo * sdyw)[None, :],
                     mask=o_mask[:, None] & pixel_mask[None, :], other=0.0)  # [BLOCK_O, BLOCK_P]
        acc += tl.sum(dy.to(ACC_DTYPE), axis=1)
    tl.store(partial_ptr + split.to(tl.int64) * O + o, acc, mask=o_mask)
