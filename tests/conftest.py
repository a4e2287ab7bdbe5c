"""Helpers shared by test modules (imported as `from conftest import ...`)."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from sceneloc.cli import main
from sceneloc.geometry import Rigid3
from sceneloc.serve.pool import available_cores

# `make test` runs a pytest-xdist worker per core: each worker takes its share of the cores, so that tests that do not
# pin one thread (torch_threads) do not oversubscribe them; the commands the tests start inherit the setting.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _CORE_SHARE = max(1, available_cores() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    torch.set_num_threads(_CORE_SHARE)
    os.environ.setdefault("OMP_NUM_THREADS", str(_CORE_SHARE))

SLOWEST_FILES = ("test_end_to_end.py", "test_bench.py", "test_api.py", "test_device.py")
"""The files that take longest (on a float32-only CPU: 500, 470, 190 and 160 s): collected first, so that the
workers start on them and the many short files fill the time around them instead of waiting at the end."""


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept


@contextmanager
def torch_threads(count: int = 1):
    """torch's thread count set to `count` inside the block, restored after. One thread: mapping is bit-reproducible
    for a given thread count only, and on two shared cores one thread is several times faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the rest of the module that asks for it (see torch_threads)."""
    with torch_threads(1):
        yield


def run_script(*args, columns: int = 200) -> tuple[int, str]:
    """The installed `sceneloc` script in a subprocess: (exit code, stdout + stderr); a crash gives a negative code.
    columns: the terminal width the error box is drawn for."""
    script = Path(sys.executable).with_name("sceneloc")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "sceneloc.cli"]
    done = subprocess.run(command + [str(a) for a in args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": str(columns)})
    return done.returncode, done.stdout + done.stderr


def random_pose(rng: np.random.Generator) -> Rigid3:
    """A random cam_from_world (rotation from a normal rotation vector, normal translation)."""
    return Rigid3(Rotation.from_rotvec(rng.normal(size=3)).as_matrix(), rng.normal(size=3))


def perturbed_pose(truth: Rigid3, t_err_m: float, r_err_deg: float, rng: np.random.Generator) -> Rigid3:
    """A cam_from_world whose centre is t_err_m from truth's and whose rotation differs by r_err_deg."""
    axis = rng.normal(size=3)
    rotation = Rotation.from_rotvec(axis / np.linalg.norm(axis) * np.radians(r_err_deg)).as_matrix() @ truth.rotation
    direction = rng.normal(size=3)
    center = truth.center + direction / np.linalg.norm(direction) * t_err_m
    return Rigid3(rotation, -rotation @ center)


def pose_scores(estimates, queries) -> dict:
    """evaluate_poses of estimates against the ground-truth poses of the query Scene `queries`."""
    from sceneloc.evaluate import evaluate_poses

    return evaluate_poses(estimates, {f.name: f.cam_from_world for f in queries.frames})


def run_cli(*args) -> tuple[int, str]:
    """Run the CLI entry point in-process: (exit code, stdout + stderr). Any exception other than the SystemExit
    main() ends with (i.e. a traceback) propagates and fails the test."""
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["sceneloc", *map(str, args)]
    try:
        with redirect_stdout(out), redirect_stderr(err), pytest.raises(SystemExit) as exited:
            main()
    finally:
        sys.argv = argv
    return exited.value.code or 0, out.getvalue() + err.getvalue()


@pytest.fixture(scope="session")
def tiny_room_sift(tmp_path_factory):
    """(the rendered tiny-room preset, its colmap-sift peer map): rendered and triangulated once per test run, for
    the peer's tests and as the baseline of the structure map's."""
    from sceneloc.data import read_scene
    from sceneloc.data.synthetic import PRESETS, render_scene_to_folder
    from sceneloc.peers.colmap_sift import ColmapSiftConfig, build_sift_map

    root = tmp_path_factory.mktemp("tiny-room")
    rendered = render_scene_to_folder(PRESETS["tiny-room"], root, progress=False)
    return rendered, build_sift_map(read_scene(root, split="train"), ColmapSiftConfig(), show_progress=False)


@pytest.fixture(scope="session")
def tiny_room_structure(tmp_path_factory):
    """(the rendered tiny-room preset, its structure map file `squeeze.smap`): rendered and mapped once per test run
    through the command line (`sceneloc map --type structure`, default settings), for the service's and the
    viewer's tests."""
    from sceneloc.data.synthetic import PRESETS, render_scene_to_folder

    root = tmp_path_factory.mktemp("served")
    rendered = render_scene_to_folder(PRESETS["tiny-room"], root / "tiny-room", progress=False)
    with torch_threads(1):
        code, out = run_cli("map", rendered.root, "-o", root / "squeeze.smap", "--type", "structure")
    assert code == 0, out
    return rendered, root / "squeeze.smap"


SERVE_TOKEN = "serve-test-token-7f3a"
"""The bearer token of the servers `serving` starts."""


@dataclass
class RunningServer:
    """A server `serving` started: its URL and port, its application (RequestLimits around FastAPI), its settings."""

    url: str
    port: int
    app: object
    config: object
    """Its ServeConfig."""

    @property
    def pool(self):
        """Its LocalizationPool."""
        return self.app.app.state.pool


@contextmanager
def serving(maps: dict, timeout_s: float = 60.0, **settings):
    """`maps` (name -> ServedMap, from sceneloc.serve.maps.load_served_maps) served with ServeConfig(**settings) and
    token SERVE_TOKEN by uvicorn in a thread of this process with `sceneloc serve`'s settings (serve.server.
    uvicorn_settings), on a free port of 127.0.0.1; stopped
    gracefully when the block ends. Starting and stopping are bounded by timeout_s."""
    import uvicorn

    from sceneloc.serve.app import create_app
    from sceneloc.serve.config import ServeConfig
    from sceneloc.serve.server import uvicorn_settings

    config = ServeConfig(**settings)
    config.validate()
    app = create_app(config, maps, SERVE_TOKEN)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on",
                                           **uvicorn_settings(config)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the in-process server did not start"
        time.sleep(0.01)
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", port, app, config)
    finally:
        server.should_exit = True
        thread.join(timeout_s)
        sock.close()
        assert not thread.is_alive(), "the in-process server did not stop"
