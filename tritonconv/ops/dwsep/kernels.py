"""Triton kernels for the fused depthwise-separable conv (SPEC section 2).

The depthwise result never reaches memory, and each [BLOCK_P pixels, BLOCK_C channels] depthwise tile
is computed once for as many output filters as the registers hold:

- ``dwsep_fwd_kernel``: a program owns BLOCK_P output pixels and CHUNKS filter chunks of BLOCK_N (one
  accumulator each, up to ``MAX_CHUNKS``). For every channel chunk it computes the depthwise tile (bias
  and activation applied) once and feeds it to the pointwise tl.dot of every filter chunk it owns. When
  N needs more chunks than that, grid axis 1 splits them and each split recomputes the tile (the
  launcher's plan says so in ``explain()``).
- ``dwsep_bwd_kernel``: one pass over dy for both pointwise gradients. A program owns a channel chunk,
  a group of filter chunks and a split of the pixels; per pixel block it recomputes the depthwise tile
  h and reads dy' (dy through out_activation's mask) once per filter chunk, accumulating the partial
  grad pw_weight dy'^T @ h ([BLOCK_N filters, BLOCK_C channels], HGMMA rows = filters, padded to 64 if
  needed) and grad pw_bias; the first filter group also forms dz = act'(z) * (dy' @ pw_weight) and
  writes it in the input dtype (fp32 accumulation) for the depthwise backward kernels.
- ``dwsep_bwd_depthwise_kernel``: the depthwise backward on dz in one launch: its first programs
  are the depthwise grad-weight kernel's (partials of every tap and dw_bias), the rest its grad-input
  kernel's (``depthwise.kernels``' bodies; both only read dz and x, so neither waits for the other).
- ``dwsep_reduce_kernel``: every split-K partial of the step (grad pw_weight, pw_bias, dw_weight,
  dw_bias) summed in split order (deterministic), written in the parameters' dtype and layout.

Channels are the contiguous axis in channels_last: every tap of the depthwise tile is one vector load
per pixel row, its weights one more (taps-major [K*K, C] in the parameter's dtype: the layer's own
layout, ``depthwise.layout``). As in the depthwise kernels, batch and pixel strides arrive divided by VEC and
each tensor as a 16-byte-aligned base plus an offset in units of VEC. Pixels are decomposed into
(b, ho, wo) once per program in int32 (``kernel_helpers.pixel_walk_start``), advanced by carries in the
backward's pixel loop; offsets inside an image are int32 and only an image's base offset is int64 (the
launcher checks both fit).
"""

import triton
import triton.language as tl

from tritonconv.kernel_helpers import pixel_advance, pixel_steps, pixel_walk_start, sum_split_rows
from tritonconv.ops.depthwise.kernels import (
    ACT_NONE,
    activate,
    activation_grad,
    backward_input_tile,
    backward_weight_tile,
    reduce_weight_tile,
)

MAX_CHUNKS = 4  # filter chunks (one accumulator each) a program can own: the kernels name 4


