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
    WINDOW_ALIGN: tl.constexpr, EVEN_K: tl.constexpr, HAS_BIAS: tl.constexpr, FLAT_Y: tl.constexpr,
    ALIGNED_Y: tl.constexpr, BIAS_ROWS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y[b, s*NQ + q, ho, wo] for a [BLOCK_M pixels, BLOCK_N columns] tile and every secondary s.

    The columns of one program share one channel offset j (q = j*n_w + f, f in a block of n_w), so
    the program reads exactly that window's channels [j*g, j*g + c_hat): an input channel outside
    a filter's window is never multiplied, not even by zero (a NaN there must not reach the output).

    Secondary s is the sum of the rings >= s, so the rings run innermost first into one running
    accumulator, and secondary s is stored as soon as ring s is added. Each ring is one loop over its
    (tap, channel chunk) steps, so the software pipeline spans the ring's taps rather than one tap's few
    chunks; per step only scalars change (the tap's offset, the chunk) and each pixel row's bounds check.
    ``w_ptr`` is the weight taps-major, [K*K, n_w, c_hat] (``_weights.is_taps_major``): a tap's
    [channels, filters] tile is contiguous along the channels (c_hat is the dimension that is a multiple
    of 16 in real networks, n_w often is not). WINDOW_ALIGN divides every window start j*g (j = 0 only,
    when there is one window); EVEN_K: BLOCK_K divides c_hat (no chunk mask); BIAS_ROWS: see
    ``_store_secondary``, as FLAT_Y and ALIGNED_Y (8 | n_w: every secondary's columns start 16-byte
    aligned).
    """
    pid_pixels = tl.program_id(0)
    pid_cols = tl.program_id(1)
    filter_tiles = tl.cdiv(N_W, BLOCK_N)
    j = pid_cols // filter_tiles
    f = (pid_cols % filter_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N] primary filters
    q0 = j * N_W + (pid_cols % filter_tiles) * BLOCK_N  # the tile's first column q = j*n_w + f
    q_mask = f < N_W
    c_lo = j * G // WINDOW_ALIGN * WINDOW_ALIGN  # = j*g, written so the compiler sees its divisor
    k_range = tl.arange(0, BLOCK_K)

    first = pid_pixels.to(tl.int64) * BLOCK_M
    pixel_mask = tl.arange(0, BLOCK_M) < B * Ho * Wo - first  # [BLOCK_M]
    b, ho, wo = pixel_walk_start(first, B, Ho, Wo, BLOCK_M)  # [BLOCK_M] int32 each, one int64 division
    b = b.to(tl.int64)
    # The window's top-left input row and column; a pixel past the end gets a row above the image, which
    # every tap's bounds check refuses (so the checks need no pixel mask).
    h0 = tl.where(pixel_mask, ho * STRIDE - PAD, -K * DIL)  # [BLOCK_M]
    w0 = wo * STRIDE - PAD  # [BLOCK_M]
    x_rows = x_ptr + b * sxb + c_lo * sxc + (h0 * sxh + w0 * sxw)  # [BLOCK_M] the window's corner, channel j*g
    w_cols = w_ptr + f * C_HAT  # [BLOCK_N] filter f's row of tap 0
    H_U = H.to(tl.uint32)
    W_U = W.to(tl.uint32)
    chunks = tl.cdiv(C_HAT, BLOCK_K)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)  # [BLOCK_M, BLOCK_N] the rings >= ring so far
    for ring in tl.static_range(S_NUM - 1, -1, -1):  # innermost ring first
        SIDE = K - 1 - 2 * ring  # (a constexpr) ring `ring` is the border of a (SIDE+1)^2 square of taps
        index = 0  # the tap's place on the ring, clockwise from its top-left corner
        c0 = 0
        for _ in range(0, max(4 * SIDE, 1) * chunks):
            if SIDE == 0:
                th = ring
                tw = ring
            else:
                side = index // SIDE
                t = index - side * SIDE
                th = ring + tl.where(side == 0, 0, tl.where(side == 1, t, tl.where(side == 2, SIDE, SIDE - t)))
                tw = ring + tl.where(side == 0, t, tl.where(side == 1, SIDE, tl.where(side == 2, SIDE - t, 0)))
            inside = (((h0 + th * DIL).to(tl.uint32, bitcast=True) < H_U)
                      & ((w0 + tw * DIL).to(tl.uint32, bitcast=True) < W_U))  # [BLOCK_M]
            row = c0 + k_range  # [BLOCK_K] weight row = channel - j*g
            x_step = (th * DIL) * sxh + (tw * DIL) * sxw + c0 * sxc  # scalar, int32 inside one image
            w_step = (th * K + tw) * (N_W * C_HAT) + c0
            if EVEN_K:
                a = tl.load(x_rows[:, None] + (x_step + k_range * sxc)[None, :], mask=inside[:, None],
                            other=0.0)  # [BLOCK_M, BLOCK_K]
                wt = tl.load(w_cols[None, :] + (w_step + k_range)[:, None], mask=q_mask[None, :],
                             other=0.0)  # [BLOCK_K, BLOCK_N]
            else:
                row_mask = row < C_HAT
                a = tl.load(x_rows[:, None] + (x_step + k_range * sxc)[None, :],
                            mask=inside[:, None] & row_mask[None, :], other=0.0)
                wt = tl.load(w_cols[None, :] + (w_step + k_range)[:, None],
                             mask=row_mask[:, None] & q_mask[None, :], other=0.0)
            acc = tl.dot(a, wt, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
            c0 += BLOCK_K
            next_tap = c0 >= C_HAT
            c0 = tl.where(next_tap, 0, c0)
            index += next_tap.to(tl.int32)
        _store_secondary(y_ptr, first, B, Ho, Wo, syb, syc, syh, syw, bias_ptr, acc, ring * NQ + q0, q_mask,
                         HAS_BIAS, FLAT_Y, ALIGNED_Y, BIAS_ROWS, ACC_DTYPE, BLOCK_M, BLOCK_N)


@triton.jit
def _store_secondary(y_ptr, first, B, Ho, Wo, syb, syc, syh, syw, bias_ptr, out, column0, q_mask,
                     HAS_BIAS: tl.constexpr, FLAT_Y: tl.constexpr, ALIGNED_Y: tl.constexpr, BIAS_ROWS: tl.constexpr,
                     ACC_DTYPE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Store one secondary of the column tile: output channels column0 + arange(BLOCK_N) of the pixels
    first + arange(BLOCK_M), bias added.

    Everything is computed here, in the store's layout, rather than carried from the top of the kernel:
    where column0 = s*NQ + q0 is not 16-byte aligned the stores are 2-byte ones and the store's layout
    gives each thread many rows, whose offsets would stay live through the rings. FLAT_Y (y dense with
    the pixels outermost, channels_last) makes a pixel's offset p*syw, without a division. Addresses
    are a row pointer plus the constant arange, so a thread's stores share one register pair. The bias
    is read as a [BIAS_ROWS, BLOCK_N] tile of which only row 0 is real, one element per thread: a tile
    smaller than the program's threads would be reloaded in the accumulator's layout, each thread
    reading its 16 columns one 2-byte load at a time."""
    columns = tl.arange(0, BLOCK_N)  # [BLOCK_N]
    if HAS_BIAS:
        first_row = tl.arange(0, BIAS_ROWS)[:, None] == 0  # [BIAS_ROWS, 1]
        bias = tl.load(bias_ptr + column0 + columns[None, :], mask=first_row & q_mask[None, :], other=0.0)
        out = out + tl.sum(bias.to(ACC_DTYPE), axis=0)[None, :]
    pixel_mask = tl.arange(0, BLOCK_M) < B * Ho * Wo - first  # [BLOCK_M]
    if FLAT_Y:
        rows = y_ptr + (first * syw + column0 * syc) + tl.arange(0, BLOCK_M) * syw  # [BLOCK_M]
    else:
        b, ho, wo = pixel_walk_start(first, B, Ho, Wo, BLOCK_M)
        rows = y_ptr + (b.to(tl.int64) * syb + ho * syh + wo * syw + column0 * syc)  # [BLOCK_M]
    pointers = rows[:, None] + columns[None, :] * syc  # [BLOCK_M, BLOCK_N]
    if not ALIGNED_Y:  # 2-byte stores: a thread per row (one row pointer each), not 32 rows per thread
        pointers = tl.max_contiguous(pointers, [1, 1])
    tl.store(pointers, out.to(y_ptr.dtype.element_ty), mask=pixel_mask[:, None] & q_mask[None, :])


@triton.jit
def versatile_bwd_input_kernel(
    dy_ptr, w_ptr, dx_ptr,
    B, C, H, W, Ho, Wo,
    sdyb, sdyc, sdyh, sdyw,
    sdxb, sdxc, sdxh, sdxw,
    C_HAT, N_W, NQ, G, N_C,
    K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr, WINDOW_ALIGN: tl.constexpr,
    TAP_USES: tl.constexpr, EVEN_F: tl.constexpr, ALIGNED_DY: tl.constexpr, WINDOW_SELECT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dx[b, c, hi, wi]: rows input pixels, cols input channels, reduce (tap, window j, filter f).

    A tap of ring r was used by secondaries 0..r: one dot per secondary with the same weight tile
    (as many MACs as the forward; the upstream tiles go to the tensor cores as loaded, in their own
    precision, rather than summed and rounded in registers). A chunk holds filters of one window j, so
    its weight tile is w[tap, f, c - j*g] of the taps-major [K*K, n_w, c_hat] weight: contiguous along
    the channels, the window's edges a per-channel mask. Per window, the (tap, secondary, filter chunk)
    steps are one pipelined loop (TAP_USES = sum over taps of ring + 1) walked with scalar counters.
    WINDOW_ALIGN divides every window start j*g (as in the forward); EVEN_F: BLOCK_K divides n_w;
    ALIGNED_DY: 8 | n_w, so every dy chunk starts 16-byte aligned (else it is read 2 bytes at a time,
    one thread per pixel row). WINDOW_SELECT (the launcher's ``window_select``: a channel tile can
    straddle a window's edge): each window's sum is kept apart and added to the tile's columns inside
    that window only, so a non-finite gradient never reaches channels outside its window (the zeros of
    the masked weight rows would give 0 * NaN = NaN there).
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
    k_range = tl.arange(0, BLOCK_K)

    first = pid_pixels.to(tl.int64) * BLOCK_M
    pixel_mask = tl.arange(0, BLOCK_M) < B * H * W - first  # [BLOCK_M]
    b, hi, wi = pixel_walk_start(first, B, H, W, BLOCK_M)  # [BLOCK_M] int32 each, one int64 division
    # Tap (th, tw) reads dy at ((hi + PAD - th*DIL) / STRIDE, ...). Which taps hit a dy pixel, per input
    # pixel: bit th of ``hits`` for the row, bit 16 + tw for the column (a pixel past the end: none), so
    # a step's bounds check is one AND and one compare per pixel.
    tl.static_assert(K <= 16)
    hp = hi + PAD  # [BLOCK_M]
    wp = wi + PAD
    hits = tl.zeros((BLOCK_M,), dtype=tl.int32)
    for t in tl.static_range(K):
        h_s = hp - t * DIL
        w_s = wp - t * DIL
        h_ok = (h_s >= 0) & (h_s % STRIDE == 0) & (h_s // STRIDE < Ho)
        w_ok = (w_s >= 0) & (w_s % STRIDE == 0) & (w_s // STRIDE < Wo)
        hits = hits | (h_ok.to(tl.int32) << t) | (w_ok.to(tl.int32) << (16 + t))
    hits = tl.where(pixel_mask, hits, 0)
    if STRIDE == 1:
        dy_rows = dy_ptr + b.to(tl.int64) * sdyb + (hp * sdyh + wp * sdyw)  # [BLOCK_M] tap (0, 0)'s pixel
    else:
        dy_rows = dy_ptr + b.to(tl.int64) * sdyb  # [BLOCK_M]
    f_chunks = tl.cdiv(N_W, BLOCK_K)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for j in range(j_lo, j_hi + 1):
        w_row = c - j * G // WINDOW_ALIGN * WINDOW_ALIGN  # [BLOCK_N] weight row in window j
        in_window = c_mask & (w_row >= 0) & (w_row < C_HAT)
        w_cols = w_ptr + w_row  # [BLOCK_N]
        if WINDOW_SELECT:
            window_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
        tap = 0
        s = 0
        f0 = 0
        for _ in range(0, TAP_USES * f_chunks):
            th = tap // K
            tw = tap - th * K
            ring = tl.minimum(tl.minimum(th, tw), tl.minimum(K - 1 - th, K - 1 - tw))
            needed = (1 << th) | (1 << (16 + tw))
            hit = (hits & needed) == needed  # [BLOCK_M]
            channel0 = s * NQ + j * N_W + f0  # the chunk's first dy channel
            if STRIDE == 1:
                dy_chunk = dy_rows + (channel0 * sdyc - (th * DIL) * sdyh - (tw * DIL) * sdyw)  # [BLOCK_M]
            else:  # (exact where the tap hits; elsewhere masked)
                ho = (hp - th * DIL) // STRIDE
                wo = (wp - tw * DIL) // STRIDE
                dy_chunk = dy_rows + (ho * sdyh + wo * sdyw + channel0 * sdyc)
            dy_pointers = dy_chunk[:, None] + k_range[None, :] * sdyc  # [BLOCK_M, BLOCK_K]
            if not ALIGNED_DY:  # 2-byte loads: a thread per row (one row pointer each), not many rows each
                dy_pointers = tl.max_contiguous(dy_pointers, [1, 1])
            w_pointers = w_cols[None, :] + ((th * K + tw) * N_W + f0) * C_HAT + k_range[:, None] * C_HAT
            if EVEN_F:
                a = tl.load(dy_pointers, mask=hit[:, None], other=0.0)  # [BLOCK_M, BLOCK_K]
                wt = tl.load(w_pointers, mask=in_window[None, :], other=0.0)  # [BLOCK_K, BLOCK_N]
            else:
                f_mask = f0 + k_range < N_W  # [BLOCK_K]
                a = tl.load(dy_pointers, mask=hit[:, None] & f_mask[None, :], other=0.0)
                wt = tl.load(w_pointers, mask=f_mask[:, None] & in_window[None, :], other=0.0)
            if WINDOW_SELECT:
                window_acc = tl.dot(a, wt, window_acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
            else:
                acc = tl.dot(a, wt, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
            f0 += BLOCK_K
            next_secondary = f0 >= N_W
            f0 = tl.where(next_secondary, 0, f0)
            s += next_secondary.to(tl.int32)
            next_tap = s > ring
            s = tl.where(next_tap, 0, s)
            tap += next_tap.to(tl.int32)
        if WINDOW_SELECT:
            acc = tl.where(in_window[None, :], acc + window_acc, acc)

    dx_rows = dx_ptr + b.to(tl.int64) * sdxb + hi * sdxh + wi * sdxw  # [BLOCK_M]
    tl.store(dx_rows[:, None] + c[None, :] * sdxc, acc.to(dx_ptr.dtype.element_ty),
             mask=pixel_mask[:, None] & c_mask[None, :])


@triton.jit
def versatile_bwd_weight_kernel(
    x_ptr, dy_ptr, partial_ptr,
    B, C, H, W, Ho, Wo,
    sxb, sxc, sxh, sxw,
    sdyb, sdyc, sdyh, sdyw,
    C_HAT, N_W, NQ, G, N_C, PIXELS_PER_SPLIT, SPLIT_STRIDE,
    spf, spc, spt, OUT_CHANNELS, BIAS_CHANNELS_PER_PROGRAM,
    K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr, WINDOW_ALIGN: tl.constexpr,
    HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Partial dw[f, c, tap] (and db) over one split of the output pixels, into row ``split`` of partial
    [splits, SPLIT_STRIDE]: dw at ``f*spf + c*spc + tap*spt`` (the gradient's own memory order, taps-major
    or contiguous), then the bias's O columns. The launcher sums the rows in a fixed order (deterministic).

    Program axis 1 walks taps x channel chunks (``_weight_partial``); with a bias, its column 0 instead
    sums dy over the split's pixels for BIAS_CHANNELS_PER_PROGRAM output channels per filter tile
    (``_bias_partial``): the bias costs no launch of its own."""
    pid_filters = tl.program_id(0)
    pid_columns = tl.program_id(1)
    split = tl.program_id(2)
    first = split.to(tl.int64) * PIXELS_PER_SPLIT
    count = tl.minimum(B * Ho * Wo - first, PIXELS_PER_SPLIT).to(tl.int32)  # pixels in this split
    row = partial_ptr + split.to(tl.int64) * SPLIT_STRIDE
    if HAS_BIAS:
        if pid_columns == 0:
            o_lo = pid_filters * BIAS_CHANNELS_PER_PROGRAM
            _bias_partial(dy_ptr, row + N_W * C_HAT * K * K, first, count, B, Ho, Wo, sdyb, sdyc, sdyh, sdyw,
                          o_lo, tl.minimum(o_lo + BIAS_CHANNELS_PER_PROGRAM, OUT_CHANNELS), PIXELS_PER_SPLIT,
                          ACC_DTYPE, BLOCK_N, BLOCK_P)
        else:
            _weight_partial(x_ptr, dy_ptr, row, pid_filters, pid_columns - 1, first, count, B, H, W, Ho, Wo,
                            sxb, sxc, sxh, sxw, sdyb, sdyc, sdyh, sdyw, C_HAT, N_W, NQ, G, N_C, PIXELS_PER_SPLIT,
                            spf, spc, spt, K, STRIDE, PAD, DIL, WINDOW_ALIGN, DOT_PRECISION, ACC_DTYPE,
                            BLOCK_N, BLOCK_C, BLOCK_P)
    else:
        _weight_partial(x_ptr, dy_ptr, row, pid_filters, pid_columns, first, count, B, H, W, Ho, Wo,
                        sxb, sxc, sxh, sxw, sdyb, sdyc, sdyh, sdyw, C_HAT, N_W, NQ, G, N_C, PIXELS_PER_SPLIT,
                        spf, spc, spt, K, STRIDE, PAD, DIL, WINDOW_ALIGN, DOT_PRECISION, ACC_DTYPE,
                        BLOCK_N, BLOCK_C, BLOCK_P)


@triton.jit
def _weight_partial(x_ptr, dy_ptr, row, pid_filters, column, first, count, B, H, W, Ho, Wo,
                    sxb, sxc, sxh, sxw, sdyb, sdyc, sdyh, sdyw, C_HAT, N_W, NQ, G, N_C, PIXELS_PER_SPLIT,
                    spf, spc, spt, K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr,
                    WINDOW_ALIGN: tl.constexpr, DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """[BLOCK_N filters, BLOCK_C channels] of one tap (``column`` = tap * channel chunks + chunk), summed
    over every channel offset j and every secondary that uses the tap."""
    f = pid_filters * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    f_mask = f < N_W
    chunks = tl.cdiv(C_HAT, BLOCK_C)
    tap = column // chunks
    c = (column % chunks) * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C] weight row
    c_mask = c < C_HAT
    th = tap // K
    tw = tap % K
    ring = tl.minimum(tl.minimum(th, tw), tl.minimum(K - 1 - th, K - 1 - tw))

    acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=ACC_DTYPE)
    p_range = tl.arange(0, BLOCK_P)
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

    out = row + f.to(tl.int64)[:, None] * spf + c[None, :] * spc + tap * spt
    tl.store(out, acc, mask=f_mask[:, None] & c_mask[None, :])


@triton.jit
def _bias_partial(dy_ptr, out_ptr, first, count, B, Ho, Wo, sdyb, sdyc, sdyh, sdyw, o_lo, o_hi, PIXELS_PER_SPLIT,
                  ACC_DTYPE: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_P: tl.constexpr):
    """out[o] = sum of dy[:, o] over one split of the pixels, for the output channels [o_lo, o_hi)."""
    p_range = tl.arange(0, BLOCK_P)
    for o0 in range(o_lo, o_hi, BLOCK_O):
        o = o0 + tl.arange(0, BLOCK_O)  # [BLOCK_O]
        o_mask = o < o_hi
        acc = tl.zeros((BLOCK_O,), dtype=ACC_DTYPE)
        b32, ho, wo = pixel_walk_start(first, B, Ho, Wo, BLOCK_P)  # [BLOCK_P] each, walked without division
        for p0 in range(0, PIXELS_PER_SPLIT, BLOCK_P):
            pixel_mask = p0 + p_range < count
            pixel_offsets = b32.to(tl.int64) * sdyb + ho * sdyh + wo * sdyw  # [BLOCK_P]
            dy = tl.load(dy_ptr + o.to(tl.int64)[:, None] * sdyc + pixel_offsets[None, :],
                         mask=o_mask[:, None] & pixel_mask[None, :], other=0.0)  # [BLOCK_O, BLOCK_P]
            acc += tl.sum(dy.to(ACC_DTYPE), axis=1)
            b32, ho, wo = pixel_walk_step(b32, ho, wo, Ho, Wo, BLOCK_P)
        tl.store(out_ptr + o, acc, mask=o_mask)
