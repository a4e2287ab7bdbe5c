"""Synthetic rooms: exact depth and scene coordinates, textured images, deterministic paths, the ACE folder and its
mesh, the standard benchmark presets (office, stairs, lowtex, hall)."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import open3d as o3d
import pytest
from scipy.spatial.transform import Rotation

from sceneloc.data.synthetic import (MESH_FILE, PRESETS, RoomConfig, StaircaseConfig, SyntheticSceneConfig,
                                     TrajectoryConfig, frame_name, generate_room, mapping_trajectory,
                                     query_trajectory, render_scene_to_folder, render_view)
from sceneloc.runtime.errors import InputError
from sceneloc.geometry import Camera, Rigid3

SEED = 3


@pytest.fixture(scope="module")
def room():
    return generate_room(RoomConfig(seed=SEED))


@pytest.fixture(scope="module")
def camera():
    return PRESETS["tiny-room"].camera()


@pytest.fixture(scope="module")
def mapping(room):
    return mapping_trajectory(room, 60, SEED)


@pytest.fixture(scope="module")
def query(room):
    return query_trajectory(room, 20, SEED)


def pixel_grid(camera: Camera) -> np.ndarray:
    """(H*W, 2) pixel centres, row-major."""
    u, v = np.meshgrid(np.arange(camera.width), np.arange(camera.height))
    return np.stack([u.ravel(), v.ravel()], 1).astype(np.float64)


def look_at(centre, target) -> Rigid3:
    """cam_from_world for a camera at `centre` looking at `target`, image x axis horizontal (world z up)."""
    forward = np.asarray(target, float) - centre
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    world_from_cam = np.stack([right, np.cross(forward, right), forward], 1)
    return Rigid3(world_from_cam.T, -world_from_cam.T @ np.asarray(centre, float))


def test_camera_intrinsics_are_general():
    cam = PRESETS["quick-room"].camera()
    assert (cam.width, cam.height) == (320, 240)
    assert cam.fy == pytest.approx(1.01 * cam.fx)
    assert 2 * np.degrees(np.arctan(cam.width / 2 / cam.fx)) == pytest.approx(60.0)
    assert (cam.cx, cam.cy) == (162.5, 117.5)


def test_depth_unprojects_onto_the_mesh(room, camera, mapping):
    pixels = pixel_grid(camera)
    for pose in mapping[::15]:
        view = render_view(room, camera, pose)
        depth = view.depth.ravel()
        # A closed room: every pixel sees a surface, never nearer than the path's clearance.
        assert depth.min() > 0.25 and depth.max() < 10.0
        world = pose.inverse().apply(camera.unproject(pixels, depth))
        assert room.distance_to_surface(world).max() < 1e-4


def test_scene_coordinates_are_depth_times_ray_and_project_back(room, camera, mapping):
    pixels = pixel_grid(camera)
    pose = mapping[7]
    view = render_view(room, camera, pose)
    coords = view.scene_coords.reshape(-1, 3).astype(np.float64)
    expected = pose.inverse().apply(camera.unproject(pixels, view.depth.ravel()))
    assert np.abs(coords - expected).max() < 1e-5
    in_camera = pose.apply(coords)
    assert np.abs(in_camera[:, 2] - view.depth.ravel()).max() < 1e-5
    assert np.abs(camera.project(in_camera) - pixels).max() < 1e-3


def test_empty_room_depth_matches_analytic_box():
    """In a room without furniture the depth of every pixel is the exit distance of its ray from the box."""
    empty = generate_room(RoomConfig(seed=11, n_wall_blocks=0, n_island_blocks=0))
    cam = Camera(96, 72, 80.0, 81.0, 50.3, 33.7)
    centre = np.array([1.1, 1.7, 1.4])
    pose = look_at(centre, [empty.size[0] - 0.3, empty.size[1], 0.4])
    view = render_view(empty, cam, pose)
    rays = pose.inverse().rotation @ cam.unproject(pixel_grid(cam)).T  # (3, N), camera z component 1
    bounds = np.where(rays > 0, empty.size[:, None], 0.0)
    with np.errstate(divide="ignore"):
        exit_t = np.where(rays != 0, (bounds - centre[:, None]) / rays, np.inf).min(0)
    assert np.abs(view.depth.ravel() - exit_t).max() < 1e-5
    # The room's far corner at floor level lands on the pixel that sees it.
    corner = np.array([[empty.size[0], empty.size[1], 0.0]])
    u, v = cam.project(pose.apply(corner))[0]
    assert 0 <= u < cam.width and 0 <= v < cam.height
    hit = view.scene_coords[int(round(v)), int(round(u))]
    assert np.linalg.norm(hit - corner[0]) < 0.05


def test_images_are_textured_and_places_differ(room, camera, mapping):
    views = [render_view(room, camera, pose) for pose in mapping[::10]]
    for view in views:
        grey = cv2.cvtColor(view.rgb, cv2.COLOR_RGB2GRAY).astype(np.float64)
        assert view.rgb.std() > 20
        # Texture inside surfaces, not just a few flat faces: mean neighbouring-pixel difference.
        assert np.abs(np.diff(grey, axis=1)).mean() > 3
    # Two neighbouring stretches of the same wall (1.2 m apart, same distance) look different.
    y = 2.0
    left = render_view(room, camera, look_at([1.6, y, 1.5], [1.6, 0.0, 1.5]))
    right = render_view(room, camera, look_at([2.8, y, 1.5], [2.8, 0.0, 1.5]))
    assert np.abs(left.rgb.astype(int) - right.rgb.astype(int)).mean() > 25
    # Lambertian shading: the same face is not uniformly scaled colour everywhere (lights at finite distance).
    assert np.ptp([v.rgb.mean() for v in views]) > 5


def test_supersampling_smooths_only_colour(room, camera, mapping):
    sharp = render_view(room, camera, mapping[20], supersampling=1)
    smooth = render_view(room, camera, mapping[20], supersampling=2)
    np.testing.assert_array_equal(sharp.depth, smooth.depth)
    np.testing.assert_array_equal(sharp.scene_coords, smooth.scene_coords)
    diff = np.abs(sharp.rgb.astype(int) - smooth.rgb.astype(int))
    assert 0 < diff.mean() < 20


def test_rays_that_miss_are_marked_invalid(room, camera):
    """From outside the room, near its corner: the right of the image sees the back of the wall x = 0, the left
    edge looks past the room into nothing."""
    outside = look_at([-1.0, -1.0, 1.5], [-1.0 + np.cos(np.radians(60)), -1.0 + np.sin(np.radians(60)), 1.5])
    view = render_view(room, camera, outside)
    hit = view.depth > 0
    assert not hit[:, :10].any() and hit[:, -10:].all()
    assert np.all(view.scene_coords[~hit] == 0) and np.all(view.rgb[~hit] == 0)
    assert np.all(view.rgb[hit].max(1) > 0)


def test_same_seed_same_room_other_seed_other_room(room, camera, mapping):
    again = generate_room(RoomConfig(seed=SEED))
    np.testing.assert_array_equal(again.atlas, room.atlas)
    np.testing.assert_array_equal(again.vertices, room.vertices)
    again_mapping = mapping_trajectory(again, 60, SEED)
    for a, b in zip(again_mapping, mapping):
        np.testing.assert_array_equal(a.matrix(), b.matrix())
    np.testing.assert_array_equal(render_view(again, camera, mapping[5]).rgb, render_view(room, camera, mapping[5]).rgb)

    other = generate_room(RoomConfig(seed=SEED + 1))
    assert np.abs(other.size - room.size).max() > 1e-3
    assert len(other.vertices) != len(room.vertices) or np.abs(other.vertices - room.vertices).max() > 1e-3
    other_mapping = mapping_trajectory(other, 60, SEED + 1)
    assert np.linalg.norm(other_mapping[0].center - mapping[0].center) > 1e-3
    diff = render_view(other, camera, mapping[5]).rgb.astype(int) - render_view(room, camera, mapping[5]).rgb
    assert np.abs(diff).mean() > 20


def test_paths_are_valid_smooth_and_query_differs(room, mapping, query):
    for poses in (mapping, query):
        centres = np.array([p.center for p in poses])
        assert room.is_free(centres).all()
        assert room.distance_to_surface(centres).min() >= 0.3
        assert centres[:, 2].min() >= 1.2 - 0.02 and centres[:, 2].max() <= 1.8 + 0.02
        hits = [render_view(room, Camera(1, 1, 1.0, 1.0, 0.0, 0.0), p).depth[0, 0] for p in poses]
        assert min(hits) >= 0.5
    # Hand-held-like: at 360 frames per loop (about 2.5 cm apart) no jumps in position or orientation.
    dense = mapping_trajectory(room, 360, SEED)
    dense_centres = np.array([p.center for p in dense])
    assert np.linalg.norm(np.diff(dense_centres, axis=0), axis=1).max() < 0.06
    turns = [np.degrees(Rotation.from_matrix(a.rotation @ b.rotation.T).magnitude())
             for a, b in zip(dense[:-1], dense[1:])]
    assert max(turns) < 10
    # The loop goes round the room: the headings cover all directions.
    yaw = np.degrees(np.arctan2(*np.array([p.rotation[2, 1::-1] for p in dense]).T))
    assert np.histogram(yaw, bins=8, range=(-180, 180))[0].min() > 0

    centres = np.array([p.center for p in mapping])
    q_centres = np.array([p.center for p in query])
    nearest = np.linalg.norm(q_centres[:, None] - centres[None], axis=2).min(1)
    # Near the mapped region but never on a mapping pose.
    assert nearest.max() < 0.5
    assert nearest.min() > 1e-3
    assert len({tuple(np.round(c, 6)) for c in q_centres} & {tuple(np.round(c, 6)) for c in centres}) == 0


def test_too_small_room_is_an_input_error():
    with pytest.raises(InputError, match="too small"):
        RoomConfig(size_min=(1.0, 3.0, 2.5), size_max=(1.0, 3.0, 2.5))
    narrow = generate_room(RoomConfig(seed=0, size_min=(2.2, 5.0, 2.5), size_max=(2.2, 5.0, 2.5)))
    with pytest.raises(InputError, match="too small"):
        mapping_trajectory(narrow, 10, 0, TrajectoryConfig())
    with pytest.raises(InputError, match="too small"):
        SyntheticSceneConfig(width=4, height=4)


def test_written_folder_has_the_ace_layout(tmp_path):
    config = SyntheticSceneConfig(room=RoomConfig(seed=SEED), width=64, height=48, principal_offset_px=(1.5, -1.0),
                                  n_map=4, n_query=3)
    scene = render_scene_to_folder(config, tmp_path / "room", progress=False)
    root = tmp_path / "room"
    assert sorted(p.name for p in root.iterdir()) == [MESH_FILE, "test", "train"]
    for split, poses in (("train", scene.mapping), ("test", scene.query)):
        names = [frame_name(i) for i in range(len(poses))]
        assert names[0] == "frame-000000"
        expected = {"rgb": ".color.png", "poses": ".pose.txt", "calibration": ".calibration.txt",
                    "depth": ".depth.png"}
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(expected)
        for sub, suffix in expected.items():
            assert sorted(p.name for p in (root / split / sub).iterdir()) == [n + suffix for n in names]
        for name, pose in zip(names, poses):
            k = np.loadtxt(root / split / "calibration" / f"{name}.calibration.txt")
            np.testing.assert_array_equal(k, config.camera().K)
            assert len((root / split / "poses" / f"{name}.pose.txt").read_text().splitlines()) == 4
            cam_to_world = np.loadtxt(root / split / "poses" / f"{name}.pose.txt")
            assert cam_to_world.shape == (4, 4)
            np.testing.assert_array_equal(cam_to_world[3], [0, 0, 0, 1])
            np.testing.assert_allclose(cam_to_world, pose.inverse().matrix(), atol=1e-12)

            view = render_view(scene.room, scene.camera, pose, config.supersampling)
            depth_png = cv2.imread(str(root / split / "depth" / f"{name}.depth.png"), cv2.IMREAD_ANYDEPTH)
            assert depth_png.dtype == np.uint16 and depth_png.shape == (48, 64)
            assert (depth_png > 0).all()
            assert np.abs(depth_png / 1000.0 - view.depth).max() <= 0.0005 + 1e-7
            bgr = cv2.imread(str(root / split / "rgb" / f"{name}.color.png"), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), view.rgb)

    # A second render into the same folder must be asked for; a smaller one leaves no stale frames.
    with pytest.raises(InputError, match="already holds"):
        render_scene_to_folder(config, root, progress=False)
    smaller = SyntheticSceneConfig(room=RoomConfig(seed=SEED), width=64, height=48, n_map=2, n_query=1)
    render_scene_to_folder(smaller, root, overwrite=True, progress=False)
    assert len(list((root / "train" / "rgb").iterdir())) == 2
    assert len(list((root / "test" / "depth").iterdir())) == 1
    assert not list(root.rglob("*.tmp"))


STANDARD = ("office", "stairs", "lowtex", "hall")


@pytest.fixture(scope="module")
def standard_rooms():
    return {name: generate_room(PRESETS[name].room) for name in STANDARD}


def face_textures(room) -> list[np.ndarray]:
    """The atlas window (h, w, 3) each face shows, from its first triangle's atlas coordinates."""
    windows = []
    for x, y, _, _, w, h in room.triangle_atlas_uv[::2]:
        x0, y0 = int(round(x + 0.5)), int(round(y + 0.5))
        windows.append(room.atlas[y0:y0 + int(round(h)), x0:x0 + int(round(w))])
    return windows