@triton.jit
def depthwise_taps(x_rows, x_offsets, hi0, wi0, pixel_mask, w_ptr, bias_ptr, c, c_mask, C, H, W, sxh, sxw,
                   K: tl.constexpr, DIL: tl.constexpr, HAS_BIAS: tl.constexpr, ACC_DTYPE: tl.constexpr,
                   BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Depthwise pre-activation z [BLOCK_P, BLOCK_C] (+ bias), 0 in masked rows and columns.

    ``x_rows`` [BLOCK_P] points at each pixel's image, ``x_offsets`` [BLOCK_P, BLOCK_C] (int32) at its
    window's first tap; weights are taps-major [K*K, C] in the parameter's dtype: one vector load per
    tap for x and for w, the weights' conversion one [BLOCK_C] vector per tap (beside BLOCK_P x BLOCK_C
    FFMAs).
    """
    if HAS_BIAS:  # the taps accumulate onto the bias (no add per element)
        bias = tl.load(bias_ptr + c, mask=c_mask, other=0.0).to(ACC_DTYPE)  # [BLOCK_C]
        z = tl.broadcast_to(bias[None, :], (BLOCK_P, BLOCK_C))
    else:
        z = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC_DTYPE)
    x_tile = x_rows[:, None] + x_offsets  # [BLOCK_P, BLOCK_C]
    for kh in range(0, K):
        hi = hi0 + kh * DIL
        row_ok = pixel_mask & (hi >= 0) & (hi < H)  # [BLOCK_P]
        for kw in tl.static_range(K):
            wi = wi0 + kw * DIL
            inside = row_ok & (wi >= 0) & (wi < W)
            xv = tl.load(x_tile + (kh * DIL * sxh + kw * DIL * sxw), mask=inside[:, None] & c_mask[None, :],
                         other=0.0)  # [BLOCK_P, BLOCK_C]
            wv = tl.load(w_ptr + (kh * K + kw) * C + c, mask=c_mask, other=0.0).to(ACC_DTYPE)  # [BLOCK_C]
            z += xv.to(ACC_DTYPE) * wv[None, :]
    return z


@triton.jit
def _pointwise_chunk(h, acc, pw_w_ptr, n0, c, c_mask, C, N, DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
                     BLOCK_N: tl.constexpr):
    """acc [BLOCK_P, BLOCK_N] += h [BLOCK_P, BLOCK_C] @ pw[n0:n0+BLOCK_N, c]^T."""
    n = n0 + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    pw = tl.load(pw_w_ptr + n[None, :] * C + c[:, None], mask=c_mask[:, None] & (n < N)[None, :],
                 other=0.0)  # [BLOCK_C, BLOCK_N]
    return tl.dot(h, pw, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)


@triton.jit
def _store_chunk(acc, pw_b_ptr, y_rows, y_pixels, pixel_mask, n0, N, syc, OUT_ACT: tl.constexpr,
                 HAS_PW_BIAS: tl.constexpr, ACC_DTYPE: tl.constexpr, BLOCK_N: tl.constexpr):
    n = n0 + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    n_mask = n < N
    if HAS_PW_BIAS:
        acc += tl.load(pw_b_ptr + n, mask=n_mask, other=0.0).to(ACC_DTYPE)[None, :]
    acc = activate(acc, OUT_ACT)
    tl.store(y_rows[:, None] + (y_pixels[:, None] + (n * syc)[None, :]), acc.to(y_rows.dtype.element_ty),
             mask=pixel_mask[:, None] & n_mask[None, :])


@triton.jit
def dwsep_fwd_kernel(
    x_ptr, dw_w_ptr, dw_b_ptr, pw_w_ptr, pw_b_ptr, y_ptr,
    PIXELS, C_V, H, W, N_V, Ho, Wo,
    sxb_v, sxc, sxh_v, sxw_v, x_off_v,
    syb_v, syc, syh_v, syw_v, y_off_v,
    K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr,
    ACT: tl.constexpr, OUT_ACT: tl.constexpr, HAS_DW_BIAS: tl.constexpr, HAS_PW_BIAS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr, VEC: tl.constexpr, CHUNKS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """y[b, n, ho, wo] = out_act(sum_c act(dw(x) + dw_bias)[b, c, ho, wo] pw[n, c] + pw_bias[n]);
    grid (pixel tiles, filter groups of CHUNKS * BLOCK_N)."""
    first = tl.program_id(0) * BLOCK_P
    n_first = tl.program_id(1) * (CHUNKS * BLOCK_N)
    C = C_V * VEC
    N = N_V * VEC
    b, ho, wo = pixel_walk_start(first, 0, Ho, Wo, BLOCK_P)  # [BLOCK_P] int32
    pixel_mask = first + tl.arange(0, BLOCK_P) < PIXELS
    sxh = sxh_v * VEC
    sxw = sxw_v * VEC
    hi0 = ho * STRIDE - PAD  # [BLOCK_P]
    wi0 = wo * STRIDE - PAD
    x_rows = x_ptr + (b.to(tl.int64) * sxb_v + x_off_v) * VEC  # [BLOCK_P]
    x_pixels = hi0 * sxh + wi0 * sxw  # [BLOCK_P] int32

    acc0 = tl.zeros((BLOCK_P, BLOCK_N), dtype=ACC_DTYPE)
    acc1 = tl.zeros((BLOCK_P, BLOCK_N), dtype=ACC_DTYPE)
    acc2 = tl.zeros((BLOCK_P, BLOCK_N), dtype=ACC_DTYPE)
    acc3 = tl.zeros((BLOCK_P, BLOCK_N), dtype=ACC_DTYPE)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)  # [BLOCK_C]
        c_mask = c < C
        z = depthwise_taps(x_rows, x_pixels[:, None] + (c * sxc)[None, :], hi0, wi0, pixel_mask, dw_w_ptr, dw_b_ptr,
                           c, c_mask, C, H, W, sxh, sxw, K, DIL, HAS_DW_BIAS, ACC_DTYPE, BLOCK_P, BLOCK_C)
        h = activate(z, ACT).to(pw_w_ptr.dtype.element_ty)  # [BLOCK_P, BLOCK_C], reused by every chunk
        acc0 = _pointwise_chunk(h, acc0, pw_w_ptr, n_first, c, c_mask, C, N, DOT_PRECISION, ACC_DTYPE, BLOCK_N)
        if CHUNKS > 1:
            acc1 = _pointwise_chunk(h, acc1, pw_w_ptr, n_first + BLOCK_N, c, c_mask, C, N, DOT_PRECISION, ACC_DTYPE,
                                    BLOCK_N)
        if CHUNKS > 2:
            acc2 = _pointwise_chunk(h, acc2, pw_w_ptr, n_first + 2 * BLOCK_N, c, c_mask, C, N, DOT_PRECISION,
                                    ACC_DTYPE, BLOCK_N)
        if CHUNKS > 3:
            acc3 = _pointwise_chunk(h, acc3, pw_w_ptr, n_first + 3 * BLOCK_N, c, c_mask, C, N, DOT_PRECISION,
                                    ACC_DTYPE, BLOCK_N)

    y_rows = y_ptr + (b.to(tl.int64) * syb_v + y_off_v) * VEC  # [BLOCK_P]
    y_pixels = ho * (syh_v * VEC) + wo * (syw_v * VEC)  # [BLOCK_P] int32
    _store_chunk(acc0, pw_b_ptr, y_rows, y_pixels, pixel_mask, n_first, N, syc, OUT_ACT, HAS_PW_BIAS, ACC_DTYPE,
                 BLOCK_N)
    if CHUNKS > 1:
        _store_chunk(acc1, pw_b_ptr, y_rows, y_pixels, pixel_mask, n_first + BLOCK_N, N, syc, OUT_ACT, HAS_PW_BIAS,
                     ACC_DTYPE, BLOCK_N)
    if CHUNKS > 2:
        _store_chunk(acc2, pw_b_ptr, y_rows, y_pixels, pixel_mask, n_first + 2 * BLOCK_N, N, syc, OUT_ACT,
                     HAS_PW_BIAS, ACC_DTYPE, BLOCK_N)
    if CHUNKS > 3:
        _store_chunk(acc3, pw_b_ptr, y_rows, y_pixels, pixel_mask, n_first + 3 * BLOCK_N, N, syc, OUT_ACT,
                     HAS_PW_BIAS, ACC_DTYPE, BLOCK_N)


@triton.jit
def _output_grad(dy_rows, dy_pixels, y_rows, y_pixels, pixel_mask, n0, N, sdyc, syc, OUT_ACT: tl.constexpr,
                 BLOCK_N: tl.constexpr):
    """dy' [BLOCK_P, BLOCK_N]: dy masked by out_activation's derivative (read from the output y)."""
    n = n0 + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    mask = pixel_mask[:, None] & (n < N)[None, :]
    dy = tl.load(dy_rows[:, None] + (dy_pixels[:, None] + (n * sdyc)[None, :]), mask=mask, other=0.0)
    if OUT_ACT != ACT_NONE:
        yv = tl.load(y_rows[:, None] + (y_pixels[:, None] + (n * syc)[None, :]), mask=mask, other=0.0)
        dy = activation_grad(dy, yv, OUT_ACT).to(dy_rows.dtype.element_ty)
    return dy


@triton.jit
def _weight_grad_chunk(dy, h, ones, gw, gb, DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
                       HAS_PW_BIAS: tl.constexpr):
    """gw [BLOCK_N, BLOCK_C] += dy'^T @ h; gb [BLOCK_N, BIAS_COLS] += dy'^T @ ones: every column holds
    dy''s column sums (on the tensor cores, instead of a cross-thread reduction per pixel block)."""
    dy_t = tl.trans(dy)  # [BLOCK_N, BLOCK_P]
    gw = tl.dot(dy_t, h, gw, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
    if HAS_PW_BIAS:
        gb = tl.dot(dy_t, ones, gb, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
    return gw, gb


@triton.jit
def _input_grad_chunk(dy, dh, pw_w_ptr, n0, c, c_mask, C, N, DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
                      BLOCK_N: tl.constexpr):
    """dh [BLOCK_P, BLOCK_C] += dy' [BLOCK_P, BLOCK_N] @ pw[n0:n0+BLOCK_N, c]."""
    n = n0 + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    pw = tl.load(pw_w_ptr + n[:, None] * C + c[None, :], mask=(n < N)[:, None] & c_mask[None, :],
                 other=0.0)  # [BLOCK_N, BLOCK_C]
    return tl.dot(dy, pw, dh, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)


