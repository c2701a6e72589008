"""`GET /` (a small index, or the Sync Health page for a browser) and `GET /docs`: interactive API docs.

Swagger UI is served from the installed `swagger-ui-bundle-v2` package's own files: nothing comes from a
CDN, so the docs work offline and the page's Content-Security-Policy can allow this origin only.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from service.web.responses import json_response

STATIC = "/docs/static"
DOCS_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>codat-relay API</title>
<link rel="stylesheet" href="{STATIC}/swagger-ui.css">
<link rel="icon" type="image/png" href="{STATIC}/favicon-32x32.png">
</head>
<body>
<noscript>The interactive documentation needs JavaScript; the document itself is at
<a href="/openapi.json">/openapi.json</a>.</noscript>
<div id="swagger-ui"></div>
<script src="{STATIC}/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script>
</body>
</html>
"""
# Our own initialiser, a file rather than an inline script, so that the CSP needs no 'unsafe-inline' scripts.
INIT_JS = """window.ui = SwaggerUIBundle({
  url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true, persistAuthorization: false,
  presets: [SwaggerUIBundle.presets.apis], layout: "BaseLayout", tryItOutEnabled: true
});
"""
INDEX = {
    "name": "codat-relay",
    "links": {"ui": "/ui", "docs": "/docs", "openapi": "/openapi.json", "health": "/healthz", "ready": "/readyz",
              "webhooks": "/webhooks/codat", "companies": "/v1/companies", "alerts": "/v1/alerts"},
}  # fmt: skip


async def docs_page(_request: Request) -> Response:
    return HTMLResponse(PAGE, headers=DOCS_HEADERS)


async def docs_init(_request: Request) -> Response:
    return Response(INIT_JS, media_type="text/javascript", headers=DOCS_HEADERS)


async def index(request: Request) -> Response:
    """A browser goes to the Sync Health page; anything else gets the index of what is served here."""
    if "text/html" in request.headers.get("accept", ""):
        return RedirectResponse("/ui", 303)
    return json_response(INDEX)


def routes() -> list[BaseRoute]:
    return [
        Route("/", index, methods=["GET"]),
        Route("/docs", docs_page, methods=["GET"]),
        Route("/docs/init.js", docs_init, methods=["GET"]),
        Mount(STATIC, app=StaticFiles(directory=Path(str(swagger_ui_path))), name="docs-static"),
    ]