def gradient(image: np.ndarray) -> float:
    """Mean absolute difference between neighbouring texels of an (h, w, 3) image, grey levels."""
    grey = image.astype(np.float64).mean(2)
    return float(np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean())


def stairs_fraction(room, view) -> float:
    """Fraction of a view's pixels that see the staircase (its landing or steps, not the floor)."""
    points = view.scene_coords.reshape(-1, 3)
    on_stairs = np.zeros(len(points), bool)
    for box in room.stairs:
        inside = np.all(np.abs(points[:, :2] - box.center_xy) <= box.half_size + 1e-4, 1)
        on_stairs |= inside & (points[:, 2] > 1e-3) & (points[:, 2] <= box.height + 1e-4)
    return float(on_stairs[view.depth.ravel() > 0].mean())


def test_standard_presets_are_vga_with_modest_frame_counts_and_their_own_query_path(standard_rooms):
    for name in STANDARD:
        config, room = PRESETS[name], standard_rooms[name]
        assert (config.width, config.height) == (640, 480)
        assert (config.n_map, config.n_query) == ((500, 100) if name == "hall" else (400, 100))
        mapping = mapping_trajectory(room, 100, config.room.seed, config.trajectory)
        query = query_trajectory(room, 30, config.room.seed, config.trajectory)
        centres = np.array([p.center for p in mapping])
        nearest = np.linalg.norm(np.array([p.center for p in query])[:, None] - centres[None], axis=2).min(1)
        assert nearest.min() > 1e-3 and nearest.max() < 0.6, name


