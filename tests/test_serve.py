"""`sceneloc serve` end to end on the tiny rendered room: the poses it answers are the in-process Localizer's, every
bad request gets its status code and a message naming the field or the limit (and the server keeps serving), load
stays bounded (503 / 429 / 504 / 408, nothing lost), streams account for every frame, /metrics counts what happened,
the viewer's token becomes a cookie, startup errors are one line, and SIGTERM answers the requests in flight.

Most servers run in this process (uvicorn.Server in a thread, on a socket bound to a free port of 127.0.0.1, with the
protocol and settings `sceneloc serve` gives uvicorn) over maps loaded once; the graceful-shutdown test and one
startup error run the real `sceneloc serve` script. Where a test needs a localization to be still running at a
known moment (a full pool, a backlog, a timeout), it holds the pool's localizations at a gate (`_gated`) that the
test opens itself: the counts are then exact on any CPU, with no sleeps that must be long enough."""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import uvicorn
import PIL.ImageFile
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from scipy.spatial.transform import Rotation
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

import sceneloc
from sceneloc.bench.service_load import free_port
from conftest import SERVE_TOKEN as TOKEN
from conftest import RunningServer, run_cli, run_script, serving
from sceneloc.client import Client, camera_field
from sceneloc.data import read_scene
from sceneloc.export.points import read_ply, structure_points
from sceneloc.export.pose_formats import read_pose_file
from sceneloc.geometry import Camera
from sceneloc.runtime.errors import InputError
from sceneloc.serve.auth import TOKEN_ENV, read_token
from sceneloc.serve.config import ServeConfig
from sceneloc.serve.limits import RateLimiter
from sceneloc.serve.maps import load_served_maps
from sceneloc.serve.wire import RequestError, camera_json, check_image, parse_camera

AUTH = {"authorization": f"Bearer {TOKEN}"}
MAPS = Path(__file__).parent / "data" / "maps_5b85055"
MULTI_MAP = MAPS / "multi_v2.multimap"
"""A committed two-scene map (scenes "a" and "b"): the multi-scene routes (scene field) without mapping one here."""
SINGLE_MAP = MAPS / "single_v1.map"
"""A committed single-scene map, which the `sceneloc serve` process serves: it exists before any mapping."""
MAX_BODY = 1_000_000
"""The in-process servers' max_body_bytes: a query PNG is ~30 KB, so a body over it is cheap to send."""
N_FRAMES = 12
"""Query frames with an in-process baseline pose (the HTTP and stream tests use them)."""
WAIT_S = 60.0
"""Bound of every wait for a reply or a message (none takes more than a few seconds normally)."""
HTTP = httpx.Client(timeout=WAIT_S, limits=httpx.Limits(max_keepalive_connections=0),
                    cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])))
"""The module's plain HTTP requests: a connection each (the strict servers answer idle keep-alive connections 408),
no cookies kept, and one client for all (httpx.get makes a client, an SSL context, per call: 0.1 s)."""


# ---------------------------------------------------------------------------------------------------------------
# Servers and requests


@contextmanager
def _gated(server: RunningServer):
    """Every localization of `server`'s pool waits (in its thread, after decoding) until the test sets the yielded
    Event; `entered` lists the images that reached the gate. The gate opens when the block ends, whatever happens."""
    pool = server.pool
    gate = threading.Event()
    entered: list[str] = []
    make = pool._localizer

    class Held:
        def __init__(self, localizer):
            self.localizer = localizer

        def localize(self, rgb, camera, name):
            entered.append(name)
            assert gate.wait(WAIT_S), "the test never opened the gate"
            return self.localizer.localize(rgb, camera, name)

    pool._localizer = lambda map_name, scene: Held(make(map_name, scene))
    try:
        yield gate, entered
    finally:
        gate.set()
        del pool._localizer  # the class's method again


def _wait_until(condition, what: str, timeout_s: float = WAIT_S, poll_s: float = 0.01):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g} s waiting for {what}"
        time.sleep(poll_s)
    return value


def _upload(frame) -> dict:
    """The form of a localize request for a query frame: its PNG as rendered and its camera (PINHOLE JSON)."""
    return {"files": {"image": (frame.rgb_path.name, frame.rgb_path.read_bytes())},
            "data": {"camera": camera_field(frame.camera)}}


def _post(server: RunningServer, map_name: str = "squeeze", headers=AUTH, **form) -> httpx.Response:
    """One localize request on a connection of its own (no keep-alive: the strict servers answer idle
    connections 408)."""
    return HTTP.post(f"{server.url}/v1/maps/{map_name}/localize", headers=headers, **form)


def _multipart(image: bytes, camera: str, name: str = "query.png") -> tuple[str, bytes]:
    """(content type, body) of a localize form, for raw-socket requests."""
    request = httpx.Request("POST", "http://127.0.0.1/", files={"image": (name, image)},
                            data={"camera": camera})
    return request.headers["content-type"], request.read()


def _request_head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _recv_all(sock: socket.socket, timeout_s: float = WAIT_S) -> bytes:
    """Everything `sock` receives until the server closes it (AssertionError if it stays open past timeout_s)."""
    data = b""
    deadline = time.monotonic() + timeout_s
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"the connection stayed open {timeout_s:g} s; received {data[:300]!r}") from None
        except ConnectionResetError:  # closed with bytes of ours unread: what it sent before is all here
            return data
        if not chunk:
            return data
        data += chunk


def _send(sock: socket.socket, data: bytes) -> bool:
    """Sends `data`; False when the server has closed the connection already (it answered: read the reply)."""
    try:
        sock.sendall(data)
        return True
    except (BrokenPipeError, ConnectionResetError):
        return False


def _poll_recv(sock: socket.socket) -> bytes:
    """What `sock` has received by now, without waiting (b"" for nothing yet)."""
    sock.settimeout(0)
    try:
        return sock.recv(65536) or b"<closed>"
    except BlockingIOError:
        return b""
    except ConnectionResetError:
        return b"<reset>"
    finally:
        sock.settimeout(WAIT_S)


@dataclass
class Reply:
    """One HTTP response read off a raw socket."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def _parse_replies(data: bytes) -> list[Reply]:
    """Every response in `data` (the bytes a connection received until it closed), 1xx ones included."""
    replies = []
    while data:
        head, separator, data = data.partition(b"\r\n\r\n")
        assert separator, f"an incomplete response: {head[:200]!r}"
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        length = int(headers.get("content-length", 0))
        replies.append(Reply(int(status_line.split()[1]), headers, data[:length]))
        data = data[length:]
    return replies


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG of a few bytes whose header (IHDR, with its CRC) claims width x height RGB pixels, and no pixel data:
    what a decompression bomb's header looks like."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


def _encoded(rgb: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _metrics(text: str) -> dict[tuple, float]:
    """Prometheus text -> {(sample name, sorted label items): value}."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _errors_deg_m(estimate, truth) -> tuple[float, float]:
    """(rotation error in degrees, camera-centre error in metres) of a cam_from_world against the ground truth."""
    relative = estimate.rotation @ truth.rotation.T
    return (np.degrees(Rotation.from_matrix(relative).magnitude()),
            float(np.linalg.norm(estimate.center - truth.center)))


