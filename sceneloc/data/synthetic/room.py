"""Procedural indoor rooms: a box room with furniture blocks and optionally a staircase, every planar face
textured, as an Open3D mesh.

World frame: metres, z up, floor at z = 0, the room spans [0, size_x] x [0, size_y] x [0, size_z]. Every surface is
a rectangle ("face"); a face is described by its top-left corner as seen from the side that can be viewed, a unit
`right` axis and a unit `down` axis (right x down points into the surface, away from the viewer, so textures are
never mirrored). Each face shows a window of one texture: texel (col, row) of a point p is
((p - origin) . right + a0, (p - origin) . down + b0) * texels_per_metre - 0.5, where (a0, b0) is the face's offset
in metres inside its texture. Room and furniture faces have a texture of their own (offset 0); all risers of a
staircase share one texture, all treads another, and each step's side is its window of one side texture."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import open3d as o3d

from sceneloc.runtime.errors import InputError
from sceneloc.data.synthetic.textures import face_texture, lower_contrast, photo_patch

ATLAS_PAD = 2
"""Texels of replicated border around each face in the atlas, so bilinear lookups never mix two faces."""
MAX_ATLAS_SIDE = 32000
"""cv2.remap needs source images below 32767 pixels per side."""
SEMANTIC_CLASSES = ("floor", "wall", "ceiling", "furniture", "stairs")
"""What every surface of a generated room is, by index (Room.face_labels): the label set of the semantic part of
reconstruction (sceneloc.reconstruct.semantics). A staircase's landing counts as stairs."""
UNLABELLED = 255
"""Label of a pixel whose ray hits nothing."""
MIN_FREE_FLOOR_M = 2.0
"""Smallest extent of the floor left in front of a staircase (the region camera paths go round)."""


@dataclass(frozen=True)
class StaircaseConfig:
    """A straight staircase against the wall y = 0 that rises towards that wall (its risers face the room, +y) and
    ends in a landing against it. All risers show one and the same texture, all treads another, so the steps look
    genuinely alike, as real stairs do."""

    n_steps: int = 10
    """Steps (one riser and one tread each); the top tread is flush with the landing."""
    rise_m: float = 0.18
    """Height of one step."""
    going_m: float = 0.28
    """Depth of one tread."""
    width_m: float = 1.4
    """Width of the stairs (along x)."""
    landing_depth_m: float = 1.0
    """Depth of the landing at the top (along y, from the wall y = 0)."""
    side_gap_m: float = 0.8
    """Distance from the wall x = 0 to the stairs' left side; 0 puts them in the corner (left side hidden)."""

    def __post_init__(self):
        if self.n_steps < 1 or min(self.rise_m, self.going_m, self.width_m, self.landing_depth_m) <= 0:
            raise InputError(None, "a staircase needs n_steps >= 1 and positive rise, going, width and landing")
        if self.side_gap_m < 0:
            raise InputError(None, f"staircase side_gap_m must be >= 0, got {self.side_gap_m}")

    @property
    def depth_m(self) -> float:
        """Extent along y from the wall y = 0 to the bottom riser."""
        return self.landing_depth_m + self.n_steps * self.going_m


