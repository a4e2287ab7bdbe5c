"""The browser viewer of `sceneloc serve` in headless Chromium (tests/browser.py): the token in the address becomes the
cookie, the page loads the structure map's points, connects its events WebSocket and draws a camera frustum for
each localization made over HTTP, in the colour of its inlier count; the screenshot is a real render.

SCENELOC_VIEWER_SCREENSHOT=PATH also copies the screenshot there (for the documentation)."""

from __future__ import annotations

import colorsys
import io
import math
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import sceneloc
from browser import chromium_available, headless_chromium, viewer_state, wait_for, webgl_renderer
from conftest import SERVE_TOKEN as TOKEN
from conftest import serving
from sceneloc.client import Client
from sceneloc.data import read_scene
from sceneloc.serve.config import ServeConfig
from sceneloc.serve.maps import load_served_maps

pytestmark = pytest.mark.skipif(not chromium_available(), reason="needs Debian's chromium and chromium-driver "
                                                                 "(scripts/setup.sh) and selenium")

INLIERS_RED, INLIERS_GREEN = 10, 300
"""viewer.js's inlier scale: red at 10 inliers or fewer, green at 300 or more, log scale between."""


def _frustum_colour(num_inliers: int) -> np.ndarray:
    """The sRGB colour (0..255) of a frustum of `num_inliers` inliers, on the legend's scale: hue 0 (red) at
    INLIERS_RED or fewer to 120 (green) at INLIERS_GREEN or more, log scale between; saturation 1, lightness 0.5."""
    n = max(1, num_inliers)
    t = (math.log(n) - math.log(INLIERS_RED)) / (math.log(INLIERS_GREEN) - math.log(INLIERS_RED))
    hue = 120.0 * min(1.0, max(0.0, t))
    return np.array(colorsys.hls_to_rgb(hue / 360.0, 0.5, 1.0)) * 255.0


def _pixels_of(png: bytes, colour: np.ndarray, tolerance: float = 3.0) -> int:
    """Pixels of a screenshot within `tolerance` of `colour` in every channel. A frustum's fully covered line pixels
    have its exact colour; the map's points (tab20 colours) and the dark background are far from any of them, the
    legend's gradient holds a few (so screenshots are compared with the one before the localizations)."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)
    return int((np.abs(rgb - colour).max(axis=2) <= tolerance).sum())


def _distinct_colours(png: bytes) -> int:
    return len(np.unique(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3), axis=0))


def _drawn(driver) -> None:
    """Returns once what the page has queued is drawn: two animation frames after now (the viewer renders on
    demand, in the animation frame after a change)."""
    driver.execute_async_script("const done = arguments[arguments.length - 1];"
                                "requestAnimationFrame(() => requestAnimationFrame(() => done(true)));")


def test_viewer_draws_the_map_and_a_frustum_per_localization(tiny_room_structure, one_thread, tmp_path):
    rendered, smap = tiny_room_structure
    queries = read_scene(rendered.root, split="test").frames
    n_points = len(sceneloc.load_map(smap, "cpu").points)
    maps = load_served_maps([smap], "cpu", ServeConfig().viewer_points)
    with serving(maps, threads=1) as server, headless_chromium(960, 640) as driver, \
            Client(server.url, TOKEN) as client:
        driver.get(f"{server.url}/viewer?token={TOKEN}")
        assert driver.current_url == f"{server.url}/viewer"  # redirected: the token left the address bar
        assert TOKEN not in driver.execute_script("return document.cookie")  # HttpOnly: the page cannot read it
        assert webgl_renderer(driver) is not None, "this Chromium has no WebGL (tests/browser.py's flags)"
        wait_for(driver, f"window.scenelocViewer && window.scenelocViewer.points === {n_points} "
                         f"&& window.scenelocViewer.connected", timeout_s=60)
        _drawn(driver)
        before = driver.get_screenshot_as_png()
        replies = []  # query images localized over HTTP until two have a pose (the first two do, measured)
        for frame in queries:
            replies.append(client.localize("squeeze", frame.rgb_path.read_bytes(), frame.camera,
                                           name=frame.rgb_path.name))
            if sum(r["cam_from_world"] is not None for r in replies) == 2:
                break
        wait_for(driver, f"window.scenelocViewer.poses === {len(replies)}", timeout_s=60)
        assert viewer_state(driver)["frustums"] == 2
        _drawn(driver)
        after = driver.get_screenshot_as_png()
        state = viewer_state(driver)
        overlay = driver.execute_script("return [document.getElementById('ov-frustums').textContent,"
                                        " document.getElementById('ov-locs').textContent]")
    path = tmp_path / "viewer.png"
    path.write_bytes(after)
    assert state["error"] is None, state
    assert state["map"] == "squeeze" and state["type"] == "structure"
    posed = [r for r in replies if r["cam_from_world"] is not None]
    failed = len(replies) - len(posed)
    assert state["poses"] == len(replies) and state["failed"] == failed
    assert state["lastInliers"] == replies[-1]["num_inliers"]
    assert overlay == ["2", f"2 ok / {failed} failed"]
    image = Image.open(io.BytesIO(after))
    assert image.size == (960, 640)
    assert _distinct_colours(after) > 50  # the points' colours, shaded lines, the overlay's text: a real render
    for reply in posed:
        colour = _frustum_colour(reply["num_inliers"])
        drawn, baseline = _pixels_of(after, colour), _pixels_of(before, colour)
        assert drawn >= baseline + 20, (reply["num_inliers"], colour.round(), drawn, baseline)
    if os.environ.get("SCENELOC_VIEWER_SCREENSHOT"):  # a checked render, for the documentation
        shutil.copyfile(path, os.environ["SCENELOC_VIEWER_SCREENSHOT"])


def test_viewer_shows_the_live_mesh_of_a_reconstructing_server(tiny_room_structure, one_thread):
    from pathlib import Path

    from sceneloc.serve.config import LiveReconstructionConfig

    rendered, _ = tiny_room_structure
    frames = read_scene(rendered.root, split="train").frames[::6][:6]
    single = Path(__file__).parent / "data" / "maps_5b85055" / "single_v1.map"  # a scene-coordinate map
    maps = load_served_maps([single], "cpu", ServeConfig().viewer_points)
    with serving(maps, threads=1, reconstruct=True, reconstruction=LiveReconstructionConfig(mesh_interval_s=0.0)) \
            as server, headless_chromium(960, 640) as driver, Client(server.url, TOKEN) as client:
        driver.get(f"{server.url}/viewer?token={TOKEN}&map=single_v1")
        wait_for(driver, "window.scenelocViewer && window.scenelocViewer.connected", timeout_s=60)
        _drawn(driver)
        before = driver.get_screenshot_as_png()
        assert viewer_state(driver)["meshVersion"] == 0
        with client.stream("single_v1") as stream:
            for i, frame in enumerate(frames):
                stream.send(frame.rgb_path.read_bytes(), frame.camera if i == 0 else None, frame=frame.name)
                stream.receive(timeout_s=60)
        wait_for(driver, "window.scenelocViewer.meshVersion >= 1", timeout_s=60)
        _drawn(driver)
        after = driver.get_screenshot_as_png()
        state = viewer_state(driver)
        overlay = driver.execute_script("return document.getElementById('ov-mesh').textContent")
    assert state["error"] is None and state["meshVertices"] > 100, state
    assert overlay.endswith(f"vertices (v{state['meshVersion']})")
    # The mesh is drawn in the frames' colours: far more distinct colours than the empty scene's frustums.
    assert _distinct_colours(after) > _distinct_colours(before) + 50
