"""The Python client of `sceneloc serve` (what `sceneloc localize --server URL`, the load test and the tests use).

    from sceneloc.client import Client
    with Client("http://127.0.0.1:8700", token) as client:
        client.maps()                                              # [{"name": "office", "type": "scene", ...}]
        reply = client.localize("office", open("q.jpg", "rb").read(), camera)   # camera: sceneloc.Camera or JSON
        estimate = client.localize_frame("office", frame)          # a sceneloc.Frame -> PoseEstimate
        with client.stream("office") as stream:                    # WebSocket: frames in, poses out
            stream.send(jpeg_bytes, camera, timestamp=0.033)
            message = stream.receive()                             # {"type": "pose" | "dropped" | "error", ...}
"""

from __future__ import annotations

import io
import json
import os

import httpx
import numpy as np
from PIL import Image
from websockets.sync.client import ClientConnection, connect

from sceneloc.geometry import Camera, Rigid3
from sceneloc.localize.estimate import PoseEstimate
from sceneloc.serve.auth import TOKEN_ENV


class ServiceError(Exception):
    """The service refused a request: `status` (HTTP code) and its one-line `message`."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def estimate_from_reply(reply: dict) -> PoseEstimate:
    """A localize reply (or a stream's pose message) -> PoseEstimate; details gain ms, queue_ms and reason."""
    pose = reply.get("cam_from_world")
    cam_from_world = None if pose is None else Rigid3.from_qvec_tvec(np.array(pose["qvec_wxyz"]),
                                                                     np.array(pose["tvec"]))
    details = {**reply.get("details", {}), **{k: reply.get(k) for k in ("ms", "queue_ms", "reason", "scene")}}
    ratio = reply.get("inlier_ratio")
    return PoseEstimate(reply["name"], cam_from_world, int(reply.get("num_inliers", 0)),
                        float("nan") if ratio is None else float(ratio), details)


def camera_field(camera: Camera | dict) -> str:
    """The camera form field: a pinhole Camera as PINHOLE JSON (COLMAP's principal point), or a dict as given."""
    from sceneloc.serve.wire import camera_json

    return json.dumps(camera if isinstance(camera, dict) else camera_json(camera))


def frame_upload(frame) -> tuple[bytes, Camera]:
    """What to send for a sceneloc Frame: its file as it is when the server can read it that way (a JPEG or PNG
    without distortion), else its undistorted image as PNG; and the camera of that image."""
    if frame.undistortion is None and frame.rgb_path.suffix.lower() in (".jpg", ".jpeg", ".png"):
        return frame.rgb_path.read_bytes(), frame.camera
    buffer = io.BytesIO()
    Image.fromarray(frame.load_rgb()).save(buffer, format="PNG")
    return buffer.getvalue(), frame.camera


class Client:
    """HTTP and WebSocket client of one server. token: the bearer token (default: $SCENELOC_TOKEN)."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 60.0):
        self.url = url.rstrip("/")
        self.token = token if token is not None else os.environ.get(TOKEN_ENV, "")
        self.timeout_s = timeout_s
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s,
                                  headers={"authorization": f"Bearer {self.token}"})

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _checked(self, response: httpx.Response) -> httpx.Response:
        if response.status_code != 200:
            try:
                message = response.json().get("error") or response.text
            except ValueError:
                message = response.text
            raise ServiceError(response.status_code, str(message)[:300])
        return response

    def healthy(self) -> bool:
        """Whether the server answers /healthz."""
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def maps(self) -> list[dict]:
        """The server's maps: [{name, type, scenes, points}]."""
        return self._checked(self._http.get("/v1/maps")).json()["maps"]

    def localize(self, map_name: str, image: bytes, camera: Camera | dict, scene: str | None = None,
                 name: str = "query.jpg") -> dict:
        """One image (JPEG or PNG bytes) taken with `camera` -> the server's reply: cam_from_world (or None and
        the reason), num_inliers, ms, ... ServiceError for a refused request (503 when busy: retry)."""
        data = {"camera": camera_field(camera), **({"scene": scene} if scene is not None else {})}
        response = self._http.post(f"/v1/maps/{map_name}/localize", data=data, files={"image": (name, image)})
        return self._checked(response).json()

    def localize_frame(self, map_name: str, frame, scene: str | None = None) -> PoseEstimate:
        """A sceneloc Frame (e.g. from read_scene) -> its PoseEstimate, named as the frame."""
        image, camera = frame_upload(frame)
        estimate = estimate_from_reply(self.localize(map_name, image, camera, scene, frame.rgb_path.name))
        estimate.name = frame.name
        return estimate

    def points_ply(self, map_name: str) -> bytes:
        """The map's point cloud as the viewer gets it (binary PLY)."""
        return self._checked(self._http.get(f"/v1/maps/{map_name}/points.ply")).content

    def metrics(self) -> str:
        """The Prometheus text of the process that answered."""
        return self._checked(self._http.get("/metrics")).text

    def stream(self, map_name: str) -> "Stream":
        """A WebSocket stream of frames to `map_name`: send frames, receive a message per frame."""
        return Stream(self._socket(map_name, "stream"))

    def events(self, map_name: str) -> "Stream":
        """The viewer's feed: every localization on `map_name` (HTTP and streams) as a pose event. Only receive
        on it: the server takes any message from the client as the viewer leaving."""
        return Stream(self._socket(map_name, "events"))

    def _socket(self, map_name: str, path: str):
        ws_url = "ws" + self.url[len("http"):] + f"/v1/maps/{map_name}/{path}"
        return connect(ws_url, additional_headers={"authorization": f"Bearer {self.token}"},
                       open_timeout=self.timeout_s, max_size=None)


class Stream:
    """One WebSocket stream, open inside `with`: send frames, receive poses, drop notices and errors as JSON dicts.
    Entering it makes the handshake (websockets.exceptions.InvalidStatus when the server refuses it)."""

    def __init__(self, opener):
        self._opener = opener
        """websockets' connect(...), not yet entered."""
        self.connection: ClientConnection | None = None

    def __enter__(self) -> "Stream":
        self.connection = self._opener.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._opener.__exit__(*exc)
        self.connection = None

    def send(self, image: bytes, camera: Camera | dict | None = None, timestamp: float | None = None,
             frame: str | None = None, scene: str | None = None) -> None:
        """One frame: its metadata message (camera once suffices: it holds for later frames), then the image."""
        meta = {k: v for k, v in (("timestamp", timestamp), ("frame", frame), ("scene", scene)) if v is not None}
        if camera is not None:
            meta["camera"] = json.loads(camera_field(camera))
        if meta:
            self.connection.send(json.dumps(meta))
        self.connection.send(image)

    def receive(self, timeout_s: float | None = None) -> dict:
        """The next message from the server (TimeoutError when none comes within timeout_s)."""
        return json.loads(self.connection.recv(timeout_s))