@triton.jit
def _store_weight_grad(gw, gb, partial_ptr, partial_bias_ptr, split, pid_channels, n0, c, c_mask, C, N,
                       HAS_PW_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BIAS_COLS: tl.constexpr):
    n = n0 + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    n_mask = n < N
    row = partial_ptr + split.to(tl.int64) * (N * C)  # 64-bit: the splits' rows may pass 2^31 elements
    tl.store(row + n[:, None] * C + c[None, :], gw, mask=n_mask[:, None] & c_mask[None, :])
    if HAS_PW_BIAS:
        if pid_channels == 0:
            # Column 0 of the [BLOCK_N, BIAS_COLS] sums (all columns are equal).
            bias = tl.sum(tl.where((tl.arange(0, BIAS_COLS) == 0)[None, :], gb, 0.0), axis=1)  # [BLOCK_N]
            tl.store(partial_bias_ptr + split.to(tl.int64) * N + n, bias, mask=n_mask)


@triton.jit
def _filter_chunk(gw, gb, dh, h, ones, dy_rows, dy_pixels, y_rows, y_pixels, pixel_mask, n0, c, c_mask, pw_w_ptr, C, N,
                  sdyc, syc, OUT_ACT: tl.constexpr, WEIGHT_GRADS: tl.constexpr, ALL_FILTERS: tl.constexpr,
                  HAS_PW_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
                  BLOCK_N: tl.constexpr):
    """One filter chunk [n0, n0 + BLOCK_N) of a pixel block: dy' read once, into the chunk's pointwise
    gradients (gw, gb) and, where the program holds every filter (ALL_FILTERS), into dh."""
    dy = _output_grad(dy_rows, dy_pixels, y_rows, y_pixels, pixel_mask, n0, N, sdyc, syc, OUT_ACT, BLOCK_N)
    if WEIGHT_GRADS:
        gw, gb = _weight_grad_chunk(dy, h, ones, gw, gb, DOT_PRECISION, ACC_DTYPE, HAS_PW_BIAS)
    if ALL_FILTERS:
        dh = _input_grad_chunk(dy, dh, pw_w_ptr, n0, c, c_mask, C, N, DOT_PRECISION, ACC_DTYPE, BLOCK_N)
    return gw, gb, dh