def test_office_is_richly_textured_and_lowtex_weakly(standard_rooms):
    office = [gradient(t) for t in face_textures(standard_rooms["office"])]
    default = [gradient(t) for t in face_textures(generate_room(RoomConfig(seed=0)))]
    assert np.median(office) > 12 and min(office) > 3
    assert len(office) >= len(default) + 25  # more furniture: 5 faces per block
    assert np.median(office) > np.median(default) + 2

    lowtex = face_textures(standard_rooms["lowtex"])
    assert np.median([gradient(t) for t in lowtex]) < 2.5
    # Mostly plain, with a few full-contrast spots: gradients over 0.3 m squares.
    patches = np.array([gradient(t[y:y + 60, x:x + 60]) for t in lowtex
                        for y in range(0, t.shape[0] - 60, 60) for x in range(0, t.shape[1] - 60, 60)])
    assert np.percentile(patches, 95) < 4
    assert 5 <= (patches > 8).sum() < 0.05 * len(patches)


def test_stairs_have_identical_steps(standard_rooms):
    room, stairs = standard_rooms["stairs"], PRESETS["stairs"].room.staircase
    corners = room.vertices.reshape(-1, 4, 3)
    extent = np.ptp(corners, axis=1)
    risers = np.flatnonzero(np.all(np.abs(extent - [stairs.width_m, 0, stairs.rise_m]) < 1e-5, 1))
    treads = np.flatnonzero(np.all(np.abs(extent - [stairs.width_m, stairs.going_m, 0]) < 1e-5, 1))
    assert len(risers) == len(treads) == stairs.n_steps == 10
    # One step above the other, each a rise higher.
    np.testing.assert_allclose(np.sort(corners[treads, 0, 2]), stairs.rise_m * np.arange(1, 11), atol=1e-5)
    np.testing.assert_allclose(np.sort(corners[risers, :, 2].min(1)), stairs.rise_m * np.arange(10), atol=1e-5)
    # Every riser samples the same atlas texels (both triangles), every tread too, and no other face does.
    for faces in (risers, treads):
        uv = room.triangle_atlas_uv.reshape(-1, 2, 6)
        np.testing.assert_array_equal(uv[faces], np.broadcast_to(uv[faces[0]], uv[faces].shape))
        assert (np.all(uv == uv[faces[0]], axis=(1, 2))).sum() == 10
    riser, tread = face_textures(room)[risers[0]], face_textures(room)[treads[0]]
    assert gradient(riser) > 3 and np.abs(riser.astype(int) - tread[:len(riser)]).mean() > 10
    # The steps are solid: a point inside a step is not free, one above its tread is.
    step = room.stairs[1 + 4]
    inside = np.append(step.center_xy, step.height - 0.05)
    assert not room.is_free(inside[None])[0] and room.is_free((inside + [0, 0, 0.1])[None])[0]


