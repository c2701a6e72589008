"""The HTTP layer: the Starlette app, its routes (webhooks, intake, admin API, Sync Health pages) and OpenAPI."""
