"""The Open Inference Protocol (KServe / Triton "v2") wire format: tensors in and out of JSON, and Triton's binary
tensor extension, which `tritonclient.http` uses by default.

An inference request is a JSON object (`id`, `parameters`, `inputs`, `outputs`); each input tensor has a `name`,
`shape`, `datatype` and either `data` (row-major, flat or nested) or, with the binary extension, a
`parameters.binary_data_size` and its bytes after the JSON, whose length the `Inference-Header-Content-Length`
header gives. Outputs asked for with `parameters.binary_data` (or all of them with the request's
`parameters.binary_data_output`) come back the same way. BYTES elements travel as 4-byte little-endian lengths
followed by the bytes. JSON has no NaN or infinity: in JSON `data` a number tensor's non-finite element is `null`,
in requests (a hole) and in responses (e.g. a gain per cost beyond FP32 for a tiny cost); binary data carries the
IEEE value. Errors are `{"error": "..."}` (`ProtocolError`).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hhvaem.app.api.json_body import loads

HEADER_LENGTH = "Inference-Header-Content-Length"
# The protocol's tensor datatypes and their numpy dtypes (little-endian on the wire).
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
# A tensor has at most this many dimensions, each at most MAX_DIM elements (numpy's own limits are larger, and an
# empty tensor of shape [2**62, 0] would pass a count of its elements); nested JSON data no deeper than its rank.
MAX_RANK = 8
MAX_DIM = 2**31 - 1
# Request parameters the Triton client may send on its own; they change nothing here.
CLIENT_PARAMETERS = frozenset({"sequence_id", "sequence_start", "sequence_end", "priority", "timeout"})


class ProtocolError(Exception):
    """A request that breaks the protocol or the model's tensor contract; rendered as {"error": message}."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message, self.status = message, status


@dataclass
class InferenceRequest:
    id: str | None
    parameters: dict[str, Any]
    inputs: dict[str, np.ndarray]
    outputs: list[tuple[str, dict[str, Any]]] | None  # None: every output the operation gives
    binary_output: bool = False  # the request's parameters.binary_data_output


@dataclass
class Output:
    name: str
    datatype: str
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)


