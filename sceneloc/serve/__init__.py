"""The localization service (`sceneloc serve`): maps loaded once, localization over HTTP and WebSocket streams for AR
clients, a bearer token on every endpoint but /healthz, bounded load, Prometheus metrics and a browser viewer.

config.py (ServeConfig), auth.py (the token: loading, constant-time checks, the viewer's cookie), wire.py (what
crosses the wire: camera JSON, uploaded images, pose replies), pool.py (localization threads behind an admission
limit), limits.py (ASGI middleware: body size, read deadline, per-client rate; the uvicorn protocol that closes
connections whose headers never arrive), metrics.py (the Prometheus series), app.py (the FastAPI application and
its routes), server.py (uvicorn, one or several processes). The client of all this is sceneloc/client.py.
"""
