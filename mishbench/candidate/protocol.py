"""The wire protocol between the harness and the candidate's worker: length-prefixed `torch.save` of a dict
of tensors, strings and numbers, read with `weights_only=True` in both directions (so a reply cannot run
code in the harness). Tensors cross on the CPU. Imports torch only: the worker may import nothing else.
"""
import io
import struct
from typing import Any, Dict, Optional

import torch

HEADER = struct.Struct(">Q")
MAX_MESSAGE = 1 << 36  # 64 GiB: far above any tensor we send; a garbled header is caught before allocating
CANDIDATE_FILE = "candidate.py"
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16, "int64": torch.int64}


def encode(message: Dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(message, buf)
    data = buf.getvalue()
    return HEADER.pack(len(data)) + data


def decode(data: bytes) -> Dict[str, Any]:
    """weights_only: plain containers, strings, numbers and tensors only, in both directions."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def read_exact(stream, n: int) -> Optional[bytes]:
    chunks, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def torch_dtype_name(dtype: torch.dtype) -> str:
    """'float32', 'bfloat16', ...: the keys of DTYPES."""
    return str(dtype).replace("torch.", "")