@triton.jit
def dwsep_bwd_kernel(
    x_ptr, dw_w_ptr, dw_b_ptr, pw_w_ptr, dy_ptr, y_ptr, dz_ptr, partial_ptr, partial_bias_ptr,
    PIXELS, PIXELS_PER_SPLIT, C_V, H, W, N_V, Ho, Wo,
    sxb_v, sxc, sxh_v, sxw_v, x_off_v,
    sdyb_v, sdyc, sdyh_v, sdyw_v, dy_off_v,
    syb_v, syc, syh_v, syw_v, y_off_v,
    sdzb_v, sdzc, sdzh_v, sdzw_v, dz_off_v,
    K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr,
    ACT: tl.constexpr, OUT_ACT: tl.constexpr, HAS_DW_BIAS: tl.constexpr, HAS_PW_BIAS: tl.constexpr,
    WEIGHT_GRADS: tl.constexpr, ALL_FILTERS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr, VEC: tl.constexpr, CHUNKS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dz = act'(z) * (dy' @ pw) [B, C, Ho, Wo] and the partial grad pw_weight / pw_bias of one pixel split;
    grid (channel chunks, filter groups of CHUNKS * BLOCK_N, pixel splits).

    ALL_FILTERS: one group holds every filter chunk, so dz comes from the dy' tiles already read;
    otherwise group 0 reads dy' over all filters once more for dz (the other groups only accumulate
    their weight gradient). Partials go to ``partial_ptr[split, n, c]`` (``partial_bias_ptr[split, n]``)
    in ACC_DTYPE. Without WEIGHT_GRADS only dz is computed (one group).
    """
    pid_channels = tl.program_id(0)
    group = tl.program_id(1)
    split = tl.program_id(2)
    C = C_V * VEC
    N = N_V * VEC
    c = pid_channels * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C]
    c_mask = c < C
    n_first = group * (CHUNKS * BLOCK_N)
    sxh = sxh_v * VEC
    sxw = sxw_v * VEC
    x_channels = (c * sxc)[None, :]  # [1, BLOCK_C]

    first = split * PIXELS_PER_SPLIT
    last = tl.minimum(first + PIXELS_PER_SPLIT, PIXELS)
    p_range = tl.arange(0, BLOCK_P)
    b, ho, wo = pixel_walk_start(first, 0, Ho, Wo, BLOCK_P)  # [BLOCK_P] int32
    step_b, step_h, step_w = pixel_steps(BLOCK_P, Ho, Wo)
    gw0 = tl.zeros((BLOCK_N, BLOCK_C), dtype=ACC_DTYPE)
    gw1 = tl.zeros((BLOCK_N, BLOCK_C), dtype=ACC_DTYPE)
    gw2 = tl.zeros((BLOCK_N, BLOCK_C), dtype=ACC_DTYPE)
    gw3 = tl.zeros((BLOCK_N, BLOCK_C), dtype=ACC_DTYPE)
    BIAS_COLS: tl.constexpr = 16  # the narrowest dot: dy'^T @ ones gives the bias sums in every column
    gb0 = tl.zeros((BLOCK_N, BIAS_COLS), dtype=ACC_DTYPE)
    gb1 = tl.zeros((BLOCK_N, BIAS_COLS), dtype=ACC_DTYPE)
    gb2 = tl.zeros((BLOCK_N, BIAS_COLS), dtype=ACC_DTYPE)
    gb3 = tl.zeros((BLOCK_N, BIAS_COLS), dtype=ACC_DTYPE)
    ones = tl.full((BLOCK_P, BIAS_COLS), 1.0, dtype=dy_ptr.dtype.element_ty)
    for p0 in range(first, last, BLOCK_P):
        pixel_mask = p0 + p_range < last  # [BLOCK_P]
        b64 = b.to(tl.int64)
        hi0 = ho * STRIDE - PAD  # [BLOCK_P]
        wi0 = wo * STRIDE - PAD
        x_rows = x_ptr + (b64 * sxb_v + x_off_v) * VEC
        z = depthwise_taps(x_rows, (hi0 * sxh + wi0 * sxw)[:, None] + x_channels, hi0, wi0, pixel_mask, dw_w_ptr,
                           dw_b_ptr, c, c_mask, C, H, W, sxh, sxw, K, DIL, HAS_DW_BIAS, ACC_DTYPE, BLOCK_P, BLOCK_C)
        h = activate(z, ACT).to(dy_ptr.dtype.element_ty)  # [BLOCK_P, BLOCK_C]
        dy_rows = dy_ptr + (b64 * sdyb_v + dy_off_v) * VEC  # [BLOCK_P]
        dy_pixels = ho * (sdyh_v * VEC) + wo * (sdyw_v * VEC)
        y_rows = y_ptr + (b64 * syb_v + y_off_v) * VEC
        y_pixels = ho * (syh_v * VEC) + wo * (syw_v * VEC)
        dh = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC_DTYPE)

        gw0, gb0, dh = _filter_chunk(gw0, gb0, dh, h, ones, dy_rows, dy_pixels, y_rows, y_pixels, pixel_mask,
                                     n_first, c, c_mask, pw_w_ptr, C, N, sdyc, syc, OUT_ACT, WEIGHT_GRADS,
                                     ALL_FILTERS, HAS_PW_BIAS, DOT_PRECISION, ACC_DTYPE, BLOCK_N)
        if CHUNKS > 1:
            gw1, gb1, dh = _filter_chunk(gw1, gb1, dh, h, ones, dy_rows, dy_pixels, y_rows, y_pixels, pixel_mask,
                                         n_first + BLOCK_N, c, c_mask, pw_w_ptr, C, N, sdyc, syc, OUT_ACT,
                                         WEIGHT_GRADS, ALL_FILTERS, HAS_PW_BIAS, DOT_PRECISION, ACC_DTYPE, BLOCK_N)
        if CHUNKS > 2:
            gw2, gb2, dh = _filter_chunk(gw2, gb2, dh, h, ones, dy_rows, dy_pixels, y_rows, y_pixels, pixel_mask,
                                         n_first + 2 * BLOCK_N, c, c_mask, pw_w_ptr, C, N, sdyc, syc, OUT_ACT,
                                         WEIGHT_GRADS, ALL_FILTERS, HAS_PW_BIAS, DOT_PRECISION, ACC_DTYPE, BLOCK_N)
        if CHUNKS > 3:
            gw3, gb3, dh = _filter_chunk(gw3, gb3, dh, h, ones, dy_rows, dy_pixels, y_rows, y_pixels, pixel_mask,
                                         n_first + 3 * BLOCK_N, c, c_mask, pw_w_ptr, C, N, sdyc, syc, OUT_ACT,
                                         WEIGHT_GRADS, ALL_FILTERS, HAS_PW_BIAS, DOT_PRECISION, ACC_DTYPE, BLOCK_N)
        if not ALL_FILTERS:
            if group == 0:
                for n0 in range(0, N, BLOCK_N):
                    dy = _output_grad(dy_rows, dy_pixels, y_rows, y_pixels, pixel_mask, n0, N, sdyc, syc, OUT_ACT,
                                      BLOCK_N)
                    dh = _input_grad_chunk(dy, dh, pw_w_ptr, n0, c, c_mask, C, N, DOT_PRECISION, ACC_DTYPE, BLOCK_N)
        if ALL_FILTERS or group == 0:
            # act' from h = act(z) in the input dtype (the same set, and what torch decides from its
            # z in that dtype): z dies once h is formed, the registers go to the accumulators.
            dh = activation_grad(dh, h, ACT)
            dz_rows = dz_ptr + (b64 * sdzb_v + dz_off_v) * VEC  # [BLOCK_P]
            dz_offsets = (ho * (sdzh_v * VEC) + wo * (sdzw_v * VEC))[:, None] + (c * sdzc)[None, :]
            tl.store(dz_rows[:, None] + dz_offsets, dh.to(dz_ptr.dtype.element_ty),
                     mask=pixel_mask[:, None] & c_mask[None, :])
        b, ho, wo = pixel_advance(b, ho, wo, step_b, step_h, step_w, Ho, Wo)

    if WEIGHT_GRADS:
        _store_weight_grad(gw0, gb0, partial_ptr, partial_bias_ptr, split, pid_channels, n_first, c, c_mask, C, N,
                           HAS_PW_BIAS, BLOCK_N, BIAS_COLS)
        if CHUNKS > 1:
            _store_weight_grad(gw1, gb1, partial_ptr, partial_bias_ptr, split, pid_channels, n_first + BLOCK_N, c,
                               c_mask, C, N, HAS_PW_BIAS, BLOCK_N, BIAS_COLS)
        if CHUNKS > 2:
            _store_weight_grad(gw2, gb2, partial_ptr, partial_bias_ptr, split, pid_channels, n_first + 2 * BLOCK_N,
                               c, c_mask, C, N, HAS_PW_BIAS, BLOCK_N, BIAS_COLS)
        if CHUNKS > 3:
            _store_weight_grad(gw3, gb3, partial_ptr, partial_bias_ptr, split, pid_channels, n_first + 3 * BLOCK_N,
                               c, c_mask, C, N, HAS_PW_BIAS, BLOCK_N, BIAS_COLS)


@triton.jit
def dwsep_bwd_depthwise_kernel(
    dz_ptr, x_ptr, w_ptr, dx_ptr, partial_ptr,
    C_V, H, W, Ho, Wo,
    WEIGHT_PROGRAMS, IMAGE_SPLITS, PIXEL_SPLITS, IMAGES_PER_SPLIT, B, PIXELS_PER_SPLIT, WO_STEP, HO_STEP,
    INPUT_PIXEL_TILES, INPUT_CHANNEL_TILES,
    sdzb_v, sdzc, sdzh_v, sdzw_v, dz_off_v,
    sxb_v, sxc, sxh_v, sxw_v, x_off_v,
    sdxb_v, sdxc, sdxh_v, sdxw_v, dx_off_v,
    K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr,
    INPUT_GRAD: tl.constexpr, WEIGHT_GRADS: tl.constexpr, HAS_DW_BIAS: tl.constexpr, ACC_DTYPE: tl.constexpr,
    VEC: tl.constexpr, ROWS: tl.constexpr, TAPS: tl.constexpr, PARTIAL_ROWS: tl.constexpr,
    WEIGHT_BLOCK_P: tl.constexpr, WEIGHT_BLOCK_C: tl.constexpr,
    INPUT_BLOCK_P: tl.constexpr, INPUT_BLOCK_C: tl.constexpr,
):
    """The depthwise backward on dz (the gradient of the depthwise pre-activation) in one launch; grid
    (WEIGHT_PROGRAMS + grad-input programs,). Programs below WEIGHT_PROGRAMS (the longer ones, first)
    are grad-weight programs (channel tile x row group, image split, pixel split), partials to
    ``partial_ptr[split, tap (K*K: dw_bias), c]``; the others grad-input programs (pixel tile of one
    image, channel tile, image) writing dx. The program index is decomposed once, in int32.
    """
    pid = tl.program_id(0)
    if pid < WEIGHT_PROGRAMS:
        if WEIGHT_GRADS:
            pixel_split = pid % PIXEL_SPLITS
            rest = pid // PIXEL_SPLITS
            # dz is already the pre-activation gradient: no activation, dy = y = dz, nothing written.
            backward_weight_tile(rest // IMAGE_SPLITS, rest % IMAGE_SPLITS, pixel_split, PIXEL_SPLITS,
                                 x_ptr, dz_ptr, dz_ptr, dz_ptr, partial_ptr, C_V, H, W, C_V, Ho, Wo,
                                 IMAGES_PER_SPLIT, B, PIXELS_PER_SPLIT, WO_STEP, HO_STEP,
                                 sxb_v, sxc, sxh_v, sxw_v, x_off_v, sdzb_v, sdzc, sdzh_v, sdzw_v, dz_off_v,
                                 sdzb_v, sdzc, sdzh_v, sdzw_v, dz_off_v, sdzb_v, sdzc, sdzh_v, sdzw_v, dz_off_v,
                                 K, STRIDE, PAD, DIL, ACT_NONE, 1, HAS_DW_BIAS, False, ACC_DTYPE, VEC, ROWS, TAPS,
                                 PARTIAL_ROWS, WEIGHT_BLOCK_P, WEIGHT_BLOCK_C)
    else:
        if INPUT_GRAD:
            q = pid - WEIGHT_PROGRAMS
            pid_pixels = q % INPUT_PIXEL_TILES
            rest = q // INPUT_PIXEL_TILES
            backward_input_tile(pid_pixels, rest % INPUT_CHANNEL_TILES, (rest // INPUT_CHANNEL_TILES).to(tl.int64),
                                dz_ptr, w_ptr, dx_ptr, dx_ptr, C_V, H, W, C_V, Ho, Wo,
                                sdzb_v, sdzc, sdzh_v, sdzw_v, dz_off_v, sdxb_v, sdxc, sdxh_v, sdxw_v, dx_off_v,
                                sdxb_v, sdxc, sdxh_v, sdxw_v, dx_off_v, K, STRIDE, PAD, DIL, 1, False, ACC_DTYPE, VEC,
                                INPUT_BLOCK_P, INPUT_BLOCK_C)


@triton.jit
def dwsep_reduce_kernel(
    partial_ptr, partial_bias_ptr, dpw_ptr, dpb_ptr, SPLITS, NC, N, PW_PROGRAMS,
    dw_partial_ptr, ddw_ptr, ddb_ptr, DW_SPLITS, C_V, sdw_o, sdw_tap,
    PW_GRADS: tl.constexpr, HAS_PW_BIAS: tl.constexpr, DW_GRADS: tl.constexpr, K: tl.constexpr,
    HAS_DW_BIAS: tl.constexpr, ACC_DTYPE: tl.constexpr, VEC: tl.constexpr, DW_ROWS: tl.constexpr,
    DW_ROWS_P: tl.constexpr, BLOCK: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Every split-K partial of the step in one launch, each in split order (deterministic), written
    in the parameters' dtype: programs below PW_PROGRAMS sum the pointwise partials (dpw[i] over the
    N*C weights, then dpb over N), the rest the depthwise ones, a channel tile each
    (``depthwise.kernels.reduce_weight_tile``: dw_weight in its own strides sdw_o, sdw_tap)."""
    pid = tl.program_id(0)
    if pid < PW_PROGRAMS:
        if PW_GRADS:
            weight_programs = tl.cdiv(NC, BLOCK)
            if pid < weight_programs:
                i = pid * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
                mask = i < NC
                acc = sum_split_rows(partial_ptr + i, mask, SPLITS, NC)
                tl.store(dpw_ptr + i, acc.to(dpw_ptr.dtype.element_ty), mask=mask)
            elif HAS_PW_BIAS:
                i = (pid - weight_programs) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
                mask = i < N
                acc = sum_split_rows(partial_bias_ptr + i, mask, SPLITS, N)
                tl.store(dpb_ptr + i, acc.to(dpb_ptr.dtype.element_ty), mask=mask)
    else:
        if DW_GRADS:
            reduce_weight_tile(pid - PW_PROGRAMS, dw_partial_ptr, ddw_ptr, ddb_ptr, DW_SPLITS, C_V, sdw_o, sdw_tap, K,
                               HAS_DW_BIAS, ACC_DTYPE, VEC, DW_ROWS, DW_ROWS_P, BLOCK_C)
