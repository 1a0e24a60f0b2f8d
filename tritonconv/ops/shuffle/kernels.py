"""Triton kernels for a grouped 1 x 1 convolution with the channel shuffle in its addresses.

Filter n of the conv lands on output channel ``pos(n) = (n mod (N/sg)) sg + n // (N/sg)`` (sg =
SHUFFLE_GROUPS): the forward stores there and the backward kernels read the gradient there, so the
shuffle never costs a pass over memory. Group gr holds filters ``[gr N/G, (gr+1) N/G)`` and channels
``[gr C/G, (gr+1) C/G)``. ``w_ptr`` is the contiguous [N, C/G] weight; tensors go through explicit
strides (NCHW and channels_last take the same code); large index arithmetic is int64.
"""

import triton
import triton.language as tl


@triton.jit
def _shuffled(n, N, SHUFFLE_GROUPS):
    per_group = N // SHUFFLE_GROUPS
    return (n % per_group) * SHUFFLE_GROUPS + n // per_group


@triton.jit
def shuffle_conv_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr,
    P, HW, N, GROUP_IN, GROUP_OUT, SHUFFLE_GROUPS,
    sxb, sxc, sxh, sxw, W,
    syb, syc, syh, syw,
    HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y[b, pos(n), h, w]: rows pixels, cols the filters of one group, reduce the group's channels."""
    pid_pixels = tl.program_id(0)
    pid_filters = tl.program_id(1)
    tiles_per_group = tl.cdiv(GROUP_OUT, BLOCK_N)
    group = pid_filters // tiles_per_group
    n_local = (pid_filters % tiles_per_group) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    n_mask = n_local < GROUP_OUT
    n = (group * GROUP_OUT + n_local).to(tl.int64)
    pixel = pid_pixels.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    pixel_mask = pixel < P
    b = pixel // HW
    h = (pixel % HW) // W
    w = pixel % W
    x_rows = x_ptr + b * sxb + h * sxh + w * sxw  # [BLOCK_M]

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for c0 in range(0, GROUP_IN, BLOCK_K):
        c_local = c0 + tl.arange(0, BLOCK_K)  # [BLOCK_K]
        c_mask = c_local < GROUP_IN
        c = (group * GROUP_IN + c_local).to(tl.int64)
        a = tl.load(x_rows[:, None] + c[None, :] * sxc, mask=pixel_mask[:, None] & c_mask[None, :],
                    other=0.0)  # [BLOCK_M, BLOCK_K]
        wt = tl.load(w_ptr + n[None, :] * GROUP_IN + c_local[:, None], mask=c_mask[:, None] & n_mask[None, :],
                     other=0.0)  # [BLOCK_K, BLOCK_N]
        acc = tl.dot(a, wt, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + n, mask=n_mask, other=0.0).to(ACC_DTYPE)[None, :]
    out_channel = _shuffled(n, N, SHUFFLE_GROUPS)  # [BLOCK_N]: the shuffle is this store address
    y_ptrs = (y_ptr + (b * syb + h * syh + w * syw)[:, None] + out_channel[None, :] * syc)
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=pixel_mask[:, None] & n_mask[None, :])


