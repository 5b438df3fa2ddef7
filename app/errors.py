"""One error shape for every 4xx/5xx: {"error": {"code", "message", "details"}}.

`ApiError` is what HTTP-layer code raises (request parsing, uploads, limits); the
domain errors raised below it (`core.errors.ServiceError`, `models.errors.TaesarError`)
are mapped here, code to status by `STATUS_BY_CODE`, so handlers never need to catch
them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from core.errors import ServiceError
from core.logging import get_logger, log_event
from models.errors import TaesarError

CLIENT_CLOSED_REQUEST = 499  # logged and counted, never sent: the client is gone

# code -> HTTP status; the SDK mirrors this table with one exception class per code
STATUS_BY_CODE: dict[str, int] = {
    "bad_request": 400,
    "bad_json": 400,
    "bad_upload": 400,
    "unauthorized": 401,
    "not_found": 404,
    "unknown_model": 404,
    "job_not_found": 404,
    "method_not_allowed": 405,
    "body_timeout": 408,
    "conflict": 409,
    "job_not_finished": 409,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "validation_error": 422,
    "unknown_item": 422,
    "unknown_domain": 422,
    "bad_data": 422,
    "idempotency_mismatch": 422,
    "rate_limited": 429,
    "queue_full": 429,
    "too_many_uploads": 429,
    "internal_error": 500,
    "model_not_ready": 503,
    "redis_unavailable": 503,
}


class ApiError(Exception):
    def __init__(
        self,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        assert code in STATUS_BY_CODE, f"unregistered error code {code}"
        super().__init__(message)
        self.code = code
        self.status = STATUS_BY_CODE[code]
        self.message = message
        self.details = details or {}
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


# -- exception handlers ---------------------------------------------------------------
# Everything below turns one kind of failure into the one error shape. They are
# installed by `install_error_handlers`, called from `create_app`.

_MAX_ERRORS = 20  # pydantic may report one error per item of a huge list: the first few suffice
_MAX_ECHO = 100  # characters of caller input echoed back in an error

_log = get_logger("errors")
_CODE_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    408: "body_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "model_not_ready",
}


def error_response(
    code: str, message: str, details: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return JSONResponse(body, status_code=STATUS_BY_CODE[code], headers=headers)


def _clip(value: Any) -> Any:
    """A JSON-safe, short stand-in for a piece of caller input or pydantic context."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        # json.loads accepts NaN and Infinity, but a JSON answer cannot carry them
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value if len(value) <= _MAX_ECHO else value[:_MAX_ECHO] + "…"
    # containers are never echoed: they can be megabytes, and the location already says where
    return f"<{type(value).__name__}>"


def sanitize_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """pydantic's error list, made JSON-serialisable and bounded in size."""
    out = []
    for err in list(errors)[:_MAX_ERRORS]:
        item: dict[str, Any] = {
            "loc": [p if isinstance(p, int) else _clip(str(p)) for p in err.get("loc", ())],
            "msg": _clip(str(err.get("msg", ""))),
            "type": str(err.get("type", "")),
        }
        if "input" in err:
            item["input"] = _clip(err["input"])
        if err.get("ctx"):
            item["ctx"] = {
                str(k): _clip(v if isinstance(v, str | int | float | bool) else str(v)) for k, v in err["ctx"].items()
            }
        out.append(item)
    return out


def validation_failure(errors: Sequence[Any]) -> ApiError:
    """422 validation_error from pydantic errors already located in the request
    (`("body", ...)`, `("query", ...)`): the first one named in the message, at most
    _MAX_ERRORS of them listed, all of them counted."""
    clean = sanitize_errors(errors)
    first = clean[0] if clean else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"])
    message = f"{where}: {first['msg']}" if where else first["msg"]
    return ApiError("validation_error", message, {"errors": clean, "count": len(errors)})


