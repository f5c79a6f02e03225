"""Request-body schemas for the OpenAPI document, for routes that parse their own bodies.

They describe the JSON shape only (the codecs validate everything); with them, /docs shows
the format and schemathesis generates structured, not only random, bodies.
"""

from __future__ import annotations

from typing import Any

from server.v2_codec import DTYPES

_PARAMETERS = {"type": "object", "additionalProperties": True}


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


V2_INFER = _json_body(
    {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": _PARAMETERS,
            "inputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "datatype", "shape"],
                    "properties": {
                        "name": {"type": "string"},
                        "datatype": {"type": "string", "enum": [*DTYPES, "BYTES"]},
                        "shape": {"type": "array", "items": {"type": "integer"}},
                        "data": {"type": "array", "items": {}},
                        "parameters": _PARAMETERS,
                    },
                },
            },
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}, "parameters": _PARAMETERS},
                },
            },
        },
    }
)

_TF_IMAGE = {
    "oneOf": [
        {"type": "object", "required": ["b64"], "properties": {"b64": {"type": "string", "format": "byte"}}},
        {"type": "array", "items": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}},
    ]
}

TF_SERVING = _json_body(
    {
        "type": "object",
        "properties": {
            "signature_name": {"type": "string"},
            "instances": {"type": "array", "items": _TF_IMAGE},
            "inputs": {"type": "array", "items": _TF_IMAGE},
            "examples": {"type": "array", "items": _TF_IMAGE},
            "top_k": {"type": "integer"},
        },
    }
)
