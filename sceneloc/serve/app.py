"""The service's application: its routes over the loaded maps, the localization pool and the viewer's events.

    GET  /healthz                       no token: {"status": "ok"}
    GET  /metrics                       Prometheus text
    GET  /v1/maps                       {"maps": [{name, type, scenes, points}]}
    POST /v1/maps/{name}/localize       multipart: image (JPEG/PNG), camera (JSON), scene (multi-scene maps)
    WS   /v1/maps/{name}/stream         text {"camera", "timestamp", "frame"} then binary JPEG, per frame
    WS   /v1/maps/{name}/events         every localization on the map, as the viewer draws it, and with
                                        --reconstruct each new version of its mesh
    GET  /v1/maps/{name}/points.ply     the map's point cloud for the viewer
    GET  /v1/maps/{name}/mesh.ply       with --reconstruct: the mesh the streamed frames made so far
    GET  /viewer[?map=NAME]             the browser viewer (?token=TOKEN once: sets the cookie, redirects)

Errors are JSON {"error": "<field or limit>: <problem>"} with the status codes in docs/SERVICE.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.datastructures import UploadFile

from sceneloc.export.poses import estimate_json
from sceneloc.geometry import Rigid3
from sceneloc.localize.estimate import PoseEstimate
from sceneloc.runtime.errors import InputError
from sceneloc.serve.auth import COOKIE, authorized, token_matches
from sceneloc.serve.config import ServeConfig
from sceneloc.serve.limits import BodyTimeout, BodyTooLarge, RateLimiter, RequestLimits
from sceneloc.serve.live import LiveReconstruction
from sceneloc.serve.maps import ServedMap
from sceneloc.serve.metrics import ServiceMetrics
from sceneloc.serve.pool import Expired, LocalizationPool, LocalizeJob, available_cores
from sceneloc.serve.wire import (RequestError, check_camera_fits, check_image, failure_reason, finite_number,
                                 parse_camera, parse_json)

STATIC = Path(__file__).with_name("static")
"""The viewer's page and its bundle (viewer.js, built from viewer/ by `make setup`)."""
EVENT_QUEUE = 64
"""Events a slow viewer may fall behind by before the oldest are dropped for it."""
MAX_TEXT_MESSAGE = 64 * 1024
"""Largest stream text message (metadata: a camera, a timestamp, names), as the HTTP camera field."""
MAX_NAME = 200
"""Longest frame or file name kept (replies and viewer events repeat it)."""
log = logging.getLogger("sceneloc.serve")


@dataclass
class StreamFrame:
    """A frame a stream client sent, waiting in its backlog."""

    image: bytes
    meta: dict
    """What the text messages before it set: camera (parse_camera's pair), timestamp, frame and scene names."""
    received: float
    """time.monotonic() when its last byte arrived."""


class EventHub:
    """Every localization on a map, fanned out to its viewers; a viewer that falls EVENT_QUEUE behind loses the
    oldest events, never slows the others down."""

    def __init__(self):
        self._queues: dict[str, set[asyncio.Queue]] = {}

    def subscribe(self, map_name: str) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(EVENT_QUEUE)
        self._queues.setdefault(map_name, set()).add(queue)
        return queue

    def unsubscribe(self, map_name: str, queue: asyncio.Queue) -> None:
        self._queues.get(map_name, set()).discard(queue)

    def publish(self, map_name: str, event: str) -> None:
        for queue in self._queues.get(map_name, ()):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)