@dataclass(frozen=True)
class RoomConfig:
    """Parameters of a procedurally generated room; everything random is drawn from `seed`."""

    seed: int = 0
    """Seed of every random choice (room size, furniture, textures, lights)."""
    size_min: tuple[float, float, float] = (4.0, 5.0, 2.5)
    """Smallest room extent (x, y, height) in metres."""
    size_max: tuple[float, float, float] = (5.0, 6.0, 2.9)
    """Largest room extent (x, y, height) in metres; each extent is uniform between min and max."""
    n_wall_blocks: int = 5
    """Furniture blocks standing against the walls (cupboards, shelves, low chests); fewer when they do not fit
    without overlapping."""
    n_island_blocks: int = 1
    """Low blocks (tables) standing freely in the middle of the room, at a random yaw; fewer when they do not fit."""
    texels_per_metre: float = 200.0
    """Texture resolution on every surface."""
    tile_size_range: tuple[float, float] = (1.0, 1.5)
    """Side length in metres of one texture tile (one photo crop) on a face."""
    n_lights: int = 2
    """Point lights just below the ceiling."""
    ambient: float = 0.35
    """Fraction of the brightness that does not depend on the lights (0..1)."""
    staircase: StaircaseConfig | None = None
    """A staircase against the wall y = 0, or none; camera paths then go round the floor in front of it."""
    texture_contrast: float = 1.0
    """Every texture is blended towards its own mean colour: 1 keeps the photos' contrast, 0 leaves flat colours."""
    n_textured_spots: int = 0
    """Full-contrast photo patches (posters, rugs) painted on random walls, floor and furniture faces after
    texture_contrast is applied: the few distinctive places of a weakly textured room."""
    spot_size_m: tuple[float, float] = (0.4, 0.8)
    """Side length range of a square textured spot (spots do not go on faces smaller than this)."""

    def __post_init__(self):
        if not all(0 < lo <= hi for lo, hi in zip(self.size_min, self.size_max)):
            raise InputError(None, f"room size range {self.size_min}..{self.size_max} is empty or not positive")
        if min(self.size_min[:2]) < 2.0 or self.size_min[2] < 2.0:
            raise InputError(None, f"room size {self.size_min} is too small: every extent must be at least 2 m")
        if self.n_wall_blocks < 0 or self.n_island_blocks < 0 or self.n_lights < 1:
            raise InputError(None, "block counts must be >= 0 and n_lights >= 1")
        if not 0.0 <= self.ambient <= 1.0:
            raise InputError(None, f"ambient must be in [0, 1], got {self.ambient}")
        if self.texels_per_metre <= 0 or not 0 < self.tile_size_range[0] <= self.tile_size_range[1]:
            raise InputError(None, "texels_per_metre and tile_size_range must be positive")
        if not 0.0 <= self.texture_contrast <= 1.0:
            raise InputError(None, f"texture_contrast must be in [0, 1], got {self.texture_contrast}")
        if self.n_textured_spots < 0 or not 0 < self.spot_size_m[0] <= self.spot_size_m[1]:
            raise InputError(None, "n_textured_spots must be >= 0 and spot_size_m a positive range")
        stairs = self.staircase
        if stairs is not None:
            x, y, z = self.size_min
            if stairs.side_gap_m + stairs.width_m > x - 0.3:
                raise InputError(None, f"staircase {stairs.side_gap_m} + {stairs.width_m} m wide does not fit in "
                                       f"a room {x} m wide with 0.3 m to spare")
            if stairs.depth_m + MIN_FREE_FLOOR_M > y:
                raise InputError(None, f"staircase {stairs.depth_m:.2f} m deep leaves less than "
                                       f"{MIN_FREE_FLOOR_M} m of a room {y} m long")
            if stairs.n_steps * stairs.rise_m > z - 1.0:
                raise InputError(None, f"staircase {stairs.n_steps * stairs.rise_m:.2f} m high leaves less than "
                                       f"1 m headroom in a room {z} m high")


@dataclass(frozen=True)
class Block:
    """A furniture block: a box standing on the floor. center_xy: (2,), half_size: (2,) half extents along its own
    x/y axes, yaw: rotation about z (radians), height: metres."""

    center_xy: np.ndarray
    half_size: np.ndarray
    yaw: float
    height: float

    def corners_xy(self) -> np.ndarray:
        """(4, 2) footprint corners, counter-clockwise seen from above."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        local = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * self.half_size
        return local @ np.array([[c, s], [-s, c]]) + self.center_xy

    def contains(self, points: np.ndarray) -> np.ndarray:
        """points: (N, 3) -> (N,) bool, inside the box."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        d = points[:, :2] - self.center_xy
        local = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], 1)
        return np.all(np.abs(local) < self.half_size, 1) & (points[:, 2] < self.height) & (points[:, 2] > 0)


