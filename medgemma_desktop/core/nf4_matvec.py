"""One token times a bitsandbytes NF4 weight, in a CUDA kernel built at run time by NVRTC (no C compiler needed).

The decode step reads every 4-bit weight once per token, so its speed is the speed of this matrix-vector product.
On an H200, bitsandbytes' kernel takes 2.17 ms per token over the step's weights with float32 scales; this one
1.46 ms with the 8-bit scales it decodes itself (benchmarks/README.md, run 16: the step went from 256 tokens/s
with bitsandbytes' kernel to 344). It reads each row's packed bytes 16 at a time per lane (a block of warps for a
few rows, `TILING`), looks the 16 NF4 levels up in shared memory (16 words in 16 banks: no bank conflicts), reads
x once for all the block's rows, and sums in float32, more exactly than bitsandbytes (which rounds each product to
bfloat16). The weight layout is bitsandbytes' own (rows packed flat, the first of two
weights in the high nibble), so nothing is repacked and the same bytes serve both kernels.

Three things the step used to launch separately happen inside the kernel, each saving a kernel per projection or
per layer (136, 68 and 34 launches per token) and, for the scales, most of their bytes:
- **the double-quantised scales** (`NestedScales`): each block of 64 weights has an 8-bit scale, decoded as
  bitsandbytes decodes it (`nested_code[byte] * group_scale + offset`, one group per 256 blocks and one offset
  per fused member). Reading one byte per block instead of a float32 the step computed and wrote first cuts the
  scale traffic from 9 bytes per block to 1.
- **LoRA's second matrix**: given `ax = A @ x` (rank-wide, computed before), each row adds
  `(B[row] . ax) * scale[row]` in float32, rounded to bfloat16 before the sum, as PEFT computes an adapter kept
  in float32 (PEFT loads bfloat16 adapters as float32 too).
- **the MLP's activation**, for gate and up fused (`paired`): a block takes matching gate and up rows and writes
  `gelu_tanh(gate) * up`, the input of the down projection, so the separate activation kernel goes too.

The kernel is built by NVRTC (`core.nvrtc`) once per process and variant (tiling, paired) when the fast path is
built. Where it is unavailable (no NVRTC, a GPU older than
sm_80, shapes or quantisation it does not cover) the caller keeps bitsandbytes' kernel: `matvec_supported` and
`NestedScales.readable` say which. `reference` computes the same in PyTorch, for machines without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F

from medgemma_desktop.core import nvrtc

# The tiling (rows per block, warps per block splitting each row, chunk loop unrolled) by row length, the fastest of
# those tried on an H200 (benchmarks/nf4_gemv.py, run 16): two rows per block; long rows (MLP down, 10,240) split
# over two warps, shorter ones a warp with the loop unrolled twice.
LONG_ROW = 8192
TILING = {False: (2, 1, 2), True: (2, 2, 1)}
BLOCK = 64  # weights per 8-bit scale
GROUP = 256  # scales per second-level scale (bitsandbytes' nested block size)
MEMBERS = 3  # fused projections of one input at most (q/k/v)

KERNEL = r"""
__device__ __forceinline__ float low_bf16(unsigned v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float high_bf16(unsigned v) { return __uint_as_float(v & 0xffff0000u); }
__device__ __forceinline__ float gelu_tanh(float g) {  // as PyTorch's tanh GELU, in float32
    const float inner = 0.7978845608028654f * (g + 0.044715f * (g * g * g));
    return 0.5f * g * (1.f + tanhf(inner));
}
// A row's output: its sum rounded to bfloat16, plus LoRA's B product (PEFT with a float32 adapter:
// base + bf16((B . ax) * scaling)), as a bfloat16 value held in a float.
__device__ __forceinline__ float finish(float total, int row, const float* __restrict__ lora_ax,
                                        const float* __restrict__ lora_b, const float* __restrict__ lora_scale,
                                        int lora_width) {
    float out = round_bf16(total);
    if (lora_width > 0) {
        const float* b = lora_b + (size_t)row * lora_width;
        float lora = 0.f;
        for (int j = 0; j < lora_width; ++j) lora = fmaf(__ldg(b + j), __ldg(lora_ax + j), lora);
        out = round_bf16(out + round_bf16(__fmul_rn(lora, __ldg(lora_scale + row))));
    }
    return out;
}

// A block of KSPLIT warps computes ROWS rows: the warps split the row's 16-byte chunks among them, each lane reads
// one chunk of every row per step and x's 32 values for it once. Rows [0, row1) are the first fused member,
// [row1, row2) the second, the rest the third; each member's second-level scales start at group 0, group1, group2,
// and each member has one offset (member_offset[0..2]).
// PAIRED (gate and up fused, n = 2 x half): a block's rows are ROWS / 2 gate rows and the matching up rows, and y
// gets gelu_tanh(gate) * up, half outputs.
extern "C" __global__ void __launch_bounds__(32 * KSPLIT) nf4_matvec(
        const uint4* __restrict__ x, const uint4* __restrict__ w, const unsigned char* __restrict__ absmax,
        const float* __restrict__ group_scale, const float* __restrict__ member_offset,
        const float* __restrict__ nested_code, const float* __restrict__ code,
        int row1, int row2, int group1, int group2,
        const float* __restrict__ lora_ax, const float* __restrict__ lora_b, const float* __restrict__ lora_scale,
        int lora_width, bf16_t* __restrict__ y, int n, int k) {
    __shared__ float lut[16];
    __shared__ float partial[KSPLIT][ROWS];
    if (threadIdx.x < 16) lut[threadIdx.x] = code[threadIdx.x];
    __syncthreads();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int chunks = k >> 5;  // 16 packed bytes (32 weights) per chunk
    const int blocks = k >> 6;  // 8-bit scales per row
    int rows[ROWS];  // the block's rows (clamped: rows past the end are read, never written)
    int first_block[ROWS], first_group[ROWS];  // the row's first scale, and its member's first second-level scale
    float offset[ROWS], acc[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
#if PAIRED
        const int pair = blockIdx.x * (ROWS / 2) + r % (ROWS / 2);
        const int row = min(r < ROWS / 2 ? pair : (n >> 1) + pair, n - 1);
#else
        const int row = min(blockIdx.x * ROWS + r, n - 1);
#endif
        rows[r] = row;
        const int start = row >= row2 ? row2 : (row >= row1 ? row1 : 0);
        first_block[r] = (row - start) * blocks;
        first_group[r] = row >= row2 ? group2 : (row >= row1 ? group1 : 0);
        offset[r] = __ldg(member_offset + (row >= row2 ? 2 : (row >= row1 ? 1 : 0)));
        acc[r] = 0.f;
    }
#if UNROLL > 1
#pragma unroll 2
#endif
    for (int c = threadIdx.x; c < chunks; c += 32 * KSPLIT) {
        uint4 packed[ROWS];
        unsigned char scale_byte[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            const size_t row = (size_t)rows[r];
            packed[r] = __ldcs(w + row * chunks + c);
            scale_byte[r] = __ldg(absmax + row * blocks + (c >> 1));
        }
        float xs[32];
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const uint4 v = __ldg(x + c * 4 + q);
            xs[8 * q + 0] = low_bf16(v.x); xs[8 * q + 1] = high_bf16(v.x);
            xs[8 * q + 2] = low_bf16(v.y); xs[8 * q + 3] = high_bf16(v.y);
            xs[8 * q + 4] = low_bf16(v.z); xs[8 * q + 5] = high_bf16(v.z);
            xs[8 * q + 6] = low_bf16(v.w); xs[8 * q + 7] = high_bf16(v.w);
        }
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            const unsigned words[4] = {packed[r].x, packed[r].y, packed[r].z, packed[r].w};
            float sums[4];  // four independent chains: the lookups' latency overlaps
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                sums[q] = 0.f;
#pragma unroll
                for (int b = 0; b < 4; ++b) {
                    const unsigned byte = (words[q] >> (8 * b)) & 0xffu;
                    sums[q] = fmaf(xs[8 * q + 2 * b], lut[byte >> 4], sums[q]);
                    sums[q] = fmaf(xs[8 * q + 2 * b + 1], lut[byte & 15u], sums[q]);
                }
            }
            // bitsandbytes' decoding of a double-quantised scale: a product, then the offset (not one fma)
            const int group = first_group[r] + ((first_block[r] + (c >> 1)) >> GROUP_SHIFT);
            const float scale = __fadd_rn(__fmul_rn(__ldg(nested_code + scale_byte[r]), __ldg(group_scale + group)),
                                          offset[r]);
            acc[r] = fmaf((sums[0] + sums[1]) + (sums[2] + sums[3]), scale, acc[r]);
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], offset);
        if (lane == 0) partial[warp][r] = acc[r];
    }
    __syncthreads();
