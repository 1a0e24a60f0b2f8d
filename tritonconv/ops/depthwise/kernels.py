"""Triton kernels for the depthwise convolution (and the activation helpers the fused depthwise-
separable kernels share).

Output channel o reads input channel ``o // MULT`` (torch's ``groups=C`` order). A program owns a
[BLOCK_P pixels, BLOCK_C channels] tile and walks the K*K taps: depthwise work is a per-channel
multiply-add, so no tl.dot is involved and the kernel is bound by memory traffic. Tensors are addressed
through explicit strides (NCHW, channels_last and channel-offset views take the same code); pointers
that can pass 2^31 elements are int64. Weights are contiguous [OC, 1, K, K].
"""

import triton
import triton.language as tl

# tl.constexpr instances: triton refuses a kernel's read of any other global (an annotated int too).
ACT_NONE = tl.constexpr(0)
ACT_RELU = tl.constexpr(1)
ACT_RELU6 = tl.constexpr(2)


@triton.jit
def activate(z, ACT: tl.constexpr):
    """None / ReLU / ReLU6; NaN propagates as in torch."""
    if ACT == ACT_RELU:
        z = tl.maximum(z, 0.0, propagate_nan=tl.PropagateNan.ALL)
    elif ACT == ACT_RELU6:
        z = tl.minimum(tl.maximum(z, 0.0, propagate_nan=tl.PropagateNan.ALL), 6.0,
                       propagate_nan=tl.PropagateNan.ALL)
    return z


@triton.jit
def activation_grad(g, v, ACT: tl.constexpr):
    """The gradient g through the activation, decided from its input or output v (the same set);
    written as torch's threshold/hardtanh backward so NaN behaves alike."""
    if ACT == ACT_RELU:
        g = tl.where(v <= 0, 0.0, g)
    elif ACT == ACT_RELU6:
        g = tl.where((v <= 0) | (v >= 6), 0.0, g)
    return g


@triton.jit
def depthwise_tile(x_ptr, w_ptr, bias_ptr, b, ho, wo, pixel_mask, c, o, o_mask,
                   H, W, sxb, sxc, sxh, sxw,
                   K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr,
                   HAS_BIAS: tl.constexpr, ACC_DTYPE: tl.constexpr,
                   BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Depthwise pre-activation z[pixel, o] = sum_tap x[b, c, ...] w[o, tap] (+ bias[o]), where output
    channel o reads input channel c (c = o // multiplier); 0 in masked rows and columns."""
    x_rows = x_ptr + b * sxb  # [BLOCK_P]
    z = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC_DTYPE)
    for tap in range(0, K * K):
        hi = ho * STRIDE - PAD + (tap // K) * DIL
        wi = wo * STRIDE - PAD + (tap % K) * DIL
        inside = pixel_mask & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
        xv = tl.load(x_rows[:, None] + hi[:, None] * sxh + wi[:, None] * sxw + c[None, :] * sxc,
                     mask=inside[:, None] & o_mask[None, :], other=0.0)  # [BLOCK_P, BLOCK_C]
        wv = tl.load(w_ptr + o * (K * K) + tap, mask=o_mask, other=0.0)  # [BLOCK_C]
        z += xv.to(ACC_DTYPE) * wv.to(ACC_DTYPE)[None, :]
    if HAS_BIAS:
        z += tl.load(bias_ptr + o, mask=o_mask, other=0.0).to(ACC_DTYPE)[None, :]
    return z


@triton.jit
def depthwise_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr, copy_ptr,
    B, C, H, W, OC, Ho, Wo, MULT,
    sxb, sxc, sxh, sxw,
    syb, syc, syh, syw,
    scb, scc, sch, scw,
    K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr, ACT: tl.constexpr,
    HAS_BIAS: tl.constexpr, COPY_INPUT: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """y[b, o, ho, wo] = act(sum_tap x[b, o // MULT, ...] w[o, tap] + bias[o]).

    COPY_INPUT (Ghost module, stride 1, same-size window): the same program also copies its tile of
    x into ``copy_ptr`` (the first C channels of the concatenated output), so no torch.cat is needed.
    """
    pid_pixels = tl.program_id(0)
    pid_channels = tl.program_id(1)
    pixel = pid_pixels.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)  # [BLOCK_P]
    pixel_mask = pixel < B * Ho * Wo
    b = pixel // (Ho * Wo)
    ho = (pixel // Wo) % Ho
    wo = pixel % Wo
    o = pid_channels.to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C]
    o_mask = o < OC
    c = o // MULT
    x_rows = x_ptr + b * sxb  # [BLOCK_P]

    acc = depthwise_tile(x_ptr, w_ptr, bias_ptr, b, ho, wo, pixel_mask, c, o, o_mask, H, W, sxb, sxc, sxh, sxw,
                         K, STRIDE, PAD, DIL, HAS_BIAS, ACC_DTYPE, BLOCK_P, BLOCK_C)  # [BLOCK_P, BLOCK_C]
    acc = activate(acc, ACT)
    y_ptrs = y_ptr + b[:, None] * syb + o[None, :] * syc + ho[:, None] * syh + wo[:, None] * syw
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=pixel_mask[:, None] & o_mask[None, :])

    if COPY_INPUT:
        # Channel tiles here index input channels; the grid covers max(OC, C) channels.
        ci = pid_channels.to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C]
        copy_mask = pixel_mask[:, None] & (ci < C)[None, :]
        xv = tl.load(x_rows[:, None] + ho[:, None] * sxh + wo[:, None] * sxw + ci[None, :] * sxc,
                     mask=copy_mask, other=0.0)  # [BLOCK_P, BLOCK_C]
        tl.store(copy_ptr + b[:, None] * scb + ci[None, :] * scc + ho[:, None] * sch + wo[:, None] * scw,
                 xv, mask=copy_mask)


