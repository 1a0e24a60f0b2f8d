"""Triton kernels for HetConv2d (blocked layout, SPEC section 1).

Filter n belongs to group g = n // GROUP_OUT and sees the GROUP_IN channels of group g through k x k
kernels and every other channel through a 1 x 1 kernel at the centre tap. Each kernel is an implicit
GEMM whose reduction visits exactly those (channel, tap) pairs: no masked zeros are ever multiplied.

Addressing (what keeps the hot loops short on the GPU):
- A program's pixel tile is [BLOCK_B images, BLOCK_H rows, BLOCK_W columns] (all powers of two, so the
  row index decomposes with shifts). Only the tile's first image base is int64 (once per program or per
  reduction step, a scalar); everything inside it is int32: the launcher checks that the elements of
  BLOCK_B images fit (``launch._fits_int32``).
- Each tap is one scalar offset added to loop-invariant int32 offset tensors; the tap and channel-chunk
  counters advance by compare-and-select (no division or modulo inside any reduction loop), and a
  padding test is one unsigned compare per row and axis.
- Activations are expected channels_last (the launcher converts NCHW at the boundary, see launch.py):
  every tile is contiguous along channels, so loads are 16-byte vectors. Weights are read through their
  strides; ``weight`` channels_last ([N, k, k, C/p] in memory, which HetConv2d allocates) makes the tile
  of one tap contiguous along channels for both the forward and the input gradient.
- Packed taps (TAP_CH < BLOCK_K): a group of a power-of-two number of channels (forward) or filters
  (input gradient) below BLOCK_K puts BLOCK_K // TAP_CH taps side by side in one K block, so the dot of
  each step is BLOCK_K deep and the per-step addressing, masks and pipeline bookkeeping are shared by
  several taps (at 16 channels per group one dot per tap was 16 deep: sm_90 bf16 44-47 SASS
  instructions per HGMMA; packed 4 x 16: 18-19). The trip count is kept a runtime value (a constant
  3-5 step loop is unrolled: 26-32 per HGMMA, its setup included). The padding mask is per (pixel, tap
  slot): with K * K <= 31 a per-row word of in-image taps is built once and each test is one AND with
  the slot's one-hot bit (about four instructions fewer per 16-byte load than two compares); TAP_CH is
  at least a 16-byte vector in the kernels' dtypes at 16 channels, so vectors never straddle two taps and
  the loads stay 16-byte. Slots past the last tap are masked: their loads move nothing but their MMA work
  is done on zeros (3 of 12 slots for a 3 x 3 kernel at 4 taps per block, 1 of 10 at 2 taps).
- EVEN_K: the group's channels (forward) or filters (input gradient) are a multiple of BLOCK_K, so no
  chunk crosses a group boundary and the 1 x 1 ranges on both sides of the own group are addressed with
  one scalar shift per chunk; otherwise a per-element path (odd group sizes) is taken.
"""

import triton
import triton.language as tl


@triton.jit
def _unsigned_below(value, bound):
    """0 <= value < bound in one compare (value int32, bound a non-negative int32: the compare is unsigned)."""
    return value.to(tl.uint32, bitcast=True) < bound


@triton.jit
def _next_tap_chunk(start, column, row, GROUP, COLUMNS, BLOCK_K: tl.constexpr):
    """(chunk start, tap column, tap row) of the next step of a walk over a group's channels in BLOCK_K
    chunks, tap by tap along a row of COLUMNS taps, row by row: carries instead of divisions."""
    start += BLOCK_K
    next_tap = start >= GROUP
    start = tl.where(next_tap, 0, start)
    column = tl.where(next_tap, column + 1, column)
    next_row = column == COLUMNS
    return start, tl.where(next_row, 0, column), tl.where(next_row, row + 1, row)


