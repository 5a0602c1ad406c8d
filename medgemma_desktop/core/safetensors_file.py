"""The header of a safetensors file, read and checked the way the safetensors library would, without loading data.

A shard whose header names an unknown dtype, gives offsets that do not match its shapes, or overlaps another
tensor fails deep inside transformers or bitsandbytes with a traceback; checked here, it is one line.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

# Bytes per element of every dtype the safetensors format defines (sub-byte float types are not used by MedGemma
# and are refused as unknown).
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8}
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]


def read_header(path: Path) -> dict[str, TensorEntry]:
    """The tensors a safetensors file holds; raises ValueError (saying what is wrong) when the file is cut short,
    is not safetensors or its header does not describe its data."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError("the file is empty or cut short")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > size - 8 or header_len > MAX_HEADER_BYTES:
            raise ValueError("the file is not safetensors or is cut short")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError("its header is not valid JSON") from exc
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    header.pop("__metadata__", None)
    entries: dict[str, TensorEntry] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        dtype, shape, offsets = _fields(name, entry)
        expected = math.prod(shape) * DTYPE_BYTES[dtype]
        if offsets[1] - offsets[0] != expected:
            raise ValueError(f"tensor {name}: its data takes {offsets[1] - offsets[0]:,} bytes, but {dtype} "
                             f"{list(shape)} needs {expected:,}")
        entries[name] = TensorEntry(dtype, shape)
        spans.append((offsets[0], offsets[1], name))
    position = 0
    for start, end, name in sorted(spans):
        if start != position:
            raise ValueError(f"tensor {name}: its data {'overlaps another' if start < position else 'leaves a gap'}")
        position = end
    if 8 + header_len + position > size:
        raise ValueError(f"the file is cut short ({size:,} bytes, needs {8 + header_len + position:,})")
    return entries


def _fields(name: str, entry: object) -> tuple[str, tuple[int, ...], tuple[int, int]]:
    if not isinstance(entry, dict):
        raise ValueError(f"tensor {name}: its header entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"tensor {name}: unknown dtype {str(dtype)[:20]!r}")
    if not isinstance(shape, list) or not all(_count(item) for item in shape):
        raise ValueError(f"tensor {name}: its shape is not a list of sizes")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_count(item) for item in offsets) \
            or offsets[0] > offsets[1]:
        raise ValueError(f"tensor {name}: its data offsets are not two increasing byte positions")
    return dtype, tuple(shape), (offsets[0], offsets[1])


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
