"""The collector's web stack (Starlette on uvicorn): `app.py` builds the ASGI application
(/healthz, /metrics, the feed webhook, and mounts such as the hall manager's UI in `ui/`),
`server.py` serves it in a thread of the service."""
