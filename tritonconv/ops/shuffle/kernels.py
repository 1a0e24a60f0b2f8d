"""Triton kernels for a grouped 1 x 1 convolution with the channel shuffle in its addresses.

Filter n of the conv lands on output channel ``pos(n) = (n mod (N/sg)) sg + n // (N/sg)`` (sg =
SHUFFLE_GROUPS): the forward stores there and the backward kernels read the gradient there, so the
shuffle never costs a pass over memory. Group gr holds filters ``[gr N/G, (gr+1) N/G)`` and channels
``[gr C/G, (gr+1) C/G)``. ``w_ptr`` is the contiguous [N, C/G] weight; tensors go through explicit
strides (NCHW and channels_last take the same code). Index arithmetic that can pass 2^31 elements is
int64, done once per program; channel indices and offsets inside one image are int32, and the
shuffled position is an int32 vector computed once per program (per reduction chunk in the grad
input), never a 64-bit division.

Where several conv groups are shuffled (ShuffleNet's "groups G shuffle G"), a group's gradient channels
sit at every sg-th channel of a channels_last dy, which the grouped backward reads with 2-byte loads.
The DENSE backward reads dy's channels in memory order instead (vector loads) and pays G times the
tensor-core work: the grad input selects the group's columns before its dot, the grad weight computes
the dense product of contiguous dy and x channel ranges and stores the same-group entries only.
"""

import triton
import triton.language as tl

from tritonconv.kernel_helpers import channel_gemm, pixel_walk_start, pixel_walk_step


@triton.jit
def _shuffled(n, N, SHUFFLE_GROUPS, SHUFFLED: tl.constexpr):
    """pos(n) of int32 filters n: block k = n // (N/sg) of the filters goes to every sg-th channel.
    Not SHUFFLED (sg = 1): n itself, so that the compiler sees contiguous channels."""
    if not SHUFFLED:
        return n
    per_group = N // SHUFFLE_GROUPS
    block = n // per_group
    return (n - block * per_group) * SHUFFLE_GROUPS + block


@triton.jit
def _unshuffled(j, N, SHUFFLE_GROUPS):
    """The filter n with pos(n) = j, of int32 channels j: j = q sg + r comes from n = r (N/sg) + q."""
    q = j // SHUFFLE_GROUPS
    return (j - q * SHUFFLE_GROUPS) * (N // SHUFFLE_GROUPS) + q


@triton.jit
def _shuffle_walk_start(n, N, SHUFFLE_GROUPS):
    """(n mod (N/sg), n // (N/sg)) of int32 filters n: pos(n) = first * sg + second. One int32 division
    per element, once per program; ``_shuffle_walk_step`` then advances it without dividing."""
    per_group = N // SHUFFLE_GROUPS
    block = n // per_group
    return n - block * per_group, block


@triton.jit
def _shuffle_walk_step(within, block, N, SHUFFLE_GROUPS, STEP: tl.constexpr):
    """(within, block) of filters n + STEP, from those of n: STEP = step_b*(N/sg) + step_w, one carry."""
    per_group = N // SHUFFLE_GROUPS
    step_b = STEP // per_group
    within = within + (STEP - step_b * per_group)
    carry = within >= per_group
    return tl.where(carry, within - per_group, within), block + step_b + carry.to(tl.int32)


@triton.jit
def _tile_pixels(tile, BLOCK: tl.constexpr, INT32_PIXELS: tl.constexpr):
    """[BLOCK] pixel indices of pixel tile ``tile``: int32 where the pixel count fits (INT32_PIXELS, the
    launcher's check), else int64."""
    if INT32_PIXELS:
        return tile * BLOCK + tl.arange(0, BLOCK)
    else:
        return tile.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)


@triton.jit
def _pixel_rows(pid, P, HW, W, BLOCK: tl.constexpr, INT32_PIXELS: tl.constexpr):
    """(mask, b as int64, h, w as int32) of one block of pixels; int32 division when the pixel count
    fits (INT32_PIXELS, the launcher's check), one int64 division per pixel otherwise."""
    pixel = _tile_pixels(pid, BLOCK, INT32_PIXELS)  # [BLOCK]
    b = pixel // HW
    in_image = (pixel - b * HW).to(tl.int32)
    h = in_image // W
    return pixel < P, b.to(tl.int64), h, in_image - h * W


@triton.jit
def _pixel_offsets(pixel, P, HW, W, sb, sh, sw, FLAT: tl.constexpr):
    """(mask, element offset of each pixel's first channel) of int32 or int64 pixels ``pixel``. FLAT
    (the launcher's check that p * sw and the channels past it fit int32, ``pixel`` then int32): pixel p
    lies at p * sw, one int32 multiply; otherwise b, h, w are divided out (int32 division where
    ``pixel`` is int32) and the offset is int64."""
    if FLAT:
        offset = pixel * sw
    else:
        b = pixel // HW
        in_image = (pixel - b * HW).to(tl.int32)
        h = in_image // W
        offset = b.to(tl.int64) * sb + h * sh + (in_image - h * W) * sw
    return pixel < P, offset


