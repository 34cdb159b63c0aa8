"""The route class of every Opsline router: a route rules itself out cheaply.

Starlette tries an application's routes in order, each by its path's regular
expression; with some sixty routes a request to one near the end paid about
0.1 ms before its handler ran. A path's literal beginning (up to its first
parameter) must begin any request path the route matches, whatever the
method, so one string comparison rules most routes out; those it does not
rule out are matched exactly as before.

Every route also documents its error answers as problem documents (4XX, 5XX),
which replaces FastAPI's default 422 schema: ours is the one sent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import Scope

from opsline.platform.http.problems import PROBLEM_CONTENT, PROBLEM_RESPONSES


class Route(APIRoute):
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        kwargs["responses"] = _with_problems(kwargs.get("responses") or {})
        super().__init__(path, endpoint, **kwargs)
        self.literal_prefix = self.path.split("{", 1)[0]

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        # Behind a root_path Starlette matches a path derived from both: no shortcut.
        if not scope.get("root_path") and not scope["path"].startswith(self.literal_prefix):
            return Match.NONE, {}
        return super().matches(scope)


def _with_problems(responses: dict[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """A route's own responses over the problem ranges; an error status it names
    without saying what it carries is a problem document too."""
    merged = dict(PROBLEM_RESPONSES)
    for code, response in responses.items():
        if str(code)[0] in "45" and not {"content", "model"} & response.keys():
            response = {**response, "content": PROBLEM_CONTENT}
        merged[code] = response
    return merged
