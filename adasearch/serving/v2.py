"""The Open Inference Protocol (KServe v2), as Triton's and KServe's clients speak it.

    GET  /v2                              server metadata (extensions: binary_tensor_data)
    GET  /v2/health/live, /v2/health/ready
    GET  /v2/models/{name}[/versions/{v}] model metadata: one input, FP32 [-1, C, H, W]; outputs
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer

The model name is the run's name. An inference request holds one input tensor (any name), FP32 (other
numeric types are converted), shape [B, C, H, W] or [C, H, W], as JSON `data` (flat or nested) or, with
the binary tensor data extension, as raw little-endian bytes after a JSON header whose length the
Inference-Header-Content-Length header gives. Request `parameters` may hold budget_ms and max_drop (as in
/predict) and binary_data_output. Outputs: logits (FP32 [B, classes]), classes (INT64 [B]) and
exit_depth (INT64 [B]); the response's `parameters` say which config served it and how long it queued.
"""

from __future__ import annotations

import json
import math
from typing import Optional

import numpy as np
import torch

from adasearch.serving.batcher import Answer
from adasearch.serving.errors import RequestError, load_json

HEADER_LENGTH = "inference-header-content-length"
# KServe v2 datatypes the server converts to float32, with their little-endian numpy types.
DATATYPES = {
    "FP32": "<f4", "FP64": "<f8", "FP16": "<f2", "UINT8": "u1", "INT8": "i1",
    "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
}  # fmt: skip
OUTPUTS = ("logits", "classes", "exit_depth")


def model_metadata(name: str, cfg) -> dict:
    return {
        "name": name,
        "versions": ["1"],
        "platform": "pytorch_adaperceiver",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, cfg.in_channels, cfg.img_size, cfg.img_size]}],
        "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": [-1, cfg.num_classes]},
            {"name": "classes", "datatype": "INT64", "shape": [-1]},
            {"name": "exit_depth", "datatype": "INT64", "shape": [-1]},
        ],
    }


def parse_request(body: bytes, header_length: Optional[str]) -> tuple:
    """(request document, tensor (B or 1, C, H, W) float32) from an infer body, JSON or binary."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise RequestError(400, f"Inference-Header-Content-Length {header_length!r} is not a length in the body")
        split = int(header_length)
        head, binary = body[:split], body[split:]
    else:
        head, binary = body, b""
    doc = load_json(head, "infer request")
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or len(doc["inputs"]) != 1:
        raise RequestError(400, 'an infer request needs "inputs": a list of exactly one tensor (the images)')
    tensor = doc["inputs"][0]
    if not isinstance(tensor, dict):
        raise RequestError(400, "inputs[0] must be an object {name, shape, datatype, data}")
    shape, datatype = tensor.get("shape"), tensor.get("datatype")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise RequestError(400, f"inputs[0].shape {shape!r} is not a list of non-negative integers")
    if datatype not in DATATYPES:
        raise RequestError(400, f"inputs[0].datatype {datatype!r} is not allowed; allowed: {', '.join(DATATYPES)}")
    count = math.prod(shape)
    params = tensor.get("parameters") if isinstance(tensor.get("parameters"), dict) else {}
    size = params.get("binary_data_size")
    if size is not None:
        itemsize = np.dtype(DATATYPES[datatype]).itemsize
        if not isinstance(size, int) or size != len(binary) or size != count * itemsize:
            raise RequestError(
                400, f"inputs[0] binary_data_size {size!r}: the body holds {len(binary)} bytes after the header "
                f"and shape {shape} of {datatype} needs {count * itemsize}"
            )  # fmt: skip
        array = np.frombuffer(binary, dtype=DATATYPES[datatype]).astype(np.float32)
    else:
        data = tensor.get("data")
        if not isinstance(data, list):
            raise RequestError(400, "inputs[0].data must be a list of numbers (or use the binary tensor extension)")
        try:
            array = np.asarray(data, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError, OverflowError, RecursionError):
            raise RequestError(400, "inputs[0].data must be a rectangular list of numbers")
        if array.size != count:
            raise RequestError(400, f"inputs[0].data holds {array.size} numbers; shape {shape} needs {count}")
    return doc, torch.from_numpy(array.reshape(shape).copy())


def _wanted(doc: dict) -> list:
    """[(output name, binary?)] the request asks for; all outputs when it names none."""
    params = doc.get("parameters") if isinstance(doc.get("parameters"), dict) else {}
    binary_default = bool(params.get("binary_data_output", False))
    requested = doc.get("outputs")
    if not requested:
        return [(name, binary_default) for name in OUTPUTS]
    wanted = []
    for o in requested if isinstance(requested, list) else [None]:
        name = o.get("name") if isinstance(o, dict) else None
        if name not in OUTPUTS:
            raise RequestError(400, f"output {name!r} is not one of this model's: {', '.join(OUTPUTS)}")
        p = o.get("parameters") if isinstance(o.get("parameters"), dict) else {}
        wanted.append((name, bool(p.get("binary_data", binary_default))))
    return wanted


def response(doc: dict, name: str, answer: Answer, budget_ms: Optional[float]) -> tuple:
    """(body bytes, headers) of an infer response: JSON, or a JSON header and binary outputs."""
    tensors = {
        "logits": ("FP32", answer.logits.numpy().astype("<f4")),
        "classes": ("INT64", answer.logits.argmax(-1).numpy().astype("<i8")),
        "exit_depth": ("INT64", answer.exit_depth.numpy().astype("<i8")),
    }
    outputs, blobs = [], []
    for out_name, binary in _wanted(doc):
        datatype, array = tensors[out_name]
        entry = {"name": out_name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            blob = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.reshape(-1).tolist()
        outputs.append(entry)
    body = {
        "model_name": name,
        "model_version": "1",
        "outputs": outputs,
        "parameters": {
            "config_name": answer.entry.name,
            "batch_size": answer.batch_size,
            "queue_ms": round(answer.queue_ms, 3),
            "within_budget": answer.within_deadline,
            "deadline_met": answer.deadline_met,
        },
    }
    if budget_ms is not None:  # parameters hold bool, number or string values, never null
        body["parameters"]["budget_ms"] = budget_ms
    if "id" in doc:
        body["id"] = doc["id"]
    head = json.dumps(body, allow_nan=False, separators=(",", ":")).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
