"""Small HTTP pieces shared by the router, the direct model ingress and the simulator.

OpenAI-style error responses for the errors fleetserve itself raises (vLLM's have the same
shape), and the autoscaler's audit-trail endpoint `GET /-/autoscaler/{model}?last=N`.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

__all__ = ["openai_error", "autoscaler_history"]


def openai_error(status: int, message: str, *, err_type: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    """Return `{"error": {message, type, param, code}}` with HTTP `status`."""
    return JSONResponse({"error": {"message": message, "type": err_type, "param": param, "code": status}},
                        status_code=status, headers=headers)


async def autoscaler_history(request: Request) -> JSONResponse:
    """Serve the autoscaler's recent decisions for `{model}` (what `fleetserve autoscaler explain` reads)."""
    from serve_app.autoscaling.serve_adapter import fetch_history

    last = request.query_params.get("last")
    if last is not None and not last.isdigit():
        return openai_error(400, f"last={last!r} must be a whole number", err_type="BadRequestError", param="last")
    return JSONResponse(await fetch_history(request.path_params["model"], last=int(last) if last else None))
