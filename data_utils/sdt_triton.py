"""Triton kernels for `data_utils.sdt.compute_sdt_torch` on CUDA: the same exact integer algorithm, fused.

Imported only when the labels live on a CUDA device and Triton is installed (the CPU path is pure torch).
The tests run these kernels on CPU tensors through Triton's interpreter (TRITON_INTERPRET=1) and compare
them with `compute_sdt`; `bench/bench_sdt.py` times them on a GPU.

Three launches per batch, no host round trip:
  1. `_columns_kernel`, one program per (image, channel, strip of columns): channel c < C holds the
     vertical distance to the nearest pixel of class c, channel C the run distance (1 + distance to the
     nearest end of the run of equal labels), both capped at clip + 1, via chunked prefix max/min scans
     down and up each column. It also records, per (image, class, row), the first and last column that
     has a class pixel within `clip` rows (atomic min/max), so step 3 can skip empty windows.
  2. `_inside_kernel`: per pixel, D_in = min_{|dx| <= clip} dx^2 + [L(y, x + dx) == L(y, x)] r(y, x + dx)^2
     (= edt(M)^2 inside every class at once).
  3. `_outside_kernel`, one program per (image, class, tile): D_out = min_{|dx| <= clip} dx^2 + g(y, x + dx)^2,
     then the epilogue (rounding, sign, ignore, absent classes) writes int8.
Both row passes visit offsets |dx| = 1, 2, ... (ROW_UNROLL at a time) and stop once every pixel of the
tile has D <= dx^2 (later offsets cannot improve it) or the tile's rows hold no class pixel within reach:
skipping only offsets that cannot lower D keeps the result identical to the full window, and visiting a
few offsets past `clip` only adds candidates above (clip + 1)^2, which the rounding clips anyway.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

COLUMN_BLOCK_H, COLUMN_BLOCK_W = 64, 32  # rows per scan chunk, columns per program
ROW_BLOCK_H, ROW_BLOCK_W = 8, 64  # tile of the row passes
ROW_UNROLL = 4  # offsets visited between two checks of the early exit (a tile-wide reduction)
_FAR = 1 << 20  # "no feature" row index offset; any real distance is smaller


@triton.jit
def _max_fn(a, b):
    return tl.maximum(a, b)


@triton.jit
def _min_fn(a, b):
    return tl.minimum(a, b)


@triton.jit
def _column_features(label_base, rows, cols, mask, H, W, channel, C):
    """(BLOCK_H, BLOCK_W) bool: class pixels (channel < C) or run ends (channel == C: a vertical neighbour
    holds another label)."""
    offs = rows[:, None] * W + cols[None, :]
    lab = tl.load(label_base + offs, mask=mask, other=0).to(tl.int32)
    if channel < C:
        feat = lab == channel
    else:
        up_ok = mask & (rows[:, None] >= 1)
        down_ok = mask & (rows[:, None] < H - 1)
        up = tl.load(label_base + offs - W, mask=up_ok, other=0).to(tl.int32)
        down = tl.load(label_base + offs + W, mask=down_ok, other=0).to(tl.int32)
        feat = (up_ok & (up != lab)) | (down_ok & (down != lab))
    return feat & mask


@triton.jit
def _columns_kernel(label_ptr, vert_ptr, first_ptr, last_ptr, H, W, C,
                    CLIP: tl.constexpr, FAR: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    pid = tl.program_id(0)  # image * (C + 1) + channel
    n = pid // (C + 1)
    channel = pid % (C + 1)
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    col_ok = cols < W
    label_base = label_ptr + n.to(tl.int64) * H * W
    vert_base = vert_ptr + pid.to(tl.int64) * H * W
    num_chunks = tl.cdiv(H, BLOCK_H)

    # Down the columns: distance to the nearest feature at or above (last feature row, prefix max).
    last_row = tl.full([BLOCK_W], -FAR, tl.int32)
    for i in range(0, num_chunks):
        rows = i * BLOCK_H + tl.arange(0, BLOCK_H)
        mask = (rows[:, None] < H) & col_ok[None, :]
        feat = _column_features(label_base, rows, cols, mask, H, W, channel, C)
        seen = tl.maximum(tl.where(feat, rows[:, None], -FAR), last_row[None, :])
        seen = tl.associative_scan(seen, 0, _max_fn)
        last_row = tl.max(seen, 0)
        up = tl.minimum(rows[:, None] - seen, CLIP + 1)
        tl.store(vert_base + rows[:, None] * W + cols[None, :], up.to(tl.uint8), mask=mask)

    # Up the columns: distance to the nearest feature at or below (suffix min), combined with the above.
    next_row = tl.full([BLOCK_W], FAR, tl.int32)
    for k in range(0, num_chunks):
        rows = (num_chunks - 1 - k) * BLOCK_H + tl.arange(0, BLOCK_H)
        mask = (rows[:, None] < H) & col_ok[None, :]
        feat = _column_features(label_base, rows, cols, mask, H, W, channel, C)
        seen = tl.minimum(tl.where(feat, rows[:, None], FAR), next_row[None, :])
        seen = tl.associative_scan(seen, 0, _min_fn, reverse=True)
        next_row = tl.min(seen, 0)
        offs = rows[:, None] * W + cols[None, :]
        up = tl.load(vert_base + offs, mask=mask, other=CLIP + 1).to(tl.int32)
        dist = tl.minimum(tl.minimum(up, seen - rows[:, None]), CLIP + 1)
        if channel == C:
            dist = tl.minimum(dist + 1, CLIP + 1)  # run distance = 1 + distance to the run's end pixel
        tl.store(vert_base + offs, dist.to(tl.uint8), mask=mask)
        if channel < C:  # columns of each row that hold a class pixel within CLIP rows
            near = (dist <= CLIP) & mask
            row_ok = rows < H
            row_base = (n * C + channel).to(tl.int64) * H
            tl.atomic_min(first_ptr + row_base + rows, tl.min(tl.where(near, cols[None, :], W), 1), mask=row_ok)
            tl.atomic_max(last_ptr + row_base + rows, tl.max(tl.where(near, cols[None, :], -1), 1), mask=row_ok)


@triton.jit
def _inside_kernel(label_ptr, vert_ptr, inside_ptr, H, W, C,
                   CLIP: tl.constexpr, UNROLL: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    n = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)
    row_ok = rows[:, None] < H
    mask = row_ok & (cols[None, :] < W)
    offs = rows[:, None] * W + cols[None, :]
    label_base = label_ptr + n.to(tl.int64) * H * W
    run_base = vert_ptr + (n.to(tl.int64) * (C + 1) + C) * H * W
    lab = tl.load(label_base + offs, mask=mask, other=0)
    run = tl.load(run_base + offs, mask=mask, other=CLIP + 1).to(tl.int32)
    acc = tl.where(mask, run * run, 0)  # lanes outside the image must not keep the loop alive
    worst = tl.max(tl.max(acc, 1), 0)
    a = n * 0 + 1  # int32: the next offset |dx| to visit
    while (a <= CLIP) & (worst > a * a):
        for k in tl.static_range(UNROLL):  # offsets past CLIP only add candidates > (CLIP + 1)^2: harmless
            for sign in tl.static_range(2):
                dx = (2 * sign - 1) * (a + k)
                xs = cols[None, :] + dx
                ok = row_ok & (xs >= 0) & (xs < W)
                lab2 = tl.load(label_base + rows[:, None] * W + xs, mask=ok, other=0)
                run2 = tl.load(run_base + rows[:, None] * W + xs, mask=ok, other=CLIP + 1).to(tl.int32)
                cand = tl.where(lab2 == lab, run2 * run2, 0) + dx * dx
                acc = tl.minimum(acc, tl.where(ok, cand, (CLIP + 1) * (CLIP + 1)))
        worst = tl.max(tl.max(tl.where(mask, acc, 0), 1), 0)
        a += UNROLL
    tl.store(inside_ptr + n.to(tl.int64) * H * W + offs, acc, mask=mask)


@triton.jit
def _outside_kernel(label_ptr, vert_ptr, first_ptr, last_ptr, inside_ptr, active_ptr, out_ptr, H, W, C,
                    CLIP: tl.constexpr, UNROLL: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    pid = tl.program_id(0)  # image * C + class
    n = pid // C
    c = pid % C
    rows = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    x_lo = tl.program_id(2) * BLOCK_W
    cols = x_lo + tl.arange(0, BLOCK_W)
    row_ok = rows[:, None] < H
    mask = row_ok & (cols[None, :] < W)
    offs = rows[:, None] * W + cols[None, :]
    vert_base = vert_ptr + (n.to(tl.int64) * (C + 1) + c) * H * W
    active = tl.load(active_ptr + pid)  # class present and not covering the whole image

    g = tl.load(vert_base + offs, mask=mask, other=CLIP + 1).to(tl.int32)
    acc = g * g
    # Columns with a class pixel within CLIP rows, over this tile's rows: offsets beyond cannot help.
    row_base = pid.to(tl.int64) * H
    lo = tl.min(tl.load(first_ptr + row_base + rows, mask=rows < H, other=W), 0)
    hi = tl.max(tl.load(last_ptr + row_base + rows, mask=rows < H, other=-1), 0)
    x_hi = tl.minimum(x_lo + BLOCK_W, W) - 1
    reach = tl.minimum(tl.maximum(x_hi - lo, hi - x_lo), CLIP)
    worst = tl.max(tl.max(tl.where(mask, acc, 0), 1), 0)
    a = pid * 0 + 1
    while (a <= reach) & (worst > a * a) & (active != 0):
        for k in tl.static_range(UNROLL):
            for sign in tl.static_range(2):
                dx = (2 * sign - 1) * (a + k)
                xs = cols[None, :] + dx
                ok = row_ok & (xs >= 0) & (xs < W)
                g2 = tl.load(vert_base + rows[:, None] * W + xs, mask=ok, other=CLIP + 1).to(tl.int32)
                acc = tl.minimum(acc, g2 * g2 + dx * dx)
        worst = tl.max(tl.max(tl.where(mask, acc, 0), 1), 0)
        a += UNROLL

    # Epilogue: phi = -round(D_in) inside the class, +round(D_out) outside, 0 at ignore / inactive.
    lab = tl.load(label_ptr + n.to(tl.int64) * H * W + offs, mask=mask, other=255).to(tl.int32)
    inside = tl.load(inside_ptr + n.to(tl.int64) * H * W + offs, mask=mask, other=0)
    in_class = lab == c
    sq = tl.minimum(tl.where(in_class, inside, acc), CLIP * CLIP + CLIP)
    root = tl.floor(tl.sqrt_rn(sq.to(tl.float32)) + 0.5).to(tl.int32)  # = rint: sqrt(n) is never k + 1/2
    phi = tl.where(in_class, -root, root)
    phi = tl.where((lab == 255) | (active == 0), 0, phi)
    tl.store(out_ptr + pid.to(tl.int64) * H * W + offs, phi.to(tl.int8), mask=mask)


def sdt_triton(labels: torch.Tensor, num_classes: int, clip: int) -> torch.Tensor:
    """(N, H, W) uint8 contiguous train ids (already validated) -> (N, C, H, W) int8 signed distance maps."""
    batch, height, width = labels.shape
    device, classes = labels.device, num_classes
    vert = torch.empty((batch, classes + 1, height, width), dtype=torch.uint8, device=device)
    first = torch.full((batch, classes, height), width, dtype=torch.int32, device=device)
    last = torch.full((batch, classes, height), -1, dtype=torch.int32, device=device)
    _columns_kernel[(batch * (classes + 1), triton.cdiv(width, COLUMN_BLOCK_W))](
        labels, vert, first, last, height, width, classes,
        CLIP=clip, FAR=_FAR, BLOCK_H=COLUMN_BLOCK_H, BLOCK_W=COLUMN_BLOCK_W)

    tiles = (triton.cdiv(height, ROW_BLOCK_H), triton.cdiv(width, ROW_BLOCK_W))
    inside = torch.empty((batch, height, width), dtype=torch.int32, device=device)
    _inside_kernel[(batch, *tiles)](labels, vert, inside, height, width, classes,
                                    CLIP=clip, UNROLL=ROW_UNROLL, BLOCK_H=ROW_BLOCK_H, BLOCK_W=ROW_BLOCK_W)

    # A class is active when present and not covering the whole image (else its map is all zeros).
    # scatter_add into a fixed-size table: unlike bincount, whose output size depends on the data, it needs no
    # host sync on CUDA.
    keys = (torch.arange(batch, device=device)[:, None] * 256 + labels.view(batch, -1).long()).view(-1)
    counts = torch.zeros(batch * 256, dtype=torch.int64, device=device).scatter_add_(0, keys, torch.ones_like(keys))
    counts = counts.view(batch, 256)[:, :classes]
    active = ((counts > 0) & (counts < height * width)).to(torch.int32).contiguous()

    sdt = torch.empty((batch, classes, height, width), dtype=torch.int8, device=device)
    _outside_kernel[(batch * classes, *tiles)](labels, vert, first, last, inside, active, sdt,
                                               height, width, classes,
                                               CLIP=clip, UNROLL=ROW_UNROLL, BLOCK_H=ROW_BLOCK_H, BLOCK_W=ROW_BLOCK_W)
    return sdt