def test_stairs_cameras_look_at_the_stairs_and_depth_lands_on_the_mesh(standard_rooms):
    room, config = standard_rooms["stairs"], replace(PRESETS["stairs"], width=32, height=24, supersampling=1)
    mapping = mapping_trajectory(room, 40, config.room.seed, config.trajectory)
    fractions = [stairs_fraction(room, render_view(room, config.camera(), p, 1)) for p in mapping]
    assert np.mean(np.array(fractions) > 0.1) > 0.6

    camera = replace(config, width=160, height=120).camera()
    pose = mapping[int(np.argmax(fractions))]
    view = render_view(room, camera, pose)
    assert stairs_fraction(room, view) > 0.3 and (view.depth > 0).all()
    world = pose.inverse().apply(camera.unproject(pixel_grid(camera), view.depth.ravel()))
    assert room.distance_to_surface(world).max() < 1e-4


def test_hall_is_large_and_its_loop_crosses_it(standard_rooms):
    room, config = standard_rooms["hall"], PRESETS["hall"]
    assert room.size.max() >= 10.0 and room.size.min() >= 3.5
    centres = np.array([p.center for p in mapping_trajectory(room, 100, config.room.seed, config.trajectory)])
    span = np.ptp(centres[:, :2], axis=0)
    assert span.max() >= 9.0 and np.all(span >= 0.6 * room.size[:2])