@dataclass
class Room:
    """A generated room: geometry, textures and lights. Faces (rectangles) come in the order floor, ceiling, four
    walls, the four sides and the top of each block, then, with a staircase, the sides and top of its landing and
    each step's riser, tread and exposed sides, bottom step first; mesh triangles 2f and 2f + 1 make face f."""

    config: RoomConfig
    size: np.ndarray
    """(3,) extent in metres (x, y, height)."""
    blocks: list[Block]
    """Furniture."""
    stairs: list[Block]
    """The staircase as solid boxes for free-space tests: its landing, then one column per step, bottom step
    first; empty without a staircase."""
    path_area: np.ndarray
    """(2, 2) [[x_min, y_min], [x_max, y_max]]: the floor region camera paths go round (the whole floor, less the
    staircase's strip)."""
    focus_xy: np.ndarray | None
    """(2,) floor point that camera paths can be turned towards (the middle of the steps); None without a
    staircase."""
    atlas: np.ndarray
    """(Ha, Wa, 3) uint8 RGB: all face textures packed with ATLAS_PAD replicated borders."""
    triangle_atlas_uv: np.ndarray
    """(2F, 6) float32 per triangle: atlas (x, y) of its vertex 0, then the atlas offsets of vertices 1 and 2
    from vertex 0, so a hit with barycentrics (b1, b2) samples atlas point v0 + b1 * e1 + b2 * e2 (cv2.remap
    pixel convention: texel centres at integers)."""
    lights: np.ndarray
    """(L, 3) point light positions."""
    vertices: np.ndarray
    """(4F, 3) float32 mesh vertices (four corners per face)."""
    triangles: np.ndarray
    """(2F, 3) int32 mesh triangles."""
    face_labels: np.ndarray
    """(F,) uint8 index into SEMANTIC_CLASSES of each face (triangles 2f and 2f + 1 are face f)."""
    scene: o3d.t.geometry.RaycastingScene = field(repr=False)
    """Ray casting / distance queries on the mesh."""

    def mesh(self) -> o3d.t.geometry.TriangleMesh:
        """The room as an Open3D tensor mesh (geometry only)."""
        mesh = o3d.t.geometry.TriangleMesh()
        mesh.vertex.positions = o3d.core.Tensor(self.vertices)
        mesh.triangle.indices = o3d.core.Tensor(self.triangles)
        return mesh

    def triangle_labels(self) -> np.ndarray:
        """(2F,) uint8 semantic class of each mesh triangle."""
        return np.repeat(self.face_labels, 2)

    def distance_to_surface(self, points: np.ndarray) -> np.ndarray:
        """points: (N, 3) -> (N,) float32 unsigned distance to the nearest surface (metres)."""
        query = o3d.core.Tensor(np.ascontiguousarray(points, dtype=np.float32))
        return self.scene.compute_distance(query).numpy()

    def is_free(self, points: np.ndarray) -> np.ndarray:
        """points: (N, 3) -> (N,) bool, inside the room and outside every block and the staircase."""
        inside = np.all((points > 0) & (points < self.size), 1)
        for block in self.blocks + self.stairs:
            inside &= ~block.contains(points)
        return inside


def _rect(origin, right, down, width, height):
    """A face as (origin, right, down, width_m, height_m)."""
    return (np.asarray(origin, float), np.asarray(right, float), np.asarray(down, float), float(width), float(height))


def _box_faces(block: Block) -> list[tuple]:
    """The 4 sides and the top of a block, each seen from outside (the bottom lies on the floor, never seen)."""
    corners = block.corners_xy()
    h = block.height
    faces = []
    for i in range(4):
        a, b = corners[i], corners[(i + 1) % 4]
        # Counter-clockwise corners: walking a -> b the outside is on the right, so a viewer outside sees a on
        # the left: the face runs from a (top-left) towards b.
        length = np.linalg.norm(b - a)
        right = np.append((b - a) / length, 0.0)
        faces.append(_rect([a[0], a[1], h], right, [0, 0, -1], length, h))
    # Top, seen from above: right = x axis of the block, down = -y axis (so right x down = -z, into the surface).
    c, s = np.cos(block.yaw), np.sin(block.yaw)
    top_left = corners[3]
    faces.append(_rect([top_left[0], top_left[1], h], [c, s, 0], [s, -c, 0], 2 * block.half_size[0],
                       2 * block.half_size[1]))
    return faces