@triton.jit
def _group_product(rows, group, HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """[BLOCK_M, BLOCK_N]: conv group ``group``'s filters n_local on the pixel rows, bias added; ``rows``
    = (x_rows, w_ptr, bias_ptr, pixel_mask, n_local, n_mask, group_in, GROUP_OUT, sxc)."""
    x_rows, w_ptr, bias_ptr, pixel_mask, n_local, n_mask, group_in, GROUP_OUT, sxc = rows
    n = group * GROUP_OUT + n_local  # [BLOCK_N]
    acc = channel_gemm(x_rows + group * group_in * sxc, w_ptr + n * group_in, pixel_mask, n_mask, sxc, group_in,
                       0, tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE), DOT_PRECISION, ACC_DTYPE, BLOCK_K)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + n, mask=n_mask, other=0.0).to(ACC_DTYPE)[None, :]
    return acc


@triton.jit
def _joined_products(rows, first, step, GROUPS: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
                     ACC_DTYPE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """[BLOCK_M, BLOCK_N, 2, ..., 2] (log2 GROUPS twos): the products of groups first + i * step, i < GROUPS,
    joined so that, reshaped to [BLOCK_M, BLOCK_N * GROUPS], column n_local * GROUPS + i holds group
    first + i * step: each join's new (last) axis is the lowest bit of i, the even i on one side and
    the odd on the other."""
    if GROUPS == 1:
        return _group_product(rows, first, HAS_BIAS, DOT_PRECISION, ACC_DTYPE, BLOCK_M, BLOCK_N, BLOCK_K)
    else:
        return tl.join(
            _joined_products(rows, first, 2 * step, GROUPS // 2, HAS_BIAS, DOT_PRECISION, ACC_DTYPE, BLOCK_M,
                             BLOCK_N, BLOCK_K),
            _joined_products(rows, first + step, 2 * step, GROUPS // 2, HAS_BIAS, DOT_PRECISION, ACC_DTYPE, BLOCK_M,
                             BLOCK_N, BLOCK_K))


@triton.jit
def _shuffle_conv_fwd_interleaved(x_ptr, w_ptr, bias_ptr, y_ptr, pid_pixels, pid_filters, P, HW, N, GROUP_IN,
                                  GROUP_OUT, sxb, sxc, sxh, sxw, W, syb, syc, syh, syw,
                                  ALIGN: tl.constexpr, Y_ALIGN: tl.constexpr, INT32_PIXELS: tl.constexpr,
                                  HAS_BIAS: tl.constexpr, FLAT: tl.constexpr, SG: tl.constexpr,
                                  DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
                                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``shuffle_conv_fwd_kernel``'s INTERLEAVED path (sg = G = SG in 2, 4, 8, y's channels innermost):
    filters n_local of every group, whose outputs pos = n_local * sg + group are the contiguous channels
    [n0 sg, (n0 + BLOCK_N) sg). Each group's product is its own (no foreign channel multiplied, no extra
    tensor-core work); the sg accumulators are interleaved along the columns by a tree of tl.join
    (``_joined_products``) and stored as one [BLOCK_M, BLOCK_N sg] tile of contiguous row runs."""
    n_local = pid_filters * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    n_mask = n_local < GROUP_OUT
    group_in = GROUP_IN // ALIGN * ALIGN  # = GROUP_IN, written so the compiler sees its divisor
    sxb, sxh, sxw = sxb // ALIGN * ALIGN, sxh // ALIGN * ALIGN, sxw // ALIGN * ALIGN
    syb, syh, syw = syb // Y_ALIGN * Y_ALIGN, syh // Y_ALIGN * Y_ALIGN, syw // Y_ALIGN * Y_ALIGN
    pixel = _tile_pixels(pid_pixels, BLOCK_M, INT32_PIXELS)  # [BLOCK_M]
    pixel_mask, x_offset = _pixel_offsets(pixel, P, HW, W, sxb, sxh, sxw, FLAT)
    x_rows = x_ptr + x_offset  # [BLOCK_M]
    rows = (x_rows, w_ptr, bias_ptr, pixel_mask, n_local, n_mask, group_in, GROUP_OUT, sxc)
    tl.static_assert(SG == 2 or SG == 4 or SG == 8)
    tiles = _joined_products(rows, 0, 1, SG, HAS_BIAS, DOT_PRECISION, ACC_DTYPE, BLOCK_M, BLOCK_N, BLOCK_K)
    out = tl.reshape(tiles, (BLOCK_M, BLOCK_N * SG))  # column n_local * sg + group
    position = pid_filters * (BLOCK_N * SG) + tl.arange(0, BLOCK_N * SG)  # [BLOCK_N sg]
    _, y_offset = _pixel_offsets(pixel, P, HW, W, syb, syh, syw, FLAT)
    tl.store(y_ptr + y_offset[:, None] + (position * syc)[None, :], out.to(y_ptr.dtype.element_ty),
             mask=pixel_mask[:, None] & (position < N // Y_ALIGN * Y_ALIGN)[None, :])


@triton.jit
def _shuffle_conv_fwd_positions(x_ptr, w_ptr, bias_ptr, y_ptr, pid_pixels, pid_positions, P, HW, N, GROUP_IN,
                                GROUP_OUT, SHUFFLE_GROUPS, sxb, sxc, sxh, sxw, W, syb, syc, syh, syw, PIXEL_TILES,
                                ALIGN: tl.constexpr, Y_ALIGN: tl.constexpr, INT32_PIXELS: tl.constexpr,
                                HAS_BIAS: tl.constexpr, ONE_GROUP: tl.constexpr, ONE_STEP: tl.constexpr,
                                FLAT: tl.constexpr,
                                DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
                                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``shuffle_conv_fwd_kernel``'s POSITIONS path: output channels p of one block, the program walking
    pixel tiles pid, pid + num_programs(0), ... < PIXEL_TILES with the block's filters, groups and bias
    found once. ONE_GROUP (one conv group, the launcher's check): the shuffle is only the weight rows'
    order, so one product, no select, and the first weight chunk loaded once per program; ONE_STEP (the
    group's channels fit it): no chunk loop at all (its setup and exit test ran on every tile)."""
    p = pid_positions * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N] output channels
    p_mask = p < N // Y_ALIGN * Y_ALIGN  # = N: the mask is uniform along vectors of Y_ALIGN
    n = _unshuffled(p, N, SHUFFLE_GROUPS)  # the filter stored at each
    n_group = n // GROUP_OUT
    first_group = tl.min(tl.where(p_mask, n_group, N), axis=0)
    last_group = tl.max(tl.where(p_mask, n_group, 0), axis=0)
    group_in = GROUP_IN // ALIGN * ALIGN  # = GROUP_IN, written so the compiler sees its divisor
    sxb, sxh, sxw = sxb // ALIGN * ALIGN, sxh // ALIGN * ALIGN, sxw // ALIGN * ALIGN
    syb, syh, syw = syb // Y_ALIGN * Y_ALIGN, syh // Y_ALIGN * Y_ALIGN, syw // Y_ALIGN * Y_ALIGN
    w_cols = w_ptr + n * group_in  # [BLOCK_N]
    y_cols = y_ptr + p * syc  # [BLOCK_N]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + n, mask=p_mask, other=0.0).to(ACC_DTYPE)  # [BLOCK_N]
    k_range = tl.arange(0, BLOCK_K)
    if ONE_GROUP:
        w_first = tl.load(w_cols[None, :] + k_range[:, None], mask=(k_range < group_in)[:, None] & p_mask[None, :],
                          other=0.0)  # [BLOCK_K, BLOCK_N], the first (with one step, only) chunk, once
    for pixel_tile in range(pid_pixels, PIXEL_TILES, tl.num_programs(0)):
        pixel = _tile_pixels(pixel_tile, BLOCK_M, INT32_PIXELS)  # [BLOCK_M]
        pixel_mask, x_offset = _pixel_offsets(pixel, P, HW, W, sxb, sxh, sxw, FLAT)
        x_rows = x_ptr + x_offset  # [BLOCK_M]
        if ONE_GROUP:
            a = tl.load(x_rows[:, None] + k_range[None, :] * sxc,
                        mask=pixel_mask[:, None] & (k_range < group_in)[None, :], other=0.0)
            acc = tl.dot(a, w_first, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
            if not ONE_STEP:
                acc = channel_gemm(x_rows, w_cols, pixel_mask, p_mask, sxc, group_in, BLOCK_K, acc,
                                   DOT_PRECISION, ACC_DTYPE, BLOCK_K)  # the chunks past the first
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
            for group in range(first_group, last_group + 1):
                mine = p_mask & (n_group == group)  # [BLOCK_N] the columns this group's product keeps
                part = channel_gemm(x_rows + group * group_in * sxc, w_cols, pixel_mask, mine, sxc, group_in, 0,
                                    tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE), DOT_PRECISION, ACC_DTYPE,
                                    BLOCK_K)  # foreign columns' weights 0
                acc = tl.where(mine[None, :], part, acc)
        if HAS_BIAS:
            acc += bias[None, :]
        _, y_offset = _pixel_offsets(pixel, P, HW, W, syb, syh, syw, FLAT)
        tl.store(y_offset[:, None] + y_cols[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=pixel_mask[:, None] & p_mask[None, :])


@triton.jit
def shuffle_conv_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr,
    P, HW, N, GROUP_IN, GROUP_OUT, SHUFFLE_GROUPS,
    sxb, sxc, sxh, sxw, W,
    syb, syc, syh, syw, PIXEL_TILES,
    ALIGN: tl.constexpr, Y_ALIGN: tl.constexpr, INT32_PIXELS: tl.constexpr, SHUFFLED: tl.constexpr,
    HAS_BIAS: tl.constexpr, ONE_STEP: tl.constexpr, POSITIONS: tl.constexpr, ONE_GROUP: tl.constexpr,
    FLAT: tl.constexpr, INTERLEAVED: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y[b, pos(n), h, w]: rows pixels, cols the filters of one group, reduce the group's channels.

    ALIGN divides the input's strides and the group's channel count (the launcher's promise; the JIT
    only hints multiples of 16): rewritten as multiples of it, 24 or 40 channels still load 16 bytes
    at a time in channels_last. Y_ALIGN: the same of y's pixel strides and of where the stored column
    blocks start (N for POSITIONS, the group's width for unshuffled groups; 1 where they are shuffled).

    ONE_STEP (the group's channels fit BLOCK_K, the launcher's check; for POSITIONS see there): the
    group-local program walks pixel tiles
    pid, pid + num_programs(0), ... < PIXEL_TILES with the weight tile, the bias and the shuffled
    output channels loaded and computed once, so a reduction of one step pays its per-program index
    math once per program, not once per tile. Otherwise one pixel tile per program, reducing in
    BLOCK_K steps. FLAT (x and y): pixel p at p * (w stride), int32, no division per pixel.

    POSITIONS (shuffled or groups off the vectors, y's channels innermost): the columns are output
    channels, pos(n) = p for a block of consecutive p, so the store is one contiguous row run per pixel
    (vector stores) where a group's filters would land every sg-th channel, or start off a 16-byte
    boundary (one 2-byte store per element). Those positions hold
    filters of several groups: each group's product is computed over all the block's columns, the
    foreign ones' weights zero, and only its own columns kept (a select: a NaN in one group's input
    stays out of the others' outputs), so the tensor cores do up to the dense C x N product's work (sg
    times the grouped one's where the shuffle's blocks are the conv groups); the launcher takes this
    path where the dense product would still be memory-bound.

    INTERLEAVED (0, or sg = G in 2, 4, 8 with y's channels innermost, the launcher's check): BLOCK_N
    filters of every group, interleaved into contiguous output rows without extra tensor-core work
    (``_shuffle_conv_fwd_interleaved``).
    """
    pid_pixels = tl.program_id(0)
    pid_filters = tl.program_id(1)
    if INTERLEAVED:
        _shuffle_conv_fwd_interleaved(x_ptr, w_ptr, bias_ptr, y_ptr, pid_pixels, pid_filters, P, HW, N, GROUP_IN,
                                      GROUP_OUT, sxb, sxc, sxh, sxw, W, syb, syc, syh, syw, ALIGN, Y_ALIGN,
                                      INT32_PIXELS, HAS_BIAS, FLAT, INTERLEAVED, DOT_PRECISION, ACC_DTYPE, BLOCK_M,
                                      BLOCK_N, BLOCK_K)
        return
    if POSITIONS:
        _shuffle_conv_fwd_positions(x_ptr, w_ptr, bias_ptr, y_ptr, pid_pixels, pid_filters, P, HW, N, GROUP_IN,
                                    GROUP_OUT, SHUFFLE_GROUPS, sxb, sxc, sxh, sxw, W, syb, syc, syh, syw,
                                    PIXEL_TILES, ALIGN, Y_ALIGN, INT32_PIXELS, HAS_BIAS, ONE_GROUP, ONE_STEP, FLAT,
                                    DOT_PRECISION, ACC_DTYPE, BLOCK_M, BLOCK_N, BLOCK_K)
        return
    tiles_per_group = tl.cdiv(GROUP_OUT, BLOCK_N)
    group = pid_filters // tiles_per_group
    group_out = GROUP_OUT // Y_ALIGN * Y_ALIGN  # = GROUP_OUT, GROUP_IN: written so the compiler sees the divisor
    n_local = (pid_filters % tiles_per_group) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    n_mask = n_local < group_out
    n = group * group_out + n_local
    group_in = GROUP_IN // ALIGN * ALIGN
    sxb, sxh, sxw = sxb // ALIGN * ALIGN, sxh // ALIGN * ALIGN, sxw // ALIGN * ALIGN
    syb, syh, syw = syb // Y_ALIGN * Y_ALIGN, syh // Y_ALIGN * Y_ALIGN, syw // Y_ALIGN * Y_ALIGN
    x_group = x_ptr + group * group_in * sxc  # the group's first channel
    w_cols = w_ptr + n * group_in  # [BLOCK_N]
    out_channel = _shuffled(n, N, SHUFFLE_GROUPS, SHUFFLED)  # [BLOCK_N]: the shuffle is this store address
    if HAS_BIAS:
        bias = tl.load(bias_ptr + n, mask=n_mask, other=0.0).to(ACC_DTYPE)  # [BLOCK_N]
    if ONE_STEP:
        y_cols = y_ptr + out_channel * syc  # [BLOCK_N]
        c_local = tl.arange(0, BLOCK_K)  # [BLOCK_K]
        c_mask = c_local < group_in
        wt = tl.load(w_cols[None, :] + c_local[:, None], mask=c_mask[:, None] & n_mask[None, :],
                     other=0.0)  # [BLOCK_K, BLOCK_N], once per program
        for pixel_tile in range(pid_pixels, PIXEL_TILES, tl.num_programs(0)):
            pixel = _tile_pixels(pixel_tile, BLOCK_M, INT32_PIXELS)  # [BLOCK_M]
            pixel_mask, x_offset = _pixel_offsets(pixel, P, HW, W, sxb, sxh, sxw, FLAT)
            a = tl.load((x_group + x_offset)[:, None] + c_local[None, :] * sxc,
                        mask=pixel_mask[:, None] & c_mask[None, :], other=0.0)  # [BLOCK_M, BLOCK_K]
            acc = tl.dot(a, wt, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)  # [BLOCK_M, BLOCK_N]
            if HAS_BIAS:
                acc += bias[None, :]
            _, y_offset = _pixel_offsets(pixel, P, HW, W, syb, syh, syw, FLAT)
            tl.store(y_offset[:, None] + y_cols[None, :], acc.to(y_ptr.dtype.element_ty),
                     mask=pixel_mask[:, None] & n_mask[None, :])
    else:
        pixel_mask, b, h, w = _pixel_rows(pid_pixels, P, HW, W, BLOCK_M, INT32_PIXELS)
        x_rows = x_group + b * sxb + h * sxh + w * sxw  # [BLOCK_M]
        acc = channel_gemm(x_rows, w_cols, pixel_mask, n_mask, sxc, group_in, 0,
                           tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE), DOT_PRECISION, ACC_DTYPE, BLOCK_K)
        if HAS_BIAS:
            acc += bias[None, :]
        y_ptrs = (y_ptr + b * syb + h * syh + w * syw)[:, None] + out_channel[None, :] * syc
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=pixel_mask[:, None] & n_mask[None, :])


@triton.jit
def _keep_columns(a, keep, PACKED: tl.constexpr):
    """[M, K] tile ``a`` where the [K] mask ``keep`` holds, else 0: a select, so a NaN in a dropped column
    is dropped, never multiplied by zero. PACKED (16-bit elements on the GPU): one 32-bit AND per two
    elements, where a tl.where unpacks, selects and repacks each (three instructions per element)."""
    if PACKED:
        bits = tl.broadcast_to(tl.where(keep, -1, 0).to(tl.int16)[None, :], a.shape)
        kept = tl.inline_asm_elementwise("and.b32 $0, $1, $2;", "=r,r,r", [a.to(tl.int16, bitcast=True), bits],
                                         dtype=tl.int16, is_pure=True, pack=2).to(a.dtype, bitcast=True)
    else:
        kept = tl.where(keep[None, :], a, 0.0)
    return kept


@triton.jit
def _dense_input_step(dy_tile, w_tile, dy_mask, w_mask, mine, acc, PACKED_SELECT: tl.constexpr,
                      TRANSPOSED: tl.constexpr, DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr):
    """acc += (dy's columns ``mine``, the others selected to 0) [BLOCK_M, BLOCK_K] @ w [BLOCK_K, BLOCK_N],
    or its transpose into acc [BLOCK_N, BLOCK_M] (TRANSPOSED): the selected dy is then the second
    operand, which the wgmma reads from shared memory (one store), not from registers (a shared-memory
    round trip and register moves); it needs BLOCK_N >= 64, a warp group's rows."""
    a = _keep_columns(tl.load(dy_tile, mask=dy_mask, other=0.0), mine, PACKED_SELECT)
    wt = tl.load(w_tile, mask=w_mask, other=0.0)
    if TRANSPOSED:
        acc = tl.dot(tl.trans(wt), tl.trans(a), acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
    else:
        acc = tl.dot(a, wt, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
    return acc


@triton.jit
def shuffle_conv_bwd_input_kernel(
    dy_ptr, w_ptr, dx_ptr,
    P, HW, N, GROUP_IN, GROUP_OUT, SHUFFLE_GROUPS,
    sdyb, sdyc, sdyh, sdyw, W,
    sdxb, sdxc, sdxh, sdxw,
    ALIGN: tl.constexpr, IN_ALIGN: tl.constexpr, DX_ALIGN: tl.constexpr, INT32_PIXELS: tl.constexpr,
    SHUFFLED: tl.constexpr, BLOCKED: tl.constexpr, BY_POSITION: tl.constexpr, DENSE: tl.constexpr, STEP: tl.constexpr,
    PACKED_SELECT: tl.constexpr, TRANSPOSED: tl.constexpr, DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dx[b, c, h, w] = sum_n w[n, c] dy[b, pos(n), h, w] over the filters of c's group. ALIGN divides
    dy's strides and the group widths (as in the forward). BLOCKED (the launcher's check: shuffle groups
    = conv groups): pos is affine in the group's filters, pos(n) = n_local * sg + group. BY_POSITION
    (one conv group, shuffled): the group's filters land on every dy channel, so the reduction walks
    dy's channels j in memory order (vector loads) and gathers the weight rows n(j) instead.

    DENSE (several groups, channels_last) reads dy's channels in memory order (vector loads) and selects
    the group's columns (``_keep_columns``, not a multiply by zero: a NaN in another group's column never
    reaches this group's dx); their weight rows are masked to zero. SHUFFLED (sg = G): all of dy's
    channels, channel j being filter n(j) = (j mod sg) N/sg + j // sg of group j mod sg, G times the
    tensor-core work on a memory-bound kernel; STEP (the launcher's ``_dense_step``) channels a step.
    Unshuffled (odd group widths, whose groups start at unaligned channels): the group's own channels
    from the aligned one below. ALIGN then divides dy's strides and N, IN_ALIGN the group's channels
    (otherwise IN_ALIGN = ALIGN); PACKED_SELECT and TRANSPOSED choose the select's and the dot's form.
    DX_ALIGN: the same of dx's pixel strides, for the stores (24- or 60-channel rows of channels_last
    stay 16 or 8 bytes at a time; the group's start is IN_ALIGN's).
    """
    pid_pixels = tl.program_id(0)
    pid_channels = tl.program_id(1)
    tiles_per_group = tl.cdiv(GROUP_IN, BLOCK_N)
    group = pid_channels // tiles_per_group
    c_local = (pid_channels % tiles_per_group) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    group_in = GROUP_IN // IN_ALIGN * IN_ALIGN  # = GROUP_IN, GROUP_OUT: written so the compiler sees the divisor
    group_out = GROUP_OUT if DENSE else GROUP_OUT // ALIGN * ALIGN  # dense: ALIGN divides N instead
    c_mask = c_local < group_in
    c = group * group_in + c_local
    pixel_mask, b, h, w = _pixel_rows(pid_pixels, P, HW, W, BLOCK_M, INT32_PIXELS)
    dy_rows = dy_ptr + b * (sdyb // ALIGN * ALIGN) + h * (sdyh // ALIGN * ALIGN) + w * (sdyw // ALIGN * ALIGN)
    k_range = tl.arange(0, BLOCK_K)
    w_cols = w_ptr + c_local  # [BLOCK_N]
    if DENSE:
        if TRANSPOSED:
            acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=ACC_DTYPE)  # dx^T = w^T dy^T
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
        n_end = N // ALIGN * ALIGN
        if SHUFFLED:
            # STEP (a multiple of sg and of the vector width, <= BLOCK_K) channels a step: column k of
            # every step is a channel of group k mod sg, filter k // sg of it, so the columns this group
            # keeps and its weight rows are fixed per program (no mask or index rebuilt in the loop)
            in_step = k_range < STEP
            mine = in_step & (k_range % SHUFFLE_GROUPS == group)  # [BLOCK_K]
            dy_tile = dy_rows[:, None] + (k_range * sdyc)[None, :]  # [BLOCK_M, BLOCK_K]
            w_tile = w_cols[None, :] + ((group * group_out + k_range // SHUFFLE_GROUPS) * group_in)[:, None]
            # whole steps with the fixed masks, then the last, partial one
            full_steps = n_end // STEP
            for _ in range(0, full_steps):
                acc = _dense_input_step(dy_tile, w_tile, pixel_mask[:, None] & in_step[None, :],
                                        mine[:, None] & c_mask[None, :], mine, acc, PACKED_SELECT, TRANSPOSED,
                                        DOT_PRECISION, ACC_DTYPE)
                dy_tile += STEP * sdyc
                w_tile += STEP // SHUFFLE_GROUPS * group_in
            if full_steps * STEP < n_end:
                left = k_range < n_end - full_steps * STEP  # [BLOCK_K]
                acc = _dense_input_step(dy_tile, w_tile, pixel_mask[:, None] & (in_step & left)[None, :],
                                        (mine & left)[:, None] & c_mask[None, :], mine, acc, PACKED_SELECT,
                                        TRANSPOSED, DOT_PRECISION, ACC_DTYPE)
        else:
            # unshuffled, the group's filters are dy channels [lo, hi) (its n = its channel): walked
            # from the vector-aligned channel at or below lo, the neighbours' columns loaded with them
            # selected away
            lo = group * group_out
            hi = lo + group_out
            start = lo // ALIGN * ALIGN
            dy_tile = dy_rows[:, None] + ((start + k_range) * sdyc)[None, :]  # [BLOCK_M, BLOCK_K]
            w_tile = w_cols[None, :] + ((start + k_range) * group_in)[:, None]  # [BLOCK_K, BLOCK_N]
            for j0 in range(start, hi, BLOCK_K):
                j = j0 + k_range  # [BLOCK_K]
                mine = (j >= lo) & (j < hi)
                acc = _dense_input_step(dy_tile, w_tile, pixel_mask[:, None] & (j < n_end)[None, :],
                                        mine[:, None] & c_mask[None, :], mine, acc, PACKED_SELECT, TRANSPOSED,
                                        DOT_PRECISION, ACC_DTYPE)
                dy_tile += BLOCK_K * sdyc
                w_tile += BLOCK_K * group_in
        if TRANSPOSED:
            acc = tl.trans(acc)
    else:
        # A shuffled dy is a 2-byte gather: its tile pointers are built once and bumped, pos(n + BLOCK_K) =
        # pos(n) + BLOCK_K * sg when the shuffle groups are the conv groups (BLOCKED); otherwise pos is
        # walked with a carry (int32, no division in the loop). Unshuffled, the plain per-chunk addresses
        # are cheaper than carrying 64-bit pointer tiles.
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
        if BY_POSITION:
            # j = q sg + r comes from filter n(j) = r (N/sg) + q; (q, r) walked with a carry
            q = k_range // SHUFFLE_GROUPS  # [BLOCK_K]
            r = k_range - q * SHUFFLE_GROUPS
            q_step = BLOCK_K // SHUFFLE_GROUPS
            r_step = BLOCK_K - q_step * SHUFFLE_GROUPS
            per_block = N // SHUFFLE_GROUPS
        elif SHUFFLED:
            if BLOCKED:
                dy_tile = dy_rows[:, None] + ((group + k_range * SHUFFLE_GROUPS) * sdyc)[None, :]  # [BLOCK_M, BLOCK_K]
            else:
                within, block = _shuffle_walk_start(group * group_out + k_range, N, SHUFFLE_GROUPS)  # [BLOCK_K] each
        for n0 in range(0, group_out, BLOCK_K):
            n_local = n0 + k_range  # [BLOCK_K]
            n_mask = n_local < group_out
            n = group * group_out + n_local
            if BY_POSITION:
                dy_tile = dy_rows[:, None] + (n_local * sdyc)[None, :]  # [BLOCK_M, BLOCK_K] dy channels j = n_local
                n = r * per_block + q  # [BLOCK_K] their filters
            elif not SHUFFLED:
                dy_tile = dy_rows[:, None] + (n * sdyc)[None, :]  # [BLOCK_M, BLOCK_K]
            elif not BLOCKED:
                dy_tile = dy_rows[:, None] + ((within * SHUFFLE_GROUPS + block) * sdyc)[None, :]
            a = tl.load(dy_tile, mask=pixel_mask[:, None] & n_mask[None, :], other=0.0)  # [BLOCK_M, BLOCK_K]
            wt = tl.load(w_cols[None, :] + n[:, None] * group_in, mask=n_mask[:, None] & c_mask[None, :],
                         other=0.0)  # [BLOCK_K, BLOCK_N]
            acc = tl.dot(a, wt, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
            if BY_POSITION:
                r += r_step
                carry = r >= SHUFFLE_GROUPS
                r = tl.where(carry, r - SHUFFLE_GROUPS, r)
                q += q_step + carry.to(tl.int32)
            elif SHUFFLED:
                if BLOCKED:
                    dy_tile += BLOCK_K * SHUFFLE_GROUPS * sdyc
                else:
                    within, block = _shuffle_walk_step(within, block, N, SHUFFLE_GROUPS, BLOCK_K)
    sdxb, sdxh, sdxw = sdxb // DX_ALIGN * DX_ALIGN, sdxh // DX_ALIGN * DX_ALIGN, sdxw // DX_ALIGN * DX_ALIGN
    dx_ptrs = (dx_ptr + b * sdxb + h * sdxh + w * sdxw)[:, None] + c[None, :] * sdxc
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=pixel_mask[:, None] & c_mask[None, :])


@triton.jit
def _weight_grad_step(dy_ptrs, x_ptrs, dy_mask, x_mask, acc, bias_acc, HAS_BIAS: tl.constexpr,
                      DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr):
    """acc += dy [BLOCK_N, BLOCK_P] @ x [BLOCK_P, BLOCK_C] over one block of pixels (and dy's row sums)."""
    dy = tl.load(dy_ptrs, mask=dy_mask, other=0.0)
    x = tl.load(x_ptrs, mask=x_mask, other=0.0)
    acc = tl.dot(dy, x, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
    if HAS_BIAS:
        bias_acc += tl.sum(dy.to(ACC_DTYPE), axis=1)
    return acc, bias_acc


@triton.jit
def shuffle_conv_bwd_weight_kernel(
    x_ptr, dy_ptr, partial_ptr,
    P, HW, N, GROUP_IN, GROUP_OUT, SHUFFLE_GROUPS, PIXELS_PER_SPLIT, SPLIT_STRIDE,
    sxb, sxc, sxh, sxw, W,
    sdyb, sdyc, sdyh, sdyw,
    ALIGN: tl.constexpr, FLAT: tl.constexpr, SHUFFLED: tl.constexpr, BY_POSITION: tl.constexpr,
    DENSE: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Partial dw[n, c_local] (and, in the first column tile, the bias sums) over one split of the pixels,
    in row ``split`` of partial [splits, SPLIT_STRIDE] (dw flattened, then the bias); the launcher sums
    the partials in a fixed order (deterministic). ALIGN divides x's and dy's strides and the
    group widths (as in the forward). FLAT (the launcher's check, e.g. channels_last): pixel p of x
    and dy lies at p times the w stride, so the loop only bumps two tile pointers; otherwise (b, h, w)
    are walked with carries. No division inside the loop either way. BY_POSITION (one conv group,
    shuffled): the program's rows are dy channels j in memory order (vector loads), their filters n(j)
    only the store's rows. DENSE (several conv groups whose dy channels are strided or unaligned, in
    channels_last): rows are any dy channels j and columns any input channels c, both contiguous (vector
    loads), and the tile is the dense product of the two ranges; only the entries whose filter n(j) and
    channel c share a group are stored, so another group's dy (a NaN included) never reaches a kept
    entry. It spends G times the tensor-core work of the grouped product on a memory-bound kernel."""
    pid_filters = tl.program_id(0)
    pid_columns = tl.program_id(1)
    split = tl.program_id(2)
    if DENSE:
        # ALIGN divides the strides and the channel counts N, C (not the group widths: tiles start at
        # block multiples), so that the masks are constant over a vector
        dy_channel = pid_filters * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N] rows in dy's order
        n_mask = dy_channel < N // ALIGN * ALIGN
        n = _unshuffled(dy_channel, N, SHUFFLE_GROUPS)
        c = pid_columns * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C] any group's channels
        c_mask = c < (N // GROUP_OUT * GROUP_IN) // ALIGN * ALIGN
        c_group = c // GROUP_IN
        c_local = c - c_group * GROUP_IN
        same_group = (n // GROUP_OUT)[:, None] == c_group[None, :]  # [BLOCK_N, BLOCK_C] the entries kept
    else:
        tiles_per_group = tl.cdiv(GROUP_OUT, BLOCK_N)
        group = pid_filters // tiles_per_group
        n_local = (pid_filters % tiles_per_group) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
        group_in = GROUP_IN // ALIGN * ALIGN  # = GROUP_IN, GROUP_OUT: written so the compiler sees the divisor
        group_out = GROUP_OUT // ALIGN * ALIGN
        n_mask = n_local < group_out
        if BY_POSITION:
            dy_channel = n_local  # [BLOCK_N] rows in dy's order
            n = _unshuffled(n_local, N, SHUFFLE_GROUPS)
        else:
            n = group * group_out + n_local
            dy_channel = _shuffled(n, N, SHUFFLE_GROUPS, SHUFFLED)  # [BLOCK_N]
        c_local = pid_columns * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C]
        c_mask = c_local < group_in
        c = group * group_in + c_local
        same_group = n_mask[:, None]  # every entry of a grouped tile is kept
    sxb = sxb // ALIGN * ALIGN
    sxh = sxh // ALIGN * ALIGN
    sxw = sxw // ALIGN * ALIGN
    sdyb = sdyb // ALIGN * ALIGN
    sdyh = sdyh // ALIGN * ALIGN
    sdyw = sdyw // ALIGN * ALIGN

    acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=ACC_DTYPE)
    bias_acc = tl.zeros((BLOCK_N,), dtype=ACC_DTYPE)
    p_range = tl.arange(0, BLOCK_P)
    first = split.to(tl.int64) * PIXELS_PER_SPLIT
    count = tl.minimum(P - first, PIXELS_PER_SPLIT).to(tl.int32)  # pixels in this split
    if FLAT:
        # pixel p of both tensors lies at p * (w stride): two scalar base pointers are bumped, the tiles'
        # offsets from them are int32 and fixed (one wide multiply-add per element, no 64-bit bump)
        x_base = x_ptr + first * sxw
        dy_base = dy_ptr + first * sdyw
        x_offsets = (p_range * sxw)[:, None] + (c * sxc)[None, :]  # [BLOCK_P, BLOCK_C]
        dy_offsets = (p_range * sdyw)[None, :] + (dy_channel * sdyc)[:, None]  # [BLOCK_N, BLOCK_P]
        # whole blocks first, unmasked along pixels (no mask is rebuilt in the loop), then the split's
        # partial last block
        full_blocks = count // BLOCK_P
        for _ in range(0, full_blocks):
            acc, bias_acc = _weight_grad_step(dy_base + dy_offsets, x_base + x_offsets, n_mask[:, None],
                                              c_mask[None, :], acc, bias_acc, HAS_BIAS, DOT_PRECISION, ACC_DTYPE)
            x_base += BLOCK_P * sxw
            dy_base += BLOCK_P * sdyw
        if full_blocks * BLOCK_P < count:
            pixel_mask = full_blocks * BLOCK_P + p_range < count
            acc, bias_acc = _weight_grad_step(dy_base + dy_offsets, x_base + x_offsets,
                                              n_mask[:, None] & pixel_mask[None, :],
                                              pixel_mask[:, None] & c_mask[None, :], acc, bias_acc, HAS_BIAS,
                                              DOT_PRECISION, ACC_DTYPE)
    else:
        # (b, h, w) walked in int32 with carries: the split's first pixel is divided once
        b32, h, w = pixel_walk_start(first, 0, HW // W, W, BLOCK_P)  # [BLOCK_P] each
        for p0 in range(0, PIXELS_PER_SPLIT, BLOCK_P):
            pixel_mask = p0 + p_range < count
            b = b32.to(tl.int64)
            dy = tl.load((dy_ptr + b * sdyb + h * sdyh + w * sdyw)[None, :] + dy_channel[:, None] * sdyc,
                         mask=n_mask[:, None] & pixel_mask[None, :], other=0.0)  # [BLOCK_N, BLOCK_P]
            x = tl.load((x_ptr + b * sxb + h * sxh + w * sxw)[:, None] + c[None, :] * sxc,
                        mask=pixel_mask[:, None] & c_mask[None, :], other=0.0)  # [BLOCK_P, BLOCK_C]
            acc = tl.dot(dy, x, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
            if HAS_BIAS:
                bias_acc += tl.sum(dy.to(ACC_DTYPE), axis=1)
            b32, h, w = pixel_walk_step(b32, h, w, HW // W, W, BLOCK_P)
    row = partial_ptr + split.to(tl.int64) * SPLIT_STRIDE
    tl.store(row + n[:, None] * GROUP_IN + c_local[None, :], acc,
             mask=n_mask[:, None] & c_mask[None, :] & same_group)
    if HAS_BIAS:
        if pid_columns == 0:
            tl.store(row + N * GROUP_IN + n, bias_acc, mask=n_mask)
