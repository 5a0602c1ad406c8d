"""Why does a compiled step need a C compiler even with inductor's and Triton's caches filled? Compiles two small
functions (plain torch ops; the same with bitsandbytes' 4-bit matmul, as the decode step has) and reports whether
inductor's FX graph cache hit and the traceback of any failure.

Usage: python benchmarks/no_compiler_probe.py (once with a compiler to fill the caches named by
TORCHINDUCTOR_CACHE_DIR / TRITON_CACHE_DIR, then with PATH and CC hiding it). Prints one JSON line per function.
"""

from __future__ import annotations

import json
import traceback

import bitsandbytes.functional as bf
import torch
from torch._dynamo.utils import counters


def plain(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (torch.nn.functional.gelu(x @ w) * 2).sum(-1)


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 256, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
    packed, state = bf.quantize_4bit(w, blocksize=64, quant_type="nf4")

    def with_4bit(x: torch.Tensor) -> torch.Tensor:
        out = torch.ops.bitsandbytes.gemm_4bit.default(x * 2, packed, [256, 256], state.absmax, 64, "nf4")
        return torch.nn.functional.gelu(out).sum(-1)

    for name, fn, args in (("plain", plain, (x, w)), ("with_4bit", with_4bit, (x,))):
        counters.clear()
        record: dict = {"function": name}
        try:
            torch.compile(fn, dynamic=False)(*args)
            torch.cuda.synchronize()
            record["ok"] = True
        except Exception:
            record["error"] = traceback.format_exc()[-2500:]
        record["inductor_counters"] = {key: value for key, value in counters["inductor"].items()
                                       if "cache" in key}
        print(json.dumps(record), flush=True)
        torch._dynamo.reset()


if __name__ == "__main__":
    main()