@triton.jit
def hetconv_fwd_kernel(
    x_ptr, w_ptr, wpw_ptr, bias_ptr, y_ptr,
    B, C, H, W, Ho, Wo,
    sxb, sxc, sxh, sxw,
    syb, syc, syh, syw,
    swn, swc, swh, sww,
    GROUP_IN, GROUP_OUT, FILTER_TILES, TILES_H, TILES_W,
    K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, TAP_CH: tl.constexpr,
):
    """y[b, n, ho, wo]: rows are the output pixels of one tile, columns the filters of one group.

    Program order: the FILTER_TILES programs of one pixel tile (all p groups) are consecutive, so they
    run together and the tile's input, which every group reads (own channels at k x k taps, the others
    at the centre), comes from HBM once and from L2 for the other groups. One program covering all
    groups would need p accumulators or a block-diagonal (zero-multiplying) dot; this ordering keeps
    the exact reduction and one accumulator.
    """
    BLOCK_M: tl.constexpr = BLOCK_B * BLOCK_H * BLOCK_W
    pid = tl.program_id(0)
    pid_n = pid % FILTER_TILES
    pid_pixels = pid // FILTER_TILES
    tile_w = pid_pixels % TILES_W
    tile_h = (pid_pixels // TILES_W) % TILES_H
    b0 = pid_pixels // (TILES_W * TILES_H) * BLOCK_B

    tiles_per_group = tl.cdiv(GROUP_OUT, BLOCK_N)
    group = pid_n // tiles_per_group
    n_local = (pid_n % tiles_per_group) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    n_mask = n_local < GROUP_OUT
    n = group * GROUP_OUT + n_local

    m = tl.arange(0, BLOCK_M)  # [BLOCK_M]
    bb = m // (BLOCK_H * BLOCK_W)
    oh = tile_h * BLOCK_H + (m // BLOCK_W) % BLOCK_H
    ow = tile_w * BLOCK_W + m % BLOCK_W
    row_ok = (b0 + bb < B) & (oh < Ho) & (ow < Wo)
    ih0 = tl.where(row_ok, oh * STRIDE - PAD, -2 * K)  # an invalid row fails every tap's test
    iw0 = ow * STRIDE - PAD
    x_tile = x_ptr + b0.to(tl.int64) * sxb  # the only int64 arithmetic
    x_rows = bb * sxb + ih0 * sxh + iw0 * sxw  # [BLOCK_M] int32, tap (0, 0)

    k_range = tl.arange(0, BLOCK_K)
    a_offs = x_rows[:, None] + k_range[None, :] * sxc  # [BLOCK_M, BLOCK_K]
    w_offs = n[None, :] * swn + k_range[:, None] * swc  # [BLOCK_K, BLOCK_N]
    x_group = x_tile + group * GROUP_IN * sxc
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)

    # k x k taps over the group's own channels: one flat loop over (tap, channel chunk) so it pipelines.
    if TAP_CH < BLOCK_K:
        # Packed taps (GROUP_IN == TAP_CH, a power of two below BLOCK_K): column r of a K block is channel
        # r % TAP_CH of tap step * TAPS + r // TAP_CH, so one dot covers TAPS taps. A thread's 16-byte
        # vector lies inside one tap, so the per-column tap arithmetic is done once per vector.
        TAPS: tl.constexpr = BLOCK_K // TAP_CH
        slot = k_range // TAP_CH
        ch = k_range % TAP_CH
        a_base = x_rows[:, None] + (ch * sxc)[None, :]  # [BLOCK_M, BLOCK_K]
        w_base = n[None, :] * swn + (ch * swc)[:, None]  # [BLOCK_K, BLOCK_N]
        if K * K <= 31:
            # Bit t of a row's word: tap t reads inside the image (built once), so the padding test of a
            # (pixel, tap slot) is one AND with the slot's one-hot bit.
            w_bits = tl.zeros_like(iw0)
            for d in tl.static_range(K):
                w_bits |= _unsigned_below(iw0 + d, W).to(tl.int32) << d
            tap_bits = tl.zeros_like(iw0)
            for d in tl.static_range(K):
                tap_bits |= tl.where(_unsigned_below(ih0 + d, H), w_bits << (d * K), 0)
        # cdiv(K * K, TAPS) steps, counted from the runtime GROUP_IN (== TAP_CH) so that the trip count is
        # not a constant: a constant 3-5 step loop is unrolled, and unrolled it costs more per HGMMA.
        for step in range(0, tl.cdiv(K * K * GROUP_IN, BLOCK_K)):
            t = step * TAPS + slot  # [BLOCK_K]
            kh = t // K
            kw = t - kh * K
            tap_ok = t < K * K
            if K * K <= 31:
                inside = (tap_bits[:, None] & (1 << tl.minimum(t, 31))[None, :]) != 0  # bit 31 is never set
            else:
                kh_test = tl.where(tap_ok, kh, -(1 << 20))  # a padding slot past the last tap fails every test
                inside = (_unsigned_below(ih0[:, None] + kh_test[None, :], H)
                          & _unsigned_below(iw0[:, None] + kw[None, :], W))  # [BLOCK_M, BLOCK_K]
            a = tl.load(x_group + (kh * sxh + kw * sxw)[None, :] + a_base, mask=inside, other=0.0)
            w = tl.load(w_ptr + (kh * swh + kw * sww)[:, None] + w_base, mask=tap_ok[:, None] & n_mask[None, :],
                        other=0.0)
            acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
    else:
        chunks = tl.cdiv(GROUP_IN, BLOCK_K)
        kh = 0
        kw = 0
        c0 = 0
        for _ in range(0, K * K * chunks):
            inside = _unsigned_below(ih0 + kh, H) & _unsigned_below(iw0 + kw, W)  # [BLOCK_M]
            a_ptrs = x_group + (kh * sxh + kw * sxw + c0 * sxc) + a_offs
            w_ptrs = w_ptr + (kh * swh + kw * sww + c0 * swc) + w_offs
            if EVEN_K:
                a = tl.load(a_ptrs, mask=inside[:, None], other=0.0)
                w = tl.load(w_ptrs, mask=n_mask[None, :], other=0.0)
            else:
                c_mask = k_range < GROUP_IN - c0
                a = tl.load(a_ptrs, mask=inside[:, None] & c_mask[None, :], other=0.0)
                w = tl.load(w_ptrs, mask=c_mask[:, None] & n_mask[None, :], other=0.0)
            acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
            c0, kw, kh = _next_tap_chunk(c0, kw, kh, GROUP_IN, K, BLOCK_K)

    # 1 x 1 kernels at the centre tap over the channels before and after the group (weight_pw column j
    # is channel j before the group and j + GROUP_IN after it).
    pointwise = C - GROUP_IN
    x_centre = x_tile + PAD * sxh + PAD * sxw
    group_start = group * GROUP_IN
    pw_offs = n[None, :] * pointwise + k_range[:, None]  # [BLOCK_K, BLOCK_N]
    for j0 in range(0, pointwise, BLOCK_K):
        if EVEN_K:
            c_start = j0 + tl.where(j0 >= group_start, GROUP_IN, 0)
            a = tl.load(x_centre + c_start * sxc + a_offs, mask=row_ok[:, None], other=0.0)
            w = tl.load(wpw_ptr + j0 + pw_offs, mask=n_mask[None, :], other=0.0)
        else:
            j = j0 + k_range
            j_mask = j < pointwise
            c = j + tl.where(j >= group_start, GROUP_IN, 0)
            a = tl.load(x_centre + x_rows[:, None] + c[None, :] * sxc, mask=row_ok[:, None] & j_mask[None, :],
                        other=0.0)
            w = tl.load(wpw_ptr + j0 + pw_offs, mask=j_mask[:, None] & n_mask[None, :], other=0.0)
        acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + n, mask=n_mask, other=0.0).to(ACC_DTYPE)[None, :]

    y_rows = bb * syb + oh * syh + ow * syw  # [BLOCK_M]
    y_ptrs = y_ptr + b0.to(tl.int64) * syb + y_rows[:, None] + n[None, :] * syc
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & n_mask[None, :])


