"""Triton kernels for the fused depthwise-separable conv (SPEC section 2).

The forward keeps the depthwise result in registers: each program computes a [BLOCK_P pixels,
BLOCK_C channels] depthwise tile (bias and activation applied) and feeds it straight into the pointwise
tl.dot, accumulating [BLOCK_P, BLOCK_N] over channel chunks. The backward recomputes those tiles
instead of storing them:

- ``dwsep_bwd_mid_kernel``: dz = (dy @ pw_weight) masked by the activation derivative of the
  recomputed pre-activation; dz (the gradient of the depthwise pre-activation) is written to memory
  for the depthwise backward kernels (grad input, grad dw_weight, grad dw_bias).
- ``dwsep_bwd_pw_weight_kernel``: grad pw_weight = dy^T @ recomputed intermediate (and grad pw_bias),
  split over pixels into partials that the launcher sums in a fixed order (deterministic).

``out_activation`` is undone in both by masking dy with the saved output. Pointer arithmetic that can
pass 2^31 elements is int64; tensors are addressed through explicit strides (NCHW and channels_last).
Weights are contiguous: dw_weight [C, 1, K, K], pw_weight [N, C, 1, 1].
"""

import triton
import triton.language as tl

from tritonconv.ops.depthwise.kernels import ACT_NONE, activate, activation_grad, depthwise_tile


@triton.jit
def dwsep_fwd_kernel(
    x_ptr, dw_w_ptr, dw_b_ptr, pw_w_ptr, pw_b_ptr, y_ptr,
    B, C, H, W, N, Ho, Wo,
    sxb, sxc, sxh, sxw,
    syb, syc, syh, syw,
    K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr,
    ACT: tl.constexpr, OUT_ACT: tl.constexpr, HAS_DW_BIAS: tl.constexpr, HAS_PW_BIAS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """y[b, n, ho, wo] = out_act(sum_c act(dw(x) + dw_bias)[b, c, ho, wo] pw[n, c] + pw_bias[n])."""
    pid_pixels = tl.program_id(0)
    pid_filters = tl.program_id(1)
    pixel = pid_pixels.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)  # [BLOCK_P]
    pixel_mask = pixel < B * Ho * Wo
    b = pixel // (Ho * Wo)
    ho = (pixel // Wo) % Ho
    wo = pixel % Wo
    n = pid_filters.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    n_mask = n < N

    acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=ACC_DTYPE)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C).to(tl.int64)  # [BLOCK_C]
        c_mask = c < C
        z = depthwise_tile(x_ptr, dw_w_ptr, dw_b_ptr, b, ho, wo, pixel_mask, c, c, c_mask, H, W, sxb, sxc, sxh, sxw,
                           K, STRIDE, PAD, DIL, HAS_DW_BIAS, ACC_DTYPE, BLOCK_P, BLOCK_C)  # [BLOCK_P, BLOCK_C]
        h = activate(z, ACT).to(pw_w_ptr.dtype.element_ty)
        pw = tl.load(pw_w_ptr + n[None, :] * C + c[:, None],
                     mask=c_mask[:, None] & n_mask[None, :], other=0.0)  # [BLOCK_C, BLOCK_N]
        acc = tl.dot(h, pw, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
    if HAS_PW_BIAS:
        acc += tl.load(pw_b_ptr + n, mask=n_mask, other=0.0).to(ACC_DTYPE)[None, :]
    acc = activate(acc, OUT_ACT)
    y_ptrs = y_ptr + b[:, None] * syb + n[None, :] * syc + ho[:, None] * syh + wo[:, None] * syw
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=pixel_mask[:, None] & n_mask[None, :])


