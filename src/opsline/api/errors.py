"""One renderer for every error: RFC 9457 problem documents."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from opsline.platform.http.problems import PROBLEM_BASE, Problem, problem_document

_TITLES = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Authentication required"),
    403: ("forbidden", "Permission denied"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    406: ("not-acceptable", "Not acceptable"),
    409: ("conflict", "Conflict"),
    413: ("too-large", "Request too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("validation-error", "Invalid request"),
    429: ("rate-limited", "Too many requests"),
    500: ("internal", "Internal server error"),
    503: ("unavailable", "Service unavailable"),
}


def problem_response(
    request: Request,
    status: int,
    detail: str,
    *,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    slug, title = _TITLES.get(status, ("error", "Error"))
    content = body or {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
    }
    return problem_document(request, content, headers=headers)


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return exc.response(request)


async def _on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else "request failed"
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no resource at {request.url.path}"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    return problem_response(request, exc.status_code, detail, headers=getattr(exc, "headers", None))


async def _on_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    raw = exc.errors()
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in raw
    ]
    slug, title = _TITLES[422]
    body = {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": 422,
        "detail": _validation_detail(request, raw),
        "errors": errors,
    }
    return problem_response(request, 422, body["detail"], body=body)  # type: ignore[arg-type]


_SEND_JSON = "send it as JSON with Content-Type: application/json"


def _validation_detail(request: Request, raw: Sequence[Any]) -> str:
    """What to fix: the body as a whole when it is missing, not JSON, or not
    sent as JSON (FastAPI reports those as errors of a field named ``body``),
    then up to five of the other fields by their location."""
    invalid_json = next((e for e in raw if e.get("type") == "json_invalid"), None)
    if invalid_json is not None:
        # FastAPI puts the decoder's character offset where a field name would be.
        at = invalid_json["loc"][-1]
        reason = invalid_json.get("ctx", {}).get("error") or invalid_json.get("msg", "")
        return f"the body is not valid JSON (at character {at}): {reason}"
    parts: list[str] = []
    fields: list[str] = []
    for error in raw:
        loc = tuple(error.get("loc", ()))
        whole = _whole_body_detail(request, error) if loc == ("body",) else None
        if whole:
            parts.append(whole)
        else:
            fields.append(".".join(str(p) for p in loc))
    if fields:
        parts.append("fix these fields: " + ", ".join(fields[:5]))
    return "; ".join(parts) or "the request is not valid"


def _whole_body_detail(request: Request, error: Any) -> str | None:
    if error.get("type") == "missing":
        return f"the body is required: {_SEND_JSON}"
    if isinstance(error.get("input"), bytes):
        # FastAPI decodes JSON only under a JSON content type (or none) and
        # hands any other body over as bytes: curl's -d alone sends a form.
        sent = request.headers.get("content-type", "").partition(";")[0].strip()[:100]
        return f"the body was sent as {sent}, not JSON: {_SEND_JSON}"
    return None


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(RequestValidationError, _on_validation)