def test_mesh_ply_is_the_room_geometry(tmp_path):
    config = replace(PRESETS["stairs"], width=32, height=24, n_map=2, n_query=1)
    scene = render_scene_to_folder(config, tmp_path / "stairs", progress=False)
    mesh = o3d.io.read_triangle_mesh(str(tmp_path / "stairs" / MESH_FILE))
    assert len(mesh.triangles) == len(scene.room.triangles) > 100
    np.testing.assert_array_equal(np.asarray(mesh.triangles), scene.room.triangles)
    np.testing.assert_array_equal(np.asarray(mesh.vertices, np.float32), scene.room.vertices)
    assert not list((tmp_path / "stairs").glob(".*"))


def test_staircase_and_focus_settings_are_checked():
    with pytest.raises(InputError, match="does not fit"):
        RoomConfig(staircase=StaircaseConfig(width_m=4.0))
    with pytest.raises(InputError, match="leaves less than"):
        RoomConfig(staircase=StaircaseConfig(n_steps=12))
    with pytest.raises(InputError, match="focus_weight"):
        TrajectoryConfig(focus_weight=0.5)
    with pytest.raises(InputError, match="needs a room with a focus"):
        mapping_trajectory(generate_room(RoomConfig(seed=0)), 10, 0, TrajectoryConfig(focus_weight=1.0))
