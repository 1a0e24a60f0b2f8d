"""Triton kernels for the depthwise convolution (and the activation helpers the fused depthwise-
separable kernels share).

Output channel o reads input channel ``o // MULT`` (torch's ``groups=C`` order; MULT is a constexpr).
Depthwise work is a per-channel multiply-add, so no tl.dot is involved and the kernels are bound by
memory traffic; what they must avoid is spending instructions per byte:

- forward / grad input: a program owns [BLOCK_P pixels of one image, BLOCK_C channels]; every tap
  reads each pixel's channels with one contiguous vector load (channels_last) and its filters with one
  more (weights [K*K, OC]). Triton has no indexable register tile, so a haloed tile loaded once and
  shifted per tap is not expressible; the taps' re-reads of neighbouring pixels hit L1/L2.
- grad input: the same correlation over dz, the gradient of the pre-activation: the activation's mask
  is applied once per element beforehand (``depthwise_grad_mask_kernel``, or by the grad-weight kernel,
  which reads dy and y anyway), not once per tap.
- grad weight: the taps of up to ``ROWS`` kernel rows (and the bias) of a channel tile in one program:
  each pixel block's dz and its x window are read once and multiplied into a [pixels, taps, channels]
  accumulator, reduced over pixels once after the loop; partials per split, reduced by one more
  kernel in a fixed order.

Index math is int32 and outside the loops (one division per program); only the image's base offset
is int64. Tensors are addressed through explicit strides (NCHW, channels_last and channel-offset views
take the same code), the batch and pixel strides arriving divided by VEC (see ``launch.vector_width``).
Each tensor arrives as a 16-byte-aligned pointer plus an offset in units of VEC (``*_off_v``): a
channel-slice view (the Ghost backward's ``grad[:, C:]``) would otherwise lose the JIT's alignment
hint and every load in it would be scalar.
``depthwise_tile`` (the fused dwsep kernels' helper) still reads weights [OC, 1, K, K].
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
def _image_pixels(pid_pixels, HW_OUT, W_OUT, BLOCK_P: tl.constexpr):
    """The program's pixels of one image (int32): their index, mask, row and column. The only
    division of the kernel, once per program."""
    p = pid_pixels * BLOCK_P + tl.arange(0, BLOCK_P)  # [BLOCK_P]
    return p, p < HW_OUT, p // W_OUT, p % W_OUT


@triton.jit
def depthwise_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr, copy_ptr,
    C_V, H, W, OC_V, Ho, Wo,
    sxb_v, sxc, sxh_v, sxw_v, x_off_v,
    syb_v, syc, syh_v, syw_v, y_off_v,
    scb_v, scc, sch_v, scw_v, c_off_v,
    K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr, ACT: tl.constexpr,
    MULT: tl.constexpr, HAS_BIAS: tl.constexpr, COPY_INPUT: tl.constexpr, ACC_DTYPE: tl.constexpr,
    VEC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """y[b, o, ho, wo] = act(sum_tap x[b, o // MULT, ...] w[tap, o] + bias[o]); grid (pixel tiles of one
    image, channel tiles, batch).

    Weights are [K*K, OC] (a tap's filters contiguous). Pixel strides arrive divided by VEC (a power
    of two dividing them and the channel counts C = C_V*VEC, OC = OC_V*VEC), so that in channels_last
    every tap reads VEC contiguous, aligned channels per pixel with one vector load. Offsets inside an
    image are int32; the image's base offset is int64. COPY_INPUT (Ghost module, same-size window): the
    program also copies its tile of x into ``copy_ptr`` (the first C channels of the concatenated output).
    """
    pid_pixels = tl.program_id(0)
    pid_channels = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    p, pixel_mask, ho, wo = _image_pixels(pid_pixels, Ho * Wo, Wo, BLOCK_P)
    o = pid_channels * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C]
    o_mask = o < OC_V * VEC
    if MULT > 1:
        c = o // MULT
    else:
        c = o
    x_image = x_ptr + (b * sxb_v + x_off_v) * VEC
    sxh = sxh_v * VEC
    sxw = sxw_v * VEC
    hi0 = ho * STRIDE - PAD  # [BLOCK_P]
    wi0 = wo * STRIDE - PAD
    x_offsets = (hi0 * sxh + wi0 * sxw)[:, None] + (c * sxc)[None, :]  # [BLOCK_P, BLOCK_C] int32

    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC_DTYPE)
    for kh in range(0, K):
        hi = hi0 + kh * DIL
        row_ok = pixel_mask & (hi >= 0) & (hi < H)  # [BLOCK_P]
        for kw in tl.static_range(K):
            wi = wi0 + kw * DIL
            inside = row_ok & (wi >= 0) & (wi < W)
            xv = tl.load(x_image + x_offsets + (kh * DIL * sxh + kw * DIL * sxw),
                         mask=inside[:, None] & o_mask[None, :], other=0.0)  # [BLOCK_P, BLOCK_C]
            wv = tl.load(w_ptr + (kh * K + kw) * (OC_V * VEC) + o, mask=o_mask, other=0.0)  # [BLOCK_C]
            acc += xv.to(ACC_DTYPE) * wv.to(ACC_DTYPE)[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + o, mask=o_mask, other=0.0).to(ACC_DTYPE)[None, :]
    acc = activate(acc, ACT)
    y_image = y_ptr + (b * syb_v + y_off_v) * VEC
    y_ptrs = y_image + ((ho * (syh_v * VEC) + wo * (syw_v * VEC))[:, None] + (o * syc)[None, :])
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=pixel_mask[:, None] & o_mask[None, :])

    if COPY_INPUT:
        # Channel tiles here index input channels; the grid covers max(OC, C) channels.
        ci = pid_channels * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C]
        copy_mask = pixel_mask[:, None] & (ci < C_V * VEC)[None, :]
        xv = tl.load(x_image + ((ho * sxh + wo * sxw)[:, None] + (ci * sxc)[None, :]),
                     mask=copy_mask, other=0.0)  # [BLOCK_P, BLOCK_C]
        copy_image = copy_ptr + (b * scb_v + c_off_v) * VEC
        tl.store(copy_image + ((ho * (sch_v * VEC) + wo * (scw_v * VEC))[:, None] + (ci * scc)[None, :]),
                 xv, mask=copy_mask)


@triton.jit
def depthwise_grad_mask_kernel(
    dy_ptr, y_ptr, dz_ptr, OC_V, Ho, Wo,
    sdyb_v, sdyc, sdyh_v, sdyw_v, dy_off_v,
    syb_v, syc, syh_v, syw_v, y_off_v,
    sdzb_v, sdzc, sdzh_v, sdzw_v, dz_off_v,
    ACT: tl.constexpr, VEC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dz = dy where the activation passes (decided from its output y), else 0; grid (pixel tiles of
    one image, channel tiles, batch). A select: dz in dy's dtype is exact. It runs once per element so
    that the grad-input kernel, which reads each dz k*k times, does not redo it per tap."""
    pid_pixels = tl.program_id(0)
    pid_channels = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    p, pixel_mask, ho, wo = _image_pixels(pid_pixels, Ho * Wo, Wo, BLOCK_P)
    o = pid_channels * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C]
    mask = pixel_mask[:, None] & (o < OC_V * VEC)[None, :]  # [BLOCK_P, BLOCK_C]
    dy_image = dy_ptr + (b * sdyb_v + dy_off_v) * VEC
    y_image = y_ptr + (b * syb_v + y_off_v) * VEC
    dz_image = dz_ptr + (b * sdzb_v + dz_off_v) * VEC
    g = tl.load(dy_image + ((ho * (sdyh_v * VEC) + wo * (sdyw_v * VEC))[:, None] + (o * sdyc)[None, :]),
                mask=mask, other=0.0)  # [BLOCK_P, BLOCK_C]
    v = tl.load(y_image + ((ho * (syh_v * VEC) + wo * (syw_v * VEC))[:, None] + (o * syc)[None, :]),
                mask=mask, other=0.0)  # [BLOCK_P, BLOCK_C]
    dz = activation_grad(g, v, ACT)
    tl.store(dz_image + ((ho * (sdzh_v * VEC) + wo * (sdzw_v * VEC))[:, None] + (o * sdzc)[None, :]),
             dz.to(dz_ptr.dtype.element_ty), mask=mask)


