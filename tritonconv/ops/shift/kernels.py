"""Triton kernels for ShiftConv2d (SPEC section 3): the shift lives in the 1 x 1 GEMM's addresses.

Channel c is read at ``(h + dh_c, w + dw_c)`` (zero outside the image); ``_channel_shift`` computes
(dh_c, dw_c) from the channel index, so no shift table and no shifted tensor exist. Tensors are
addressed through explicit strides (NCHW and channels_last take the same code); ``w_ptr`` is the
contiguous [N, C] weight. Index arithmetic that can pass 2^31 elements is int64.
"""

import triton
import triton.language as tl


@triton.jit
def _channel_shift(c, SHIFTED_CHANNELS, SHIFT_GROUP, K: tl.constexpr, DIL: tl.constexpr, GROUPED: tl.constexpr):
    """(dh, dw) of channels ``c``; channels >= SHIFTED_CHANNELS are not shifted (SHIFT_GROUP >= 1)."""
    if GROUPED:
        direction = c // SHIFT_GROUP
    else:
        direction = c % (K * K)
    shifted = c < SHIFTED_CHANNELS
    dh = tl.where(shifted, DIL * (direction // K - K // 2), 0)
    dw = tl.where(shifted, DIL * (direction % K - K // 2), 0)
    return dh, dw


@triton.jit
def shift_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr,
    B, C, H, W, N, Ho, Wo,
    sxb, sxc, sxh, sxw,
    syb, syc, syh, syw,
    SHIFTED_CHANNELS, SHIFT_GROUP,
    K: tl.constexpr, DIL: tl.constexpr, STRIDE: tl.constexpr, GROUPED: tl.constexpr,
    HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y[b, n, ho, wo] = sum_c w[n, c] x[b, c, ho*S + dh_c, wo*S + dw_c]: rows pixels, cols filters."""
    pid_pixels = tl.program_id(0)
    pid_filters = tl.program_id(1)
    n = pid_filters.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    n_mask = n < N
    pixel = pid_pixels.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    pixel_mask = pixel < B * Ho * Wo
    b = pixel // (Ho * Wo)
    h = (pixel // Wo) % Ho * STRIDE  # stride applies after the shift
    w = pixel % Wo * STRIDE
    x_rows = x_ptr + b * sxb  # [BLOCK_M]

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for c0 in range(0, C, BLOCK_K):
        c = c0 + tl.arange(0, BLOCK_K)  # [BLOCK_K]
        c_mask = c < C
        dh, dw = _channel_shift(c, SHIFTED_CHANNELS, SHIFT_GROUP, K, DIL, GROUPED)
        hi = h[:, None] + dh[None, :]  # [BLOCK_M, BLOCK_K]: every channel at its own shifted address
        wi = w[:, None] + dw[None, :]
        inside = (pixel_mask[:, None] & c_mask[None, :] & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W))
        a = tl.load(x_rows[:, None] + c.to(tl.int64)[None, :] * sxc + hi * sxh + wi * sxw,
                    mask=inside, other=0.0)  # [BLOCK_M, BLOCK_K]
        wt = tl.load(w_ptr + n[None, :] * C + c[:, None], mask=c_mask[:, None] & n_mask[None, :],
                     other=0.0)  # [BLOCK_K, BLOCK_N]
        acc = tl.dot(a, wt, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + n, mask=n_mask, other=0.0).to(ACC_DTYPE)[None, :]
    ho = h // STRIDE
    wo = w // STRIDE
    y_ptrs = y_ptr + b[:, None] * syb + n[None, :] * syc + ho[:, None] * syh + wo[:, None] * syw
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=pixel_mask[:, None] & n_mask[None, :])


@triton.jit
def shift_bwd_input_kernel(
    dy_ptr, w_ptr, dx_ptr,
    B, C, H, W, N, Ho, Wo,
    sdyb, sdyc, sdyh, sdyw,
    sdxb, sdxc, sdxh, sdxw,
    SHIFTED_CHANNELS, SHIFT_GROUP,
    K: tl.constexpr, DIL: tl.constexpr, STRIDE: tl.constexpr, GROUPED: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dx = opposite shift of ds, ds[b, c, q] = sum_n w[n, c] dy[b, n, q / S] (q on the stride grid).

    Rows are positions q of the shifted tensor, cols channels, reduce filters: a plain transposed 1 x 1
    GEMM. The opposite shift is in the store: ds[c, q] goes to dx[c, q + d_c]. Element (q, c) whose
    target falls outside the image is stored as 0 at the wrapped position (q + d_c) mod (H, W), which
    is exactly a dx position whose source lies outside the image: every dx element is written once.
    """
    pid_pixels = tl.program_id(0)
    pid_channels = tl.program_id(1)
    c = pid_channels * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    c_mask = c < C
    pixel = pid_pixels.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    pixel_mask = pixel < B * H * W
    b = pixel // (H * W)
    hq = (pixel // W) % H
    wq = pixel % W
    on_grid = pixel_mask & (hq % STRIDE == 0) & (wq % STRIDE == 0)
    dy_rows = dy_ptr + b * sdyb + (hq // STRIDE) * sdyh + (wq // STRIDE) * sdyw  # [BLOCK_M]

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for n0 in range(0, N, BLOCK_K):
        n = n0 + tl.arange(0, BLOCK_K)  # [BLOCK_K]
        n_mask = n < N
        a = tl.load(dy_rows[:, None] + n.to(tl.int64)[None, :] * sdyc, mask=on_grid[:, None] & n_mask[None, :],
                    other=0.0)  # [BLOCK_M, BLOCK_K]
        wt = tl.load(w_ptr + n.to(tl.int64)[:, None] * C + c[None, :], mask=n_mask[:, None] & c_mask[None, :],
                     other=0.0)  # [BLOCK_K, BLOCK_N]
        acc = tl.dot(a, wt, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)

    dh, dw = _channel_shift(c, SHIFTED_CHANNELS, SHIFT_GROUP, K, DIL, GROUPED)
    th = hq[:, None] + dh[None, :]  # [BLOCK_M, BLOCK_N]
    tw = wq[:, None] + dw[None, :]
    lands_inside = (th >= 0) & (th < H) & (tw >= 0) & (tw < W)
    th = (th % H + H) % H  # the same under C and Python remainder semantics
    tw = (tw % W + W) % W
    value = tl.where(lands_inside, acc, 0.0)
    dx_ptrs = dx_ptr + b[:, None] * sdxb + c.to(tl.int64)[None, :] * sdxc + th * sdxh + tw * sdxw
    tl.store(dx_ptrs, value.to(dx_ptr.dtype.element_ty), mask=pixel_mask[:, None] & c_mask[None, :])


@triton.jit
def shift_bwd_weight_kernel(
    x_ptr, dy_ptr, partial_ptr, partial_bias_ptr,
    B, C, H, W, N, Ho, Wo,
    sxb, sxc, sxh, sxw,
    sdyb, sdyc, sdyh, sdyw,
    SHIFTED_CHANNELS, SHIFT_GROUP, PIXELS_PER_SPLIT,
    K: tl.constexpr, DIL: tl.constexpr, STRIDE: tl.constexpr, GROUPED: tl.constexpr,
    HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Partial dw[n, c] = sum_pixels dy[b, n, ho, wo] x[b, c, ho*S + dh_c, wo*S + dw_c] over one split of
    the output pixels, [BLOCK_N, BLOCK_C] per program; the first column tile also sums dy for the bias.
    Partials go to ``partial_ptr[split]`` and the launcher sums them in a fixed order (deterministic)."""
    pid_filters = tl.program_id(0)
    pid_channels = tl.program_id(1)
    split = tl.program_id(2)
    n = pid_filters.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    n_mask = n < N
    c = pid_channels * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C]
    c_mask = c < C
    dh, dw = _channel_shift(c, SHIFTED_CHANNELS, SHIFT_GROUP, K, DIL, GROUPED)

    acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=ACC_DTYPE)
    bias_acc = tl.zeros((BLOCK_N,), dtype=ACC_DTYPE)
    p_range = tl.arange(0, BLOCK_P)
    first = split.to(tl.int64) * PIXELS_PER_SPLIT
    for p0 in range(0, PIXELS_PER_SPLIT, BLOCK_P):
        pixel = first + p0 + p_range  # [BLOCK_P]
        pixel_mask = (pixel < B * Ho * Wo) & (p0 + p_range < PIXELS_PER_SPLIT)
        b = pixel // (Ho * Wo)
        ho = (pixel // Wo) % Ho
        wo = pixel % Wo
        dy = tl.load(dy_ptr + b[None, :] * sdyb + n[:, None] * sdyc + ho[None, :] * sdyh + wo[None, :] * sdyw,
                     mask=n_mask[:, None] & pixel_mask[None, :], other=0.0)  # [BLOCK_N, BLOCK_P]
        hi = ho[:, None] * STRIDE + dh[None, :]  # [BLOCK_P, BLOCK_C]
        wi = wo[:, None] * STRIDE + dw[None, :]
        inside = pixel_mask[:, None] & c_mask[None, :] & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
        x = tl.load(x_ptr + b[:, None] * sxb + c.to(tl.int64)[None, :] * sxc + hi * sxh + wi * sxw,
                    mask=inside, other=0.0)  # [BLOCK_P, BLOCK_C]
        acc = tl.dot(dy, x, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
        if HAS_BIAS:
            bias_acc += tl.sum(dy.to(ACC_DTYPE), axis=1)

    out = partial_ptr + split.to(tl.int64) * N * C + n[:, None] * C + c[None, :]
    tl.store(out, acc, mask=n_mask[:, None] & c_mask[None, :])
    if HAS_BIAS:
        if pid_channels == 0:
            tl.store(partial_bias_ptr + split.to(tl.int64) * N + n, bias_acc, mask=n_mask)