@triton.jit
def shuffle_conv_bwd_input_kernel(
    dy_ptr, w_ptr, dx_ptr,
    P, HW, N, GROUP_IN, GROUP_OUT, SHUFFLE_GROUPS,
    sdyb, sdyc, sdyh, sdyw, W,
    sdxb, sdxc, sdxh, sdxw,
    DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dx[b, c, h, w] = sum_n w[n, c] dy[b, pos(n), h, w] over the filters of c's group."""
    pid_pixels = tl.program_id(0)
    pid_channels = tl.program_id(1)
    tiles_per_group = tl.cdiv(GROUP_IN, BLOCK_N)
    group = pid_channels // tiles_per_group
    c_local = (pid_channels % tiles_per_group) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    c_mask = c_local < GROUP_IN
    c = (group * GROUP_IN + c_local).to(tl.int64)
    pixel = pid_pixels.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    pixel_mask = pixel < P
    b = pixel // HW
    h = (pixel % HW) // W
    w = pixel % W
    dy_rows = dy_ptr + b * sdyb + h * sdyh + w * sdyw  # [BLOCK_M]

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for n0 in range(0, GROUP_OUT, BLOCK_K):
        n_local = n0 + tl.arange(0, BLOCK_K)  # [BLOCK_K]
        n_mask = n_local < GROUP_OUT
        n = (group * GROUP_OUT + n_local).to(tl.int64)
        a = tl.load(dy_rows[:, None] + _shuffled(n, N, SHUFFLE_GROUPS)[None, :] * sdyc,
                    mask=pixel_mask[:, None] & n_mask[None, :], other=0.0)  # [BLOCK_M, BLOCK_K]
        wt = tl.load(w_ptr + n[:, None] * GROUP_IN + c_local[None, :], mask=n_mask[:, None] & c_mask[None, :],
                     other=0.0)  # [BLOCK_K, BLOCK_N]
        acc = tl.dot(a, wt, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
    dx_ptrs = dx_ptr + (b * sdxb + h * sdxh + w * sdxw)[:, None] + c[None, :] * sdxc
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=pixel_mask[:, None] & c_mask[None, :])


@triton.jit
def shuffle_conv_bwd_weight_kernel(
    x_ptr, dy_ptr, partial_ptr, partial_bias_ptr,
    P, HW, N, GROUP_IN, GROUP_OUT, SHUFFLE_GROUPS, PIXELS_PER_SPLIT,
    sxb, sxc, sxh, sxw, W,
    sdyb, sdyc, sdyh, sdyw,
    HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Partial dw[n, c_local] (and, in the first column tile, the bias sums) over one split of the pixels;
    the launcher sums the partials in a fixed order (deterministic)."""
    pid_filters = tl.program_id(0)
    pid_columns = tl.program_id(1)
    split = tl.program_id(2)
    tiles_per_group = tl.cdiv(GROUP_OUT, BLOCK_N)
    group = pid_filters // tiles_per_group
    n_local = (pid_filters % tiles_per_group) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    n_mask = n_local < GROUP_OUT
    n = (group * GROUP_OUT + n_local).to(tl.int64)
    dy_channel = _shuffled(n, N, SHUFFLE_GROUPS)
    c_local = pid_columns * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C]
    c_mask = c_local < GROUP_IN
    c = (group * GROUP_IN + c_local).to(tl.int64)

    acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=ACC_DTYPE)
    bias_acc = tl.zeros((BLOCK_N,), dtype=ACC_DTYPE)
    p_range = tl.arange(0, BLOCK_P)
    first = split.to(tl.int64) * PIXELS_PER_SPLIT
    for p0 in range(0, PIXELS_PER_SPLIT, BLOCK_P):
        pixel = first + p0 + p_range  # [BLOCK_P]
        pixel_mask = (pixel < P) & (p0 + p_range < PIXELS_PER_SPLIT)
        b = pixel // HW
        h = (pixel % HW) // W
        w = pixel % W
        dy = tl.load(dy_ptr + (b * sdyb + h * sdyh + w * sdyw)[None, :] + dy_channel[:, None] * sdyc,
                     mask=n_mask[:, None] & pixel_mask[None, :], other=0.0)  # [BLOCK_N, BLOCK_P]
        x = tl.load(x_ptr + (b * sxb + h * sxh + w * sxw)[:, None] + c[None, :] * sxc,
                    mask=pixel_mask[:, None] & c_mask[None, :], other=0.0)  # [BLOCK_P, BLOCK_C]
        acc = tl.dot(dy, x, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
        if HAS_BIAS:
            bias_acc += tl.sum(dy.to(ACC_DTYPE), axis=1)
    out = partial_ptr + split.to(tl.int64) * N * GROUP_IN + n[:, None] * GROUP_IN + c_local[None, :]
    tl.store(out, acc, mask=n_mask[:, None] & c_mask[None, :])
    if HAS_BIAS:
        if pid_columns == 0:
            tl.store(partial_bias_ptr + split.to(tl.int64) * N + n, bias_acc, mask=n_mask)