def _room_faces(size: np.ndarray) -> list[tuple]:
    """Floor, ceiling and four walls, seen from inside."""
    x, y, z = size
    return [
        _rect([0, y, 0], [1, 0, 0], [0, -1, 0], x, y),      # floor, seen from above
        _rect([0, 0, z], [1, 0, 0], [0, 1, 0], x, y),       # ceiling, seen from below
        _rect([x, 0, z], [-1, 0, 0], [0, 0, -1], x, z),     # wall y = 0, seen from +y
        _rect([0, y, z], [1, 0, 0], [0, 0, -1], x, z),      # wall y = Y, seen from -y
        _rect([0, 0, z], [0, 1, 0], [0, 0, -1], y, z),      # wall x = 0, seen from +x
        _rect([x, y, z], [0, -1, 0], [0, 0, -1], y, z),     # wall x = X, seen from -x
    ]


def _overlaps(a: Block, b: Block, gap: float) -> bool:
    """Conservative footprint test with bounding circles for rotated blocks, boxes for aligned ones."""
    if a.yaw % (np.pi / 2) == 0 and b.yaw % (np.pi / 2) == 0:
        ha = a.half_size if a.yaw % np.pi == 0 else a.half_size[::-1]
        hb = b.half_size if b.yaw % np.pi == 0 else b.half_size[::-1]
        return bool(np.all(np.abs(a.center_xy - b.center_xy) < ha + hb + gap))
    return bool(np.linalg.norm(a.center_xy - b.center_xy) < np.linalg.norm(a.half_size) +
                np.linalg.norm(b.half_size) + gap)


def _place_blocks(size: np.ndarray, path_area: np.ndarray, obstacles: list[Block], config: RoomConfig,
                  rng: np.random.Generator) -> list[Block]:
    """Wall blocks stand against a random wall without overlapping each other or the obstacles; islands stand near
    the centre of path_area (2, 2)."""
    blocks: list[Block] = []
    # Per wall: (start corner, yaw, length). A block's local x axis runs along the wall from the start corner,
    # its local +y axis points into the room.
    walls = [(np.array([0.0, 0.0]), 0.0, size[0]), (np.array([size[0], size[1]]), np.pi, size[0]),
             (np.array([0.0, size[1]]), -np.pi / 2, size[1]), (np.array([size[0], 0.0]), np.pi / 2, size[1])]
    for _ in range(config.n_wall_blocks):
        for _attempt in range(50):
            start, yaw, length = walls[int(rng.integers(4))]
            width, depth = rng.uniform(0.5, 1.5), rng.uniform(0.25, 0.55)
            height = rng.uniform(0.4, 2.1)
            along = rng.uniform(width / 2 + 0.02, length - width / 2 - 0.02)
            c, s = np.cos(yaw), np.sin(yaw)
            center = start + along * np.array([c, s]) + (depth / 2 + 0.01) * np.array([-s, c])
            candidate = Block(center, np.array([width / 2, depth / 2]), yaw, height)
            if not any(_overlaps(candidate, other, 0.05) for other in blocks + obstacles):
                blocks.append(candidate)
                break
    for _ in range(config.n_island_blocks):
        for _attempt in range(50):
            half = rng.uniform(0.2, 0.4, 2)
            extent = path_area[1] - path_area[0]
            center = path_area[0] + extent / 2 + rng.uniform(-0.25, 0.25, 2) * extent / 4
            candidate = Block(center, half, float(rng.uniform(0, np.pi)), rng.uniform(0.35, 0.9))
            if not any(_overlaps(candidate, other, 0.3) for other in blocks + obstacles):
                blocks.append(candidate)
                break
    return blocks


def _staircase_blocks(stairs: StaircaseConfig) -> list[Block]:
    """The landing, then one solid column per step (bottom step first), as axis-aligned boxes."""
    n, g, r, depth = stairs.n_steps, stairs.going_m, stairs.rise_m, stairs.landing_depth_m
    x_mid, half_width = stairs.side_gap_m + stairs.width_m / 2, stairs.width_m / 2
    landing = Block(np.array([x_mid, depth / 2]), np.array([half_width, depth / 2]), 0.0, n * r)
    return [landing] + [Block(np.array([x_mid, depth + (n - k - 0.5) * g]), np.array([half_width, g / 2]), 0.0,
                              (k + 1) * r) for k in range(n)]


