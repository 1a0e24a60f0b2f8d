"""Triton kernels for HetConv2d (blocked layout, SPEC section 1).

Filter n belongs to group g = n // GROUP_OUT and sees the GROUP_IN channels of group g through k x k
kernels and every other channel through a 1 x 1 kernel at the centre tap. Each kernel is an implicit
GEMM whose reduction visits exactly those (channel, tap) pairs: no masked zeros are ever multiplied.

All index arithmetic that can pass 2^31 elements is int64. Tensors are addressed through explicit
strides, so NCHW and channels_last inputs take the same code. ``weight`` [N, GROUP_IN, K, K] is
addressed through its strides too (the launcher passes it channels_last, so a tile's channels are
contiguous); ``weight_pw`` [N, M - GROUP_IN] is contiguous.
"""

import triton
import triton.language as tl


@triton.jit
def hetconv_fwd_kernel(
    x_ptr, w_ptr, wpw_ptr, bias_ptr, y_ptr,
    B, M, H, W, N, Ho, Wo,
    sxb, sxc, sxh, sxw,
    syb, syc, syh, syw,
    swn, swc, swh, sww,
    GROUP_IN, GROUP_OUT,
    K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr,
    HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y[b, n, ho, wo]: rows are output pixels, columns are the filters of one group."""
    pid_pixels = tl.program_id(0)
    pid_filters = tl.program_id(1)
    tiles_per_group = tl.cdiv(GROUP_OUT, BLOCK_N)
    group = pid_filters // tiles_per_group
    n_local = (pid_filters % tiles_per_group) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    n_mask = n_local < GROUP_OUT
    n = (group * GROUP_OUT + n_local).to(tl.int64)

    pixel = pid_pixels.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    pixel_mask = pixel < B * Ho * Wo
    b = pixel // (Ho * Wo)
    ho = (pixel // Wo) % Ho
    wo = pixel % Wo
    x_rows = x_ptr + b * sxb  # [BLOCK_M]

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    k_range = tl.arange(0, BLOCK_K)

    # k x k taps over the group's own channels: one flat loop over (tap, channel chunk) so the
    # compiler can pipeline it.
    chunks = tl.cdiv(GROUP_IN, BLOCK_K)
    for step in range(0, K * K * chunks):
        tap = step // chunks
        c_local = (step % chunks) * BLOCK_K + k_range  # [BLOCK_K]
        c_mask = c_local < GROUP_IN
        hi = ho * STRIDE - PAD + tap // K
        wi = wo * STRIDE - PAD + tap % K
        inside = pixel_mask & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
        c = (group * GROUP_IN + c_local).to(tl.int64)
        a = tl.load(x_rows[:, None] + hi[:, None] * sxh + wi[:, None] * sxw + c[None, :] * sxc,
                    mask=inside[:, None] & c_mask[None, :], other=0.0)  # [BLOCK_M, BLOCK_K]
        w = tl.load(w_ptr + n[None, :] * swn + c_local[:, None] * swc + (tap // K) * swh + (tap % K) * sww,
                    mask=c_mask[:, None] & n_mask[None, :], other=0.0)  # [BLOCK_K, BLOCK_N]
        acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)

    # 1 x 1 kernels over every channel outside the group, read at the centre tap.
    pointwise = M - GROUP_IN
    x_centre = x_rows + (ho * STRIDE) * sxh + (wo * STRIDE) * sxw  # [BLOCK_M]
    for j0 in range(0, pointwise, BLOCK_K):
        j = j0 + k_range  # [BLOCK_K] index into weight_pw's columns
        j_mask = j < pointwise
        c = (j + tl.where(j >= group * GROUP_IN, GROUP_IN, 0)).to(tl.int64)
        a = tl.load(x_centre[:, None] + c[None, :] * sxc,
                    mask=pixel_mask[:, None] & j_mask[None, :], other=0.0)  # [BLOCK_M, BLOCK_K]
        w = tl.load(wpw_ptr + n[None, :] * pointwise + j[:, None],
                    mask=j_mask[:, None] & n_mask[None, :], other=0.0)  # [BLOCK_K, BLOCK_N]
        acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + n, mask=n_mask, other=0.0).to(ACC_DTYPE)[None, :]

    y_ptrs = y_ptr + b[:, None] * syb + n[None, :] * syc + ho[:, None] * syh + wo[:, None] * syw
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=pixel_mask[:, None] & n_mask[None, :])


@triton.jit
def hetconv_bwd_input_kernel(
    dy_ptr, w_ptr, wpw_ptr, dx_ptr,
    B, M, H, W, N, Ho, Wo,
    sdyb, sdyc, sdyh, sdyw,
    sdxb, sdxc, sdxh, sdxw,
    swn, swc, swh, sww,
    GROUP_IN, GROUP_OUT,
    K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dx[b, c, hi, wi]: rows are input pixels, columns are the input channels of one group.

    The k x k part is the transposed convolution over the group's own filters; the 1 x 1 part
    gathers, for input pixels on the stride grid, every other group's filters at the centre tap.
    """
    pid_pixels = tl.program_id(0)
    pid_channels = tl.program_id(1)
    tiles_per_group = tl.cdiv(GROUP_IN, BLOCK_N)
    group = pid_channels // tiles_per_group
    c_local = (pid_channels % tiles_per_group) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    c_mask = c_local < GROUP_IN
    c = (group * GROUP_IN + c_local).to(tl.int64)

    pixel = pid_pixels.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    pixel_mask = pixel < B * H * W
    b = pixel // (H * W)
    hi = (pixel // W) % H
    wi = pixel % W
    dy_rows = dy_ptr + b * sdyb  # [BLOCK_M]

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    k_range = tl.arange(0, BLOCK_K)

    chunks = tl.cdiv(GROUP_OUT, BLOCK_K)
    for step in range(0, K * K * chunks):
        tap = step // chunks
        n_local = (step % chunks) * BLOCK_K + k_range  # [BLOCK_K]
        n_mask = n_local < GROUP_OUT
        ho_strided = hi + PAD - tap // K
        wo_strided = wi + PAD - tap % K
        ho = ho_strided // STRIDE
        wo = wo_strided // STRIDE
        hit = (pixel_mask & (ho_strided >= 0) & (wo_strided >= 0)
               & (ho_strided % STRIDE == 0) & (wo_strided % STRIDE == 0) & (ho < Ho) & (wo < Wo))
        n = (group * GROUP_OUT + n_local).to(tl.int64)
        a = tl.load(dy_rows[:, None] + ho[:, None] * sdyh + wo[:, None] * sdyw + n[None, :] * sdyc,
                    mask=hit[:, None] & n_mask[None, :], other=0.0)  # [BLOCK_M, BLOCK_K]
        w = tl.load(w_ptr + n[:, None] * swn + c_local[None, :] * swc + (tap // K) * swh + (tap % K) * sww,
                    mask=n_mask[:, None] & c_mask[None, :], other=0.0)  # [BLOCK_K, BLOCK_N]
        acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)

    # 1 x 1 part: filter n of group g_n != group reads channel c at weight_pw column
    # c if group < g_n, else c - GROUP_IN (its own group's channels are skipped in that list).
    pointwise = M - GROUP_IN
    on_grid = pixel_mask & (hi % STRIDE == 0) & (wi % STRIDE == 0)
    dy_centre = dy_rows + (hi // STRIDE) * sdyh + (wi // STRIDE) * sdyw  # [BLOCK_M]
    for j0 in range(0, N - GROUP_OUT, BLOCK_K):
        j = j0 + k_range  # [BLOCK_K] index over the filters outside this group
        j_mask = j < N - GROUP_OUT
        n = (j + tl.where(j >= group * GROUP_OUT, GROUP_OUT, 0)).to(tl.int64)
        n_group = n // GROUP_OUT
        a = tl.load(dy_centre[:, None] + n[None, :] * sdyc,
                    mask=on_grid[:, None] & j_mask[None, :], other=0.0)  # [BLOCK_M, BLOCK_K]
        column = c[None, :] - tl.where(n_group[:, None] < group, GROUP_IN, 0)
        w = tl.load(wpw_ptr + n[:, None] * pointwise + column,
                    mask=j_mask[:, None] & c_mask[None, :], other=0.0)  # [BLOCK_K, BLOCK_N]
        acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)

    dx_ptrs = dx_ptr + b[:, None] * sdxb + c[None, :] * sdxc + hi[:, None] * sdxh + wi[:, None] * sdxw
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=pixel_mask[:, None] & c_mask[None, :])


@triton.jit
def hetconv_bwd_weight_kernel(
    x_ptr, dy_ptr, partial_ptr, partial_bias_ptr,
    B, M, H, W, N, Ho, Wo,
    sxb, sxc, sxh, sxw,
    sdyb, sdyc, sdyh, sdyw,
    GROUP_IN, GROUP_OUT, PIXELS_PER_SPLIT,
    K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr,
    POINTWISE: tl.constexpr, HAS_BIAS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Partial weight gradients over one split of the output pixels: [BLOCK_N filters, BLOCK_C columns].

    POINTWISE=False: columns are (group channel, tap) of ``weight``; program axis 1 walks taps x chunks.
    POINTWISE=True: columns are ``weight_pw``'s; the first column tile also sums dy for the bias.
    Partials go to ``partial_ptr[split, ...]`` in ACC_DTYPE and are summed by the launcher: a fixed
    order, so the result is deterministic.
    """
    pid_filters = tl.program_id(0)
    pid_columns = tl.program_id(1)
    split = tl.program_id(2)
    tiles_per_group = tl.cdiv(GROUP_OUT, BLOCK_N)
    group = pid_filters // tiles_per_group
    n_local = (pid_filters % tiles_per_group) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    n_mask = n_local < GROUP_OUT
    n = (group * GROUP_OUT + n_local).to(tl.int64)

    pointwise = M - GROUP_IN
    if POINTWISE:
        column = pid_columns * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C] weight_pw column
        column_mask = column < pointwise
        c = (column + tl.where(column >= group * GROUP_IN, GROUP_IN, 0)).to(tl.int64)
        tap_h = PAD
        tap_w = PAD
    else:
        chunks = tl.cdiv(GROUP_IN, BLOCK_C)
        tap = pid_columns // chunks
        column = (pid_columns % chunks) * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C] channel in group
        column_mask = column < GROUP_IN
        c = (group * GROUP_IN + column).to(tl.int64)
        tap_h = tap // K
        tap_w = tap % K

    acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=ACC_DTYPE)
    bias_acc = tl.zeros((BLOCK_N,), dtype=ACC_DTYPE)
    p_range = tl.arange(0, BLOCK_P)
    total_pixels = B * Ho * Wo
    first = split.to(tl.int64) * PIXELS_PER_SPLIT
    for p0 in range(0, PIXELS_PER_SPLIT, BLOCK_P):
        pixel = first + p0 + p_range  # [BLOCK_P]
        pixel_mask = (pixel < total_pixels) & (p0 + p_range < PIXELS_PER_SPLIT)
        b = pixel // (Ho * Wo)
        ho = (pixel // Wo) % Ho
        wo = pixel % Wo
        dy = tl.load(dy_ptr + b[None, :] * sdyb + n[:, None] * sdyc + ho[None, :] * sdyh + wo[None, :] * sdyw,
                     mask=n_mask[:, None] & pixel_mask[None, :], other=0.0)  # [BLOCK_N, BLOCK_P]
        hi = ho * STRIDE - PAD + tap_h
        wi = wo * STRIDE - PAD + tap_w
        inside = pixel_mask & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
        x = tl.load(x_ptr + b[:, None] * sxb + c[None, :] * sxc + hi[:, None] * sxh + wi[:, None] * sxw,
                    mask=inside[:, None] & column_mask[None, :], other=0.0)  # [BLOCK_P, BLOCK_C]
        acc = tl.dot(dy, x, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
        if POINTWISE and HAS_BIAS:
            bias_acc += tl.sum(dy.to(ACC_DTYPE), axis=1)

    if POINTWISE:
        out = partial_ptr + split.to(tl.int64) * N * pointwise + n[:, None] * pointwise + column[None, :]
    else:
        out = (partial_ptr + split.to(tl.int64) * N * GROUP_IN * K * K
               + n[:, None] * (GROUP_IN * K * K) + column[None, :] * (K * K) + tap_h * K + tap_w)
    tl.store(out, acc, mask=n_mask[:, None] & column_mask[None, :])
    if POINTWISE and HAS_BIAS:
        if pid_columns == 0:
            tl.store(partial_bias_ptr + split.to(tl.int64) * N + n, bias_acc, mask=n_mask)