def bad_json(reason: str, **details: Any) -> ApiError:
    """400 bad_json: the body does not parse (`reason` is the parser's word for it)."""
    return ApiError("bad_json", f"request body is not valid JSON: {_clip(reason)}", details)


def not_json(content_type: str | None) -> ApiError:
    """415 for a body sent with another content type than JSON."""
    return ApiError(
        "unsupported_media_type",
        f"send the body as JSON with 'Content-Type: application/json' (got {_clip(content_type or 'none')!r})",
        {"content_type": _clip(content_type)},
    )


def is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or mime.endswith("+json")


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.code, exc.message, exc.details, exc.headers or None)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    invalid = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if invalid is not None:
        ctx = invalid.get("ctx") or {}
        loc = invalid.get("loc", ())
        pos = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else None
        return await _api_error(request, bad_json(str(ctx.get("error", "decode error")), position=pos))
    content_type = request.headers.get("content-type")
    body_as_a_whole = all(tuple(e.get("loc", ())) == ("body",) for e in errors)
    if body_as_a_whole and request.headers.get("content-length", "0") != "0" and not is_json(content_type):
        # FastAPI hands a non-JSON body over as raw bytes; the honest answer is 415, not 'not a dict'
        return await _api_error(request, not_json(content_type))
    return await _api_error(request, validation_failure(errors))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = _CODE_BY_STATUS.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal_error")
    if code == "bad_request" and isinstance(exc.__cause__, ValueError | RecursionError):
        # FastAPI's "error parsing the body": undecodable bytes (e.g. gzip sent as JSON), absurd
        # numbers, nesting deeper than the parser's recursion limit
        return await _api_error(request, bad_json(str(exc.__cause__)))
    if code == "not_found":
        message = f"no such path: {_clip(request.url.path)}"
    elif code == "method_not_allowed":
        message = f"method {request.method} is not allowed on {_clip(request.url.path)}"
    else:
        message = _clip(str(exc.detail))
    return error_response(code, message, headers=exc.headers)


async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    # the service core builds these details itself: already bounded, echoed as they are
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
    return error_response(exc.code, exc.message, exc.details, headers)


async def _taesar_error(request: Request, exc: TaesarError) -> JSONResponse:
    details = {
        str(k): _clip(v) if not isinstance(v, list) else [_clip(x) for x in v[:50]] for k, v in exc.details.items()
    }
    if exc.code == "bad_bundle":  # a model broke after loading: the server's fault, not the caller's
        return await _internal_error(request, exc)
    message = exc.message if len(exc.message) <= 4 * _MAX_ECHO else exc.message[: 4 * _MAX_ECHO] + "…"
    if exc.code in STATUS_BY_CODE:
        return error_response(exc.code, message, details)
    return error_response("bad_request", message, {**details, "reason": exc.code})


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    request_id = request.scope.get("request_id")
    log_event(
        _log,
        "unhandled_error",
        level=40,
        method=request.method,
        path=request.url.path,
        request_id=request_id,
        error=type(exc).__name__,
        exc_info=exc,
    )
    # this answer bypasses the request middleware (Starlette sends it from the outermost
    # layer), so it carries the request id itself
    headers = {"X-Request-ID": request_id} if request_id else None
    return error_response(
        "internal_error", "internal server error; it has been logged", {"request_id": request_id}, headers
    )


async def _client_gone(request: Request, exc: ClientDisconnect) -> Response:
    """The client closed the connection before its request was read: nobody receives an
    answer, and it is not the server's fault. Status 499 (nginx's "client closed
    request") labels it in the request log and metrics."""
    log_event(
        _log,
        "client_abort",
        level=20,
        method=request.method,
        path=request.url.path,
        request_id=request.scope.get("request_id"),
    )
    return Response(status_code=CLIENT_CLOSED_REQUEST)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ClientDisconnect, _client_gone)  # type: ignore[arg-type]
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(ServiceError, _service_error)  # type: ignore[arg-type]
    app.add_exception_handler(TaesarError, _taesar_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _internal_error)