@triton.jit
def hetconv_bwd_input_kernel(
    dy_ptr, w_ptr, wpw_ptr, dx_ptr,
    B, C, H, W, N, Ho, Wo,
    sdyb, sdyc, sdyh, sdyw,
    sdxb, sdxc, sdxh, sdxw,
    swn, swc, swh, sww,
    GROUP_IN, GROUP_OUT, CHANNEL_TILES, TILES_H, TILES_W,
    K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr,
    EVEN_K: tl.constexpr, DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, TAP_CH: tl.constexpr,
):
    """dx[b, c, hi, wi]: rows are input pixels of one stride phase, columns the channels of one group.

    With stride 2 a tile holds the input pixels of one phase (hi % 2, wi % 2), so every tap that reaches
    them reaches all of them at one offset ho = qh + dh: the taps of the other phase are skipped, not
    masked. The k x k part is the transposed convolution over the group's own filters; the 1 x 1 part
    (phase (0, 0) only) gathers every other group's filters at the centre tap.
    """
    BLOCK_M: tl.constexpr = BLOCK_B * BLOCK_H * BLOCK_W
    pid = tl.program_id(0)
    pid_c = pid % CHANNEL_TILES
    pid_pixels = pid // CHANNEL_TILES
    tile_w = pid_pixels % TILES_W
    tile_h = (pid_pixels // TILES_W) % TILES_H
    phase = (pid_pixels // (TILES_W * TILES_H)) % (STRIDE * STRIDE)
    b0 = pid_pixels // (TILES_W * TILES_H * STRIDE * STRIDE) * BLOCK_B
    phase_h = phase // STRIDE
    phase_w = phase % STRIDE

    tiles_per_group = tl.cdiv(GROUP_IN, BLOCK_N)
    group = pid_c // tiles_per_group
    c_local = (pid_c % tiles_per_group) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    c_mask = c_local < GROUP_IN
    c = group * GROUP_IN + c_local

    m = tl.arange(0, BLOCK_M)  # [BLOCK_M]
    bb = m // (BLOCK_H * BLOCK_W)
    qh = tile_h * BLOCK_H + (m // BLOCK_W) % BLOCK_H  # on the phase's sub-grid
    qw = tile_w * BLOCK_W + m % BLOCK_W
    hi = phase_h + qh * STRIDE
    wi = phase_w + qw * STRIDE
    row_ok = (b0 + bb < B) & (hi < H) & (wi < W)
    qh_test = tl.where(row_ok, qh, -2 * K)  # an invalid row fails every tap's test
    dy_tile = dy_ptr + b0.to(tl.int64) * sdyb
    dy_rows = bb * sdyb + qh * sdyh + qw * sdyw  # [BLOCK_M] int32

    k_range = tl.arange(0, BLOCK_K)
    a_offs = dy_rows[:, None] + k_range[None, :] * sdyc  # [BLOCK_M, BLOCK_K]
    w_offs = k_range[:, None] * swn + c_local[None, :] * swc  # [BLOCK_K, BLOCK_N]
    filters = group * GROUP_OUT
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)

    # Taps kh = kh0, kh0 + STRIDE, ... reach this phase, at ho = qh + dh0 - i for the i-th of them.
    kh0 = (phase_h + PAD) % STRIDE
    kw0 = (phase_w + PAD) % STRIDE
    dh0 = (phase_h + PAD) // STRIDE
    dw0 = (phase_w + PAD) // STRIDE
    taps_h = (K - kh0 + STRIDE - 1) // STRIDE
    taps_w = (K - kw0 + STRIDE - 1) // STRIDE
    if TAP_CH < BLOCK_K:
        # Packed taps (GROUP_OUT == TAP_CH, a power of two below BLOCK_K), as in the forward: column r of a
        # K block is filter r % TAP_CH of this phase's tap step * TAPS + r // TAP_CH.
        TAPS: tl.constexpr = BLOCK_K // TAP_CH
        slot = k_range // TAP_CH
        f = k_range % TAP_CH
        a_base = dy_rows[:, None] + ((filters + f) * sdyc)[None, :]  # [BLOCK_M, BLOCK_K]
        w_base = ((filters + f) * swn)[:, None] + c_local[None, :] * swc  # [BLOCK_K, BLOCK_N]
        taps = taps_h * taps_w
        # t // taps_w as a multiply and a shift: exact while t * taps_w < 2**16 (t < taps + TAPS here)
        w_magic = (65536 + taps_w - 1) // taps_w
        if K * K <= 31:
            # Bit i * taps_w + j of a row's word: the phase's tap (i, j) reaches an output pixel (built once;
            # the padding test of a (pixel, tap slot) is one AND with the slot's one-hot bit).
            w_bits = tl.zeros_like(qw)
            for d in tl.static_range(K):
                w_bits |= ((d < taps_w) & _unsigned_below(qw + (dw0 - d), Wo)).to(tl.int32) << d
            tap_bits = tl.zeros_like(qw)
            for d in tl.static_range(K):
                tap_bits |= tl.where((d < taps_h) & _unsigned_below(qh_test + (dh0 - d), Ho), w_bits << (d * taps_w), 0)
        for step in range(0, tl.cdiv(taps * GROUP_OUT, BLOCK_K)):  # cdiv(taps, TAPS), not a constant (forward)
            t = step * TAPS + slot  # [BLOCK_K]
            if STRIDE == 1:
                i = t // K
                j = t - i * K
            else:
                i = (t * w_magic) >> 16
                j = t - i * taps_w
            tap_ok = t < taps
            dw = dw0 - j
            if K * K <= 31:
                dh = dh0 - i
                hit = (tap_bits[:, None] & (1 << tl.minimum(t, 31))[None, :]) != 0  # bit 31 is never set
            else:
                dh = tl.where(tap_ok, dh0 - i, -(1 << 20))  # a padding slot past the last tap fails every test
                hit = (_unsigned_below(qh_test[:, None] + dh[None, :], Ho)
                       & _unsigned_below(qw[:, None] + dw[None, :], Wo))  # [BLOCK_M, BLOCK_K]
            a = tl.load(dy_tile + (dh * sdyh + dw * sdyw)[None, :] + a_base, mask=hit, other=0.0)
            w = tl.load(w_ptr + ((kh0 + i * STRIDE) * swh + (kw0 + j * STRIDE) * sww)[:, None] + w_base,
                        mask=tap_ok[:, None] & c_mask[None, :], other=0.0)
            acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
    else:
        chunks = tl.cdiv(GROUP_OUT, BLOCK_K)
        i = 0
        j = 0
        n0 = 0
        for _ in range(0, taps_h * taps_w * chunks):
            dh = dh0 - i
            dw = dw0 - j
            hit = _unsigned_below(qh_test + dh, Ho) & _unsigned_below(qw + dw, Wo)  # [BLOCK_M]
            a_ptrs = dy_tile + ((filters + n0) * sdyc + dh * sdyh + dw * sdyw) + a_offs
            w_ptrs = w_ptr + ((filters + n0) * swn + (kh0 + i * STRIDE) * swh + (kw0 + j * STRIDE) * sww) + w_offs
            if EVEN_K:
                a = tl.load(a_ptrs, mask=hit[:, None], other=0.0)
                w = tl.load(w_ptrs, mask=c_mask[None, :], other=0.0)
            else:
                n_mask = k_range < GROUP_OUT - n0
                a = tl.load(a_ptrs, mask=hit[:, None] & n_mask[None, :], other=0.0)
                w = tl.load(w_ptrs, mask=n_mask[:, None] & c_mask[None, :], other=0.0)
            acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
            n0, j, i = _next_tap_chunk(n0, j, i, GROUP_OUT, taps_w, BLOCK_K)

    # 1 x 1 part, on the stride grid: filter n before this group reads channel c at weight_pw column
    # c - GROUP_IN, a filter after it at column c.
    pointwise = C - GROUP_IN
    others = tl.where((phase_h == 0) & (phase_w == 0), N - GROUP_OUT, 0)
    pw_offs = k_range[:, None] * pointwise + c[None, :]  # [BLOCK_K, BLOCK_N]
    for j0 in range(0, others, BLOCK_K):
        if EVEN_K:
            before = j0 < filters
            n_start = j0 + tl.where(before, 0, GROUP_OUT)
            a = tl.load(dy_tile + n_start * sdyc + a_offs, mask=row_ok[:, None], other=0.0)
            w = tl.load(wpw_ptr + (n_start * pointwise - tl.where(before, GROUP_IN, 0)) + pw_offs,
                        mask=c_mask[None, :], other=0.0)
        else:
            jj = j0 + k_range
            j_mask = jj < N - GROUP_OUT
            before_n = jj < filters
            nn = jj + tl.where(before_n, 0, GROUP_OUT)
            a = tl.load(dy_tile + dy_rows[:, None] + nn[None, :] * sdyc, mask=row_ok[:, None] & j_mask[None, :],
                        other=0.0)
            w = tl.load(wpw_ptr + nn[:, None] * pointwise + c[None, :] - tl.where(before_n, GROUP_IN, 0)[:, None],
                        mask=j_mask[:, None] & c_mask[None, :], other=0.0)
        acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)

    dx_rows = bb * sdxb + hi * sdxh + wi * sdxw  # [BLOCK_M]
    dx_ptrs = dx_ptr + b0.to(tl.int64) * sdxb + dx_rows[:, None] + c[None, :] * sdxc
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=row_ok[:, None] & c_mask[None, :])


