"""One token times a bitsandbytes NF4 weight, in a CUDA kernel built at run time by NVRTC (no C compiler needed).

The decode step reads every 4-bit weight once per token, so its speed is the speed of this matrix-vector product.
On an H200, bitsandbytes' kernel moves 0.84 TB/s over the step's weights; this one 1.24 TB/s (the decode step went
from 256 to 295 tokens/s). It reads each row's packed bytes 16 at a time per lane (a block of warps for a few rows,
`TILING`), looks the 16 NF4 levels up in shared memory (16 words in 16 banks: no bank conflicts), reads x once for
all the block's rows, and sums in float32 with one scale per 64 weights, more exactly than bitsandbytes (which
rounds each product to bfloat16). The weight layout is bitsandbytes' own (rows packed flat, the first of two
weights in the high nibble), so nothing is repacked and the same bytes serve both kernels.

NVRTC ships with PyTorch's CUDA libraries (`torch.cuda._compile_kernel`); the kernel is compiled once per process
when the fast path is built. Where it is unavailable (no NVRTC, a GPU older than sm_80, shapes it does not cover)
the caller keeps bitsandbytes' kernel: `matvec_supported` says which.
"""

from __future__ import annotations

import logging
from functools import cache

import torch

log = logging.getLogger(__name__)

# The tiling (outputs per block, warps per block splitting each row) by row length, the fastest of those tried on
# an H200 (benchmarks/nf4_gemv.py): long rows (MLP down, 10,240) split over four warps, the others a warp for two.
LONG_ROW = 8192
TILING = {False: (2, 1), True: (4, 4)}
ENABLED = True  # False: bitsandbytes' kernel everywhere (the benchmark compares the two in one run)

KERNEL = r"""
typedef unsigned short bf16_t;

__device__ __forceinline__ float low_bf16(unsigned v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float high_bf16(unsigned v) { return __uint_as_float(v & 0xffff0000u); }
__device__ __forceinline__ bf16_t to_bf16(float f) {  // round to nearest even, as torch rounds
    unsigned u = __float_as_uint(f);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

// A block of KSPLIT warps computes ROWS outputs: the warps split the row's 16-byte chunks among them, each lane
// reads one chunk of every row per step and x's 32 values for it once.
extern "C" __global__ void __launch_bounds__(32 * KSPLIT) nf4_matvec(
        const uint4* __restrict__ x, const uint4* __restrict__ w, const float* __restrict__ scales,
        const float* __restrict__ code, bf16_t* __restrict__ y, int n, int k) {
    __shared__ float lut[16];
    __shared__ float partial[KSPLIT][ROWS];
    if (threadIdx.x < 16) lut[threadIdx.x] = code[threadIdx.x];
    __syncthreads();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int row0 = blockIdx.x * ROWS;
    const int chunks = k >> 5;  // 16 packed bytes (32 weights) per chunk
    float acc[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) acc[r] = 0.f;
    for (int c = threadIdx.x; c < chunks; c += 32 * KSPLIT) {
        uint4 packed[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; ++r) packed[r] = __ldcs(w + (size_t)min(row0 + r, n - 1) * chunks + c);
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
            const float scale = __ldg(scales + (size_t)min(row0 + r, n - 1) * (k >> 6) + (c >> 1));
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
    if (threadIdx.x < ROWS && row0 + threadIdx.x < n) {
        float total = 0.f;
#pragma unroll
        for (int i = 0; i < KSPLIT; ++i) total += partial[i][threadIdx.x];
        y[row0 + threadIdx.x] = to_bf16(total);
    }
}
"""


@cache
def _kernel(device_index: int, source: str, defines: tuple[str, ...]):
    """A kernel compiled for one GPU (NVRTC targets its architecture); raises where NVRTC cannot build it."""
    with torch.cuda.device(device_index):
        major, minor = torch.cuda.get_device_capability(device_index)
        return torch.cuda._compile_kernel(source, "nf4_matvec", compute_capability=f"{major}{minor}",
                                          nvcc_options=[*(f"-D{d}" for d in defines), "-std=c++17"])


@cache
def _nf4_levels(device_index: int) -> torch.Tensor:
    from bitsandbytes.functional import get_4bit_type

    return get_4bit_type("nf4", device=torch.device("cuda", device_index)).float().contiguous()


def matvec_supported(device: torch.device, k: int, quant_type: str, blocksize: int) -> bool:
    """Whether `nf4_matvec` can run products with this weight: an sm_80+ GPU, NF4 with blocks of 64, a row
    length that fills whole 16-byte chunks, and a kernel NVRTC could build. (Per call, the input must also be one
    bfloat16 token.)"""
    if device.type != "cuda" or quant_type != "nf4" or blocksize != 64 or k % 64:
        return False
    return _ready(torch.cuda.current_device() if device.index is None else device.index)


@cache
def _ready(device_index: int) -> bool:
    """Build every tiling and the level table now, once per GPU: at load, not inside a graph being captured."""
    if torch.cuda.get_device_capability(device_index)[0] < 8:
        return False
    try:
        for rows, ksplit in TILING.values():
            _kernel(device_index, KERNEL, (f"ROWS={rows}", f"KSPLIT={ksplit}"))
        _nf4_levels(device_index)
    except Exception as exc:  # no NVRTC, or a driver too old for its output: bitsandbytes' kernel it is
        log.warning("NF4 kernel unavailable, using bitsandbytes' (%s)", exc)
        return False
    return True


def launch(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, n: int, rows: int | None = None,
           ksplit: int | None = None) -> torch.Tensor:
    """The kernel on the current stream (so a CUDA graph being captured records it); `rows` and `ksplit` are
    the tiling, `TILING`'s unless given (the benchmark tries others)."""
    k = x.shape[-1]
    default_rows, default_ksplit = TILING[k >= LONG_ROW]
    rows, ksplit = rows or default_rows, ksplit or default_ksplit
    x, weight, scales = _aligned(x), _aligned(weight), scales.contiguous()
    out = torch.empty(*x.shape[:-1], n, dtype=x.dtype, device=x.device)
    _kernel(x.device.index, KERNEL, (f"ROWS={rows}", f"KSPLIT={ksplit}"))(
        grid=(-(-n // rows), 1, 1), block=(32 * ksplit, 1, 1),
        args=[x, weight, scales, _nf4_levels(x.device.index), out, n, k])
    return out


def _aligned(tensor: torch.Tensor) -> torch.Tensor:
    """Contiguous, starting on a 16-byte boundary (the kernel reads 16 bytes at a time)."""
    tensor = tensor.contiguous()
    return tensor if tensor.data_ptr() % 16 == 0 else tensor.clone()


@torch.library.custom_op("medgemma::nf4_matvec", mutates_args=())
def nf4_matvec(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, n: int) -> torch.Tensor:
    """x (one token of k bfloat16 values, any leading shape) times the (n, k) NF4 `weight` (bitsandbytes'
    packed bytes) with float32 `scales` per 64 weights: (..., n) in bfloat16. Check `matvec_supported` first."""
    return launch(x, weight, scales, n)


@nf4_matvec.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, n: int) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], n)
