"""What a client did wrong, as an HTTP status and a message: one exception for /predict and the v2 protocol."""

from __future__ import annotations

import json


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def load_json(data: bytes, what: str, too_deep_status: int = 400):
    """The JSON document in data; a RequestError naming `what` when it is not JSON (400) or nests too deeply."""
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(400, f"{what} is not valid JSON ({getattr(e, 'msg', e)})")
    except RecursionError:
        raise RequestError(too_deep_status, f"{what} JSON is nested too deeply")