def _step_faces(stairs: StaircaseConfig) -> tuple[list[tuple], list[tuple[int, float, float]], list[tuple]]:
    """The visible faces of the steps (riser, tread, right side, left side unless in the corner; bottom step
    first), each face's window (texture slot, a0, b0 metres) and the size (width_m, height_m) of each slot's
    texture: slot 0 the riser texture, 1 the tread texture, 2 and 3 the right and left side textures (a side's
    faces are windows of one texture covering the whole stepped profile)."""
    n, g, r, depth = stairs.n_steps, stairs.going_m, stairs.rise_m, stairs.landing_depth_m
    x0, width = stairs.side_gap_m, stairs.width_m
    x1 = x0 + width
    faces, windows = [], []
    for k in range(n):
        front, top = depth + (n - k) * g, (k + 1) * r
        faces += [_rect([x1, front, top], [-1, 0, 0], [0, 0, -1], width, r),     # riser, seen from +y
                  _rect([x1, front - g, top], [-1, 0, 0], [0, 1, 0], width, g),  # tread, seen from above
                  _rect([x1, front - g, top], [0, 1, 0], [0, 0, -1], g, top)]    # right side, seen from +x
        windows += [(0, 0.0, 0.0), (1, 0.0, 0.0), (2, (n - 1 - k) * g, (n - 1 - k) * r)]
        if x0 > 0:
            faces.append(_rect([x0, front, top], [0, -1, 0], [0, 0, -1], g, top))  # left side, seen from -x
            windows.append((3, k * g, (n - 1 - k) * r))
    sizes = [(width, r), (width, g), (n * g, n * r)] + ([(n * g, n * r)] if x0 > 0 else [])
    return faces, windows, sizes


def _paint_spots(textures: list[np.ndarray], candidates: list[int], config: RoomConfig) -> None:
    """Paint config.n_textured_spots square photo patches into the textures of `candidates` (indices), each on a
    texture drawn with probability proportional to its area among those it fits on; in place."""
    rng = np.random.default_rng([config.seed, 1])
    for _ in range(config.n_textured_spots):
        side = max(int(round(rng.uniform(*config.spot_size_m) * config.texels_per_metre)), 2)
        fits = [i for i in candidates if min(textures[i].shape[:2]) >= side]
        if not fits:
            continue
        area = np.array([textures[i].shape[0] * textures[i].shape[1] for i in fits], float)
        texture = textures[fits[int(rng.choice(len(fits), p=area / area.sum()))]]
        y0 = int(rng.integers(texture.shape[0] - side + 1))
        x0 = int(rng.integers(texture.shape[1] - side + 1))
        texture[y0:y0 + side, x0:x0 + side] = photo_patch(side, side, rng)


