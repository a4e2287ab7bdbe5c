"""`sceneloc serve`: the application on uvicorn, in this process or in `workers` processes.

With several workers uvicorn starts each process from an import string, so the settings travel to them through
the environment (SCENELOC_SERVE_SETTINGS: the pickled ServeConfig, map paths and token file of this very command,
read only by the processes it starts) and each process loads the maps itself.
"""

from __future__ import annotations

import base64
import os
import pickle
import signal
import sys
from pathlib import Path

import uvicorn

from sceneloc.serve.app import create_app
from sceneloc.serve.auth import read_token
from sceneloc.serve.config import ServeConfig
from sceneloc.serve.limits import GuardedH11Protocol
from sceneloc.runtime.errors import InputError
from sceneloc.serve.maps import ServedMap, load_served_maps

SETTINGS_ENV = "SCENELOC_SERVE_SETTINGS"


def build_app(config: ServeConfig, map_paths: list[Path], token_file: Path | None):
    """(the ASGI application, its maps); InputError for a bad token source or map file, before anything binds."""
    token = read_token(token_file)
    maps = load_served_maps(map_paths, config.device, config.viewer_points)
    if config.reconstruct:
        for m in maps.values():
            if m.kind != "scene":
                raise InputError(m.path, f"--reconstruct fuses the depth a scene-coordinate map implies; this is a "
                                         f"{m.kind} map")
    return create_app(config, maps, token), maps


def uvicorn_settings(config: ServeConfig) -> dict:
    """uvicorn's settings for `config` (host and port aside): the guarded h11 protocol with this server's header
    deadline, WebSockets, the connection and message limits, the graceful-stop deadline, no access log (it would
    log query strings) and no proxy headers: X-Forwarded-For is the client's to write, and trusting it would let
    any client pick the address its rate is counted under."""
    protocol = type("ServeH11Protocol", (GuardedH11Protocol,), {"header_timeout_s": config.header_timeout_s})
    return dict(http=protocol, ws="websockets-sansio", limit_concurrency=config.max_connections,
                timeout_graceful_shutdown=int(config.request_timeout_s + 5), ws_max_size=config.max_body_bytes,
                proxy_headers=False, access_log=False, log_level="warning", server_header=False)


def app_from_environment():
    """The application of one worker process (uvicorn's factory with workers > 1)."""
    config, map_paths, token_file = pickle.loads(base64.b64decode(os.environ[SETTINGS_ENV]))
    # uvicorn hands its settings to worker processes by pickling, so they get the importable class itself, and
    # each process (one server each) sets the deadline on it.
    GuardedH11Protocol.header_timeout_s = config.header_timeout_s
    return build_app(config, map_paths, token_file)[0]


def serve(config: ServeConfig, map_paths: list[Path], token_file: Path | None, on_ready=None) -> None:
    """Serve until SIGINT/SIGTERM, then stop gracefully: no new connections, every accepted request answered
    (up to request_timeout_s more), the pool drained. on_ready(maps) is called once the maps are loaded, before
    binding (the CLI prints what it serves)."""
    app, maps = build_app(config, map_paths, token_file)  # with workers too: bad input fails here, once
    if on_ready is not None:
        on_ready(maps)
    common = dict(host=config.host, port=config.port, **uvicorn_settings(config))
    # uvicorn stops gracefully on SIGINT/SIGTERM, then restores the handlers it found and raises the signal again;
    # these make that last step a clean exit 0 (not Python's KeyboardInterrupt, or death by the signal).
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, lambda *_: sys.exit(0))
    if config.workers == 1:
        uvicorn.run(app, **common)
        return
    del app, maps
    os.environ[SETTINGS_ENV] = base64.b64encode(pickle.dumps((config, map_paths, token_file))).decode()
    uvicorn.run("sceneloc.serve.server:app_from_environment", factory=True, workers=config.workers,
                **{**common, "http": GuardedH11Protocol})


def describe(maps: dict[str, ServedMap]) -> str:
    """One line per map: its name, kind, scenes and viewer points."""
    return "\n".join(f"  {m.name}: {m.kind} map{' (scenes: ' + ', '.join(m.scenes) + ')' if m.scenes else ''}, "
                     f"{len(m.cloud.xyz):,} viewer points, from {m.path}" for m in maps.values())