@triton.jit
def depthwise_bwd_input_kernel(
    dz_ptr, w_ptr, add_ptr, dx_ptr,
    C_V, H, W, OC_V, Ho, Wo,
    sdzb_v, sdzc, sdzh_v, sdzw_v, dz_off_v,
    sab_v, sac, sah_v, saw_v, a_off_v,
    sdxb_v, sdxc, sdxh_v, sdxw_v, dx_off_v,
    K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr,
    MULT: tl.constexpr, HAS_ADD: tl.constexpr, ACC_DTYPE: tl.constexpr,
    VEC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dx[b, c, hi, wi] = sum_{j, tap} dz[b, c*MULT + j, ho, wo] w[tap, c*MULT + j] (+ add[b, c, hi, wi]);
    grid (pixel tiles of one image, channel tiles, batch), strides as in the forward.

    dz is the gradient of the pre-activation (``depthwise_grad_mask_kernel`` applies the activation
    once per element beforehand). ``add`` is the gradient that reaches x directly (the Ghost module's
    concatenated copy of its input). Stride 2 (the only other stride) is a parity test and a shift per
    pixel and kernel row: no division in the loop.
    """
    backward_input_tile(tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64), dz_ptr, w_ptr, add_ptr,
                        dx_ptr, C_V, H, W, OC_V, Ho, Wo, sdzb_v, sdzc, sdzh_v, sdzw_v, dz_off_v, sab_v, sac, sah_v,
                        saw_v, a_off_v, sdxb_v, sdxc, sdxh_v, sdxw_v, dx_off_v, K, STRIDE, PAD, DIL, MULT, HAS_ADD,
                        ACC_DTYPE, VEC, BLOCK_P, BLOCK_C)


@triton.jit
def backward_input_tile(
    pid_pixels, pid_channels, b, dz_ptr, w_ptr, add_ptr, dx_ptr,
    C_V, H, W, OC_V, Ho, Wo,
    sdzb_v, sdzc, sdzh_v, sdzw_v, dz_off_v,
    sab_v, sac, sah_v, saw_v, a_off_v,
    sdxb_v, sdxc, sdxh_v, sdxw_v, dx_off_v,
    K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr,
    MULT: tl.constexpr, HAS_ADD: tl.constexpr, ACC_DTYPE: tl.constexpr,
    VEC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """One grad-input program's tile: pixel tile ``pid_pixels`` of image ``b`` (int64), channel tile
    ``pid_channels`` (the kernel's body; the fused dwsep backward calls it too)."""
    p, pixel_mask, hi, wi = _image_pixels(pid_pixels, H * W, W, BLOCK_P)
    c = pid_channels * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C]
    c_mask = c < C_V * VEC
    dz_image = dz_ptr + (b * sdzb_v + dz_off_v) * VEC
    sdzh = sdzh_v * VEC
    sdzw = sdzw_v * VEC
    SHIFT: tl.constexpr = STRIDE // 2  # stride 1 or 2

    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC_DTYPE)
    for kh in range(0, K):
        ho_strided = hi + (PAD - kh * DIL)  # [BLOCK_P]
        ho = ho_strided >> SHIFT
        row_hit = pixel_mask & (ho_strided >= 0) & (ho < Ho)
        if STRIDE == 2:
            row_hit = row_hit & ((ho_strided & 1) == 0)
        for kw in tl.static_range(K):
            wo_strided = wi + (PAD - kw * DIL)
            wo = wo_strided >> SHIFT
            hit = row_hit & (wo_strided >= 0) & (wo < Wo)
            if STRIDE == 2:
                hit = hit & ((wo_strided & 1) == 0)
            for j in tl.static_range(MULT):
                if MULT > 1:
                    o = c * MULT + j  # [BLOCK_C]
                else:
                    o = c
                o_mask = c_mask & (o < OC_V * VEC)
                dz = tl.load(dz_image + ((ho * sdzh + wo * sdzw)[:, None] + (o * sdzc)[None, :]),
                             mask=hit[:, None] & o_mask[None, :], other=0.0).to(ACC_DTYPE)  # [BLOCK_P, BLOCK_C]
                # [BLOCK_C]
                wv = tl.load(w_ptr + (kh * K + kw) * (OC_V * VEC) + o, mask=o_mask, other=0.0).to(ACC_DTYPE)
                acc += dz * wv[None, :]
    pixel_offsets_mask = pixel_mask[:, None] & c_mask[None, :]
    if HAS_ADD:
        add_image = add_ptr + (b * sab_v + a_off_v) * VEC
        acc += tl.load(add_image + ((hi * (sah_v * VEC) + wi * (saw_v * VEC))[:, None] + (c * sac)[None, :]),
                       mask=pixel_offsets_mask, other=0.0).to(ACC_DTYPE)
    dx_image = dx_ptr + (b * sdxb_v + dx_off_v) * VEC
    dx_ptrs = dx_image + ((hi * (sdxh_v * VEC) + wi * (sdxw_v * VEC))[:, None] + (c * sdxc)[None, :])
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=pixel_offsets_mask)


