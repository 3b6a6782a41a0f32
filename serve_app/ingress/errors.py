"""OpenAI-style error responses for the errors fleetserve itself raises (vLLM's have the same shape)."""

from __future__ import annotations

from starlette.responses import JSONResponse

__all__ = ["openai_error"]


def openai_error(status: int, message: str, *, err_type: str, param: str | None = None) -> JSONResponse:
    """Return `{"error": {message, type, param, code}}` with HTTP `status`."""
    return JSONResponse({"error": {"message": message, "type": err_type, "param": param, "code": status}}, status_code=status)
