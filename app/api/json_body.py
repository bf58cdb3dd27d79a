"""JSON request bodies read strictly: an object that names a member twice is refused, not silently reduced to its
last value (`{"bmi": 30, "bmi": 40}` would otherwise answer for 40 with no word about 30)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.routing import APIRoute


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            # FastAPI turns a JSONDecodeError into its "json_invalid" validation error: a 422 naming the body
            raise json.JSONDecodeError(f"the member {key[:200]!r} is given more than once", "", 0)
        out[key] = value
    return out


def loads(body: bytes | str) -> Any:
    """`json.loads` refusing duplicate members (JSONDecodeError)."""
    return json.loads(body, object_pairs_hook=_unique)


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """A route whose JSON body is read by `loads` (duplicate members refused)."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def route(request: Request):
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return route
