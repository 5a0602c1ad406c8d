"""Failures as OpenAI-shaped JSON: `{"error": {"message", "type", "param", "code"}}` with the HTTP status that the
OpenAI API (and vLLM, LM Studio, Ollama) use, so any OpenAI client raises its usual exception with our message."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from medgemma_desktop.core.errors import InputFileError, UserFacingError


class ApiError(Exception):
    """A request the server answers with an error status; `message` is one line a person can act on."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(self.retry_after_s)} if self.retry_after_s is not None else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def too_large(message: str, param: str | None = None) -> ApiError:
    return ApiError(413, message, param=param, code="request_too_large")


def busy(retry_after_s: int) -> ApiError:
    return ApiError(503, f"the model is busy with other requests; try again in {retry_after_s} s",
                    type="server_busy", code="queue_full", retry_after_s=retry_after_s)


def from_user_error(error: UserFacingError, where: str | None = None) -> ApiError:
    """A core failure (bad image, prompt too long, out of memory) as the status a client should see.

    The file path in a core message is the server's temporary copy, meaningless to the client: `where` (the part
    of the request, e.g. "messages[0].content[1]") replaces it.
    """
    text = f"{where}: {error.problem}." if where else f"{error.problem}."
    if error.fix:
        text += f" {error.fix}"
    if error.kind == "context":
        return ApiError(400, text, code="context_length_exceeded")
    if isinstance(error, InputFileError):
        return ApiError(400, text, param=where, code="invalid_image")
    if error.kind == "error":  # a plain refusal of the request's content (a mode's image count, bad text, ...)
        return ApiError(400, text, param=where)
    return ApiError(500, text, type="server_error", code=error.kind)