@triton.jit
def depthwise_bwd_weight_kernel(
    x_ptr, dy_ptr, y_ptr, dz_ptr, partial_ptr,
    C_V, H, W, OC_V, Ho, Wo, IMAGES_PER_SPLIT, B, PIXELS_PER_SPLIT, WO_STEP, HO_STEP,
    sxb_v, sxc, sxh_v, sxw_v, x_off_v,
    sdyb_v, sdyc, sdyh_v, sdyw_v, dy_off_v,
    syb_v, syc, syh_v, syw_v, y_off_v,
    sdzb_v, sdzc, sdzh_v, sdzw_v, dz_off_v,
    K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr, ACT: tl.constexpr,
    MULT: tl.constexpr, HAS_BIAS: tl.constexpr, WRITE_DZ: tl.constexpr, ACC_DTYPE: tl.constexpr,
    VEC: tl.constexpr, ROWS: tl.constexpr, TAPS: tl.constexpr, PARTIAL_ROWS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Partial grad weight (and bias) of ROWS kernel rows over one split (a range of images x a range
    of each image's output pixels); grid (channel tiles x row groups, image splits, pixel splits).

    Each pixel block reads dz [BLOCK_P, BLOCK_C] once (dy masked by the activation, from its output y;
    WRITE_DZ also stores that dz for the grad-input kernel) and the x window of its ROWS*K taps
    [BLOCK_P, TAPS, BLOCK_C] (one vector load per pixel and tap), and accumulates dz * x elementwise:
    the reduction over pixels happens once, after the loop. The tap axis lies in each thread's
    registers, so its padding (TAPS is a power of two >= ROWS*K) is folded away at compile time. Partials
    go to ``partial_ptr[split, kh*K + kw (K*K: bias), o]`` in ACC_DTYPE, reduced by
    ``depthwise_reduce_weight_kernel`` in a fixed order (deterministic). The pixel walk steps (ho, wo)
    by (HO_STEP, WO_STEP) = divmod(BLOCK_P, Wo) with a carry: no division in the loop.
    """
    backward_weight_tile(tl.program_id(0), tl.program_id(1), tl.program_id(2), tl.num_programs(2), x_ptr, dy_ptr, y_ptr,
                         dz_ptr, partial_ptr, C_V, H, W, OC_V, Ho, Wo, IMAGES_PER_SPLIT, B, PIXELS_PER_SPLIT, WO_STEP,
                         HO_STEP, sxb_v, sxc, sxh_v, sxw_v, x_off_v, sdyb_v, sdyc, sdyh_v, sdyw_v, dy_off_v, syb_v, syc,
                         syh_v, syw_v, y_off_v, sdzb_v, sdzc, sdzh_v, sdzw_v, dz_off_v, K, STRIDE, PAD, DIL, ACT, MULT,
                         HAS_BIAS, WRITE_DZ, ACC_DTYPE, VEC, ROWS, TAPS, PARTIAL_ROWS, BLOCK_P, BLOCK_C)


@triton.jit
def backward_weight_tile(
    pid, pid_images, pid_pixels, PIXEL_SPLITS,
    x_ptr, dy_ptr, y_ptr, dz_ptr, partial_ptr,
    C_V, H, W, OC_V, Ho, Wo, IMAGES_PER_SPLIT, B, PIXELS_PER_SPLIT, WO_STEP, HO_STEP,
    sxb_v, sxc, sxh_v, sxw_v, x_off_v,
    sdyb_v, sdyc, sdyh_v, sdyw_v, dy_off_v,
    syb_v, syc, syh_v, syw_v, y_off_v,
    sdzb_v, sdzc, sdzh_v, sdzw_v, dz_off_v,
    K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr, ACT: tl.constexpr,
    MULT: tl.constexpr, HAS_BIAS: tl.constexpr, WRITE_DZ: tl.constexpr, ACC_DTYPE: tl.constexpr,
    VEC: tl.constexpr, ROWS: tl.constexpr, TAPS: tl.constexpr, PARTIAL_ROWS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """One grad-weight program's partials: channel tile x row group ``pid``, image split ``pid_images``,
    pixel split ``pid_pixels`` of PIXEL_SPLITS (the kernel's body; the fused dwsep backward calls it too)."""
    ROW_GROUPS: tl.constexpr = (K + ROWS - 1) // ROWS
    row_group = pid % ROW_GROUPS
    o = (pid // ROW_GROUPS) * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C]
    o_mask = o < OC_V * VEC
    if MULT > 1:
        c = o // MULT
    else:
        c = o
    sxh = sxh_v * VEC
    sxw = sxw_v * VEC
    tap = tl.arange(0, TAPS)  # [TAPS]: row_group * ROWS + tap // K, tap % K
    kh = row_group * ROWS + tap // K
    kw = tap % K
    live = (tap < ROWS * K)[None, :, None]  # [1, TAPS, 1], known at compile time per register
    tap_valid = (tap < ROWS * K) & (kh < K)  # [TAPS]
    x_taps = (kh * (DIL * sxh) + kw * (DIL * sxw))[None, :, None] + (c * sxc)[None, None, :]  # [1, TAPS, BLOCK_C]
    c_mask = o_mask[None, :]  # [1, BLOCK_C]
    H_U = tl.cast(H, tl.uint32)  # H or W may arrive as the constexpr 1
    W_U = tl.cast(W, tl.uint32)

    pixels = Ho * Wo
    first_pixel = pid_pixels * PIXELS_PER_SPLIT
    last_pixel = tl.minimum(first_pixel + PIXELS_PER_SPLIT, pixels)
    p_range = tl.arange(0, BLOCK_P)
    start = first_pixel + p_range  # [BLOCK_P]
    ho0 = start // Wo
    wo0 = start % Wo
    acc = tl.zeros((BLOCK_P, TAPS, BLOCK_C), dtype=ACC_DTYPE)
    bias_acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC_DTYPE)
    first_image = pid_images * IMAGES_PER_SPLIT
    image64 = first_image.to(tl.int64)
    for _ in range(first_image, tl.minimum(first_image + IMAGES_PER_SPLIT, B)):
        # int64 once per image (strides and offsets in units of VEC, so the bases stay VEC-aligned).
        x_image = x_ptr + (image64 * sxb_v + x_off_v) * VEC
        dy_image = dy_ptr + (image64 * sdyb_v + dy_off_v) * VEC
        y_image = y_ptr + (image64 * syb_v + y_off_v) * VEC
        dz_image = dz_ptr + (image64 * sdzb_v + dz_off_v) * VEC
        ho = ho0
        wo = wo0
        for p0 in range(first_pixel, last_pixel, BLOCK_P):
            pixel_mask = p0 + p_range < last_pixel  # [BLOCK_P]
            mask = pixel_mask[:, None] & c_mask  # [BLOCK_P, BLOCK_C]
            dz = tl.load(dy_image + ((ho * (sdyh_v * VEC) + wo * (sdyw_v * VEC))[:, None] + (o * sdyc)[None, :]),
                         mask=mask, other=0.0)  # [BLOCK_P, BLOCK_C]
            if ACT != ACT_NONE:
                yv = tl.load(y_image + ((ho * (syh_v * VEC) + wo * (syw_v * VEC))[:, None] + (o * syc)[None, :]),
                             mask=mask, other=0.0)  # [BLOCK_P, BLOCK_C]
                dz = activation_grad(dz, yv, ACT)
                if WRITE_DZ:
                    tl.store(dz_image + ((ho * (sdzh_v * VEC) + wo * (sdzw_v * VEC))[:, None] + (o * sdzc)[None, :]),
                             dz.to(dz_ptr.dtype.element_ty), mask=mask & (row_group == 0))
            dz = dz.to(ACC_DTYPE)
            if HAS_BIAS:
                bias_acc += dz
            hi = ho * STRIDE - PAD  # [BLOCK_P]
            wi = wo * STRIDE - PAD
            # 0 <= v < n as one unsigned compare; rows and columns apart, so each (pixel, kernel row) and
            # (pixel, kernel column) is tested once and a tap's mask is one AND of the two.
            row_ok = pixel_mask[:, None] & ((hi[:, None] + (kh * DIL)[None, :]).to(tl.uint32) < H_U)
            col_ok = (wi[:, None] + (kw * DIL)[None, :]).to(tl.uint32) < W_U  # [BLOCK_P, TAPS]
            inside = row_ok & col_ok & tap_valid[None, :]  # [BLOCK_P, TAPS]
            xv = tl.load(x_image + ((hi * sxh + wi * sxw)[:, None, None] + x_taps),
                         mask=inside[:, :, None] & c_mask[:, None, :], other=0.0)  # [BLOCK_P, TAPS, BLOCK_C]
            # Padding taps add -0.0 (x + -0.0 == x for every x), which the compiler drops.
            acc += tl.where(live, dz[:, None, :] * xv.to(ACC_DTYPE), -0.0)
            wo += WO_STEP
            ho += HO_STEP
            carry = wo >= Wo
            wo = tl.where(carry, wo - Wo, wo)
            ho = tl.where(carry, ho + 1, ho)
        image64 += 1

    split = pid_images * PIXEL_SPLITS + pid_pixels
    out = partial_ptr + split.to(tl.int64) * (PARTIAL_ROWS * OC_V * VEC)
    rows = kh * K + kw  # [TAPS]
    grad = tl.sum(acc, axis=0)  # [TAPS, BLOCK_C]
    tl.store(out + (rows * (OC_V * VEC))[:, None] + o[None, :], grad, mask=tap_valid[:, None] & o_mask[None, :])
    if HAS_BIAS:
        if row_group == 0:
            tl.store(out + (K * K) * (OC_V * VEC) + o, tl.sum(bias_acc, axis=0), mask=o_mask)


@triton.jit
def depthwise_reduce_weight_kernel(
    partial_ptr, dw_ptr, db_ptr, SPLITS, OC_V, sdw_o, sdw_tap,
    K: tl.constexpr, HAS_BIAS: tl.constexpr, ACC_DTYPE: tl.constexpr, VEC: tl.constexpr,
    PARTIAL_ROWS: tl.constexpr, ROWS_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dw[o, 0, kh, kw] (and db[o]) = the sum of the splits' partials in split order (deterministic),
    written in the parameters' dtype; dw[o, 0, kh, kw] lies at o * sdw_o + (kh*K + kw) * sdw_tap (taps-major:
    1 and OC, a vector store per tap; contiguous: K*K and 1). Partials: [SPLITS, PARTIAL_ROWS, OC]
    (rows kh*K + kw, then the bias); ROWS_P is PARTIAL_ROWS rounded up to a power of two."""
    reduce_weight_tile(tl.program_id(0), partial_ptr, dw_ptr, db_ptr, SPLITS, OC_V, sdw_o, sdw_tap, K, HAS_BIAS,
                       ACC_DTYPE, VEC, PARTIAL_ROWS, ROWS_P, BLOCK_C)


@triton.jit
def reduce_weight_tile(
    pid,
    partial_ptr, dw_ptr, db_ptr, SPLITS, OC_V, sdw_o, sdw_tap,
    K: tl.constexpr, HAS_BIAS: tl.constexpr, ACC_DTYPE: tl.constexpr, VEC: tl.constexpr,
    PARTIAL_ROWS: tl.constexpr, ROWS_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Channel tile ``pid`` of the reduction (the kernel's body; the fused dwsep reduction calls it too)."""
    o = pid * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C]
    o_mask = o < OC_V * VEC
    row = tl.arange(0, ROWS_P)  # [ROWS_P]
    mask = (row < PARTIAL_ROWS)[:, None] & o_mask[None, :]
    offsets = (row * (OC_V * VEC))[:, None] + o[None, :]  # [ROWS_P, BLOCK_C]
    acc = tl.zeros((ROWS_P, BLOCK_C), dtype=ACC_DTYPE)
    partials = partial_ptr + offsets  # [ROWS_P, BLOCK_C]
    for _ in range(0, SPLITS):
        acc += tl.load(partials, mask=mask, other=0.0)
        partials += PARTIAL_ROWS * OC_V * VEC
    tl.store(dw_ptr + o[None, :] * sdw_o + row[:, None] * sdw_tap, acc.to(dw_ptr.dtype.element_ty),
             mask=(row < K * K)[:, None] & o_mask[None, :])
    if HAS_BIAS:
        db = tl.sum(tl.where((row == K * K)[:, None], acc, 0.0), axis=0)  # [BLOCK_C]
        tl.store(db_ptr + o, db.to(db_ptr.dtype.element_ty), mask=o_mask)
