"""Triton kernels for ShiftConv2d (SPEC section 3): the shift lives in the 1 x 1 GEMM's addresses.

Channel c is read at ``(h + dh_c, w + dw_c)`` (zero outside the image); ``_channel_shift`` and
``_channel_direction`` compute the shift from the channel index, so no shift table and no shifted
tensor exist. Tensors are
addressed through explicit strides (NCHW and channels_last take the same code); ``w_ptr`` is the
contiguous [N, C] weight. Index arithmetic that can pass 2^31 elements is int64.
"""

import triton
import triton.language as tl

from tritonconv.kernel_helpers import channel_gemm, pixel_advance, pixel_steps, pixel_walk_start, pixel_walk_step


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
def _channel_direction(c, SHIFTED_CHANNELS, SHIFT_GROUP, K: tl.constexpr, GROUPED: tl.constexpr):
    """Direction index (0 ... k^2 - 1, row-major over (dh, dw)) of channels ``c``; the unshifted
    remainder gets the centre direction k^2 // 2, whose shift is (0, 0)."""
    if GROUPED:
        direction = c // SHIFT_GROUP
    else:
        direction = c % (K * K)
    return tl.where(c < SHIFTED_CHANNELS, direction, (K * K) // 2)


@triton.jit
def _uses_direction(g: tl.constexpr, d: tl.constexpr, C: tl.constexpr, R: tl.constexpr, G: tl.constexpr,
                    K: tl.constexpr, GROUPED: tl.constexpr):
    """Whether one of the channels 8g ... 8g + 7 (those below C) has direction d: ``_channel_direction``
    evaluated at compile time, where a tensor's values would not be."""
    uses = False
    for i in tl.static_range(8):
        c = 8 * g + i
        if c < C:
            if c >= R:
                direction = (K * K) // 2
            elif GROUPED:
                direction = c // G
            else:
                direction = c % (K * K)
            if direction == d:
                uses = True
    return uses


@triton.jit
def _shifted_vector(operands, g: tl.constexpr, C: tl.constexpr, R: tl.constexpr, G: tl.constexpr, K: tl.constexpr,
                    DIL: tl.constexpr, GROUPED: tl.constexpr):
    """[BLOCK_M, 8]: channels 8g ... 8g + 7 of the pixels, each read at its own shift (zero outside the
    image and at channels >= C). One 16-byte load per direction the vector's channels use, at that
    direction's offset (ptxas narrows it to the 4 bytes it keeps); the select keeps each channel from
    its own direction's load: its predicate is a compile-time constant per register, so it folds to
    register moves, and an Inf read at a foreign shift stays out."""
    x_pixels, h, w, pixel_mask, H, W, sxc, sxh, sxw = operands
    c = 8 * g + tl.arange(0, 8)  # [8]
    direction = _channel_direction(c, R, G, K, GROUPED)  # [8], constants
    v = tl.zeros((x_pixels.shape[0], 8), dtype=x_pixels.dtype.element_ty)
    for d in tl.static_range(K * K):
        if _uses_direction(g, d, C, R, G, K, GROUPED):
            dh = DIL * (d // K - K // 2)
            dw = DIL * (d % K - K // 2)
            row_inside = pixel_mask & ((h + dh).to(tl.uint32) < H) & ((w + dw).to(tl.uint32) < W)  # [BLOCK_M]
            ptrs = (x_pixels + (dh * sxh + dw * sxw))[:, None] + (c * sxc)[None, :]
            if 8 * g + 8 > C:  # the last, partial vector
                v_d = tl.load(ptrs, mask=row_inside[:, None] & (c < C)[None, :], other=0.0)
            else:  # the row mask alone: uniform along the vector
                v_d = tl.load(ptrs, mask=row_inside[:, None], other=0.0)
            v = tl.where((direction == d)[None, :], v_d, v)
    return v


@triton.jit
def _weight_vector(operands, g: tl.constexpr, C: tl.constexpr, R: tl.constexpr, G: tl.constexpr, K: tl.constexpr,
                   DIL: tl.constexpr, GROUPED: tl.constexpr):
    """[BLOCK_N, 8]: weight columns 8g ... 8g + 7 (zero at channels >= C; the shifts do not apply)."""
    w_cols, n_mask = operands
    c = 8 * g + tl.arange(0, 8)
    if 8 * g >= C:
        return tl.zeros((w_cols.shape[0], 8), dtype=w_cols.dtype.element_ty)
    if 8 * g + 8 > C:  # the last, partial vector
        return tl.load(w_cols[:, None] + c[None, :], mask=n_mask[:, None] & (c < C)[None, :], other=0.0)
    return tl.load(w_cols[:, None] + c[None, :], mask=n_mask[:, None], other=0.0)


@triton.jit
def _vector_tree(vector: tl.constexpr, operands, g: tl.constexpr, VECTORS: tl.constexpr, C: tl.constexpr,
                 R: tl.constexpr, G: tl.constexpr, K: tl.constexpr, DIL: tl.constexpr, GROUPED: tl.constexpr):
    """The vectors ``vector(operands, i, C, R, G, K, DIL, GROUPED)`` ([rows, 8]) for i = g ... g + VECTORS - 1
    (a power of two) joined pairwise into a tree, [rows, 8, 2, ..., 2] (the channel layout's constexprs
    are passed apart: in a tuple they would not stay constant). Flattened to [rows, 8*VECTORS] it keeps
    every element in the register it was loaded to; column j then holds vector g + bitreverse(j mod
    VECTORS)'s element j // VECTORS. The activations and the weight are built by this one tree, so the dot's reduction
    pairs their columns and rows whatever the order (a layout change to the natural order would cost a
    pass through shared memory)."""
    if VECTORS == 1:
        return vector(operands, g, C, R, G, K, DIL, GROUPED)
    else:
        return tl.join(_vector_tree(vector, operands, g, VECTORS // 2, C, R, G, K, DIL, GROUPED),
                       _vector_tree(vector, operands, g + VECTORS // 2, VECTORS // 2, C, R, G, K, DIL, GROUPED))


@triton.jit
def _pixel_coordinates(pid, B, Ho, Wo, BLOCK: tl.constexpr):
    """(pixel mask, image b as int64, row ho, column wo as int32) of one block of output pixels: the
    int64 division happens once per program, offsets inside one image are int32."""
    pixel = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    b = pixel // (Ho * Wo)
    in_image = (pixel - b * (Ho * Wo)).to(tl.int32)
    ho = in_image // Wo
    return pixel < B * Ho * Wo, b, ho, in_image - ho * Wo


@triton.jit
def shift_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr,
    B, C, H, W, N, Ho, Wo,
    sxb, sxc, sxh, sxw,
    syb, syc, syh, syw,
    SHIFTED_CHANNELS, SHIFT_GROUP,
    K: tl.constexpr, DIL: tl.constexpr, STRIDE: tl.constexpr, GROUPED: tl.constexpr,
    GROUP_ALIGN: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y[b, n, ho, wo] = sum_c w[n, c] x[b, c, ho*S + dh_c, wo*S + dw_c]: rows pixels, cols filters,
    with at least one dot's worth of channels per direction (``shift_fwd_unrolled_kernel`` takes fewer).

    The reduction walks the k^2 directions one after another, then the unshifted remainder. A chunk's
    channels share one shift, so the activation tile is one row address per pixel plus a channel run
    (contiguous in the grouped assignment: vector loads in channels_last) and the border is a per-row
    mask. ``w_ptr`` is the weight in that reduction order ([N, C], direction d's channels at columns
    [d*G, (d+1)*G)). GROUP_ALIGN: a power of two dividing G (the launcher's promise; the JIT only hints
    multiples of 16), so that the channel runs of G = 8, 24, 56, ... still load 16 bytes at a time.
    """
    pid_pixels = tl.program_id(0)
    pid_filters = tl.program_id(1)
    n = pid_filters * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    n_mask = n < N
    pixel_mask, b, ho, wo = _pixel_coordinates(pid_pixels, B, Ho, Wo, BLOCK_M)
    h = ho * STRIDE  # stride applies after the shift
    w = wo * STRIDE
    x_rows = x_ptr + b * sxb  # [BLOCK_M]
    w_cols = w_ptr + n * C  # [BLOCK_N]
    k_range = tl.arange(0, BLOCK_K)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    if GROUPED:
        channel_step = 1  # direction d owns channels [d*G, (d+1)*G)
    else:
        channel_step = K * K  # direction d owns channels d, d + k^2, d + 2k^2, ...
    group = SHIFT_GROUP // GROUP_ALIGN * GROUP_ALIGN  # = G, written so the compiler sees its divisor
    for d in range(0, K * K):
        hi = h + DIL * (d // K - K // 2)  # [BLOCK_M]
        wi = w + DIL * (d % K - K // 2)
        row_inside = pixel_mask & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
        if GROUPED:
            first = d * group
        else:
            first = d
        x_seg = x_rows + hi * sxh + wi * sxw + first * sxc  # [BLOCK_M]
        w_seg = w_cols + d * group  # [BLOCK_N]
        for i0 in range(0, group, BLOCK_K):
            i = i0 + k_range  # [BLOCK_K] position in the direction's channels
            i_mask = i < group
            a = tl.load(x_seg[:, None] + (i * channel_step)[None, :] * sxc,
                        mask=row_inside[:, None] & i_mask[None, :], other=0.0)  # [BLOCK_M, BLOCK_K]
            wt = tl.load(w_seg[None, :] + i[:, None], mask=i_mask[:, None] & n_mask[None, :],
                         other=0.0)  # [BLOCK_K, BLOCK_N]
            acc = tl.dot(a, wt, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
    x_centre = x_rows + h * sxh + w * sxw  # [BLOCK_M] the unshifted remainder, from K*K*group == R
    acc = channel_gemm(x_centre, w_cols, pixel_mask, n_mask, sxc, C, K * K * group, acc, DOT_PRECISION, ACC_DTYPE,
                       BLOCK_K)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + n, mask=n_mask, other=0.0).to(ACC_DTYPE)[None, :]
    y_rows = y_ptr + b * syb + ho * syh + wo * syw  # [BLOCK_M]
    tl.store(y_rows[:, None] + n[None, :] * syc, acc.to(y_ptr.dtype.element_ty),
             mask=pixel_mask[:, None] & n_mask[None, :])


@triton.jit
def _weight_chunk(w_cols, n_mask, chunk: tl.constexpr, BLOCK_K: tl.constexpr, C: tl.constexpr, R: tl.constexpr,
                  G: tl.constexpr, K: tl.constexpr, DIL: tl.constexpr, GROUPED: tl.constexpr):
    """[BLOCK_N, BLOCK_K]: the weight's columns of reduction chunk ``chunk``, in the chunk's column order."""
    tree = _vector_tree(_weight_vector, (w_cols, n_mask), chunk * (BLOCK_K // 8), BLOCK_K // 8, C, R, G, K, DIL,
                        GROUPED)
    return tl.reshape(tree, (w_cols.shape[0], BLOCK_K))


@triton.jit
def _pixels_last(tree, VECTORS: tl.constexpr):
    """[8, 2, ..., 2, BLOCK_M]: a ``_vector_tree`` of pixel rows with the pixels moved last (a transpose
    of the joined tree itself: transposing the reshaped [BLOCK_M, BLOCK_K] tile does not compile for
    sm_90, "Illegal shared layout", when it feeds a wgmma)."""
    if VECTORS == 2:
        return tl.permute(tree, (1, 2, 0))
    elif VECTORS == 4:
        return tl.permute(tree, (1, 2, 3, 0))
    elif VECTORS == 8:
        return tl.permute(tree, (1, 2, 3, 4, 0))
    else:
        return tl.permute(tree, (1, 2, 3, 4, 5, 0))


@triton.jit
def shift_fwd_unrolled_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr,
    B, H, W, N, Ho, Wo,
    sxb, sxc, sxh, sxw,
    syb, syc, syh, syw,
    PIXEL_TILES,
    C: tl.constexpr, R: tl.constexpr, G: tl.constexpr,
    K: tl.constexpr, DIL: tl.constexpr, STRIDE: tl.constexpr, GROUPED: tl.constexpr,
    X_ALIGN: tl.constexpr, Y_ALIGN: tl.constexpr,
    HAS_BIAS: tl.constexpr, FILTER_ROWS: tl.constexpr, DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """The forward with fewer than 16 channels per direction (C < 16 k^2 + k^2): C channels, the first R
    shifted, G per direction in the grouped assignment, all constexprs, so each channel's direction is
    known at compile time and the reduction is unrolled. A chunk of BLOCK_K channels is assembled from
    16-byte vectors of 8 channels (``_shifted_vector``), each read only at the shifts its channels have,
    and the weight's chunk in the same column order (``_vector_tree``); ``w_ptr`` is the [N, C] weight.

    The program walks pixel tiles pid, pid + num_programs(0), ... < PIXEL_TILES (int32 coordinates,
    advanced by carries: no division per tile) with its filters' first weight chunk loaded once.
    FILTER_ROWS (BLOCK_N >= 64, a warp group's rows): the product is computed transposed, y^T = w x^T,
    so the assembled activations are the wgmma's shared-memory operand, stored 16 bytes at a time (as
    the first operand they would reach registers through a shared-memory round trip stored 2 bytes at
    a time), and the weight chunk is the register operand, kept across tiles.

    X_ALIGN, Y_ALIGN: powers of two (at most 8) dividing x's and y's pixel strides (the launcher's
    promise): the JIT hints only multiples of 16, so 8-vector loads and stores of C or N = 8, 24, 40,
    ... channels (or 4-vectors of C = 100) would otherwise be split into 2-byte accesses.
    """
    tl.static_assert(BLOCK_K == 16 or BLOCK_K == 32 or BLOCK_K == 64 or BLOCK_K == 128,
                     "BLOCK_K: 16 to 128 channels")
    sxb, sxh, sxw = sxb // X_ALIGN * X_ALIGN, sxh // X_ALIGN * X_ALIGN, sxw // X_ALIGN * X_ALIGN
    syb, syh, syw = syb // Y_ALIGN * Y_ALIGN, syh // Y_ALIGN * Y_ALIGN, syw // Y_ALIGN * Y_ALIGN
    pid_pixels = tl.program_id(0)
    programs = tl.num_programs(0)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    n_mask = n < N
    w_cols = w_ptr + n * C  # [BLOCK_N]
    chunks: tl.constexpr = (C + BLOCK_K - 1) // BLOCK_K
    w_first = _weight_chunk(w_cols, n_mask, 0, BLOCK_K, C, R, G, K, DIL, GROUPED)  # [BLOCK_N, BLOCK_K], once
    if HAS_BIAS:
        bias = tl.load(bias_ptr + n, mask=n_mask, other=0.0).to(ACC_DTYPE)  # [BLOCK_N]
    b, ho, wo = pixel_walk_start(pid_pixels.to(tl.int64) * BLOCK_M, B, Ho, Wo, BLOCK_M)  # [BLOCK_M] int32
    step_b, step_h, step_w = pixel_steps(programs * BLOCK_M, Ho, Wo)
    for _ in range(pid_pixels, PIXEL_TILES, programs):
        pixel_mask = b < B
        h = ho * STRIDE  # stride applies after the shift
        w = wo * STRIDE
        x_pixels = x_ptr + b.to(tl.int64) * sxb + (h * sxh + w * sxw)  # [BLOCK_M]
        pixels = (x_pixels, h, w, pixel_mask, H, W, sxc, sxh, sxw)
        if FILTER_ROWS:
            acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=ACC_DTYPE)
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
        for chunk in tl.static_range(chunks):
            tree = _vector_tree(_shifted_vector, pixels, chunk * (BLOCK_K // 8), BLOCK_K // 8, C, R, G, K, DIL,
                                GROUPED)  # [BLOCK_M, 8, 2, ..., 2]
            if chunk == 0:
                wt = w_first
            else:
                wt = _weight_chunk(w_cols, n_mask, chunk, BLOCK_K, C, R, G, K, DIL, GROUPED)
            if FILTER_ROWS:  # [BLOCK_K, BLOCK_M], rows in the weight chunk's column order
                at = tl.reshape(_pixels_last(tree, BLOCK_K // 8), (BLOCK_K, BLOCK_M))
                acc = tl.dot(wt, at, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
            else:  # [BLOCK_M, BLOCK_K], columns in the weight chunk's order
                a = tl.reshape(tree, (BLOCK_M, BLOCK_K))
                acc = tl.dot(a, tl.trans(wt), acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
        y_pixels = y_ptr + b.to(tl.int64) * syb + (ho * syh + wo * syw)  # [BLOCK_M]
        if FILTER_ROWS:
            if HAS_BIAS:
                acc += bias[:, None]
            tl.store(y_pixels[None, :] + (n * syc)[:, None], acc.to(y_ptr.dtype.element_ty),
                     mask=n_mask[:, None] & pixel_mask[None, :])
        else:
            if HAS_BIAS:
                acc += bias[None, :]
            tl.store(y_pixels[:, None] + (n * syc)[None, :], acc.to(y_ptr.dtype.element_ty),
                     mask=pixel_mask[:, None] & n_mask[None, :])
        b, ho, wo = pixel_advance(b, ho, wo, step_b, step_h, step_w, Ho, Wo)


@triton.jit
def shift_bwd_input_kernel(
    dy_ptr, w_ptr, dx_ptr,
    B, C, H, W, N, Ho, Wo,
    sdyb, sdyc, sdyh, sdyw,
    sdxb, sdxc, sdxh, sdxw,
    SHIFTED_CHANNELS, SHIFT_GROUP,
    K: tl.constexpr, DIL: tl.constexpr, STRIDE: tl.constexpr, GROUPED: tl.constexpr, EVEN_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dx = opposite shift of ds, ds[b, c, q] = sum_n w[n, c] dy[b, n, q / S] (q on the stride grid).

    Rows are positions q of the shifted tensor, cols channels, reduce filters: a plain transposed 1 x 1
    GEMM. The opposite shift is in the store: ds[c, q] goes to dx[c, q + d_c]. Element (q, c) whose
    target falls outside the image is stored as 0 at the wrapped position (q + d_c) mod (H, W), which
    is exactly a dx position whose source lies outside the image: every dx element is written once.
    The wrap is a conditional add (``_wrapped``), int32 within the image: no division in the epilogue.
    EVEN_K: BLOCK_K divides the filters, so the reduction needs no filter mask.
    """
    pid_pixels = tl.program_id(0)
    pid_channels = tl.program_id(1)
    c = pid_channels * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    c_mask = c < C
    pixel_mask, b, hq, wq = _pixel_coordinates(pid_pixels, B, H, W, BLOCK_M)
    on_grid = pixel_mask & (hq % STRIDE == 0) & (wq % STRIDE == 0)
    dy_rows = dy_ptr + b * sdyb + (hq // STRIDE) * sdyh + (wq // STRIDE) * sdyw  # [BLOCK_M]
    w_cols = w_ptr + c  # [BLOCK_N]

    k_range = tl.arange(0, BLOCK_K)
    # loop-invariant pointer tiles plus one scalar offset per step: fewer instructions than bumping the
    # 64-bit pointer tiles (those are carried through the software pipeline as register copies)
    dy_tile = dy_rows[:, None] + (k_range * sdyc)[None, :]  # [BLOCK_M, BLOCK_K]
    w_tile = w_cols[None, :] + (k_range * C)[:, None]  # [BLOCK_K, BLOCK_N]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for n0 in range(0, N, BLOCK_K):
        if EVEN_K:  # no filter mask: only the row mask, uniform along each 16-byte vector
            a = tl.load(dy_tile + n0 * sdyc, mask=on_grid[:, None], other=0.0)  # [BLOCK_M, BLOCK_K]
            wt = tl.load(w_tile + n0 * C, mask=c_mask[None, :], other=0.0)  # [BLOCK_K, BLOCK_N]
        else:
            n_mask = n0 + k_range < N  # [BLOCK_K]
            a = tl.load(dy_tile + n0 * sdyc, mask=on_grid[:, None] & n_mask[None, :], other=0.0)
            wt = tl.load(w_tile + n0 * C, mask=n_mask[:, None] & c_mask[None, :], other=0.0)
        acc = tl.dot(a, wt, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)

    dh, dw = _channel_shift(c, SHIFTED_CHANNELS, SHIFT_GROUP, K, DIL, GROUPED)  # [BLOCK_N]
    th = _wrapped(hq, dh, H)  # [BLOCK_M, BLOCK_N]
    tw = _wrapped(wq, dw, W)
    lands_inside = ((hq[:, None] + dh[None, :] == th) & (wq[:, None] + dw[None, :] == tw))
    value = tl.where(lands_inside, acc, 0.0)
    dx_rows = dx_ptr + b * sdxb  # [BLOCK_M]
    tl.store(dx_rows[:, None] + c[None, :] * sdxc + th * sdxh + tw * sdxw, value.to(dx_ptr.dtype.element_ty),
             mask=pixel_mask[:, None] & c_mask[None, :])


@triton.jit
def _wrapped(q, d, size):
    """``(q + d) mod size`` for q in [0, size) without a division: one conditional wrap when |d| < size;
    a shift of the whole image or more moves nothing inside, and the identity is a bijection too.
    Equal to q + d exactly where that lands inside. [len(q), len(d)]."""
    t = q[:, None] + d[None, :]
    t = tl.where(t < 0, t + size, t)
    t = tl.where(t >= size, t - size, t)
    whole = (d >= size) | (d <= -size)
    return tl.where(whole[None, :], q[:, None], t)


BIAS_COLUMNS = tl.constexpr(16)  # the unit-column operand of the bias dot: the narrowest tl.dot


@triton.jit
def _shifted_pixel_pass(acc, bias_acc, ones, x_ptr, dy_ptr, first, count, step_b, step_h, step_w, n, n_mask, c,
                        c_mask, dh, dw, B, H, W, Ho, Wo, sxb, sxc, sxh, sxw, sdyb, sdyc, sdyh, sdyw, PIXELS_PER_SPLIT,
                        STRIDE: tl.constexpr, WITH_BIAS: tl.constexpr, BIAS_BY_DOT: tl.constexpr,
                        X_FLAT: tl.constexpr, DY_FLAT: tl.constexpr, STEP_IN_LOOP: tl.constexpr,
                        DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr, BLOCK_P: tl.constexpr):
    """One pass of the weight gradient over a split's pixels with x read at the shift (dh, dw):
    (acc + dy @ x, bias_acc plus dy's sums where WITH_BIAS). The pixels are walked as (b, ho, wo) in
    int32 with carries, no division per pixel; they give the border masks. The step (step_b, step_h,
    step_w) comes divided out by the caller, or STEP_IN_LOOP: ``pixel_walk_step`` divides it in the loop
    (the compiler hoists it; in the per-direction passes this form keeps ptxas from waiting on every
    wgmma: 8 warpgroup waits per step otherwise, 18.5 instead of 16.9 instructions per HGMMA).
    A flat tensor (X_FLAT, DY_FLAT) is addressed by a scalar base pointer bumped per step plus an int32
    offset tile built once. Otherwise (the stride, or NCHW with batch > 1) each pixel's address is its
    image base in int64 (the only 64-bit multiply, one per pixel) plus its int32 offset inside the image,
    from the walked (b, ho, wo); the program's shift sits in the base pointer."""
    p_range = tl.arange(0, BLOCK_P)
    b32, ho, wo = pixel_walk_start(first, B, Ho, Wo, BLOCK_P)  # [BLOCK_P] each
    dy_base = dy_ptr + first * sdyw  # DY_FLAT: pixel p at p * sdyw
    x_base = x_ptr + first * sxw  # X_FLAT: stride 1, so input pixel = output pixel
    x_shifted = x_ptr + dh * sxh + dw * sxw  # not X_FLAT: the shift in the base pointer
    dy_channels = (n * sdyc)[:, None]  # [BLOCK_N, 1] int32
    x_channels = (c * sxc)[None, :]  # [1, BLOCK_C] int32
    dy_offsets = (p_range * sdyw)[None, :] + dy_channels  # [BLOCK_N, BLOCK_P] (DY_FLAT)
    x_offsets = ((p_range + dh * W + dw) * sxw)[:, None] + x_channels  # [BLOCK_P, BLOCK_C] (X_FLAT)
    for p0 in range(0, PIXELS_PER_SPLIT, BLOCK_P):
        pixel_mask = p0 + p_range < count
        hi = ho * STRIDE + dh  # [BLOCK_P]
        wi = wo * STRIDE + dw
        row_inside = pixel_mask & (hi.to(tl.uint32) < H) & (wi.to(tl.uint32) < W)
        if DY_FLAT:
            dy_ptrs = dy_base + dy_offsets
        else:
            dy_pixels = dy_ptr + b32.to(tl.int64) * sdyb + (ho * sdyh + wo * sdyw)  # [BLOCK_P]
            dy_ptrs = dy_pixels[None, :] + dy_channels  # [BLOCK_N, BLOCK_P]
        if X_FLAT:
            x_ptrs = x_base + x_offsets
        else:
            x_pixels = x_shifted + b32.to(tl.int64) * sxb + (ho * (STRIDE * sxh) + wo * (STRIDE * sxw))
            x_ptrs = x_pixels[:, None] + x_channels  # [BLOCK_P, BLOCK_C]
        dy = tl.load(dy_ptrs, mask=n_mask[:, None] & pixel_mask[None, :], other=0.0)  # [BLOCK_N, BLOCK_P]
        x = tl.load(x_ptrs, mask=row_inside[:, None] & c_mask[None, :], other=0.0)  # [BLOCK_P, BLOCK_C]
        acc = tl.dot(dy, x, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
        if WITH_BIAS:
            if BIAS_BY_DOT:
                bias_acc = tl.dot(dy, ones, bias_acc, out_dtype=ACC_DTYPE)
            else:
                bias_acc += dy.to(ACC_DTYPE)
        if STEP_IN_LOOP:
            b32, ho, wo = pixel_walk_step(b32, ho, wo, Ho, Wo, BLOCK_P)
        else:
            b32, ho, wo = pixel_advance(b32, ho, wo, step_b, step_h, step_w, Ho, Wo)
        dy_base += BLOCK_P * sdyw
        x_base += BLOCK_P * sxw
    return acc, bias_acc


@triton.jit
def shift_bwd_weight_kernel(
    x_ptr, dy_ptr, partial_ptr,
    B, C, H, W, N, Ho, Wo,
    sxb, sxc, sxh, sxw,
    sdyb, sdyc, sdyh, sdyw,
    SHIFTED_CHANNELS, SHIFT_GROUP, PIXELS_PER_SPLIT, SPLIT_STRIDE,
    K: tl.constexpr, DIL: tl.constexpr, STRIDE: tl.constexpr, GROUPED: tl.constexpr, SEGMENTED: tl.constexpr,
    GROUP_ALIGN: tl.constexpr, HAS_BIAS: tl.constexpr, BIAS_BY_DOT: tl.constexpr, X_FLAT: tl.constexpr,
    DY_FLAT: tl.constexpr, DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Partial dw[n, c] = sum_pixels dy[b, n, ho, wo] x[b, c, ho*S + dh_c, wo*S + dw_c] over one split of
    the output pixels, [BLOCK_N, BLOCK_C] per program; the first column tile also sums dy for the bias.
    Partials go to row ``split`` of partial [splits, SPLIT_STRIDE] (dw flattened, then the bias) and the
    launcher sums them in a fixed order (deterministic).

    SEGMENTED: column tile t < k^2 * cdiv(G, BLOCK_C) holds channels of one direction (as the forward's
    reduction chunks), the tiles after it the unshifted remainder: one shift per program, so the x tile
    is a row address per pixel plus a channel run, its border a row mask. Otherwise the tile's channels
    are contiguous and the pixels are reduced once per direction (see below). Pixels: the split's first
    pixel is divided once in int64; the loop walks (b, ho, wo) in int32 with carries
    (``pixel_advance``), no division per pixel: they give the border masks and, where a tensor is not
    flat, its addresses (an int64 image base per pixel plus int32 offsets inside the image). X_FLAT,
    DY_FLAT (the launcher's check: pixel p at p times the w stride; for x only at stride 1): that
    tensor's addresses are a scalar base pointer bumped per step plus an int32 offset tile built once,
    no 64-bit arithmetic per pixel.
    BIAS_BY_DOT (16-bit inputs, where the tensor core's products are exact): the bias sums are one more
    small dot of dy with a unit column, so dy never leaves shared memory for them.
    """
    pid_filters = tl.program_id(0)
    pid_columns = tl.program_id(1)
    split = tl.program_id(2)
    n = pid_filters * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    n_mask = n < N
    c_range = tl.arange(0, BLOCK_C)
    if SEGMENTED:
        group = SHIFT_GROUP // GROUP_ALIGN * GROUP_ALIGN  # = G, written so the compiler sees its divisor
        chunks = tl.cdiv(group, BLOCK_C)
        d = tl.minimum(pid_columns // chunks, K * K)  # k^2: the remainder
        i = (pid_columns - d * chunks) * BLOCK_C + c_range  # [BLOCK_C] position in the direction's channels
        if GROUPED:
            c = d * group + i  # the remainder starts at k^2 * G as well
        else:
            c = tl.where(d < K * K, i * (K * K) + d, K * K * group + i)
        c_mask = tl.where(d < K * K, i < group, c < C)
        dh = tl.where(d < K * K, DIL * (d // K - K // 2), 0)  # scalars: one shift for the program
        dw = tl.where(d < K * K, DIL * (d % K - K // 2), 0)
    else:
        c = pid_columns * BLOCK_C + c_range  # [BLOCK_C]
        c_mask = c < C
        direction = _channel_direction(c, SHIFTED_CHANNELS, SHIFT_GROUP, K, GROUPED)  # [BLOCK_C]

    acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=ACC_DTYPE)
    if BIAS_BY_DOT:
        unit_column = tl.arange(0, BIAS_COLUMNS)[None, :] == 0  # [1, BIAS_COLUMNS]
        ones = tl.where(unit_column & (tl.arange(0, BLOCK_P) >= 0)[:, None], 1.0, 0.0).to(
            dy_ptr.dtype.element_ty)  # [BLOCK_P, BIAS_COLUMNS]: dy @ ones = the row sums in column 0
        bias_acc = tl.zeros((BLOCK_N, BIAS_COLUMNS), dtype=ACC_DTYPE)
    else:
        ones = 0.0  # unused
        bias_acc = tl.zeros((BLOCK_N, BLOCK_P), dtype=ACC_DTYPE)  # summed across pixels once, after the loop
    first = split.to(tl.int64) * PIXELS_PER_SPLIT
    count = tl.minimum(B * Ho * Wo - first, PIXELS_PER_SPLIT).to(tl.int32)  # pixels in this split
    if SEGMENTED:
        step_b, step_h, step_w = pixel_steps(BLOCK_P, Ho, Wo)  # the walk's step, divided out once
        acc, bias_acc = _shifted_pixel_pass(
            acc, bias_acc, ones, x_ptr, dy_ptr, first, count, step_b, step_h, step_w, n, n_mask, c, c_mask, dh, dw,
            B, H, W, Ho, Wo, sxb, sxc, sxh, sxw, sdyb, sdyc, sdyh, sdyw, PIXELS_PER_SPLIT, STRIDE, HAS_BIAS,
            BIAS_BY_DOT, X_FLAT, DY_FLAT, False, DOT_PRECISION, ACC_DTYPE, BLOCK_P)
    else:
        # One pass over the split's pixels per direction, each a plain GEMM of dy with x at that
        # direction's offset over the whole (contiguous) channel tile; the columns of the direction are
        # kept from its pass (a select of results: values read at a foreign shift never mix in). k^2
        # passes: these layers have fewer than 16 channels per direction and are memory-bound by far.
        step_b, step_h, step_w = 0, 0, 0  # unused: each pass divides its step in its loop (STEP_IN_LOOP)
        for d in tl.static_range(K * K):
            acc_d, bias_acc = _shifted_pixel_pass(
                tl.zeros((BLOCK_N, BLOCK_C), dtype=ACC_DTYPE), bias_acc, ones, x_ptr, dy_ptr, first, count, step_b,
                step_h, step_w, n, n_mask, c, c_mask, DIL * (d // K - K // 2), DIL * (d % K - K // 2), B, H, W, Ho, Wo,
                sxb, sxc, sxh, sxw, sdyb, sdyc, sdyh, sdyw, PIXELS_PER_SPLIT, STRIDE, HAS_BIAS and d == 0,
                BIAS_BY_DOT, X_FLAT, DY_FLAT, True, DOT_PRECISION, ACC_DTYPE, BLOCK_P)
            acc = tl.where((direction == d)[None, :], acc_d, acc)

    row = partial_ptr + split.to(tl.int64) * SPLIT_STRIDE
    tl.store(row + n[:, None] * C + c[None, :], acc, mask=n_mask[:, None] & c_mask[None, :])
    if HAS_BIAS:
        if pid_columns == 0:
            if BIAS_BY_DOT:
                bias_acc = tl.where(unit_column, bias_acc, 0.0)  # the other columns hold 0 * dy (NaN at Inf)
            tl.store(row + N * C + n, tl.sum(bias_acc, axis=1), mask=n_mask)