@triton.jit
def dwsep_bwd_mid_kernel(
    x_ptr, dw_w_ptr, dw_b_ptr, pw_w_ptr, dy_ptr, y_ptr, dz_ptr,
    B, C, H, W, N, Ho, Wo,
    sxb, sxc, sxh, sxw,
    sdyb, sdyc, sdyh, sdyw,
    syb, syc, syh, syw,
    sdzb, sdzc, sdzh, sdzw,
    K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr,
    ACT: tl.constexpr, OUT_ACT: tl.constexpr, HAS_DW_BIAS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dz[b, c, ho, wo] = act'(z) * sum_n dy'[b, n, ho, wo] pw[n, c], dy' = dy masked by out_act'."""
    pid_pixels = tl.program_id(0)
    pid_channels = tl.program_id(1)
    pixel = pid_pixels.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)  # [BLOCK_P]
    pixel_mask = pixel < B * Ho * Wo
    b = pixel // (Ho * Wo)
    ho = (pixel // Wo) % Ho
    wo = pixel % Wo
    c = pid_channels.to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C]
    c_mask = c < C

    dh = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC_DTYPE)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N).to(tl.int64)  # [BLOCK_N]
        mask = pixel_mask[:, None] & (n < N)[None, :]
        dy = tl.load(dy_ptr + b[:, None] * sdyb + n[None, :] * sdyc + ho[:, None] * sdyh + wo[:, None] * sdyw,
                     mask=mask, other=0.0)  # [BLOCK_P, BLOCK_N]
        if OUT_ACT != ACT_NONE:
            yv = tl.load(y_ptr + b[:, None] * syb + n[None, :] * syc + ho[:, None] * syh + wo[:, None] * syw,
                         mask=mask, other=0.0)  # [BLOCK_P, BLOCK_N]
            dy = activation_grad(dy, yv, OUT_ACT).to(pw_w_ptr.dtype.element_ty)
        pw = tl.load(pw_w_ptr + n[:, None] * C + c[None, :],
                     mask=(n < N)[:, None] & c_mask[None, :], other=0.0)  # [BLOCK_N, BLOCK_C]
        dh = tl.dot(dy, pw, dh, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
    if ACT != ACT_NONE:
        z = depthwise_tile(x_ptr, dw_w_ptr, dw_b_ptr, b, ho, wo, pixel_mask, c, c, c_mask, H, W, sxb, sxc, sxh, sxw,
                           K, STRIDE, PAD, DIL, HAS_DW_BIAS, ACC_DTYPE, BLOCK_P, BLOCK_C)  # [BLOCK_P, BLOCK_C]
        dh = activation_grad(dh, z, ACT)
    dz_ptrs = dz_ptr + b[:, None] * sdzb + c[None, :] * sdzc + ho[:, None] * sdzh + wo[:, None] * sdzw
    tl.store(dz_ptrs, dh.to(dz_ptr.dtype.element_ty), mask=pixel_mask[:, None] & c_mask[None, :])


@triton.jit
def dwsep_bwd_pw_weight_kernel(
    x_ptr, dw_w_ptr, dw_b_ptr, dy_ptr, y_ptr, partial_ptr, partial_bias_ptr,
    B, C, H, W, N, Ho, Wo, PIXELS_PER_SPLIT,
    sxb, sxc, sxh, sxw,
    sdyb, sdyc, sdyh, sdyw,
    syb, syc, syh, syw,
    K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr,
    ACT: tl.constexpr, OUT_ACT: tl.constexpr, HAS_DW_BIAS: tl.constexpr, HAS_PW_BIAS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Partial grad pw_weight [BLOCK_N, BLOCK_C] = dy'^T @ act(z) over one split of the output pixels.

    The first channel tile also sums dy' for grad pw_bias. Partials are stored in ACC_DTYPE at
    ``partial_ptr[split, n, c]``.
    """
    pid_filters = tl.program_id(0)
    pid_channels = tl.program_id(1)
    split = tl.program_id(2)
    n = pid_filters.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    n_mask = n < N
    c = pid_channels.to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C]
    c_mask = c < C

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
        mask = n_mask[:, None] & pixel_mask[None, :]
        dy = tl.load(dy_ptr + b[None, :] * sdyb + n[:, None] * sdyc + ho[None, :] * sdyh + wo[None, :] * sdyw,
                     mask=mask, other=0.0)  # [BLOCK_N, BLOCK_P]
        if OUT_ACT != ACT_NONE:
            yv = tl.load(y_ptr + b[None, :] * syb + n[:, None] * syc + ho[None, :] * syh + wo[None, :] * syw,
                         mask=mask, other=0.0)  # [BLOCK_N, BLOCK_P]
            dy = activation_grad(dy, yv, OUT_ACT).to(dw_w_ptr.dtype.element_ty)
        z = depthwise_tile(x_ptr, dw_w_ptr, dw_b_ptr, b, ho, wo, pixel_mask, c, c, c_mask, H, W, sxb, sxc, sxh, sxw,
                           K, STRIDE, PAD, DIL, HAS_DW_BIAS, ACC_DTYPE, BLOCK_P, BLOCK_C)  # [BLOCK_P, BLOCK_C]
        # Rows past the last pixel hold act(bias); their dy columns are 0, so they add nothing.
        h = activate(z, ACT).to(dw_w_ptr.dtype.element_ty)
        acc = tl.dot(dy, h, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
        if HAS_PW_BIAS:
            bias_acc += tl.sum(dy.to(ACC_DTYPE), axis=1)

    out = partial_ptr + split.to(tl.int64) * N * C + n[:, None] * C + c[None, :]
    tl.store(out, acc, mask=n_mask[:, None] & c_mask[None, :])
    if HAS_PW_BIAS:
        if pid_channels == 0:
            tl.store(partial_bias_ptr + split.to(tl.int64) * N + n, bias_acc, mask=n_mask)