@triton.jit
def depthwise_bwd_input_kernel(
    dy_ptr, y_ptr, w_ptr, add_ptr, dx_ptr,
    B, C, H, W, OC, Ho, Wo, MULT,
    sdyb, sdyc, sdyh, sdyw,
    syb, syc, syh, syw,
    sab, sac, sah, saw,
    sdxb, sdxc, sdxh, sdxw,
    K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr, ACT: tl.constexpr,
    HAS_ADD: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dx[b, c, hi, wi] = sum_{j, tap} dz[b, c*MULT + j, ho, wo] w[c*MULT + j, tap] (+ add[b, c, hi, wi]).

    dz = dy where the activation passes (read from the forward output y). ``add`` is the gradient
    that reaches x directly (the Ghost module's concatenated copy of its input).
    """
    pid_pixels = tl.program_id(0)
    pid_channels = tl.program_id(1)
    pixel = pid_pixels.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)  # [BLOCK_P]
    pixel_mask = pixel < B * H * W
    b = pixel // (H * W)
    hi = (pixel // W) % H
    wi = pixel % W
    c = pid_channels.to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C]
    c_mask = c < C

    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC_DTYPE)
    for step in range(0, MULT * K * K):
        o = c * MULT + step // (K * K)  # [BLOCK_C]
        o_mask = c_mask & (o < OC)
        tap = step % (K * K)
        ho_strided = hi + PAD - (tap // K) * DIL
        wo_strided = wi + PAD - (tap % K) * DIL
        ho = ho_strided // STRIDE
        wo = wo_strided // STRIDE
        hit = (pixel_mask & (ho_strided >= 0) & (wo_strided >= 0)
               & (ho_strided % STRIDE == 0) & (wo_strided % STRIDE == 0) & (ho < Ho) & (wo < Wo))
        mask = hit[:, None] & o_mask[None, :]
        offset = b[:, None] * sdyb + o[None, :] * sdyc + ho[:, None] * sdyh + wo[:, None] * sdyw
        dz = tl.load(dy_ptr + offset, mask=mask, other=0.0).to(ACC_DTYPE)  # [BLOCK_P, BLOCK_C]
        if ACT != ACT_NONE:
            yv = tl.load(y_ptr + b[:, None] * syb + o[None, :] * syc + ho[:, None] * syh + wo[:, None] * syw,
                         mask=mask, other=0.0)  # [BLOCK_P, BLOCK_C]
            dz = activation_grad(dz, yv, ACT)
        wv = tl.load(w_ptr + o * (K * K) + tap, mask=o_mask, other=0.0).to(ACC_DTYPE)  # [BLOCK_C]
        acc += dz * wv[None, :]
    if HAS_ADD:
        acc += tl.load(add_ptr + b[:, None] * sab + c[None, :] * sac + hi[:, None] * sah + wi[:, None] * saw,
                       mask=pixel_mask[:, None] & c_mask[None, :], other=0.0).to(ACC_DTYPE)
    dx_ptrs = dx_ptr + b[:, None] * sdxb + c[None, :] * sdxc + hi[:, None] * sdxh + wi[:, None] * sdxw
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=pixel_mask[:, None] & c_mask[None, :])


@triton.jit
def depthwise_bwd_weight_kernel(
    x_ptr, dy_ptr, y_ptr, partial_w_ptr, partial_bias_ptr,
    B, C, H, W, OC, Ho, Wo, MULT, PIXELS_PER_SPLIT,
    sxb, sxc, sxh, sxw,
    sdyb, sdyc, sdyh, sdyw,
    syb, syc, syh, syw,
    K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr, ACT: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Partial grad weight (and bias) over one split of the output pixels, for one tap (axis 1).

    Partials go to ``partial_w_ptr[split, o, tap]`` in ACC_DTYPE and are summed by the launcher in a
    fixed order, so the result is deterministic. The tap-0 programs also write the bias partials.
    """
    pid_channels = tl.program_id(0)
    tap = tl.program_id(1)
    split = tl.program_id(2)
    o = pid_channels.to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C]
    o_mask = o < OC
    c = o // MULT
    kh = tap // K
    kw = tap % K

    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC_DTYPE)
    bias_acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC_DTYPE)
    p_range = tl.arange(0, BLOCK_P)
    first = split.to(tl.int64) * PIXELS_PER_SPLIT
    for p0 in range(0, PIXELS_PER_SPLIT, BLOCK_P):
        pixel = first + p0 + p_range  # [BLOCK_P]
        pixel_mask = (pixel < B * Ho * Wo) & (p0 + p_range < PIXELS_PER_SPLIT)
        b = pixel // (Ho * Wo)
        ho = (pixel // Wo) % Ho
        wo = pixel % Wo
        mask = pixel_mask[:, None] & o_mask[None, :]
        dz = tl.load(dy_ptr + b[:, None] * sdyb + o[None, :] * sdyc + ho[:, None] * sdyh + wo[:, None] * sdyw,
                     mask=mask, other=0.0).to(ACC_DTYPE)  # [BLOCK_P, BLOCK_C]
        if ACT != ACT_NONE:
            yv = tl.load(y_ptr + b[:, None] * syb + o[None, :] * syc + ho[:, None] * syh + wo[:, None] * syw,
                         mask=mask, other=0.0)  # [BLOCK_P, BLOCK_C]
            dz = activation_grad(dz, yv, ACT)
        hi = ho * STRIDE - PAD + kh * DIL
        wi = wo * STRIDE - PAD + kw * DIL
        inside = pixel_mask & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
        xv = tl.load(x_ptr + b[:, None] * sxb + c[None, :] * sxc + hi[:, None] * sxh + wi[:, None] * sxw,
                     mask=inside[:, None] & o_mask[None, :], other=0.0)  # [BLOCK_P, BLOCK_C]
        acc += dz * xv.to(ACC_DTYPE)
        if HAS_BIAS:
            bias_acc += dz

    partial = split.to(tl.int64) * OC
    tl.store(partial_w_ptr + (partial + o) * (K * K) + tap, tl.sum(acc, axis=0), mask=o_mask)
    if HAS_BIAS:
        if tap == 0:
            tl.store(partial_bias_ptr + partial + o, tl.sum(bias_acc, axis=0), mask=o_mask)
