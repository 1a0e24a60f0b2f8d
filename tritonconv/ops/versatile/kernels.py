"""Triton kernels for VersatileConv2d (SPEC section 4): every secondary filter from one pass over the
primary's window.

Columns of the GEMMs are ``q = j*n_w + f`` (channel offset j, primary filter f); output channel
``s*NQ + q`` with ``NQ = n_c*n_w`` is secondary s of that column. Column q reads input channel
``c`` with weight row ``c - j*g`` (zero outside ``[0, c_hat)``), so one loaded input tile serves every
channel offset of the column tile. Tap (th, tw) lies ``ring`` rings inside the window and belongs to
secondaries 0..ring: the forward adds its product once, into the accumulator of its ring, and
secondary s is the sum of the accumulators of rings >= s. Tensors are addressed through explicit
strides (NCHW and channels_last take the same code); ``w_ptr`` is the weight as each kernel's docstring
says. Index arithmetic that can pass 2^31 elements is int64 (offsets inside one image are int32).
"""

import triton
import triton.language as tl

from tritonconv.kernel_helpers import pixel_walk_start, pixel_walk_step


@triton.jit
def versatile_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr,
    B, C, H, W, Ho, Wo,
    sxb, sxc, sxh, sxw,
    syb, syc, syh, syw,
    C_HAT, N_W, NQ, G,
    K: tl.constexpr, S_NUM: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr,
    WINDOW_ALIGN: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y[b, s*NQ + q, ho, wo] for a [BLOCK_M pixels, BLOCK_N columns] tile and every secondary s.

    The columns of one program share one channel offset j (q = j*n_w + f, f in a block of n_w), so
    the program reads exactly that window's channels [j*g, j*g + c_hat): an input channel outside
    a filter's window is never multiplied, not even by zero (a NaN there must not reach the output).

    Secondary s is the sum of the rings >= s, so the rings run innermost first into one running
    accumulator, and secondary s is stored as soon as ring s is added. ``w_ptr`` is the weight tap-major,
    [K*K, n_w, c_hat] (``launch.tap_major``): a tap's [channels, filters] tile is contiguous along the
    channels (c_hat is the dimension that is a multiple of 16 in real networks, n_w often is not).
    WINDOW_ALIGN divides every window start j*g (j = 0 only, when there is one window).
    """
    pid_pixels = tl.program_id(0)
    pid_cols = tl.program_id(1)
    filter_tiles = tl.cdiv(N_W, BLOCK_N)
    j = pid_cols // filter_tiles
    f = (pid_cols % filter_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N] primary filters
    q = j * N_W + f  # [BLOCK_N] columns
    q_mask = f < N_W
    c_lo = j * G // WINDOW_ALIGN * WINDOW_ALIGN  # = j*g, written so the compiler sees its divisor
    k_range = tl.arange(0, BLOCK_K)

    pixel = pid_pixels.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    pixel_mask = pixel < B * Ho * Wo
    b = pixel // (Ho * Wo)
    in_image = (pixel - b * (Ho * Wo)).to(tl.int32)  # offsets inside one image are int32
    ho = in_image // Wo
    wo = in_image - ho * Wo
    x_rows = x_ptr + b * sxb + c_lo * sxc  # [BLOCK_M] the window's first channel
    mask = pixel_mask[:, None] & q_mask[None, :]
    y_rows = y_ptr + b[:, None] * syb + ho[:, None] * syh + wo[:, None] * syw  # [BLOCK_M, 1]

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)  # [BLOCK_M, BLOCK_N] the rings >= ring so far
    # Rings and taps are unrolled at compile time (innermost ring first).
    for ring in tl.static_range(S_NUM - 1, -1, -1):
        for tap in tl.static_range(K * K):
            if min(min(tap // K, tap % K), min(K - 1 - tap // K, K - 1 - tap % K)) == ring:
                hi = ho * STRIDE - PAD + (tap // K) * DIL
                wi = wo * STRIDE - PAD + (tap % K) * DIL
                inside = pixel_mask & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
                x_tap = x_rows + hi * sxh + wi * sxw  # [BLOCK_M]
                w_tap = w_ptr + tap * N_W * C_HAT + f * C_HAT  # [BLOCK_N]
                for c0 in range(0, C_HAT, BLOCK_K):
                    row = c0 + k_range  # [BLOCK_K] weight row = channel - j*g
                    row_mask = row < C_HAT
                    a = tl.load(x_tap[:, None] + row[None, :] * sxc,
                                mask=inside[:, None] & row_mask[None, :], other=0.0)  # [BLOCK_M, BLOCK_K]
                    wt = tl.load(w_tap[None, :] + row[:, None],
                                 mask=row_mask[:, None] & q_mask[None, :], other=0.0)  # [BLOCK_K, BLOCK_N]
                    acc = tl.dot(a, wt, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
        _store_secondary(y_rows, syc, bias_ptr, acc, ring, NQ, q, q_mask, mask, HAS_BIAS, ACC_DTYPE)


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
    K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr, WINDOW_ALIGN: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dx[b, c, hi, wi]: rows input pixels, cols input channels, reduce (tap, window j, filter f).

    A tap of ring r was used by secondaries 0..r: one dot per secondary with the same weight tile
    (as many MACs as the forward; the upstream tiles go to the tensor cores as loaded, in their own
    precision, rather than summed and rounded in registers). A chunk holds filters of one window j, so
    its weight tile is w[tap, f, c - j*g] of the tap-major [K*K, n_w, c_hat] weight
    (``launch.tap_major``): contiguous along the channels, the window's edges a per-channel mask.
    WINDOW_ALIGN divides every window start j*g (as in the forward).
    """
    pid_pixels = tl.program_id(0)
    pid_channels = tl.program_id(1)
    c = pid_channels * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    c_mask = c < C
    # Windows [j*g, j*g + c_hat) that meet this channel tile.
    c_first = pid_channels * BLOCK_N
    c_last = tl.minimum(c_first + BLOCK_N, C) - 1
    j_lo = tl.maximum(c_first - C_HAT + G, 0) // G  # ceil((c_first - c_hat + 1) / g), clamped at 0
    j_hi = tl.minimum(c_last // G, N_C - 1)
    f_range = tl.arange(0, BLOCK_K)

    pixel = pid_pixels.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    pixel_mask = pixel < B * H * W
    b = pixel // (H * W)
    in_image = (pixel - b * (H * W)).to(tl.int32)  # offsets inside one image are int32
    hi = in_image // W
    wi = in_image - hi * W
    dy_rows = dy_ptr + b * sdyb  # [BLOCK_M]

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    # Taps are a run-time loop (unrolled, the per-tap row addresses of all k^2 taps stay live and spill).
    for tap in range(0, K * K):
        th = tap // K
        tw = tap - th * K
        ring = tl.minimum(tl.minimum(th, tw), tl.minimum(K - 1 - th, K - 1 - tw))
        ho_strided = hi + PAD - th * DIL
        wo_strided = wi + PAD - tw * DIL
        ho = ho_strided // STRIDE
        wo = wo_strided // STRIDE
        hit = (pixel_mask & (ho_strided >= 0) & (wo_strided >= 0) & (ho_strided % STRIDE == 0)
               & (wo_strided % STRIDE == 0) & (ho < Ho) & (wo < Wo))
        dy_tap = dy_rows + ho * sdyh + wo * sdyw  # [BLOCK_M]
        w_tap = w_ptr + tap * N_W * C_HAT  # the tap's [n_w, c_hat] block
        for j in range(j_lo, j_hi + 1):
            w_row = c - j * G // WINDOW_ALIGN * WINDOW_ALIGN  # [BLOCK_N] weight row in window j
            in_window = c_mask & (w_row >= 0) & (w_row < C_HAT)
            for f0 in range(0, N_W, BLOCK_K):
                f = f0 + f_range  # [BLOCK_K]
                f_mask = f < N_W
                q = j * N_W + f  # [BLOCK_K] columns
                wt = tl.load(w_tap + f[:, None] * C_HAT + w_row[None, :],
                             mask=f_mask[:, None] & in_window[None, :], other=0.0)  # [BLOCK_K, BLOCK_N]
                for s in range(0, ring + 1):  # every secondary that used the tap
                    a = tl.load(dy_tap[:, None] + (s * NQ + q)[None, :] * sdyc,
                                mask=hit[:, None] & f_mask[None, :], other=0.0)  # [BLOCK_M, BLOCK_K]
                    acc = tl.dot(a, wt, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)

    dx_rows = dx_ptr + b * sdxb + hi * sdxh + wi * sdxw  # [BLOCK_M]
    tl.store(dx_rows[:, None] + c[None, :] * sdxc, acc.to(dx_ptr.dtype.element_ty),
             mask=pixel_mask[:, None] & c_mask[None, :])


@triton.jit
def versatile_bwd_weight_kernel(
    x_ptr, dy_ptr, partial_ptr,
    B, C, H, W, Ho, Wo,
    sxb, sxc, sxh, sxw,
    sdyb, sdyc, sdyh, sdyw,
    C_HAT, N_W, NQ, G, N_C, PIXELS_PER_SPLIT, SPLIT_STRIDE,
    K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr, WINDOW_ALIGN: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Partial dw[f, c, tap] over one split of the output pixels: [BLOCK_N filters, BLOCK_C channels] of
    one tap (program axis 1 walks taps x channel chunks). Sums over every channel offset j and every
    secondary that uses the tap. Partials go to row ``split`` of partial [splits, SPLIT_STRIDE] (dw
    flattened, then the bias's partials from ``channel_sum_kernel``); the launcher sums them in a fixed
    order (deterministic)."""
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
    count = tl.minimum(B * Ho * Wo - first, PIXELS_PER_SPLIT).to(tl.int32)  # pixels in this split
    b32, ho, wo = pixel_walk_start(first, B, Ho, Wo, BLOCK_P)  # [BLOCK_P] each, walked without division
    for p0 in range(0, PIXELS_PER_SPLIT, BLOCK_P):
        pixel_mask = p0 + p_range < count
        b = b32.to(tl.int64)
        hi = ho * STRIDE - PAD + th * DIL
        wi = wo * STRIDE - PAD + tw * DIL
        inside = pixel_mask & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
        dy_pixels = dy_ptr + b * sdyb + ho * sdyh + wo * sdyw  # [BLOCK_P]
        x_pixels = x_ptr + b * sxb + hi * sxh + wi * sxw  # [BLOCK_P]
        for j in range(0, N_C):
            x = tl.load(x_pixels[:, None] + (j * G // WINDOW_ALIGN * WINDOW_ALIGN + c)[None, :] * sxc,
                        mask=inside[:, None] & c_mask[None, :], other=0.0)  # [BLOCK_P, BLOCK_C]
            for s in range(0, ring + 1):  # every secondary that used the tap, one dot each
                channel = s * NQ + j * N_W + f  # [BLOCK_N]
                dy = tl.load(dy_pixels[None, :] + channel[:, None] * sdyc,
                             mask=f_mask[:, None] & pixel_mask[None, :], other=0.0)  # [BLOCK_N, BLOCK_P]
                acc = tl.dot(dy, x, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
        b32, ho, wo = pixel_walk_step(b32, ho, wo, Ho, Wo, BLOCK_P)

    out = (partial_ptr + split.to(tl.int64) * SPLIT_STRIDE + f.to(tl.int64)[:, None] * (C_HAT * K * K)
           + c[None, :] * (K * K) + tap)
    tl.store(out, acc, mask=f_mask[:, None] & c_mask[None, :])


@triton.jit
def channel_sum_kernel(
    dy_ptr, partial_ptr,
    B, OUT_CHANNELS, Ho, Wo,
    sdyb, sdyc, sdyh, sdyw,
    PIXELS_PER_SPLIT, SPLIT_STRIDE,
    ACC_DTYPE: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Partial grad bias: partial[split * SPLIT_STRIDE + o] = sum of dy[:, o] over one split of the pixels
    (``partial_ptr`` points at the bias's columns of the weight kernel's partial rows)."""
    pid_channels = tl.program_id(0)
    split = tl.program_id(1)
    o = pid_channels * BLOCK_O + tl.arange(0, BLOCK_O)  # [BLOCK_O]
    o_mask = o < OUT_CHANNELS
    acc = tl.zeros((BLOCK_O,), dtype=ACC_DTYPE)
    p_range = tl.arange(0, BLOCK_P)
    first = split.to(tl.int64) * PIXELS_PER_SPLIT
    count = tl.minimum(B * Ho * Wo - first, PIXELS_PER_SPLIT).to(tl.int32)  # pixels in this split
    b32, ho, wo = pixel_walk_start(first, B, Ho, Wo, BLOCK_P)  # [BLOCK_P] each, walked without division
    for p0 in range(0, PIXELS_PER_SPLIT, BLOCK_P):
        pixel_mask = p0 + p_range < count
        pixel_offsets = b32.to(tl.int64) * sdyb + ho * sdyh + wo * sdyw  # [BLOCK_P]
        dy = tl.load(dy_ptr + o.to(tl.int64)[:, None] * sdyc + pixel_offsets[None, :],
                     mask=o_mask[:, None] & pixel_mask[None, :], other=0.0)  # [BLOCK_O, BLOCK_P]
        acc += tl.sum(dy.to(ACC_DTYPE), axis=1)
        b32, ho, wo = pixel_walk_step(b32, ho, wo, Ho, Wo, BLOCK_P)
    tl.store(partial_ptr + split.to(tl.int64) * SPLIT_STRIDE + o, acc, mask=o_mask)