#if PAIRED
    const int at = blockIdx.x * (ROWS / 2) + threadIdx.x;  // the pair: gate row `at`, up row half + at
    if (threadIdx.x < ROWS / 2 && at < (n >> 1)) {
        float gate_sum = 0.f, up_sum = 0.f;
#pragma unroll
        for (int i = 0; i < KSPLIT; ++i) {
            gate_sum += partial[i][threadIdx.x];
            up_sum += partial[i][threadIdx.x + ROWS / 2];
        }
        const float gate = finish(gate_sum, at, lora_ax, lora_b, lora_scale, lora_width);
        const float up = finish(up_sum, (n >> 1) + at, lora_ax, lora_b, lora_scale, lora_width);
        y[at] = to_bf16(gelu_tanh(gate) * up);
    }
#else
    const int at = blockIdx.x * ROWS + threadIdx.x;
    if (threadIdx.x < ROWS && at < n) {
        float sum = 0.f;
#pragma unroll
        for (int i = 0; i < KSPLIT; ++i) sum += partial[i][threadIdx.x];
        y[at] = to_bf16(finish(sum, at, lora_ax, lora_b, lora_scale, lora_width));
    }
#endif
}
"""


@dataclass(frozen=True)
class NestedScales:
    """The double-quantised scales of up to `MEMBERS` fused NF4 projections, as the kernel reads them: the members'
    8-bit scales concatenated (row order), their second-level scales concatenated likewise (one per group of
    `GROUP` scales; each member's groups start afresh), each member's offset (`MEMBERS` entries), the 256-entry
    code that decodes a byte, and where the second and third members' rows and groups start (`bounds`: row1,
    row2, group1, group2; n where absent)."""

    absmax: torch.Tensor
    group_scale: torch.Tensor
    offsets: torch.Tensor
    nested_code: torch.Tensor
    bounds: tuple[int, int, int, int]

    @staticmethod
    def readable(states: list) -> bool:
        """Whether the kernel can read these members' scales: double quantised with float32 groups of `GROUP`
        and one float32 code, at most `MEMBERS` of them."""
        return len(states) <= MEMBERS and all(s.nested and s.state2.blocksize == GROUP for s in states) and \
            all(s.state2.absmax.dtype == s.state2.code.dtype == torch.float32 for s in states) and \
            all(torch.equal(s.state2.code, states[0].state2.code) for s in states[1:])

    @classmethod
    def of(cls, states: list, absmax: torch.Tensor, group_scale: torch.Tensor) -> NestedScales:
        """From bitsandbytes' quantisation states of `readable` members in row order, their 8-bit scales
        concatenated (`absmax`) and their second-level scales concatenated (`group_scale`): the caller shares
        both with the states, so the bytes exist once."""
        rows = [int(s.shape[0]) for s in states]
        groups = [s.state2.absmax.numel() for s in states]
        row_starts = tuple(sum(rows[:i]) for i in range(1, MEMBERS))
        group_starts = tuple(sum(groups[:i]) for i in range(1, MEMBERS))
        offsets = torch.zeros(MEMBERS, dtype=torch.float32, device=absmax.device)
        offsets[: len(states)] = torch.stack([s.offset.float().reshape(()) for s in states])
        return cls(absmax, group_scale, offsets, states[0].state2.code.contiguous(), row_starts + group_starts)

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.absmax, self.group_scale, self.offsets, self.nested_code


def _defines(rows: int, ksplit: int, unroll: int, paired: bool) -> tuple[str, ...]:
    return (f"ROWS={rows}", f"KSPLIT={ksplit}", f"UNROLL={unroll}", f"PAIRED={int(paired)}",
            f"GROUP_SHIFT={GROUP.bit_length() - 1}")


@cache
def nf4_levels(device: torch.device) -> torch.Tensor:
    from bitsandbytes.functional import get_4bit_type

    return get_4bit_type("nf4", device=device).float().contiguous()


def matvec_supported(device: torch.device, k: int, quant_type: str, blocksize: int) -> bool:
    """Whether `nf4_matvec` can run products with this weight: an sm_80+ GPU, NF4 with blocks of 64, a row
    length that fills whole 16-byte chunks, and a kernel NVRTC could build. (The scales must also be double
    quantised, `NestedScales.readable`; per call, the input must be one bfloat16 token.)"""
    if device.type != "cuda" or quant_type != "nf4" or blocksize != BLOCK or k % BLOCK:
        return False
    return _ready(torch.cuda.current_device() if device.index is None else device.index)


@cache
def _ready(device_index: int) -> bool:
    """Build every tiling and the level table now, once per GPU: at load, not inside a graph being captured."""
    variants = [_defines(*tiling, paired) for long_rows, tiling in TILING.items()
                for paired in ((False, True) if not long_rows else (False,))]
    if not all(nvrtc.ready(device_index, KERNEL, "nf4_matvec", defines, "bitsandbytes'") for defines in variants):
        return False
    nf4_levels(torch.device("cuda", device_index))
    return True


def launch(x: torch.Tensor, weight: torch.Tensor, scales: NestedScales, n: int,
           lora: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None, paired: bool = False,
           tiling: tuple[int, int, int] | None = None) -> torch.Tensor:
    """The kernel on the current stream (so a CUDA graph being captured records it). `lora` is (ax, B, scale per
    row), all float32, or None; `paired`: the rows are gate then up, of equal size, and the output is
    gelu_tanh(gate) * up; `tiling` is (rows, warps, unroll), `TILING`'s unless given (the benchmark tries others)."""
    k = x.shape[-1]
    rows, ksplit, unroll = tiling or TILING[k >= LONG_ROW]
    ax, b, lora_scale = (t.contiguous() for t in lora) if lora is not None else (x, x, scales.group_scale)
    width = ax.numel() if lora is not None else 0
    x, weight = _aligned(x), _aligned(weight)
    outputs = n // 2 if paired else n
    out = torch.empty(*x.shape[:-1], outputs, dtype=x.dtype, device=x.device)
    per_block = rows // 2 if paired else rows
    nvrtc.build(x.device.index, KERNEL, "nf4_matvec", _defines(rows, ksplit, unroll, paired))(
        grid=(-(-outputs // per_block), 1, 1), block=(32 * ksplit, 1, 1),
        args=[x, weight, *scales.tensors, nf4_levels(x.device), *scales.bounds, ax, b, lora_scale, width, out, n, k])
    return out


def reference(x: torch.Tensor, weight: torch.Tensor, scales: NestedScales, n: int,
              lora: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
              paired: bool = False) -> torch.Tensor:
    """What the kernel computes, in PyTorch on any device, rounding to x's dtype where the kernel rounds to
    bfloat16 (the same for bfloat16 input): the check of `NestedScales` and of the LoRA epilogue where no GPU is."""
    k = x.shape[-1]
    blocks = k // BLOCK
    row = torch.arange(n, device=x.device)
    row1, row2, group1, group2 = scales.bounds
    member = (row >= row1).long() + (row >= row2).long()
    start = torch.tensor([0, row1, row2], device=x.device)[member]
    first_group = torch.tensor([0, group1, group2], device=x.device)[member]
    block = (row - start).view(-1, 1) * blocks + torch.arange(blocks, device=x.device)
    group = first_group.view(-1, 1) + block // GROUP
    block_scales = scales.nested_code[scales.absmax.view(n, blocks).long()] * scales.group_scale[group] \
        + scales.offsets[member].view(-1, 1)
    packed = weight.reshape(n, k // 2)
    nibbles = torch.stack([packed >> 4, packed & 15], dim=-1).view(n, k).long()
    dense = nf4_levels(x.device)[nibbles] * block_scales.repeat_interleave(BLOCK, dim=1)
    out = (x.float().reshape(-1, k) @ dense.t()).to(x.dtype)
    if lora is not None:
        ax, b, lora_scale = lora
        product = b.float() @ ax.float().reshape(-1)
        out = (out.float() + (product * lora_scale).to(x.dtype).float()).to(x.dtype)
    if paired:
        gate, up = out.float().chunk(2, dim=-1)
        return (F.gelu(gate, approximate="tanh") * up).to(x.dtype).view(*x.shape[:-1], n // 2)
    return out.view(*x.shape[:-1], n)


def _aligned(tensor: torch.Tensor) -> torch.Tensor:
    """Contiguous, starting on a 16-byte boundary (the kernel reads 16 bytes at a time)."""
    tensor = tensor.contiguous()
    return tensor if tensor.data_ptr() % 16 == 0 else tensor.clone()


@torch.library.custom_op("medgemma::nf4_matvec", mutates_args=())
def nf4_matvec(x: torch.Tensor, weight: torch.Tensor, absmax: torch.Tensor, group_scale: torch.Tensor,
               offsets: torch.Tensor, nested_code: torch.Tensor, bounds: list[int], n: int,
               lora_ax: torch.Tensor | None, lora_b: torch.Tensor | None, lora_scale: torch.Tensor | None,
               paired: bool) -> torch.Tensor:
    """x (one token of k values, any leading shape) times the (n, k) NF4 `weight` (bitsandbytes' packed bytes)
    with `NestedScales`' tensors and bounds, plus LoRA's B product when `lora_ax` is given (float32 `lora_ax`,
    `lora_b`, `lora_scale`): (..., n) in x's dtype, or (..., n / 2) of gelu_tanh(gate) * up when `paired`.
    The kernel on CUDA (bfloat16 only; check `matvec_supported` first), `reference` elsewhere."""
    scales = NestedScales(absmax, group_scale, offsets, nested_code, tuple(bounds))
    lora = (lora_ax, lora_b, lora_scale) if lora_ax is not None else None
    return (launch if x.is_cuda else reference)(x, weight, scales, n, lora, paired)


@nf4_matvec.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, absmax: torch.Tensor, group_scale: torch.Tensor,
      offsets: torch.Tensor, nested_code: torch.Tensor, bounds: list[int], n: int,
      lora_ax: torch.Tensor | None, lora_b: torch.Tensor | None, lora_scale: torch.Tensor | None,
      paired: bool) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], n // 2 if paired else n)