def create_app(config: ServeConfig, maps: dict[str, ServedMap], token: str):
    """The ASGI application serving `maps` (name -> ServedMap) to clients that hold `token`."""
    threads = config.threads or max(1, available_cores() // config.workers)
    pool = LocalizationPool({name: m.map for name, m in maps.items()}, config.localize, threads, config.queue_size)
    metrics = ServiceMetrics(lambda: pool.waiting, lambda: pool.running)
    hub = EventHub()
    live = {name: LiveReconstruction(m.map, config.reconstruction, next(m.map.head.parameters()).device)
            for name, m in maps.items()} if config.reconstruct else {}
    fusions: set[asyncio.Task] = set()  # kept referenced until done (the loop holds tasks weakly)

    @asynccontextmanager
    async def lifespan(_):
        yield
        # uvicorn has answered every HTTP request by now and closed the streams: stop the pool.
        await asyncio.to_thread(pool.shutdown)
        if fusions:  # a frame being fused finishes (a thread cannot be cancelled)
            await asyncio.wait(set(fusions), timeout=config.request_timeout_s)
        for reconstruction in live.values():
            reconstruction.close()

    api = FastAPI(title="sceneloc", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    api.state.pool = pool

    @api.exception_handler(RequestError)
    async def request_error(_: Request, error: RequestError):
        return JSONResponse({"error": error.message}, error.status, headers=error.headers)

    @api.exception_handler(HTTPException)  # the router's own: an unknown path (404), a wrong method (405)
    async def routing_error(request: Request, error: HTTPException):
        return JSONResponse({"error": f"{request.method} {request.url.path}: {error.detail}"}, error.status_code,
                            headers=error.headers)

    def require_token(request: Request | WebSocket) -> None:
        if not authorized(request.headers, request.cookies, token):
            metrics.rejects.labels("unauthorized").inc()
            raise RequestError(401, "missing or wrong token (send 'Authorization: Bearer TOKEN')",
                               {"www-authenticate": 'Bearer realm="sceneloc"'})

    def served(name: str) -> ServedMap:
        if name not in maps:
            raise RequestError(404, f"map: no map named {name!r} (maps: {', '.join(maps)})")
        return maps[name]

    def scene_of(served_map: ServedMap, scene: str | None) -> str | None:
        if served_map.scenes is None:
            if scene is not None:
                raise RequestError(422, f"scene: map {served_map.name!r} holds one scene; send no scene")
            return None
        if scene is None or scene == "auto":
            return "auto"
        if scene not in served_map.scenes:
            raise RequestError(404, f"scene: map {served_map.name!r} has no scene {scene!r} "
                                    f"(scenes: {', '.join(served_map.scenes)})")
        return scene

    async def localize_image(served_map: ServedMap, scene: str | None, image: bytes, parsed_camera: tuple,
                             name: str, received: float, source: str, client: str, timestamp) -> dict:
        """Check, queue and localize one image (parsed_camera: parse_camera's (Camera, Undistortion)); the reply
        (and the viewer's event) as a dict. RequestError for what the client must change or retry."""
        camera, undistortion = parsed_camera
        check_camera_fits(check_image(image, config.max_image_pixels), camera)
        job = LocalizeJob(served_map.name, scene, image, camera, undistortion, name,
                          deadline=received + config.request_timeout_s)
        future = pool.submit(job)
        if future is None:
            metrics.rejects.labels("queue_full").inc()
            raise RequestError(503, f"busy: {pool.capacity} images admitted; retry", {"retry-after": "1"})
        queued = time.monotonic()
        try:
            estimate: PoseEstimate = await asyncio.wait_for(asyncio.wrap_future(future),
                                                            job.deadline - time.monotonic())
        except (asyncio.TimeoutError, Expired):
            metrics.rejects.labels("timeout").inc()
            raise RequestError(504, f"timeout: not localized within {config.request_timeout_s:g} s") from None
        except InputError as e:  # an image whose header was fine and whose data is not (truncated)
            raise RequestError(422, f"image: {e.problem}") from None
        except Exception:  # a defect, not the client's: logged once, answered (a stream frame gets its message too)
            log.exception("localizing %s on %s failed", name, served_map.name)
            raise RequestError(500, "internal error while localizing (logged on the server)") from None
        done = time.monotonic()
        time_ms = estimate.details.get("time_ms", 0.0)
        metrics.localize_seconds.labels(served_map.name).observe(time_ms / 1e3)
        metrics.queue_seconds.observe(max(0.0, done - queued - time_ms / 1e3))
        ok = estimate.cam_from_world is not None
        metrics.localizations.labels(served_map.name, source, "ok" if ok else "failed").inc()
        reply = {"map": served_map.name, "scene": estimate.details.get("scene", scene), **estimate_json(estimate),
                 "reason": failure_reason(estimate), "ms": (done - received) * 1e3,
                 "queue_ms": max(0.0, (done - queued) * 1e3 - time_ms), "timestamp": timestamp}
        hub.publish(served_map.name, json.dumps({
            "type": "pose", "source": source, "client": client, "frame": name, "timestamp": timestamp,
            "cam_from_world": reply["cam_from_world"], "num_inliers": reply["num_inliers"], "ms": reply["ms"],
            "intrinsics": camera.to_dict()}))
        return reply

    @api.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @api.get("/metrics")
    async def metrics_text(request: Request):
        require_token(request)
        return Response(metrics.text(), media_type=metrics.content_type)

    @api.get("/v1/maps")
    async def list_maps(request: Request):
        require_token(request)
        return {"maps": [{**m.summary(), **({"reconstruction": live[m.name].summary()} if m.name in live else {})}
                         for m in maps.values()]}

    @api.get("/v1/maps/{name}/points.ply")
    async def map_points(name: str, request: Request):
        require_token(request)
        return Response(served(name).cloud_ply, media_type="application/octet-stream")

    @api.get("/v1/maps/{name}/mesh.ply")
    async def map_mesh(name: str, request: Request):
        require_token(request)
        served(name)
        if name not in live:
            raise RequestError(404, "mesh: the server is not reconstructing (start it with --reconstruct)")
        if live[name].mesh_ply is None:
            raise RequestError(404, "mesh: nothing fused yet (stream frames that localize)")
        return Response(live[name].mesh_ply, media_type="application/octet-stream",
                        headers={"x-mesh-version": str(live[name].version)})

    async def fuse(served_map: ServedMap, frame: "StreamFrame", pose: dict, num_inliers: int) -> None:
        """Fuse a localized stream frame into its map's mesh, unless its pose has too few inliers (unsure) or that
        map's fusion is busy (then skip it); tell the viewers of each new mesh version."""
        reconstruction = live[served_map.name]
        if num_inliers < config.reconstruction.min_inliers:
            reconstruction.unsure += 1
            return
        if reconstruction.busy:
            reconstruction.skipped += 1
            return
        reconstruction.busy = True
        try:
            camera, undistortion = frame.meta["camera"]
            cam_from_world = Rigid3.from_qvec_tvec(pose["qvec_wxyz"], pose["tvec"])
            if await asyncio.to_thread(reconstruction.fuse, frame.image, frame.meta["frame"], camera, undistortion,
                                       cam_from_world) and reconstruction.mesh_ply is not None:
                hub.publish(served_map.name, json.dumps({"type": "mesh", "version": reconstruction.version,
                                                         "vertices": reconstruction.vertices}))
        except Exception:  # a defect: logged, the stream goes on
            log.exception("fusing %s into %s failed", frame.meta["frame"], served_map.name)
        finally:
            reconstruction.busy = False

    @api.post("/v1/maps/{name}/localize")
    async def localize(name: str, request: Request):
        received = time.monotonic()
        require_token(request)
        served_map = served(name)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise RequestError(415, "content-type: send multipart/form-data with fields image, camera[, scene]")
        if pool.full:  # refused before its body is read: waiting bodies are memory the queue does not bound
            metrics.rejects.labels("queue_full").inc()
            raise RequestError(503, f"busy: {pool.capacity} images admitted; retry", {"retry-after": "1"})
        try:
            async with request.form(max_files=1, max_fields=4, max_part_size=64 * 1024) as form:
                image = form.get("image")
                data = await image.read() if isinstance(image, UploadFile) else None
                filename = ((image.filename if isinstance(image, UploadFile) else None) or "query")[:MAX_NAME]
                camera_text, scene_text = _text_field(form, "camera"), _text_field(form, "scene")
        except BodyTooLarge:
            metrics.rejects.labels("too_large").inc()
            # Closed after the reply, as RequestLimits does: the client may still be sending a body nobody reads.
            raise RequestError(413, f"request body over the limit of {config.max_body_bytes:,} bytes",
                               {"connection": "close"}) from None
        except BodyTimeout:
            metrics.rejects.labels("slow_body").inc()
            raise RequestError(408, f"request body not received within {config.request_timeout_s:g} s",
                               {"connection": "close"}) from None
        except (MultiPartException, HTTPException) as e:  # Starlette raises the parser's error as HTTPException(400)
            raise RequestError(400, f"multipart body: {getattr(e, 'message', None) or e.detail}") from None
        if data is None:
            raise RequestError(422, "image: field required (a JPEG or PNG file)")
        scene = scene_of(served_map, scene_text)
        client = request.client.host if request.client else "unknown"
        return await localize_image(served_map, scene, data, parse_camera(camera_text), filename, received, "http",
                                    client, None)

    @api.websocket("/v1/maps/{name}/stream")
    async def stream(websocket: WebSocket, name: str):
        served_map = await _open_socket(websocket, name)
        if served_map is None:
            return
        metrics.streams.labels("stream").inc()
        client = f"{websocket.client.host}:{websocket.client.port}" if websocket.client else "stream"
        backlog: deque[StreamFrame] = deque()
        wake = asyncio.Event()
        send_lock = asyncio.Lock()

        async def send(message: dict) -> None:
            async with send_lock:
                await websocket.send_text(json.dumps(message))

        async def receive_frames() -> None:
            meta: dict = {}
            count = 0
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") is not None:
                    try:
                        if len(message["text"]) > MAX_TEXT_MESSAGE:
                            raise RequestError(413, f"message: over {MAX_TEXT_MESSAGE:,} characters")
                        meta = {**meta, **_stream_meta(message["text"])}
                    except RequestError as e:
                        await send({"type": "error", "error": e.message})
                    continue
                count += 1
                metrics.stream_frames.labels("received").inc()
                frame = StreamFrame(message.get("bytes") or b"", {"frame": f"frame-{count}", **meta},
                                    time.monotonic())
                meta.pop("frame", None)
                meta.pop("timestamp", None)
                if len(backlog) >= config.stream_backlog:
                    await drop(backlog.popleft(), "backlog full: a newer frame arrived")
                backlog.append(frame)
                wake.set()

        async def drop(frame: StreamFrame, reason: str) -> None:
            metrics.stream_frames.labels("dropped").inc()
            await send({"type": "dropped", "frame": frame.meta["frame"], "timestamp": frame.meta.get("timestamp"),
                        "reason": reason})

        async def localize_frame(frame: StreamFrame) -> None:
            try:
                scene = scene_of(served_map, frame.meta.get("scene"))
                if "camera" not in frame.meta:
                    raise RequestError(422, "camera: send it in a text message before the first frame")
                reply = await localize_image(served_map, scene, frame.image, frame.meta["camera"],
                                             frame.meta["frame"], frame.received, "stream", client,
                                             frame.meta.get("timestamp"))
            except RequestError as e:
                if e.status in (503, 504):
                    await drop(frame, e.message)
                else:
                    await send({"type": "error", "frame": frame.meta["frame"], "error": e.message})
                return
            metrics.stream_frames.labels("localized").inc()
            await send({"type": "pose", "frame": frame.meta["frame"], **reply, "backlog": len(backlog)})
            if served_map.name in live and reply["cam_from_world"] is not None:
                task = asyncio.create_task(fuse(served_map, frame, reply["cam_from_world"],
                                                reply["num_inliers"]))
                fusions.add(task)
                task.add_done_callback(fusions.discard)

        async def localize_frames() -> None:
            # As many frames in flight as the pool has threads, so one stream can use the whole server; the rest
            # wait in the backlog, where newer frames push out the oldest. Replies may overtake each other: each
            # names its frame and timestamp.
            slots = asyncio.Semaphore(pool.threads)
            running: set[asyncio.Task] = set()
            try:
                while True:
                    await wake.wait()
                    wake.clear()
                    while backlog:
                        await slots.acquire()
                        if not backlog:
                            slots.release()
                            break
                        task = asyncio.create_task(localize_frame(backlog.popleft()))
                        running.add(task)
                        task.add_done_callback(lambda done: (running.discard(done), slots.release()))
            finally:
                for task in running:
                    task.cancel()

        worker = asyncio.create_task(localize_frames())
        try:
            await receive_frames()
        except WebSocketDisconnect:
            pass
        finally:
            worker.cancel()
            open_sockets[0] -= 1
            metrics.streams.labels("stream").dec()

    @api.websocket("/v1/maps/{name}/events")
    async def events(websocket: WebSocket, name: str):
        if await _open_socket(websocket, name) is None:
            return
        metrics.streams.labels("viewer").inc()
        queue = hub.subscribe(name)
        closed = asyncio.create_task(websocket.receive())  # completes when the viewer goes away
        try:
            while True:
                event = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait({event, closed}, return_when=asyncio.FIRST_COMPLETED)
                if closed in done:
                    event.cancel()
                    return
                await websocket.send_text(event.result())
        except WebSocketDisconnect:
            pass
        finally:
            closed.cancel()
            hub.unsubscribe(name, queue)
            open_sockets[0] -= 1
            metrics.streams.labels("viewer").dec()

    open_sockets = [0]

    async def _open_socket(websocket: WebSocket, name: str) -> ServedMap | None:
        """Accept a WebSocket that holds the token and names a map while fewer than max_sockets are open; refuse
        the handshake with 401 / 404 / 503. The caller must call _close_socket once it is done."""
        try:
            require_token(websocket)
            served_map = served(name)
            if open_sockets[0] >= config.max_sockets:
                metrics.rejects.labels("too_many_sockets").inc()
                raise RequestError(503, f"busy: {config.max_sockets} WebSockets open; retry", {"retry-after": "1"})
        except RequestError as e:
            await websocket.send_denial_response(JSONResponse({"error": e.message}, e.status, headers=e.headers))
            return None
        await websocket.accept()
        open_sockets[0] += 1
        return served_map

    @api.get("/viewer")
    async def viewer(request: Request):
        offered = request.query_params.get("token")
        map_query = request.query_params.get("map")
        if offered is not None:
            if not token_matches(offered, token):
                metrics.rejects.labels("unauthorized").inc()
                raise RequestError(401, "wrong token")
            # The token leaves the address bar (and the history) at once; the cookie carries it from here.
            response = RedirectResponse("/viewer" + (f"?map={quote(map_query)}" if map_query else ""), 303)
            response.set_cookie(COOKIE, offered, httponly=True, samesite="strict",
                                secure=request.url.scheme == "https")
            return response
        require_token(request)
        return FileResponse(STATIC / "viewer.html", media_type="text/html")

    @api.get("/viewer/viewer.js")
    async def viewer_script(request: Request):
        require_token(request)
        bundle = STATIC / "viewer.js"
        if not bundle.is_file():
            raise RequestError(503, "the viewer is not built: run `make setup` (npm builds viewer/)")
        return FileResponse(bundle, media_type="text/javascript")

    def on_done(scope, status: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", "unmatched")
        metrics.requests.labels(route, str(status)).inc()
        metrics.request_seconds.labels(route).observe(seconds)

    return RequestLimits(api, config.max_body_bytes, config.request_timeout_s,
                         RateLimiter(config.rate_per_s, config.rate_burst),
                         lambda reason: metrics.rejects.labels(reason).inc(), on_done)


def _text_field(form, name: str) -> str | None:
    """A form field sent as text (None when absent); RequestError 422 when a file was sent in its place."""
    value = form.get(name)
    if value is None or isinstance(value, str):
        return value
    raise RequestError(422, f"{name}: expected a text field, got a file")


def _stream_meta(text: str) -> dict:
    """A stream's text message: {"camera": {...}, "timestamp": number, "frame": name, "scene": name}, each
    optional; the camera and scene hold for later frames too. RequestError 422 for anything else."""
    value = parse_json(text, "message")
    if not isinstance(value, dict):
        raise RequestError(422, "message: expected a JSON object (camera, timestamp, frame)")
    unknown = set(value) - {"camera", "timestamp", "frame", "scene"}
    if unknown:
        raise RequestError(422, f"message.{sorted(unknown)[0]}: unknown field (camera, timestamp, frame, scene)")
    meta = {}
    if "camera" in value:
        meta["camera"] = parse_camera(json.dumps(value["camera"]))  # parsed once, for every later frame
    if "timestamp" in value:
        stamp = value["timestamp"]
        if not finite_number(stamp):
            raise RequestError(422, f"message.timestamp: expected a number, got {str(stamp)[:40]}")
        meta["timestamp"] = stamp
    for name in ("frame", "scene"):
        if name in value:
            if not isinstance(value[name], str) or not 0 < len(value[name]) <= MAX_NAME:
                raise RequestError(422, f"message.{name}: expected a name of 1 to {MAX_NAME} characters")
            meta[name] = value[name]
    return meta
