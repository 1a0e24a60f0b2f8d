"""Triton helpers shared by several operators' kernels (part of every operator's tuning-cache key)."""

import triton
import triton.language as tl


@triton.jit
def pixel_walk_start(first, B, Ho, Wo, BLOCK: tl.constexpr):
    """(b, ho, wo) as int32 [BLOCK] of pixels ``first + arange(BLOCK)`` (first int64, divided once)."""
    first_b = first // (Ho * Wo)
    in_image = (first - first_b * (Ho * Wo)).to(tl.int32) + tl.arange(0, BLOCK)  # < Ho*Wo + BLOCK
    images = in_image // (Ho * Wo)
    in_image -= images * (Ho * Wo)
    ho = in_image // Wo
    return first_b.to(tl.int32) + images, ho, in_image - ho * Wo


@triton.jit
def pixel_walk_step(b, ho, wo, Ho, Wo, BLOCK: tl.constexpr):
    """(b, ho, wo) advanced by BLOCK pixels without a division per pixel: BLOCK = step_b*Ho*Wo +
    step_h*Wo + step_w (scalars, step_w < Wo, step_h < Ho), then one carry per coordinate."""
    step_b, step_h, step_w = pixel_steps(BLOCK, Ho, Wo)
    return pixel_advance(b, ho, wo, step_b, step_h, step_w, Ho, Wo)


@triton.jit
def pixel_steps(BLOCK, Ho, Wo):
    """(step_b, step_h, step_w) with BLOCK = step_b*Ho*Wo + step_h*Wo + step_w, step_w < Wo, step_h < Ho:
    a walk of BLOCK pixels per step divides them out once, before its loop (``pixel_advance``)."""
    step_b = BLOCK // (Ho * Wo)
    step_h = (BLOCK - step_b * (Ho * Wo)) // Wo
    return step_b, step_h, BLOCK - step_b * (Ho * Wo) - step_h * Wo


@triton.jit
def pixel_advance(b, ho, wo, step_b, step_h, step_w, Ho, Wo):
    """(b, ho, wo) advanced by step_b*Ho*Wo + step_h*Wo + step_w pixels (step_w < Wo, step_h < Ho): one
    carry per coordinate. A loop that divides its step out once before it calls this directly."""
    wo = wo + step_w
    carry = wo >= Wo
    wo = tl.where(carry, wo - Wo, wo)
    ho = ho + step_h + carry.to(tl.int32)
    carry = ho >= Ho
    ho = tl.where(carry, ho - Ho, ho)
    return b + step_b + carry.to(tl.int32), ho, wo


@triton.jit
def channel_gemm(x_rows, w_cols, row_mask, col_mask, sxc, channels, first, acc, DOT_PRECISION: tl.constexpr,
                 ACC_DTYPE: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc + sum_c x[row, c] w[col, c] over channels c = first, first + BLOCK_K, ... < ``channels`` of a
    1 x 1 GEMM: ``x_rows`` [BLOCK_M] point at each row's channel 0 (channel stride ``sxc``), ``w_cols``
    [BLOCK_N] at each column's contiguous weight row; masked rows and columns read 0."""
    for c0 in range(first, channels, BLOCK_K):
        c = c0 + tl.arange(0, BLOCK_K)  # [BLOCK_K]
        c_mask = c < channels
        a = tl.load(x_rows[:, None] + c[None, :] * sxc, mask=row_mask[:, None] & c_mask[None, :],
                    other=0.0)  # [BLOCK_M, BLOCK_K]
        wt = tl.load(w_cols[None, :] + c[:, None], mask=c_mask[:, None] & col_mask[None, :],
                     other=0.0)  # [BLOCK_K, BLOCK_N]
        acc = tl.dot(a, wt, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
    return acc


@triton.jit
def sum_split_rows(ptrs, mask, SPLITS, ROW):
    """The sum over SPLITS rows of ``ROW`` elements each, from ``ptrs`` in the first row, in row order
    (deterministic): one pointer bump per row, 64-bit however many rows."""
    total = tl.load(ptrs, mask=mask, other=0.0)
    for _ in range(1, SPLITS):
        ptrs += ROW
        total += tl.load(ptrs, mask=mask, other=0.0)
    return total


@triton.jit
def split_sum_kernel(partial_ptr, first_ptr, second_ptr, SPLITS, FIRST, TOTAL, BLOCK: tl.constexpr):
    """The deterministic end of a split-K reduction: out[e] = sum over the SPLITS rows of partial
    [SPLITS, TOTAL] in row order, cast to the outputs' dtype; elements [0, FIRST) go to ``first_ptr``
    (the weight gradient), [FIRST, TOTAL) to ``second_ptr`` (the bias gradient; None: TOTAL = FIRST),
    in one launch."""
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    mask = e < TOTAL
    total = sum_split_rows(partial_ptr + e, mask, SPLITS, TOTAL)
    tl.store(first_ptr + e, total.to(first_ptr.dtype.element_ty), mask=mask & (e < FIRST))
    if second_ptr is not None:
        tl.store(second_ptr + (e - FIRST), total.to(second_ptr.dtype.element_ty), mask=mask & (e >= FIRST))