@triton.jit
def hetconv_bwd_weight_kernel(
    x_ptr, dy_ptr, partial_ptr,
    B, C, H, W, N, Ho, Wo,
    sxb, sxc, sxh, sxw,
    sdyb, sdyc, sdyh, sdyw,
    GROUP_IN, GROUP_OUT, COLUMNS,
    CENTRE_COL_TILES, CENTRE_PROGRAMS, OFF_COL_TILES, CHANNEL_BLOCKS, OFF_ROW_TILES,
    TILES_H, TILES_W, PIXEL_TILES, TILES_PER_SPLIT,
    K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, HAS_BIAS: tl.constexpr,
    CHANNELS_PER_TAP: tl.constexpr, DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """Weight gradients over one split of the pixel tiles, as a [BLOCK_R, BLOCK_N] tile of
    partial[split, n, column] (ACC_DTYPE; ``hetconv_weight_reduce_kernel`` sums the splits in a fixed
    order, casts and scatters them into the parameters' layouts).

    Rows are weight columns, so the tensor-core tile has BLOCK_R >= 64 rows whatever the group size:
    - centre programs (the first CENTRE_PROGRAMS): rows are all C input channels at the centre tap and
      columns all N filters: one dense 1 x 1 weight gradient that holds both weight_pw and the in-group
      centre taps (column c of partial);
    - off-centre programs: rows are (tap, channel) pairs of one group's k x k kernels without the
      centre, CHANNELS_PER_TAP channels of BLOCK_R // CHANNELS_PER_TAP taps (column
      C + tap' * GROUP_IN + channel), and columns the group's filters.
    A row's tap is a loop-invariant offset, so the x tile of every reduction step is one gather with
    per-(pixel, tap) masks; the first centre row tile also sums dy for the bias (column COLUMNS - 1).
    """
    BLOCK_P: tl.constexpr = BLOCK_B * BLOCK_H * BLOCK_W
    TAPS_PER_TILE: tl.constexpr = BLOCK_R // CHANNELS_PER_TAP
    pid = tl.program_id(0)
    split = tl.program_id(1)
    r = tl.arange(0, BLOCK_R)
    nr = tl.arange(0, BLOCK_N)

    # ---- what this program's rows and columns are (once per program) ----
    centre = pid < CENTRE_PROGRAMS
    q = tl.where(centre, 0, pid - CENTRE_PROGRAMS)
    per_group = OFF_ROW_TILES * OFF_COL_TILES
    group = q // per_group
    off_row_tile = (q % per_group) // OFF_COL_TILES
    off_col_tile = q % OFF_COL_TILES
    centre_row_tile = pid // CENTRE_COL_TILES
    centre_col_tile = pid % CENTRE_COL_TILES

    # off-centre rows: tap' (k x k taps without the centre) and channel within the group
    tap_skip = off_row_tile // CHANNEL_BLOCKS * TAPS_PER_TILE + r // CHANNELS_PER_TAP
    c_local = (off_row_tile % CHANNEL_BLOCKS) * CHANNELS_PER_TAP + r % CHANNELS_PER_TAP
    centre_tap = (K * K) // 2
    tap = tap_skip + (tap_skip >= centre_tap).to(tl.int32)
    centre_c = centre_row_tile * BLOCK_R + r

    row_ok = tl.where(centre, centre_c < C, (tap_skip < K * K - 1) & (c_local < GROUP_IN))
    kh = tl.where(centre, PAD, tap // K)
    kw = tl.where(centre, PAD, tap % K)
    channel = tl.where(centre, centre_c, group * GROUP_IN + c_local)
    column = tl.where(centre, centre_c, C + tap_skip * GROUP_IN + c_local)
    n = tl.where(centre, centre_col_tile * BLOCK_N + nr, group * GROUP_OUT + off_col_tile * BLOCK_N + nr)
    n_ok = tl.where(centre, n < N, off_col_tile * BLOCK_N + nr < GROUP_OUT)
    kh = tl.where(row_ok, kh, PAD)
    row_offs = (kh - PAD) * sxh + (kw - PAD) * sxw + channel * sxc  # [BLOCK_R]
    # Output rows o whose tap (kh, kw) reads inside the image: o * STRIDE + kh - PAD in [0, H), o < Ho;
    # o in [h_first, h_first + h_span) (likewise columns). An invalid row gets an empty range.
    h_first = (tl.maximum(PAD - kh, 0) + STRIDE - 1) // STRIDE  # [BLOCK_R]
    w_first = (tl.maximum(PAD - kw, 0) + STRIDE - 1) // STRIDE
    h_span = tl.where(row_ok, tl.minimum((tl.maximum(H + PAD - kh, 0) + STRIDE - 1) // STRIDE, Ho) - h_first, 0)
    w_span = tl.minimum((tl.maximum(W + PAD - kw, 0) + STRIDE - 1) // STRIDE, Wo) - w_first
    h_span = tl.maximum(h_span, 0)
    w_span = tl.maximum(w_span, 0)

    mp = tl.arange(0, BLOCK_P)
    pb = mp // (BLOCK_H * BLOCK_W)
    ph = (mp // BLOCK_W) % BLOCK_H
    pw = mp % BLOCK_W
    x_offs = (pb * sxb + ph * STRIDE * sxh + pw * STRIDE * sxw)[:, None] + row_offs[None, :]  # [BLOCK_P, BLOCK_R]
    dy_offs = (pb * sdyb + ph * sdyh + pw * sdyw)[:, None] + n[None, :] * sdyc  # [BLOCK_P, BLOCK_N]
    # The padding test of a (pixel, row) at tile origin (oh0, ow0) is one add and one unsigned compare per
    # axis on loop-invariant int32 tiles: (oh0 + ph - h_first) unsigned< h_span; it also holds oh0 + ph < Ho.
    h_rel = ph[:, None] - h_first[None, :]  # [BLOCK_P, BLOCK_R]
    w_rel = pw[:, None] - w_first[None, :]
    pixel_rows_left = Ho - ph  # [BLOCK_P]: oh0 < Ho - ph <=> the pixel's row exists
    pixel_cols_left = Wo - pw

    acc = tl.zeros((BLOCK_R, BLOCK_N), dtype=ACC_DTYPE)
    bias_acc = tl.zeros((BLOCK_N,), dtype=ACC_DTYPE)
    # ---- reduction over this split's pixel tiles, walked with counters ----
    first = split * TILES_PER_SPLIT
    steps = tl.minimum(PIXEL_TILES - first, TILES_PER_SPLIT)
    tile_w = first % TILES_W
    tile_h = (first // TILES_W) % TILES_H
    b0 = first // (TILES_W * TILES_H) * BLOCK_B
    # The tiles' base pointers are bumped, never recomputed: one 64-bit scalar add per step, whose
    # amount (next column, next row of tiles, next image block) is a select of loop-invariant scalars.
    x_tile = x_ptr + (b0.to(tl.int64) * sxb + tile_h * (BLOCK_H * STRIDE) * sxh + tile_w * (BLOCK_W * STRIDE) * sxw)
    dy_tile = dy_ptr + (b0.to(tl.int64) * sdyb + tile_h * BLOCK_H * sdyh + tile_w * BLOCK_W * sdyw)
    x_col_step = (BLOCK_W * STRIDE) * sxw.to(tl.int64)
    x_row_step = (BLOCK_H * STRIDE) * sxh.to(tl.int64) - (TILES_W - 1) * x_col_step
    x_image_step = BLOCK_B * sxb.to(tl.int64) - (TILES_H - 1) * (BLOCK_H * STRIDE) * sxh.to(tl.int64) \
        - (TILES_W - 1) * x_col_step
    dy_col_step = BLOCK_W * sdyw.to(tl.int64)
    dy_row_step = BLOCK_H * sdyh.to(tl.int64) - (TILES_W - 1) * dy_col_step
    dy_image_step = BLOCK_B * sdyb.to(tl.int64) - (TILES_H - 1) * BLOCK_H * sdyh.to(tl.int64) \
        - (TILES_W - 1) * dy_col_step
    for _ in range(0, steps):
        if BLOCK_B > 1:
            # Several images per tile only when one image is smaller than the tile (``launch.pixel_tile``):
            # the tile is then the whole image (TILES_H = TILES_W = 1), so the pixel tests are
            # loop-invariant and only the image count is tested per step.
            image_ok = pb < B - b0  # [BLOCK_P]
            pixel_ok = image_ok & (0 < pixel_rows_left) & (0 < pixel_cols_left)
            inside = (_unsigned_below(h_rel, h_span[None, :]) & _unsigned_below(w_rel, w_span[None, :])
                      & image_ok[:, None])  # [BLOCK_P, BLOCK_R]
        else:
            oh0 = tile_h * BLOCK_H
            ow0 = tile_w * BLOCK_W
            pixel_ok = (oh0 < pixel_rows_left) & (ow0 < pixel_cols_left)  # [BLOCK_P]
            inside = (_unsigned_below(h_rel + oh0, h_span[None, :])
                      & _unsigned_below(w_rel + ow0, w_span[None, :]))  # [BLOCK_P, BLOCK_R]
        xs = tl.load(x_tile + x_offs, mask=inside, other=0.0)  # [BLOCK_P, BLOCK_R]
        dys = tl.load(dy_tile + dy_offs, mask=pixel_ok[:, None] & n_ok[None, :], other=0.0)  # [BLOCK_P, BLOCK_N]
        acc = tl.dot(tl.trans(xs), dys, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
        if HAS_BIAS:
            bias_acc += tl.sum(dys.to(ACC_DTYPE), axis=0)
        tile_w += 1
        next_row = tile_w == TILES_W
        tile_w = tl.where(next_row, 0, tile_w)
        tile_h = tl.where(next_row, tile_h + 1, tile_h)
        next_image = tile_h == TILES_H
        tile_h = tl.where(next_image, 0, tile_h)
        b0 = tl.where(next_image, b0 + BLOCK_B, b0)
        x_tile += tl.where(next_image, x_image_step, tl.where(next_row, x_row_step, x_col_step))
        dy_tile += tl.where(next_image, dy_image_step, tl.where(next_row, dy_row_step, dy_col_step))

    out = partial_ptr + split.to(tl.int64) * N * COLUMNS
    tl.store(out + n[None, :] * COLUMNS + column[:, None], acc, mask=row_ok[:, None] & n_ok[None, :])
    if HAS_BIAS:
        tl.store(out + n * COLUMNS + (COLUMNS - 1), bias_acc, mask=n_ok & centre & (centre_row_tile == 0))


@triton.jit
def hetconv_weight_reduce_kernel(
    partial_ptr, dw_ptr, dpw_ptr, db_ptr,
    N, C, GROUP_IN, GROUP_OUT, COLUMNS, SPLITS,
    sdwn, sdwc, sdwh, sdww,
    K: tl.constexpr, HAS_BIAS: tl.constexpr, ACC_DTYPE: tl.constexpr, BLOCK: tl.constexpr,
):
    """Sum partial[split, n, column] over the splits (in order) and scatter each column, cast, to its
    parameter: weight (centre tap of in-group channels and the off-centre taps), weight_pw, bias."""
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    mask = e < N * COLUMNS
    total = tl.zeros((BLOCK,), dtype=ACC_DTYPE)
    ptrs = partial_ptr + e
    for _ in range(0, SPLITS):
        total += tl.load(ptrs, mask=mask, other=0.0)
        ptrs += N * COLUMNS  # a pointer bump: 64-bit however many splits

    n = e // COLUMNS
    col = e % COLUMNS
    group = n // GROUP_OUT
    own_start = group * GROUP_IN
    is_centre = col < C
    in_group = is_centre & (col >= own_start) & (col < own_start + GROUP_IN)
    tap_skip = (col - C) // GROUP_IN
    tap = tap_skip + (tap_skip >= (K * K) // 2).to(tl.int32)
    off_centre = (col >= C) & (tap_skip < K * K - 1)
    # weight[n, channel, kh, kw]
    w_channel = tl.where(in_group, col - own_start, (col - C) % GROUP_IN)
    w_tap = tl.where(in_group, (K * K) // 2, tap)
    w_offs = n * sdwn + w_channel * sdwc + (w_tap // K) * sdwh + (w_tap % K) * sdww
    tl.store(dw_ptr + w_offs, total.to(dw_ptr.dtype.element_ty), mask=mask & (in_group | off_centre))
    pw_column = col - tl.where(col >= own_start + GROUP_IN, GROUP_IN, 0)
    tl.store(dpw_ptr + n * (C - GROUP_IN) + pw_column, total.to(dpw_ptr.dtype.element_ty),
             mask=mask & is_centre & ~in_group)
    if HAS_BIAS:
        tl.store(db_ptr + n, total.to(db_ptr.dtype.element_ty), mask=mask & (col == COLUMNS - 1))
