"""The ceiling of this stack: a bare Starlette endpoint that reads the body and answers 202.

Run exactly like the relay's web process is run (uvloop, httptools, no access log), e.g.
`python -m uvicorn benchmarks.bare_app:app --loop uvloop --http httptools --no-access-log --port 8001`.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def webhook(request: Request) -> Response:
    await request.body()  # the relay must read every byte before it can verify; so must the baseline
    return JSONResponse({"status": "accepted"}, status_code=202)


async def healthz(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


# Same path as the relay so the load generator replays byte-identical requests against both.
app = Starlette(
    routes=[
        Route("/webhooks/codat", webhook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
)