def parse_request(body: bytes, header_length: str | None) -> InferenceRequest:
    """Decodes an inference request (JSON, or JSON plus binary tensors)."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise ProtocolError(f"{HEADER_LENGTH} header: {header_length!r} is not a number of bytes") from None
        if not 0 < n <= len(body):
            raise ProtocolError(f"{HEADER_LENGTH} header: {n} bytes, but the body has {len(body)}")
        head, rest = body[:n], memoryview(body)[n:]
    else:
        head, rest = body, memoryview(b"")
    try:
        doc = loads(head)  # a member given twice is refused, not reduced to its last value
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"the inference request is not valid JSON ({e})") from None
    except RecursionError:
        raise ProtocolError("the inference request is nested too deeply to be a tensor request") from None
    if not isinstance(doc, dict):
        raise ProtocolError("the inference request must be a JSON object with 'inputs'")
    unknown = sorted(set(doc) - {"id", "parameters", "inputs", "outputs"})
    if unknown:
        raise ProtocolError(f"{unknown[0]!r}: not a member of an inference request")
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise ProtocolError("id: must be a string")
    parameters = _parameters(doc.get("parameters"), "parameters")
    binary_output = parameters.pop("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise ProtocolError("parameters.binary_data_output: must be true or false")
    inputs_doc = doc.get("inputs")
    if not isinstance(inputs_doc, list) or not inputs_doc:
        raise ProtocolError("inputs: must be a non-empty list of tensors")
    inputs, offset = {}, 0
    for k, spec in enumerate(inputs_doc):
        name, array, offset = _input(spec, k, rest, offset)
        if name in inputs:
            raise ProtocolError(f"input {name!r}: given more than once")
        inputs[name] = array
    if offset != len(rest):
        raise ProtocolError(f"the body has {len(rest) - offset} bytes of binary data that no input claims")
    return InferenceRequest(rid, parameters, inputs, _outputs(doc.get("outputs")), binary_output)


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{where}: must be an object of name: value")
    for k, v in value.items():
        if not isinstance(v, (str, int, float, bool)) or (isinstance(v, float) and not math.isfinite(v)):
            raise ProtocolError(f"{where}.{k}: a parameter is a string, a number or a boolean")
    return dict(value)


def _input(spec: Any, k: int, rest: memoryview, offset: int) -> tuple[str, np.ndarray, int]:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ProtocolError(f"inputs[{k}]: must be an object with name, shape, datatype and data")
    name = spec["name"]
    where = f"input {name!r}"
    shape, datatype = spec.get("shape"), spec.get("datatype")
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise ProtocolError(f"{where}: shape must be a list of non-negative integers")
    if len(shape) > MAX_RANK or any(s > MAX_DIM for s in shape):
        raise ProtocolError(
            f"{where}: shape {shape[: MAX_RANK + 1]} is too large (at most {MAX_RANK} dimensions of at "
            f"most {MAX_DIM} elements)"
        )
    if not isinstance(datatype, str) or datatype not in DTYPES:
        raise ProtocolError(f"{where}: unknown datatype {datatype!r} (expected one of {', '.join(DTYPES)})")
    params = _parameters(spec.get("parameters"), f"{where} parameters")
    size = math.prod(shape)
    if "binary_data_size" in params:
        n = params["binary_data_size"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 0 or offset + n > len(rest):
            raise ProtocolError(f"{where}: binary_data_size {n!r} does not fit the binary data sent")
        raw = rest[offset : offset + n]
        flat = _from_bytes(raw, datatype, where)
        offset += n
    elif "data" in spec:
        flat = _from_json(spec["data"], datatype, where, len(shape))
    else:
        raise ProtocolError(f"{where}: no data (give 'data', or binary data with parameters.binary_data_size)")
    if flat.size != size:
        raise ProtocolError(f"{where}: shape {shape} needs {size} elements, the data has {flat.size}")
    try:
        return name, flat.reshape(shape), offset
    except ValueError:  # an empty tensor whose other dimensions multiply past numpy's limit
        raise ProtocolError(f"{where}: shape {shape} is too large for an array") from None


def _from_json(data: Any, datatype: str, where: str, rank: int) -> np.ndarray:
    if not isinstance(data, list):
        raise ProtocolError(f"{where}: data must be a (flat or nested) list")
    flat = _flatten(data, max(rank, 1), where)
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise ProtocolError(f"{where}: BYTES data must be strings")
        return np.array(flat, dtype=object)
    if datatype == "BOOL":
        if not all(isinstance(v, bool) for v in flat):
            raise ProtocolError(f"{where}: BOOL data must be true or false")
    # JSON has no NaN: null stands for a hole in a number tensor (Python's json also reads a bare NaN)
    elif not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in flat):
        raise ProtocolError(f"{where}: {datatype} data must be numbers (null for a hole)")
    if datatype.startswith("FP"):
        flat = [math.nan if v is None else v for v in flat]
    elif any(v is None for v in flat):
        raise ProtocolError(f"{where}: null is not a {datatype} value")
    try:
        return np.array(flat, dtype=DTYPES[datatype])
    except (OverflowError, ValueError):
        raise ProtocolError(f"{where}: a value does not fit {datatype}") from None


def _flatten(data: Sequence[Any], depth: int, where: str) -> list[Any]:
    """The elements of nested lists in row-major order; lists nested deeper than `depth` (the tensor's rank) are
    refused (iterative: a crafted nesting cannot exhaust the stack)."""
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        v = next(stack[-1], _END)
        if v is _END:
            stack.pop()
        elif isinstance(v, list):
            if len(stack) >= depth:
                raise ProtocolError(f"{where}: data is nested deeper than the shape's {depth} dimension(s)")
            stack.append(iter(v))
        else:
            out.append(v)
    return out


_END = object()


def _from_bytes(raw: memoryview, datatype: str, where: str) -> np.ndarray:
    if datatype != "BYTES":
        width = DTYPES[datatype].itemsize
        if len(raw) % width:
            raise ProtocolError(f"{where}: {len(raw)} bytes is not a whole number of {datatype} elements")
        return np.frombuffer(raw, dtype=DTYPES[datatype]).copy()
    items, pos = [], 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise ProtocolError(f"{where}: BYTES data ends inside an element's length")
        (n,) = struct.unpack_from("<I", raw, pos)
        if pos + 4 + n > len(raw):
            raise ProtocolError(f"{where}: BYTES element of {n} bytes runs past the data")
        try:
            items.append(bytes(raw[pos + 4 : pos + 4 + n]).decode("utf-8"))
        except UnicodeDecodeError:
            raise ProtocolError(f"{where}: a BYTES element is not UTF-8 text") from None
        pos += 4 + n
    return np.array(items, dtype=object)


def _outputs(value: Any) -> list[tuple[str, dict[str, Any]]] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise ProtocolError("outputs: must be a list of {name, parameters?}")
    out = []
    for k, spec in enumerate(value):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ProtocolError(f"outputs[{k}]: must be an object with a name")
        params = _parameters(spec.get("parameters"), f"output {spec['name']!r} parameters")
        unknown = sorted(set(params) - {"binary_data"})
        if unknown:
            raise ProtocolError(f"output {spec['name']!r} parameters.{unknown[0]}: not supported")
        out.append((spec["name"], params))
    return out


def encode_response(
    model: str, version: int, rid: str | None, outputs: Sequence[Output], binary: set[str], parameters: Mapping
) -> tuple[bytes, int | None]:
    """(body, JSON header length or None); outputs named in `binary` go as binary data after the JSON."""
    doc: dict[str, Any] = {"model_name": model, "model_version": str(version)}
    if rid is not None:
        doc["id"] = rid
    if parameters:
        doc["parameters"] = dict(parameters)
    entries, chunks = [], []
    for o in outputs:
        entry: dict[str, Any] = {"name": o.name, "datatype": o.datatype, "shape": list(o.data.shape)}
        params = dict(o.parameters)
        if o.name in binary:
            chunk = _to_bytes(o.data, o.datatype)
            params["binary_data_size"] = len(chunk)
            chunks.append(chunk)
        else:
            entry["data"] = _json_data(o.data)
        if params:
            entry["parameters"] = params
        entries.append(entry)
    doc["outputs"] = entries
    head = json.dumps(doc, allow_nan=False).encode()
    return (head + b"".join(chunks), len(head)) if chunks else (head, None)


def _json_data(data: np.ndarray) -> list[Any]:
    """A tensor's elements for JSON `data`: a non-finite number becomes null (JSON has no NaN or infinity)."""
    flat = data.reshape(-1)
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        return [v if math.isfinite(v) else None for v in flat.tolist()]
    return flat.tolist()


def _to_bytes(data: np.ndarray, datatype: str) -> bytes:
    if datatype != "BYTES":
        return np.ascontiguousarray(data, dtype=DTYPES[datatype]).tobytes()
    parts = []
    for v in data.reshape(-1):
        b = v if isinstance(v, bytes) else str(v).encode()
        parts.append(struct.pack("<I", len(b)) + b)
    return b"".join(parts)


def error_body(message: str) -> dict[str, str]:
    return {"error": message}