def _pack_atlas(textures: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Shelf-pack textures (each padded by ATLAS_PAD replicated texels) into one image.
    Returns the atlas (Ha, Wa, 3) uint8 and (F, 2) int (col, row) of each texture's first texel."""
    padded = [np.pad(t, ((ATLAS_PAD, ATLAS_PAD), (ATLAS_PAD, ATLAS_PAD), (0, 0)), mode="edge") for t in textures]
    total = sum(p.shape[0] * p.shape[1] for p in padded)
    atlas_w = max(max(p.shape[1] for p in padded), int(np.sqrt(total) * 1.1))
    order = sorted(range(len(padded)), key=lambda i: -padded[i].shape[0])
    positions = np.zeros((len(padded), 2), int)
    x = y = shelf_h = 0
    for i in order:
        h, w = padded[i].shape[:2]
        if x + w > atlas_w:
            x, y, shelf_h = 0, y + shelf_h, 0
        positions[i] = (x, y)
        x, shelf_h = x + w, max(shelf_h, h)
    atlas_h = y + shelf_h
    if max(atlas_h, atlas_w) > MAX_ATLAS_SIDE:
        raise InputError(None, f"texture atlas would be {atlas_w}x{atlas_h} texels: lower texels_per_metre")
    atlas = np.zeros((atlas_h, atlas_w, 3), np.uint8)
    for (x, y), p in zip(positions, padded):
        atlas[y:y + p.shape[0], x:x + p.shape[1]] = p
    return atlas, positions + ATLAS_PAD


def generate_room(config: RoomConfig) -> Room:
    """Build the room described by `config` (deterministic in config.seed)."""
    rng = np.random.default_rng(config.seed)
    size = rng.uniform(config.size_min, config.size_max)
    path_area = np.array([[0.0, 0.0], size[:2]])
    stairs, focus_xy = [], None
    if config.staircase is not None:
        path_area[0, 1] = config.staircase.depth_m
        stairs = _staircase_blocks(config.staircase)
        steps = np.array([block.center_xy for block in stairs[1:]])
        focus_xy = steps.mean(0)
    blocks = _place_blocks(size, path_area, stairs, config, rng)
    faces = _room_faces(size) + [f for block in blocks + stairs[:1] for f in _box_faces(block)]
    floor, wall, ceiling, furniture, stair = range(len(SEMANTIC_CLASSES))
    labels = [floor, ceiling] + [wall] * 4 + [furniture] * (5 * len(blocks)) + [stair] * (5 * len(stairs[:1]))
    tpm, tiles = config.texels_per_metre, config.tile_size_range
    textures = [face_texture(w, h, tpm, tiles, rng) for *_, w, h in faces]
    # Per face: (index of the texture it shows, offset (a0, b0) in metres of its top-left corner in that texture).
    windows = [(i, 0.0, 0.0) for i in range(len(faces))]
    own_textures = [i for i in range(len(faces)) if i != 1]  # spots go anywhere but on the ceiling
    if config.staircase is not None:
        step_faces, step_windows, slot_sizes = _step_faces(config.staircase)
        first_slot = len(textures)
        textures += [face_texture(w, h, tpm, tiles, rng) for w, h in slot_sizes]
        faces += step_faces
        labels += [stair] * len(step_faces)
        windows += [(first_slot + slot, a0, b0) for slot, a0, b0 in step_windows]
    textures = [lower_contrast(t, config.texture_contrast) for t in textures]
    _paint_spots(textures, own_textures, config)
    atlas, atlas_xy = _pack_atlas(textures)

    origin = np.array([f[0] for f in faces])
    right = np.array([f[1] for f in faces])
    down = np.array([f[2] for f in faces])
    extent = np.array([[f[3], f[4]] for f in faces])
    texture_index = np.array([w[0] for w in windows])
    offset = np.array([w[1:] for w in windows])
    corners = np.stack([origin, origin + right * extent[:, :1], origin + right * extent[:, :1] + down * extent[:, 1:],
                        origin + down * extent[:, 1:]], 1)
    vertices = corners.reshape(-1, 3).astype(np.float32)
    base = 4 * np.arange(len(faces))[:, None]
    triangles = np.stack([base + [0, 1, 2], base + [0, 2, 3]], 1).reshape(-1, 3).astype(np.int32)
    # Texel (col, row) of a point at (a, b) metres along (right, down) is (a + a0, b + b0) * tpm - 0.5 (texel
    # centres).
    corner_uv = (np.array([[0, 0], [1, 0], [1, 1], [0, 1]])[None] * extent[:, None] + offset[:, None]) * tpm
    vertex_atlas = (corner_uv - 0.5 + atlas_xy[texture_index][:, None]).reshape(-1, 2)
    tri_atlas = vertex_atlas[triangles]
    triangle_atlas_uv = np.concatenate([tri_atlas[:, 0], tri_atlas[:, 1] - tri_atlas[:, 0],
                                        tri_atlas[:, 2] - tri_atlas[:, 0]], 1).astype(np.float32)

    lights = np.column_stack([rng.uniform(0.2, 0.8, (config.n_lights, 2)) * size[:2],
                              np.full(config.n_lights, size[2] - 0.15)])
    room = Room(config=config, size=size, blocks=blocks, stairs=stairs, path_area=path_area, focus_xy=focus_xy,
                atlas=atlas, triangle_atlas_uv=triangle_atlas_uv, lights=lights, vertices=vertices,
                triangles=triangles, face_labels=np.array(labels, np.uint8), scene=o3d.t.geometry.RaycastingScene())
    room.scene.add_triangles(room.mesh())
    return room
