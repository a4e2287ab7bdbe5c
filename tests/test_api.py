"""The Python API (`import sceneloc`): the README's example runs as written, and the API gives the same poses as the
command line for the same map."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

import sceneloc
from conftest import run_cli, torch_threads

README = Path(__file__).parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    marker = text.index("<!-- api-example")
    return re.search(r"```python\n(.*?)```", text[marker:], re.S).group(1)


@pytest.fixture(scope="module")
def room(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("api")
    code, out = run_cli("render", "tiny-room", "-o", folder / "room")
    assert code == 0, out
    return folder


def test_public_names_exist():
    for name in ["read_scene", "map_scene", "load_map", "Localizer", "evaluate_poses", "MappingConfig",
                 "LocalizeConfig", "PoseEstimate", "Camera", "Rigid3", "InputError"]:
        assert getattr(sceneloc, name) is not None, name
    with pytest.raises(AttributeError):
        sceneloc.not_a_name  # noqa: B018


@pytest.fixture(scope="module")
def example(room) -> dict:
    """The README example's variables after running it in `room`."""
    cwd = os.getcwd()
    os.chdir(room)
    try:
        with torch_threads(1):
            namespace: dict = {}
            exec(compile(readme_example(), "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    return namespace


def test_readme_example_runs_and_maps_better_than_chance(example, room):
    result = example["result"]
    assert result["n_query"] == 20 and (room / "room.map").is_file()
    # A map of the scene must beat the scene's own size as an error: the room is about 5 m across, an unusable map
    # is metres off (test_device.py compares with an untrained head); 1000 steps give tens of centimetres here.
    assert result["median_t_cm"] < 150, result["median_t_cm"]


def test_api_and_cli_give_the_same_poses(example, room, tmp_path):
    """The same map localized through sceneloc.Localizer and `sceneloc localize` (fp32, same RANSAC seed)."""
    map_file = room / "room.map"
    code, out = run_cli("localize", map_file, room / "room", "-o", tmp_path / "poses.txt", "--precision", "fp32")
    assert code == 0, out
    cli = {e.name: e for e in sceneloc.read_poses(tmp_path / "poses.txt")}
    localizer = sceneloc.Localizer(sceneloc.load_map(map_file, device="cpu"), sceneloc.LocalizeConfig(precision="fp32"))
    queries = sceneloc.read_scene(room / "room", split="test")
    for frame in queries.frames[:5]:
        estimate = localizer.localize(frame.load_rgb(), frame.camera, frame.name)
        if estimate.cam_from_world is None:
            assert cli[frame.name].cam_from_world is None
        else:
            np.testing.assert_allclose(estimate.cam_from_world.matrix(), cli[frame.name].cam_from_world.matrix(),
                                       atol=1e-6)


def test_localizer_refuses_a_wrong_image(example, room):
    map_file = room / "room.map"
    localizer = sceneloc.Localizer(sceneloc.load_map(map_file, device="cpu"))
    frame = sceneloc.read_scene(room / "room", split="test").frames[0]
    with pytest.raises(sceneloc.InputError, match="image is 80x120 but the camera is 160x120"):
        localizer.localize(frame.load_rgb()[:, :80], frame.camera)
    with pytest.raises(sceneloc.InputError, match="uint8"):
        localizer.localize(frame.load_rgb().astype(np.float32), frame.camera)
