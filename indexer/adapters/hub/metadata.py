"""Reading the Hub's metadata where more than one module needs the same reading: a file's
size, whether a repository is gated, and the bytes a (quantized) checkpoint's parameters take.

The client (budget checks before a download), the watcher (the screen) and the loopback Hub
of the testbed (which reports parameter counts as the Hub does) read these fields the same
way; each field is read defensively, since the Hub's answers vary with the endpoint and the
``huggingface_hub`` version.
"""
from __future__ import annotations

from typing import Any

# Bytes per element of each safetensors dtype.
DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
               "I16": 2, "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1}
# Integer dtypes that quantizers pack low-bit weights into (GPTQ/AWQ: I32, bitsandbytes: U8).
PACKED_DTYPES = frozenset({"I32", "U32", "I16", "U16", "I8", "U8"})


def file_size(sibling: Any) -> int | None:
    """A file's size: the sibling's, else its LFS pointer's; None when the Hub gave neither
    (listings carry no sizes; ``model_info(files_metadata=True)`` does)."""
    size = getattr(sibling, "size", None)
    if isinstance(size, int):
        return size
    lfs = getattr(sibling, "lfs", None)
    size = getattr(lfs, "size", None) if lfs is not None else None
    return size if isinstance(size, int) else None


def is_gated(value: Any) -> bool:
    """Whether a ``gated`` field means gated: the Hub sends False, "auto" or "manual" (and some
    endpoints the strings "false"/"False")."""
    return value not in (None, False, "false", "False", "")


def quantization_bits(config: dict) -> float | None:
    """Bits per weight of a quantized checkpoint from its ``quantization_config`` (GPTQ / AWQ /
    other ``bits``; bitsandbytes 4- or 8-bit), or None when it is not quantized."""
    q = config.get("quantization_config")
    if not isinstance(q, dict):
        return None
    bits = q.get("bits", q.get("w_bit"))
    if isinstance(bits, (int, float)) and not isinstance(bits, bool) and 0 < bits <= 16:
        return float(bits)
    if q.get("load_in_4bit") is True or "bnb_4bit_quant_type" in q:
        return 4.0
    if q.get("load_in_8bit") is True:
        return 8.0
    return None
