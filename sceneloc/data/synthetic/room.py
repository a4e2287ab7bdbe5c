"""Procedural indoor rooms: a box room with furniture blocks, every planar face textured, as an Open3D mesh.

World frame: metres, z up, floor at z = 0, the room spans [0, size_x] x [0, size_y] x [0, size_z]. Every surface is
a rectangle ("face") with its own texture; a face is described by its top-left corner as seen from the side that
can be viewed, a unit `right` axis and a unit `down` axis (right x down points into the surface, away from the
viewer, so textures are never mirrored); texel (col, row) of a point p is
((p - origin) . right, (p - origin) . down) * texels_per_metre - 0.5."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import open3d as o3d

from sceneloc.errors import InputError
from sceneloc.data.synthetic.textures import face_texture

ATLAS_PAD = 2
"""Texels of replicated border around each face in the atlas, so bilinear lookups never mix two faces."""
MAX_ATLAS_SIDE = 32000
"""cv2.remap needs source images below 32767 pixels per side."""


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
    walls, then the four sides and the top of each block; mesh triangles 2f and 2f + 1 make face f."""

    config: RoomConfig
    size: np.ndarray
    """(3,) extent in metres (x, y, height)."""
    blocks: list[Block]
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
    scene: o3d.t.geometry.RaycastingScene = field(repr=False)
    """Ray casting / distance queries on the mesh."""

    def mesh(self) -> o3d.t.geometry.TriangleMesh:
        """The room as an Open3D tensor mesh (geometry only)."""
        mesh = o3d.t.geometry.TriangleMesh()
        mesh.vertex.positions = o3d.core.Tensor(self.vertices)
        mesh.triangle.indices = o3d.core.Tensor(self.triangles)
        return mesh

    def distance_to_surface(self, points: np.ndarray) -> np.ndarray:
        """points: (N, 3) -> (N,) float32 unsigned distance to the nearest surface (metres)."""
        query = o3d.core.Tensor(np.ascontiguousarray(points, dtype=np.float32))
        return self.scene.compute_distance(query).numpy()

    def is_free(self, points: np.ndarray) -> np.ndarray:
        """points: (N, 3) -> (N,) bool, inside the room and outside every block."""
        inside = np.all((points > 0) & (points < self.size), 1)
        for block in self.blocks:
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


def _place_blocks(size: np.ndarray, config: RoomConfig, rng: np.random.Generator) -> list[Block]:
    """Wall blocks stand against a random wall without overlapping each other; islands stand near the centre."""
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
            if not any(_overlaps(candidate, other, 0.05) for other in blocks):
                blocks.append(candidate)
                break
    for _ in range(config.n_island_blocks):
        for _attempt in range(50):
            half = rng.uniform(0.2, 0.4, 2)
            center = size[:2] / 2 + rng.uniform(-0.25, 0.25, 2) * size[:2] / 4
            candidate = Block(center, half, float(rng.uniform(0, np.pi)), rng.uniform(0.35, 0.9))
            if not any(_overlaps(candidate, other, 0.3) for other in blocks):
                blocks.append(candidate)
                break
    return blocks


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
    blocks = _place_blocks(size, config, rng)
    faces = _room_faces(size) + [f for block in blocks for f in _box_faces(block)]
    textures = [face_texture(w, h, config.texels_per_metre, config.tile_size_range, rng) for *_, w, h in faces]
    atlas, atlas_xy = _pack_atlas(textures)

    origin = np.array([f[0] for f in faces])
    right = np.array([f[1] for f in faces])
    down = np.array([f[2] for f in faces])
    extent = np.array([[f[3], f[4]] for f in faces])
    corners = np.stack([origin, origin + right * extent[:, :1], origin + right * extent[:, :1] + down * extent[:, 1:],
                        origin + down * extent[:, 1:]], 1)
    vertices = corners.reshape(-1, 3).astype(np.float32)
    base = 4 * np.arange(len(faces))[:, None]
    triangles = np.stack([base + [0, 1, 2], base + [0, 2, 3]], 1).reshape(-1, 3).astype(np.int32)
    # Texel (col, row) of a point at (a, b) metres along (right, down) is (a, b) * tpm - 0.5 (texel centres).
    corner_uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]])[None] * extent[:, None] * config.texels_per_metre
    vertex_atlas = (corner_uv - 0.5 + atlas_xy[:, None]).reshape(-1, 2)
    tri_atlas = vertex_atlas[triangles]
    triangle_atlas_uv = np.concatenate([tri_atlas[:, 0], tri_atlas[:, 1] - tri_atlas[:, 0],
                                        tri_atlas[:, 2] - tri_atlas[:, 0]], 1).astype(np.float32)

    lights = np.column_stack([rng.uniform(0.2, 0.8, (config.n_lights, 2)) * size[:2],
                              np.full(config.n_lights, size[2] - 0.15)])
    room = Room(config=config, size=size, blocks=blocks, atlas=atlas, triangle_atlas_uv=triangle_atlas_uv,
                lights=lights, vertices=vertices, triangles=triangles, scene=o3d.t.geometry.RaycastingScene())
    room.scene.add_triangles(room.mesh())
    return room