# ---------------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def started_early(tmp_path_factory):
    """The module's work in other processes, started before anything else so that their start (some seconds of
    imports) overlaps the mapping and the in-process tests: a `sceneloc serve --reconstruct` of the committed
    single-scene map for the graceful-shutdown test (with a live volume, whose Open3D memory must be freed before
    the interpreter exits or the exit code is 1), and `sceneloc serve` without a token (run_script, in a thread).
    The module runs without $SCENELOC_TOKEN. The server is killed (by its pid) when the module ends, if it is still
    running."""
    tmp = tmp_path_factory.mktemp("serve-process")
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    script = Path(sys.executable).with_name("sceneloc")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "sceneloc.cli"]
    with pytest.MonkeyPatch.context() as patch, (tmp / "serve.log").open("w") as log, \
            concurrent.futures.ThreadPoolExecutor(1) as executor:
        patch.delenv(TOKEN_ENV, raising=False)
        process = subprocess.Popen(  # request_timeout_s: six images, whatever the CPU
            command + ["serve", str(SINGLE_MAP), "--port", str(port), "--token-file", str(token_file),
                       "--threads", "1", "--reconstruct", "--set", "request_timeout_s=120"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            no_token = executor.submit(run_script, "serve", SINGLE_MAP, "--port", "1")
            yield SimpleNamespace(process=process, url=f"http://127.0.0.1:{port}", port=port,
                                  log=tmp / "serve.log", no_token=no_token)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(WAIT_S)


@pytest.fixture(scope="module")
def room(started_early, tiny_room_structure, one_thread):
    """The rendered room, its structure map, the maps every in-process server serves (the structure map `squeeze`
    and the committed multi-scene map `multi_v2`), and the baseline: what the in-process Localizer with the server's
    own LocalizeConfig answers for the first N_FRAMES query frames."""
    rendered, smap = tiny_room_structure
    queries = read_scene(rendered.root, split="test")
    localizer = sceneloc.Localizer(sceneloc.load_map(smap, "cpu"), ServeConfig().localize)
    baseline = {f.name: localizer.localize(f.load_rgb(), f.camera, f.name) for f in queries.frames[:N_FRAMES]}
    localized = [e for e in baseline.values() if e.cam_from_world is not None]
    assert len(localized) >= N_FRAMES // 2, "the baseline itself fails: the map is broken"
    maps = load_served_maps([smap, MULTI_MAP], "cpu", ServeConfig().viewer_points)
    return SimpleNamespace(root=rendered.root, smap=smap, queries=queries, frames=queries.frames[:N_FRAMES],
                           baseline=baseline, maps=maps)


@pytest.fixture(scope="module")
def main_server(room):
    """The server most tests share: two localization threads, default limits but a 1 MB body."""
    with serving(room.maps, threads=2, max_body_bytes=MAX_BODY) as server:
        yield server


@pytest.fixture(scope="module")
def strict_server(room):
    """Header and request deadlines of one second: slow clients are cut off quickly."""
    with serving(room.maps, threads=1, queue_size=1, header_timeout_s=1.0, request_timeout_s=1.0,
                 max_body_bytes=MAX_BODY) as server:
        # Its one thread builds its predictor now, not inside a test's one-second deadline (on a slow machine the
        # first tries may time out while the build goes on).
        for _attempt in range(20):
            if _post(server, **_upload(room.frames[0])).status_code == 200:
                break
        yield server


# ---------------------------------------------------------------------------------------------------------------
# 1. Poses


def test_http_poses_are_the_in_process_localizer_poses(room, main_server):
    with Client(main_server.url, TOKEN) as client:
        assert [m["name"] for m in client.maps()] == ["squeeze", "multi_v2"]
        for frame in room.frames[:6]:
            served = client.localize_frame("squeeze", frame)
            expected = room.baseline[frame.name]
            assert served.name == frame.name
            assert served.num_inliers == expected.num_inliers
            if expected.cam_from_world is None:
                assert served.cam_from_world is None, frame.name
                assert served.details["reason"], frame.name
                continue
            assert served.cam_from_world is not None, frame.name
            np.testing.assert_allclose(served.cam_from_world.matrix(), expected.cam_from_world.matrix(), atol=1e-6)
            ours = _errors_deg_m(served.cam_from_world, frame.cam_from_world)
            theirs = _errors_deg_m(expected.cam_from_world, frame.cam_from_world)
            np.testing.assert_allclose(ours, theirs, atol=1e-5)
            assert served.details["reason"] is None
    # Both are accurate, not merely equal: the structure map localizes the room to centimetres.
    errors = [_errors_deg_m(e.cam_from_world, f.cam_from_world)[1] for f in room.frames[:6]
              if (e := room.baseline[f.name]).cam_from_world is not None]
    assert len(errors) >= 4 and np.median(errors) < 0.05, errors


def _query_folder(room, folder: Path, count: int = 6) -> Path:
    """An ACE folder of the first `count` query frames (their rgb, poses and calibration files)."""
    test = Path(room.root) / "test"
    for part in ("rgb", "poses", "calibration"):
        (folder / part).mkdir(parents=True)
        for path in sorted((test / part).iterdir())[:count]:
            (folder / part / path.name).write_bytes(path.read_bytes())
    return folder


def test_localize_server_command_writes_the_poses_of_the_local_command(room, main_server, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    queries = _query_folder(room, tmp_path / "queries")
    code, out = run_cli("localize", "squeeze", queries, "--server", main_server.url, "--token-file", token_file,
                        "-o", tmp_path / "server.txt")
    assert code == 0, out
    assert f"on {main_server.url}" in out
    code, out = run_cli("localize", room.smap, queries, "-o", tmp_path / "local.txt")
    assert code == 0, out
    _, served = read_pose_file(tmp_path / "server.txt")
    _, local = read_pose_file(tmp_path / "local.txt")
    assert [e.name for e in served] == [e.name for e in local] == [f.name for f in room.frames[:6]]
    assert sum(e.cam_from_world is not None for e in local) >= 4
    for a, b in zip(served, local):
        assert (a.cam_from_world is None) == (b.cam_from_world is None), a.name
        assert a.num_inliers == b.num_inliers, a.name
        if a.cam_from_world is not None:
            np.testing.assert_allclose(a.cam_from_world.matrix(), b.cam_from_world.matrix(), atol=1e-6)


def test_localize_server_command_with_a_wrong_token_fails_in_one_line(room, main_server, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("not-the-token\n")
    code, out = run_cli("localize", "squeeze", _query_folder(room, tmp_path / "queries", 1), "--server",
                        main_server.url, "--token-file", token_file, "-o", tmp_path / "poses.txt")
    assert code == 2, out
    assert "missing or wrong token" in out and "Traceback" not in out
    assert not (tmp_path / "poses.txt").exists()


def test_multi_scene_map_localizes_in_a_named_scene_and_in_auto(room, main_server):
    frame = room.frames[0]
    with Client(main_server.url, TOKEN) as client:
        named = client.localize("multi_v2", frame.rgb_path.read_bytes(), frame.camera, scene="a")
        auto = client.localize("multi_v2", frame.rgb_path.read_bytes(), frame.camera, scene="auto")
    assert named["scene"] == "a"
    assert auto["scene"] in ("a", "b") and auto["details"]["scenes_tried"] == ["a", "b"]


# ---------------------------------------------------------------------------------------------------------------
# 2. Bad requests


def _camera(frame, **changes) -> str:
    value = {**camera_json(frame.camera), **changes}
    return json.dumps({k: v for k, v in value.items() if v is not None})


def _form(frame, image: bytes | None = None, camera: str | None = "default", **extra) -> dict:
    """A localize form from a frame, with the image or camera replaced (camera=None: no camera field)."""
    files = {"image": ("query.png", frame.rgb_path.read_bytes() if image is None else image)}
    data = {"camera": camera_field(frame.camera) if camera == "default" else camera, **extra}
    return {"files": files, "data": {k: v for k, v in data.items() if v is not None}}


def _raw_over_limit_by_length(server: RunningServer, frame) -> Reply:
    """Headers declaring a body over the limit, and only the first bytes of it: refused from the header."""
    content_type, body = _multipart(frame.rgb_path.read_bytes(), camera_field(frame.camera))
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) as sock:
        sock.sendall(_request_head("/v1/maps/squeeze/localize", {
            **AUTH, "content-type": content_type, "content-length": str(MAX_BODY + 1)}) + body[:1000])
        replies = _parse_replies(_recv_all(sock))
    assert len(replies) == 1, replies  # one answer, and the connection closed after it
    assert replies[0].headers["connection"] == "close"
    return replies[0]


def _raw_over_limit_chunked(server: RunningServer, frame) -> Reply:
    """A chunked body (no Content-Length) sent 64 KB a chunk until it passes the limit, then nothing more: refused
    while it is read."""
    image = np.random.default_rng(0).integers(0, 256, 1_200_000, dtype=np.uint8).tobytes()  # incompressible
    content_type, body = _multipart(image, camera_field(frame.camera))
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) as sock:
        sock.sendall(_request_head("/v1/maps/squeeze/localize", {
            **AUTH, "content-type": content_type, "transfer-encoding": "chunked"}))
        sent = 0
        while sent <= MAX_BODY:
            chunk = body[sent:sent + 65536]
            if not _send(sock, b"%x\r\n%s\r\n" % (len(chunk), chunk)):
                break
            sent += len(chunk)
        replies = _parse_replies(_recv_all(sock))
    assert len(replies) == 1, replies  # one answer, and the connection closed after it
    assert replies[0].headers["connection"] == "close"
    return replies[0]


def _http(send):
    """A case that sends with httpx: send(server, frame) -> httpx.Response, as a Reply."""
    def run(server: RunningServer, frame) -> Reply:
        response = send(server, frame)
        return Reply(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content)
    return run


def _localize_with(form_of, map_name: str = "squeeze", headers=AUTH):
    return _http(lambda server, frame: _post(server, map_name, headers, **form_of(frame)))


GIF = _encoded(np.zeros((120, 160, 3), np.uint8), "GIF")

BAD_REQUESTS = [
    # id, send, status, text the error names
    ("no token", _localize_with(_form, headers={}), 401, "missing or wrong token"),
    ("wrong token", _localize_with(_form, headers={"authorization": "Bearer nope"}), 401, "missing or wrong token"),
    ("token not bearer", _localize_with(_form, headers={"authorization": f"Basic {TOKEN}"}), 401, "wrong token"),
    ("body over the limit by content-length", _raw_over_limit_by_length, 413,
     f"request body over the limit of {MAX_BODY:,} bytes"),
    ("chunked body over the limit", _raw_over_limit_chunked, 413, f"request body over the limit of {MAX_BODY:,} bytes"),
    ("not an image", _localize_with(lambda f: _form(f, image=b"hello, not an image" * 10)), 415,
     "image: not an image"),
    ("gif", _localize_with(lambda f: _form(f, image=GIF)), 415, "image: GIF images are not accepted"),
    ("json body", _http(lambda s, f: HTTP.post(f"{s.url}/v1/maps/squeeze/localize", headers=AUTH,
                                              json={"camera": camera_json(f.camera)})),
     415, "content-type: send multipart/form-data"),
    ("png claiming 30000x30000", _localize_with(lambda f: _form(f, image=_png_claiming(30000, 30000))), 413,
     "image: over 50,000,000 pixels"),
    ("png claiming 8000x8000", _localize_with(lambda f: _form(f, image=_png_claiming(8000, 8000))), 413,
     "image: 8000x8000 is over the limit of 50,000,000 pixels"),
    ("truncated png", _localize_with(lambda f: _form(f, image=f.rgb_path.read_bytes()[:2000])), 422,
     "image: cannot read image"),
    ("no image", _http(lambda s, f: _post(s, data={"camera": camera_field(f.camera)},
                                          files={"other": ("x", b"x")})), 422, "image: field required"),
    ("no camera", _localize_with(lambda f: _form(f, camera=None)), 422, "camera: field required"),
    ("camera as a file", _http(lambda s, f: _post(s, files={"camera": ("c.json", camera_field(f.camera).encode())})),
     422, "camera: expected a text field"),
    ("two files", _http(lambda s, f: _post(s, files={"image": ("q.png", f.rgb_path.read_bytes()),
                                                     "camera": ("c.json", camera_field(f.camera).encode())})),
     400, "multipart body: Too many files"),
    ("camera not json", _localize_with(lambda f: _form(f, camera="{PINHOLE 160 120")), 422, "camera: not JSON"),
    ("camera not an object", _localize_with(lambda f: _form(f, camera="[1, 2]")), 422,
     "camera: expected a JSON object"),
    ("camera without params", _localize_with(lambda f: _form(f, camera=_camera(f, params=None))), 422,
     "camera.params: field required"),
    ("camera without width", _localize_with(lambda f: _form(f, camera=_camera(f, width=None))), 422,
     "camera.width: field required"),
    ("unknown camera model", _localize_with(lambda f: _form(f, camera=_camera(f, model="PINHOLE_9"))), 422,
     "camera.model: 'PINHOLE_9' is not a COLMAP camera model"),
    ("camera model the readers lack", _localize_with(lambda f: _form(f, camera=_camera(
        f, model="FOV", params=[100.0, 100.0, 80.0, 60.0, 0.5]))), 422, "camera: camera model FOV is not supported"),
    ("wrong parameter count", _localize_with(lambda f: _form(f, camera=_camera(f, params=[100.0, 80.0, 60.0]))), 422,
     "camera.params: PINHOLE takes 4 parameters (fx, fy, cx, cy), got 3"),
    ("parameter not a number", _localize_with(lambda f: _form(f, camera=_camera(f, params=[1, 1, "80", 60]))), 422,
     "camera.params: expected a list of finite numbers"),
    ("non-integer width", _localize_with(lambda f: _form(f, camera=_camera(f, width=160.5))), 422,
     "camera.width: expected a positive integer, got 160.5"),
    ("negative height", _localize_with(lambda f: _form(f, camera=_camera(f, height=-120))), 422,
     "camera.height: expected a positive integer, got -120"),
    ("principal point outside", _localize_with(lambda f: _form(f, camera=_camera(
        f, params=[100.0, 100.0, 500.0, 60.0]))), 422, "camera: principal point (499.5, 59.5) lies outside"),
    ("camera of another size", _localize_with(lambda f: _form(f, camera=_camera(
        f, width=320, height=240, params=[200.0, 200.0, 160.0, 120.0]))), 422,
     "camera.width/height: the image is 160x120, the camera 320x240"),
    ("too many fields", _localize_with(lambda f: _form(f, a="1", b="2", c="3", d="4")), 400,
     "multipart body: Too many fields"),
    ("unknown map", _localize_with(_form, map_name="nowhere"), 404, "map: no map named 'nowhere' (maps: squeeze, "
                                                                    "multi_v2)"),
    ("scene for a single-scene map", _localize_with(lambda f: _form(f, scene="a")), 422,
     "scene: map 'squeeze' holds one scene; send no scene"),
    ("unknown scene", _localize_with(lambda f: _form(f, scene="kitchen"), map_name="multi_v2"), 404,
     "scene: map 'multi_v2' has no scene 'kitchen' (scenes: a, b)"),
    ("unknown path", _http(lambda s, f: HTTP.get(f"{s.url}/v1/nothing", headers=AUTH)), 404,
     "GET /v1/nothing: Not Found"),
    ("wrong method", _http(lambda s, f: HTTP.get(f"{s.url}/v1/maps/squeeze/localize", headers=AUTH)), 405,
     "GET /v1/maps/squeeze/localize: Method Not Allowed"),
]


@pytest.mark.parametrize("send, status, message", [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_gets_its_status_and_names_the_field(room, main_server, send, status, message):
    reply = send(main_server, room.frames[0])
    assert reply.status == status, reply
    error = reply.json()["error"]
    assert message in error, error
    assert "\n" not in error and len(error) < 300
    if status == 401:
        assert reply.headers["www-authenticate"] == 'Bearer realm="sceneloc"'


def test_server_keeps_serving_after_every_bad_request(room, main_server):
    frame = next(f for f in room.frames if room.baseline[f.name].cam_from_world is not None)
    for _, send, status, _ in BAD_REQUESTS:
        assert send(main_server, frame).status == status
    response = _post(main_server, **_upload(frame))
    assert response.status_code == 200, response.text
    expected = room.baseline[frame.name].cam_from_world
    served = response.json()["cam_from_world"]
    np.testing.assert_allclose(served["tvec"], expected.translation, atol=1e-6)
    assert HTTP.get(f"{main_server.url}/v1/maps", headers=AUTH).status_code == 200
    assert main_server.pool.waiting == 0 and main_server.pool.running == 0


def test_slow_loris_gets_408_after_the_header_timeout_while_others_are_served(strict_server):
    timeout_s = strict_server.config.header_timeout_s
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", strict_server.port), timeout=WAIT_S) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ")
        # Meanwhile the server answers everyone else.
        assert HTTP.get(f"{strict_server.url}/healthz").json() == {"status": "ok"}
        # One more header byte every 0.1 s: each arrives well within any idle timeout, the headers never end.
        received = b""
        deadline = started + timeout_s + WAIT_S
        while not received and time.monotonic() < deadline:
            _send(sock, b"x")
            time.sleep(0.1)
            received = _poll_recv(sock)
        elapsed = time.monotonic() - started
        received += _recv_all(sock)  # and then the server closes the connection
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert [r.status for r in _parse_replies(received)] == [408]
    assert elapsed >= timeout_s, elapsed  # not before the deadline


def test_body_slower_than_the_request_timeout_gets_408(room, strict_server):
    frame = room.frames[0]
    content_type, body = _multipart(frame.rgb_path.read_bytes(), camera_field(frame.camera))
    timeout_s = strict_server.config.request_timeout_s
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", strict_server.port), timeout=WAIT_S) as sock:
        sock.sendall(_request_head("/v1/maps/squeeze/localize", {
            **AUTH, "content-type": content_type, "content-length": str(len(body))}))
        received = b""
        for start in range(0, len(body), 100):  # 100 bytes every 0.1 s: the body would take minutes
            _send(sock, body[start:start + 100])
            time.sleep(0.1)
            if received := _poll_recv(sock):
                break
            assert time.monotonic() - started < timeout_s + WAIT_S
        elapsed = time.monotonic() - started
        received += _recv_all(sock)
    replies = _parse_replies(received)
    assert [r.status for r in replies] == [408], received
    assert replies[0].headers["connection"] == "close"  # the rest of the body is not read
    assert replies[0].json()["error"] == f"request body not received within {timeout_s:g} s"
    assert elapsed >= timeout_s


# ---------------------------------------------------------------------------------------------------------------
# 3. Bounded load


def test_full_pool_answers_503_with_retry_after_and_loses_no_request(room):
    upload = _upload(room.frames[0])
    with serving(room.maps, threads=1, queue_size=1) as server, _gated(server) as (gate, entered):
        with concurrent.futures.ThreadPoolExecutor(8) as executor:
            futures = [executor.submit(_post, server, **upload) for _ in range(8)]
            # While the first image is held at the gate, one more waits in the queue: the other six are refused at
            # once, whatever the CPU.
            _wait_until(lambda: sum(f.done() for f in futures) >= 6, "six refusals")
            early = [f.result() for f in futures if f.done()]
            _wait_until(lambda: entered, "the first image to reach the gate")
            assert len(entered) == 1 and server.pool.running == 1 and server.pool.waiting == 1
            gate.set()
            replies = [f.result(timeout=WAIT_S) for f in concurrent.futures.as_completed(futures, timeout=WAIT_S)]
    assert len(replies) == 8  # nothing lost
    assert sorted(r.status_code for r in early) == [503] * 6
    assert sorted(r.status_code for r in replies) == [200] * 2 + [503] * 6
    for reply in replies:
        if reply.status_code == 503:
            assert reply.headers["retry-after"] == "1"
            assert reply.json()["error"] == "busy: 2 images admitted; retry"
        else:
            assert reply.json()["cam_from_world"] is not None


def test_rate_limit_answers_429_with_retry_after(room):
    with serving(room.maps, threads=1, rate_per_s=0.1, rate_burst=2) as server:
        # Three requests in a row take milliseconds; the bucket refills one request every ten seconds.
        replies = [HTTP.get(f"{server.url}/healthz") for _ in range(3)]
        assert [r.status_code for r in replies] == [200, 200, 429]
        assert 1 <= int(replies[2].headers["retry-after"]) <= 10
        assert replies[2].json()["error"] == "rate limit: over 0.1 requests/s from 127.0.0.1"
        # WebSocket handshakes count too, and are refused the same way.
        with pytest.raises(InvalidStatus) as refused:
            with connect(f"ws://127.0.0.1:{server.port}/v1/maps/squeeze/stream", additional_headers=AUTH,
                         open_timeout=WAIT_S):
                pass
        response = refused.value.response
        assert response.status_code == 429 and 1 <= int(response.headers["retry-after"]) <= 10
        assert json.loads(response.body)["error"] == "rate limit: over 0.1 requests/s from 127.0.0.1"
        assert HTTP.get(f"{server.url}/metrics", headers=AUTH).status_code == 429  # every route alike


def test_localization_past_the_request_timeout_gets_504(room, strict_server):
    frame = room.frames[0]
    timeouts = ("sceneloc_rejects_total", (("reason", "timeout"),))
    before = _metrics(HTTP.get(f"{strict_server.url}/metrics", headers=AUTH).text).get(timeouts, 0)
    with _gated(strict_server) as (gate, entered):
        response = _post(strict_server, **_upload(frame))
        assert entered == [frame.rgb_path.name]  # it was being localized, not refused earlier
    assert response.status_code == 504, response.text
    assert response.json()["error"] == "timeout: not localized within 1 s"
    # The held localization finishes once the gate opens, and the server serves on.
    _wait_until(lambda: strict_server.pool.running == 0 and strict_server.pool.waiting == 0, "an idle pool")
    metrics = _metrics(HTTP.get(f"{strict_server.url}/metrics", headers=AUTH).text)
    assert metrics[timeouts] == before + 1


# ---------------------------------------------------------------------------------------------------------------
# 4. Streams and events


def _account(messages: list[dict], names: list[str]) -> dict[str, dict]:
    """{frame name: its one message}; AssertionError unless every frame has exactly one and nothing else came."""
    by_frame: dict[str, dict] = {}
    for message in messages:
        assert message["type"] in ("pose", "dropped", "error"), message
        name = message.get("frame") or message.get("name")
        assert name in names, message
        assert name not in by_frame, f"two messages for {name}: {by_frame[name]} and {message}"
        by_frame[name] = message
    assert sorted(by_frame) == sorted(names)
    return by_frame


def _receive(stream, count: int) -> list[dict]:
    deadline = time.monotonic() + WAIT_S
    return [stream.receive(timeout_s=max(0.01, deadline - time.monotonic())) for _ in range(count)]


def test_stream_answers_every_frame_with_the_in_process_poses(room, main_server):
    names = [f.name for f in room.frames]
    with Client(main_server.url, TOKEN) as client, client.stream("squeeze") as stream:
        for i, frame in enumerate(room.frames):
            stream.send(frame.rgb_path.read_bytes(), frame.camera if i == 0 else None, timestamp=i / 30,
                        frame=frame.name)
        by_frame = _account(_receive(stream, len(names)), names)
        with pytest.raises(TimeoutError):  # and nothing more
            stream.receive(timeout_s=0.3)
    poses = [m for m in by_frame.values() if m["type"] == "pose"]
    assert poses and not [m for m in by_frame.values() if m["type"] == "error"]
    for message in poses:
        expected = room.baseline[message["frame"]]
        assert message["timestamp"] == pytest.approx(names.index(message["frame"]) / 30)
        assert message["num_inliers"] == expected.num_inliers
        if expected.cam_from_world is None:
            assert message["cam_from_world"] is None
        else:
            np.testing.assert_allclose(message["cam_from_world"]["tvec"], expected.cam_from_world.translation,
                                       atol=1e-6)
            np.testing.assert_allclose(message["world_from_cam_center"], expected.cam_from_world.center, atol=1e-6)


def test_stream_drops_the_oldest_frames_when_its_backlog_is_full(room):
    frames = room.frames
    names = [f.name for f in frames]
    with serving(room.maps, threads=1, stream_backlog=1) as server, _gated(server) as (gate, entered):
        with Client(server.url, TOKEN) as client, client.stream("squeeze") as stream:
            for i, frame in enumerate(frames):
                stream.send(frame.rgb_path.read_bytes(), frame.camera if i == 0 else None, frame=frame.name)
            # One frame held at the gate and one in the backlog: each of the others was pushed out by a newer one.
            messages = _receive(stream, len(frames) - 2)
            assert all(m["type"] == "dropped" for m in messages), messages
            gate.set()
            messages += _receive(stream, 2)
    by_frame = _account(messages, names)
    dropped = [m for m in by_frame.values() if m["type"] == "dropped"]
    assert len(dropped) >= len(frames) - 2
    assert all(m["reason"] == "backlog full: a newer frame arrived" for m in dropped)
    last = by_frame[names[-1]]
    assert last["type"] == "pose"  # the newest frame is never dropped
    assert last["num_inliers"] == room.baseline[names[-1]].num_inliers


def test_stream_answers_a_bad_message_with_an_error_and_keeps_working(room, main_server):
    frame = room.frames[0]
    with Client(main_server.url, TOKEN) as client, client.stream("squeeze") as stream:
        stream.connection.send(frame.rgb_path.read_bytes())  # a frame before any camera
        message = stream.receive(timeout_s=WAIT_S)
        assert message == {"type": "error", "frame": "frame-1", "error": message["error"]}
        assert message["error"] == "camera: send it in a text message before the first frame"
        for text, error in [("not json", "message: not JSON"),
                            ("[1, 2]", "message: expected a JSON object"),
                            ('{"colour": 1}', "message.colour: unknown field"),
                            ('{"timestamp": "noon"}', "message.timestamp: expected a number"),
                            ('{"camera": {"model": "PINHOLE"}}', "camera.width: field required")]:
            stream.connection.send(text)
            message = stream.receive(timeout_s=WAIT_S)
            assert message["type"] == "error" and message["error"].startswith(error), (text, message)
        stream.send(frame.rgb_path.read_bytes(), frame.camera, frame="after")
        message = stream.receive(timeout_s=WAIT_S)
    assert message["type"] == "pose" and message["frame"] == "after"
    assert message["num_inliers"] == room.baseline[frame.name].num_inliers


@pytest.mark.parametrize("path", ["stream", "events"])
@pytest.mark.parametrize("token, map_name, status", [(None, "squeeze", 401), ("nope", "squeeze", 401),
                                                     (TOKEN, "nowhere", 404)])
def test_websocket_handshake_is_refused_without_the_token_or_map(main_server, path, token, map_name, status):
    headers = {"authorization": f"Bearer {token}"} if token else {}
    url = f"ws://127.0.0.1:{main_server.port}/v1/maps/{map_name}/{path}"
    with pytest.raises(InvalidStatus) as refused:
        with connect(url, additional_headers=headers, open_timeout=WAIT_S):
            pass
    assert refused.value.response.status_code == status


def test_events_socket_receives_every_localization_on_its_map(room, main_server):
    frame = room.frames[0]
    with Client(main_server.url, TOKEN) as client, client.events("squeeze") as events:
        reply = client.localize("squeeze", frame.rgb_path.read_bytes(), frame.camera, name="http-query.png")
        client.localize("multi_v2", frame.rgb_path.read_bytes(), frame.camera, scene="a")  # another map's
        event = events.receive(timeout_s=WAIT_S)
        with client.stream("squeeze") as stream:
            stream.send(frame.rgb_path.read_bytes(), frame.camera, frame="streamed")
            assert stream.receive(timeout_s=WAIT_S)["type"] == "pose"
        streamed = events.receive(timeout_s=WAIT_S)
        with pytest.raises(TimeoutError):
            events.receive(timeout_s=0.3)
    assert event["type"] == "pose" and event["source"] == "http" and event["frame"] == "http-query.png"
    assert event["cam_from_world"] == reply["cam_from_world"] and event["num_inliers"] == reply["num_inliers"]
    assert event["intrinsics"]["width"] == frame.camera.width and event["intrinsics"]["fx"] == frame.camera.fx
    assert streamed["source"] == "stream" and streamed["frame"] == "streamed"
    assert streamed["cam_from_world"] == reply["cam_from_world"]


def _live_summary(server, name: str) -> dict:
    maps = httpx.get(server.url + "/v1/maps", headers=AUTH, timeout=WAIT_S).json()["maps"]
    return next(m for m in maps if m["name"] == name)["reconstruction"]


def test_stream_with_reconstruct_grows_a_mesh_as_offline_fusion_makes_it(room, tmp_path):
    from sceneloc.evaluate.cloud import CloudEvalConfig, read_mesh
    from sceneloc.evaluate.mesh import evaluate_mesh
    from sceneloc.maps.scene_map import SceneMap
    from sceneloc.reconstruct.fusion import ReconstructionConfig, reconstruct
    from sceneloc.serve.config import LiveReconstructionConfig

    frames = read_scene(room.root, split="train").frames[::4][:12]
    maps = load_served_maps([SINGLE_MAP], "cpu", 1000)
    live = LiveReconstructionConfig(mesh_interval_s=0.0)  # a new mesh after every frame
    with serving(maps, threads=1, reconstruct=True, reconstruction=live) as server, \
            Client(server.url, TOKEN) as client, client.events("single_v1") as events:
        empty = httpx.get(server.url + "/v1/maps/single_v1/mesh.ply", headers=AUTH, timeout=WAIT_S)
        assert empty.status_code == 404 and "nothing fused yet" in empty.json()["error"]
        poses = []
        with client.stream("single_v1") as stream:
            for i, frame in enumerate(frames):
                stream.send(frame.rgb_path.read_bytes(), frame.camera if i == 0 else None, frame=frame.name)
                poses.append(stream.receive(timeout_s=WAIT_S))
                # One frame at a time, each fused before the next is sent: none is skipped for a busy fusion.
                deadline = time.monotonic() + WAIT_S
                while (s := _live_summary(server, "single_v1"))["frames"] + s["skipped"] + s["unsure"] < sum(
                        p["cam_from_world"] is not None for p in poses):
                    assert time.monotonic() < deadline, s
                    time.sleep(0.05)
        summary = _live_summary(server, "single_v1")
        mesh_reply = httpx.get(server.url + "/v1/maps/single_v1/mesh.ply", headers=AUTH, timeout=WAIT_S)
        kinds = []  # the events: a pose per frame, and mesh versions
        deadline = time.monotonic() + WAIT_S
        while "mesh" not in kinds and time.monotonic() < deadline:
            kinds.append(events.receive(timeout_s=max(0.01, deadline - time.monotonic()))["type"])
    localized = [p for p in poses if p["cam_from_world"] is not None]
    sure = [p for p in localized if p["num_inliers"] >= live.min_inliers]
    assert len(sure) >= 3 and summary["skipped"] == 0 and summary["unsure"] == len(localized) - len(sure)
    assert summary["frames"] >= len(sure) - 1 and summary["version"] >= 1 and summary["fps"] > 0
    assert mesh_reply.status_code == 200 and int(mesh_reply.headers["x-mesh-version"]) == summary["version"]
    assert "mesh" in kinds
    (tmp_path / "live.ply").write_bytes(mesh_reply.content)
    mesh = read_mesh(tmp_path / "live.ply")
    assert len(mesh.vertex.positions) == summary["vertices"]
    # The baseline: the same frames fused offline at their true poses with the same map's depth, one pass at the
    # live voxel size and weight. The live mesh comes from estimated poses, so it may be a little worse.
    localized_names = {p["frame"] for p in sure}
    scene = read_scene(room.root, split="train")
    scene.frames = [f for f in frames if f.name in localized_names]
    offline, _ = reconstruct(scene, ReconstructionConfig(depth="map", voxel_m=live.voxel_m, coarse_factor=1,
                                                         min_weight=live.min_weight),
                             SceneMap.load(SINGLE_MAP, "cpu"), show_progress=False)
    truth = read_mesh(room.root / "mesh.ply")
    config = CloudEvalConfig(tau=0.1, n_mesh_samples=20_000)
    ours, theirs = (evaluate_mesh(m, truth, config, None, 20_000) for m in (mesh, offline))
    assert ours["precision"] > theirs["precision"] - 0.1 and ours["precision"] > 0.3, (ours, theirs)


def test_a_server_that_does_not_reconstruct_has_no_mesh(main_server):
    reply = httpx.get(main_server.url + "/v1/maps/squeeze/mesh.ply", headers=AUTH, timeout=WAIT_S)
    assert reply.status_code == 404 and "not reconstructing" in reply.json()["error"]


# ---------------------------------------------------------------------------------------------------------------
# 5. Metrics


def test_metrics_need_the_token_and_count_what_happened(room):
    frames = room.frames[:3]
    with serving(room.maps, threads=2, max_body_bytes=MAX_BODY) as server:
        for headers in ({}, {}, {"authorization": "Bearer nope"}):
            assert _post(server, headers=headers, **_upload(frames[0])).status_code == 401
        for frame in frames:
            assert _post(server, **_upload(frame)).status_code == 200
        assert _post(server, "nowhere", **_upload(frames[0])).status_code == 404
        assert _raw_over_limit_by_length(server, frames[0]).status == 413
        assert _post(server, **_form(frames[0], camera="nope")).status_code == 422
        refused = HTTP.get(f"{server.url}/metrics")
        assert refused.status_code == 401 and refused.headers["www-authenticate"]
        response = HTTP.get(f"{server.url}/metrics", headers=AUTH)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    metrics = _metrics(response.text)
    route = "/v1/maps/{name}/localize"

    def value(name, **labels):
        return metrics.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("sceneloc_requests_total", route=route, status="401") == 3
    assert value("sceneloc_requests_total", route=route, status="200") == 3
    assert value("sceneloc_requests_total", route=route, status="404") == 1
    assert value("sceneloc_requests_total", route=route, status="422") == 1
    assert value("sceneloc_requests_total", route="unmatched", status="413") == 1  # refused before routing
    assert value("sceneloc_requests_total", route="/metrics", status="401") == 1
    assert value("sceneloc_request_seconds_count", route=route) == 8
    assert value("sceneloc_rejects_total", reason="unauthorized") == 4
    assert value("sceneloc_rejects_total", reason="too_large") == 1
    assert {k[1] for k in metrics if k[0] == "sceneloc_rejects_total"} == {
        (("reason", "unauthorized"),), (("reason", "too_large"),)}
    ok = sum(room.baseline[f.name].cam_from_world is not None for f in frames)
    assert value("sceneloc_localizations_total", map="squeeze", source="http", outcome="ok") == ok
    assert value("sceneloc_localizations_total", map="squeeze", source="http", outcome="failed") == 3 - ok
    assert value("sceneloc_localize_seconds_count", map="squeeze") == 3
    assert value("sceneloc_queue_depth") == 0 and value("sceneloc_running") == 0


# ---------------------------------------------------------------------------------------------------------------
# 6. The viewer's routes


def test_viewer_token_becomes_an_httponly_strict_cookie(main_server):
    url = main_server.url
    response = HTTP.get(f"{url}/viewer", params={"token": TOKEN, "map": "squeeze"})
    assert response.status_code == 303
    assert response.headers["location"] == "/viewer?map=squeeze"  # the token leaves the address bar
    cookie = response.headers["set-cookie"]
    parts = [p.strip().lower() for p in cookie.split(";")]
    assert parts[0] == f"sceneloc_token={TOKEN}".lower() and cookie.startswith(f"sceneloc_token={TOKEN}")
    assert "httponly" in parts and "samesite=strict" in parts and "secure" not in parts  # plain http here
    wrong = HTTP.get(f"{url}/viewer", params={"token": "nope"})
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    assert HTTP.get(f"{url}/viewer").status_code == 401
    assert HTTP.get(f"{url}/viewer", headers={"cookie": "sceneloc_token=nope"}).status_code == 401
    with httpx.Client(base_url=url, headers={"cookie": f"sceneloc_token={TOKEN}"}) as browser:
        page = browser.get("/viewer")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<script src="/viewer/viewer.js">' in page.text
        script = browser.get("/viewer/viewer.js")
        assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
        assert "scenelocViewer" in script.text
        assert browser.get("/v1/maps").status_code == 200  # the page's own requests carry the cookie
        # ... and another site's page (another port is the same site to a browser) cannot use it.
        assert browser.get("/v1/maps", headers={"origin": "http://127.0.0.1:1"}).status_code == 401
        assert browser.get("/v1/maps", headers={"origin": url}).status_code == 200
    assert HTTP.get(f"{url}/viewer/viewer.js").status_code == 401


def test_points_ply_holds_the_structure_map_points(room, main_server, tmp_path):
    response = HTTP.get(f"{main_server.url}/v1/maps/squeeze/points.ply", headers=AUTH)
    assert response.status_code == 200
    (tmp_path / "points.ply").write_bytes(response.content)
    cloud = read_ply(tmp_path / "points.ply")
    structure_map = sceneloc.load_map(room.smap, "cpu")
    expected = structure_points(structure_map)
    assert len(cloud.xyz) == len(structure_map.points) == len(expected.xyz) > 100
    np.testing.assert_allclose(cloud.xyz, expected.xyz, atol=1e-6)
    np.testing.assert_array_equal(cloud.rgb, expected.rgb)
    listed = HTTP.get(f"{main_server.url}/v1/maps", headers=AUTH).json()["maps"]
    assert listed[0] == {"name": "squeeze", "type": "structure", "scenes": None, "points": len(cloud.xyz)}
    assert listed[1] == {"name": "multi_v2", "type": "multi-scene", "scenes": ["a", "b"], "points": 0}
    assert HTTP.get(f"{main_server.url}/v1/maps/squeeze/points.ply").status_code == 401


# ---------------------------------------------------------------------------------------------------------------
# 7. Startup errors


def _startup_cases(tmp: Path) -> dict[str, tuple[list, str]]:
    """case -> (the arguments of `sceneloc serve`, what its one error line says); files made in `tmp`."""
    smap = SINGLE_MAP
    (tmp / "good.token").write_text(TOKEN + "\n")
    (tmp / "empty.token").write_text("")
    (tmp / "blank.token").write_text("  \n\n")
    (tmp / "spaced.token").write_text("two words\n")
    (tmp / "other").mkdir(exist_ok=True)
    (tmp / "other" / smap.name).write_bytes(smap.read_bytes())
    (tmp / "notamap.map").write_text("hello\n")
    good = ["--token-file", tmp / "good.token"]
    return {
        "no token": ([smap], f"no token: pass --token-file FILE or set {TOKEN_ENV}"),
        "empty token file": ([smap, "--token-file", tmp / "empty.token"], "empty.token: the token file is empty"),
        "blank token file": ([smap, "--token-file", tmp / "blank.token"], "blank.token: the token file is empty"),
        "token with a space": ([smap, "--token-file", tmp / "spaced.token"], "the token holds whitespace"),
        "missing token file": ([smap, "--token-file", tmp / "missing.token"], "missing.token: token file not found"),
        "missing map": ([tmp / "nothere.map", *good], "nothere.map: map file does not exist"),
        "not a map": ([tmp / "notamap.map", *good], "notamap.map: not a sceneloc map"),
        "two maps, one stem": ([smap, tmp / "other" / smap.name, *good], "two maps named 'single_v1'"),
        "queue_size=0": ([smap, *good, "--set", "queue_size=0"], "queue_size must be at least 1, got 0"),
        "header_timeout_s=0": ([smap, *good, "--set", "header_timeout_s=0"], "header_timeout_s must be positive"),
        "unknown field": ([smap, *good, "--set", "colour=red"], "--set colour: unknown field 'colour'"),
        "bad port": ([smap, *good, "--port", "70000"], "port must be in 1..65535, got 70000"),
        "reconstruct a multi-scene map": ([MULTI_MAP, *good, "--reconstruct"],
                                          "multi_v2.multimap: --reconstruct fuses the depth a scene-coordinate map"),
    }


STARTUP_CASES = ["no token", "empty token file", "blank token file", "token with a space", "missing token file",
                 "missing map", "not a map", "two maps, one stem", "queue_size=0", "header_timeout_s=0",
                 "unknown field", "bad port", "reconstruct a multi-scene map"]


@pytest.mark.parametrize("case", STARTUP_CASES)
def test_serve_refuses_to_start_in_one_line(case, tmp_path, monkeypatch):
    """In-process (the real entry point: the error line and exit code 2 come from sceneloc.cli.main; a subprocess
    costs seconds of imports each); uvicorn.run fails the test should the server start anyway."""
    args, expected = _startup_cases(tmp_path)[case]
    monkeypatch.delenv(TOKEN_ENV, raising=False)

    def started(*_, **__):
        raise AssertionError("the server started")

    monkeypatch.setattr(uvicorn, "run", started)
    code, out = run_cli("serve", *args, *([] if "--port" in args else ["--port", "1"]))
    assert code == 2, out
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out
    assert expected in lines[0], out
    assert "Traceback" not in out


def test_serve_script_without_a_token_exits_2_in_one_line(started_early):
    """The installed script, as a user runs it (started early, in the background): one line, exit code 2, no
    traceback."""
    code, out = started_early.no_token.result(timeout=WAIT_S * 2)
    assert code == 2, out
    assert out.strip().splitlines() == [f"error: no token: pass --token-file FILE or set {TOKEN_ENV} (clients must "
                                        f"send it as 'Authorization: Bearer TOKEN')"]


# ---------------------------------------------------------------------------------------------------------------
# 8. Graceful shutdown


def test_sigterm_answers_every_request_in_flight_and_exits_0(room, started_early):
    process, port = started_early.process, started_early.port

    def up() -> bool:
        assert process.poll() is None, started_early.log.read_text()
        try:
            return HTTP.get(f"{started_early.url}/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    _wait_until(up, "the server to start", timeout_s=120, poll_s=0.1)
    frames = room.frames[:6]
    sockets, bodies = [], []
    try:
        for frame in frames:
            content_type, body = _multipart(frame.rgb_path.read_bytes(), camera_field(frame.camera),
                                            frame.rgb_path.name)
            sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
            sockets.append(sock)
            # Expect: 100-continue: the server says "100 Continue" when the route starts reading the body, so
            # each request is known to be in the application, waiting for its body, when SIGTERM comes.
            sock.sendall(_request_head("/v1/maps/single_v1/localize", {
                **AUTH, "content-type": content_type, "content-length": str(len(body)), "expect": "100-continue"}))
            bodies.append(body)
        for sock in sockets:
            head = b""
            while not head.endswith(b"\r\n\r\n") and len(head) < 100:
                head += sock.recv(100 - len(head)) or b"!"  # b"!": the connection closed (fails below)
            assert head == b"HTTP/1.1 100 Continue\r\n\r\n"
        process.send_signal(signal.SIGTERM)
        stopped = time.monotonic()

        def refusing() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                return False
            except ConnectionRefusedError:
                return True

        _wait_until(refusing, "the server to stop accepting connections")  # shutting down, requests in flight
        for sock, body in zip(sockets, bodies):
            sock.sendall(body)
        replies = [_parse_replies(_recv_all(sock)) for sock in sockets]
        code = process.wait(timeout=WAIT_S)
        waited = time.monotonic() - stopped
    finally:
        for sock in sockets:
            sock.close()
    assert [[r.status for r in rs] for rs in replies] == [[200]] * len(frames)  # one reply each, then closed
    for frame, (reply,) in zip(frames, replies):
        answer = reply.json()
        assert answer["map"] == "single_v1" and answer["name"] == frame.rgb_path.name and "cam_from_world" in answer
    assert code == 0, started_early.log.read_text()
    assert waited < ServeConfig().request_timeout_s  # it did not wait for the graceful-shutdown timeout


# ---------------------------------------------------------------------------------------------------------------
# 9. Units: the camera field, the token, the rate limiter, image headers


@pytest.mark.parametrize("model, params, expected", [
    ("PINHOLE", [100.0, 110.0, 80.0, 60.0], (100.0, 110.0, 79.5, 59.5)),
    ("SIMPLE_PINHOLE", [100.0, 80.0, 60.0], (100.0, 100.0, 79.5, 59.5)),
    ("SIMPLE_RADIAL", [100.0, 80.0, 60.0, 0.0], (100.0, 100.0, 79.5, 59.5)),
    ("OPENCV", [100.0, 110.0, 81.0, 61.0, 0.0, 0.0, 0.0, 0.0], (100.0, 110.0, 80.5, 60.5)),
])
def test_parse_camera_pinhole_models_and_principal_point_convention(model, params, expected):
    """COLMAP puts the top-left pixel's centre at (0.5, 0.5), sceneloc at (0, 0): cx = w/2 becomes w/2 - 0.5."""
    camera, undistortion = parse_camera(json.dumps({"model": model, "width": 160, "height": 120, "params": params}))
    assert (camera.width, camera.height) == (160, 120)
    assert (camera.fx, camera.fy, camera.cx, camera.cy) == expected
    assert undistortion is None  # no distortion coefficients, or all zero


def test_parse_camera_with_distortion_gives_an_undistortion():
    camera, undistortion = parse_camera(json.dumps({"model": "OPENCV", "width": 160, "height": 120,
                                                    "params": [100, 110, 80, 60, -0.2, 0.05, 0.001, 0.0]}))
    assert undistortion is not None
    np.testing.assert_allclose(undistortion.coeffs[:4], [-0.2, 0.05, 0.001, 0.0])
    np.testing.assert_allclose(undistortion.K, camera.K)
    assert (camera.cx, camera.cy) == (79.5, 59.5)


def test_camera_json_round_trips_through_parse_camera():
    camera = Camera(160, 120, 138.56, 139.95, 81.0, 58.5)
    assert parse_camera(json.dumps(camera_json(camera))) == (camera, None)


@pytest.mark.parametrize("text, message", [
    (None, "camera: field required"),
    ("", "camera: not JSON"),
    ('"PINHOLE"', "camera: expected a JSON object"),
    ('{"model": "PINHOLE", "width": 160, "height": 120}', "camera.params: field required"),
    ('{"model": 3, "width": 160, "height": 120, "params": []}', "camera.model: 3 is not a COLMAP camera model"),
    ('{"model": "PINHOLE", "width": true, "height": 120, "params": [1, 1, 1, 1]}', "camera.width: expected a positive"),
    ('{"model": "PINHOLE", "width": 160, "height": 0, "params": [1, 1, 1, 1]}', "camera.height: expected a positive"),
    ('{"model": "PINHOLE", "width": 160, "height": 120, "params": [1, 1, NaN, 1]}', "camera.params: expected a list"),
    ('{"model": "OPENCV", "width": 160, "height": 120, "params": [1, 1, 80, 60]}',
     "camera.params: OPENCV takes 8 parameters"),
    ('{"model": "PINHOLE", "width": 160, "height": 120, "params": [-5, 100, 80, 60]}', "camera: invalid intrinsics"),
    ("[" * 100_000, "camera: not JSON that can be read"),
    ('{"model": "PINHOLE", "width": 160, "height": 120, "params": [1' + "0" * 5000 + ', 1, 1, 1]}',
     "camera: not JSON that can be read"),
    ('{"model": "PINHOLE", "width": 160, "height": 120, "params": [1' + "0" * 400 + ', 1, 1, 1]}',
     "camera.params: expected a list of finite numbers"),
])
def test_parse_camera_refuses_with_422_naming_the_field(text, message):
    with pytest.raises(RequestError) as refused:
        parse_camera(text)
    assert refused.value.status == 422
    assert refused.value.message.startswith(message), refused.value.message


def test_read_token_from_a_file_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    path = tmp_path / "token"
    path.write_text("  from-file  \nsecond line\n")
    assert read_token(path) == "from-file"  # the file wins; its first line, stripped
    assert read_token(None) == "from-env"
    monkeypatch.setenv(TOKEN_ENV, "  padded\n")
    assert read_token(None) == "padded"
    for text, problem in [("", "the token file is empty"), (" \n\t\n", "the token file is empty"),
                          ("a b\n", "holds whitespace"), ("tab\there\n", "holds whitespace"),
                          ("bell\x07\n", "unprintable")]:
        path.write_text(text)
        with pytest.raises(InputError, match=problem):
            read_token(path)
    with pytest.raises(InputError, match="token file not found"):
        read_token(tmp_path / "missing")
    for value in ("", "   "):
        monkeypatch.setenv(TOKEN_ENV, value)
        with pytest.raises(InputError, match="no token: pass --token-file FILE or set SCENELOC_TOKEN"):
            read_token(None)
    monkeypatch.delenv(TOKEN_ENV)
    with pytest.raises(InputError, match="no token"):
        read_token(None)


def test_rate_limiter_gives_a_burst_then_refuses_then_refills(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr("sceneloc.serve.limits.time.monotonic", lambda: now[0])
    limiter = RateLimiter(rate_per_s=2.0, burst=3)
    assert [limiter.retry_after("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.retry_after("a") == pytest.approx(0.5)  # one token comes back every 0.5 s
    assert limiter.retry_after("b") == 0.0  # another client has a bucket of its own
    now[0] += 0.25
    assert limiter.retry_after("a") == pytest.approx(0.25)  # refused requests do not cost tokens
    now[0] += 0.25
    assert limiter.retry_after("a") == 0.0
    assert limiter.retry_after("a") == pytest.approx(0.5)
    now[0] += 3600.0  # a long pause refills the bucket to its size, not beyond
    assert [limiter.retry_after("a") for _ in range(4)][-2:] == [0.0, pytest.approx(0.5)]


def test_check_image_reads_size_and_orientation_from_the_header():
    rgb = np.zeros((120, 160, 3), np.uint8)
    assert check_image(_encoded(rgb, "PNG"), 50_000_000) == (160, 120)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: read_image turns it upright, 120x160
    assert check_image(_encoded(rgb, "JPEG", exif=exif), 50_000_000) == (120, 160)
    with pytest.raises(RequestError) as refused:
        check_image(_encoded(rgb, "PNG"), 160 * 120 - 1)
    assert refused.value.status == 413 and "160x120 is over the limit of 19,199 pixels" in refused.value.message
    with pytest.raises(RequestError) as refused:
        check_image(_encoded(rgb, "BMP"), 50_000_000)
    assert refused.value.status == 415 and "BMP images are not accepted" in refused.value.message


def test_check_image_refuses_a_bomb_without_decoding_it(monkeypatch):
    """A real, compressed PNG of 4 megapixels (a few KB) over a 1-megapixel limit: 413 from its header, and no pixel
    decoded on the way (Pillow's getexif() would decode a whole PNG)."""
    data = _encoded(np.zeros((2000, 2000, 3), np.uint8), "PNG")
    assert len(data) < 100_000

    decoded = []

    def no_decoding(self, *args, **kwargs):
        decoded.append(self.size)  # recorded: a caller may swallow what is raised here
        raise AssertionError("check_image decoded the image")

    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(RequestError) as refused:
        check_image(data, 1_000_000)
    assert refused.value.status == 413 and "2000x2000 is over the limit" in refused.value.message
    assert check_image(data, 5_000_000) == (2000, 2000)  # under the limit: its size, still undecoded
    assert decoded == []


def test_pipelined_requests_are_not_cut_by_the_header_deadline(room, strict_server):
    """Two requests sent at once on one connection, the second held in the pool longer than the header deadline:
    both are answered, and no 408 comes in between (the second's headers arrived with the first's)."""
    frame = room.frames[0]
    content_type, body = _multipart(frame.rgb_path.read_bytes(), camera_field(frame.camera), frame.rgb_path.name)
    first = b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
    second = _request_head("/v1/maps/squeeze/localize", {**AUTH, "content-type": content_type,
                                                          "content-length": str(len(body)), "connection": "close"})
    with _gated(strict_server) as (gate, entered), socket.create_connection(("127.0.0.1", strict_server.port),
                                                                             timeout=WAIT_S) as sock:
        sock.sendall(first + second + body)
        _wait_until(lambda: entered, "the second request to reach the pool")
        time.sleep(strict_server.config.header_timeout_s * 1.5)  # past the deadline, held
        gate.set()
        replies = _recv_all(sock)
    assert b"408" not in replies.split(b"\r\n")[0]
    assert replies.count(b"HTTP/1.1 ") == 2 and replies.count(b"HTTP/1.1 200 OK") == 1, replies[:300]
    assert b"HTTP/1.1 504" in replies  # held past its one-second request deadline: answered, not cut off


def test_websockets_beyond_max_sockets_are_refused_with_503(room):
    with serving(room.maps, threads=1, max_sockets=1) as server, Client(server.url, TOKEN) as client:
        with client.stream("squeeze"):
            with pytest.raises(InvalidStatus) as refused:
                with client.events("squeeze"):
                    pass
            assert refused.value.response.status_code == 503
        _wait_until(lambda: _can_open(client), "the socket to be given back")


def _can_open(client) -> bool:
    try:
        with client.events("squeeze"):
            return True
    except InvalidStatus:
        return False
