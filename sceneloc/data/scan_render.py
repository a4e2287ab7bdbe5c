"""Ray-cast rendering of a textured triangle-mesh scan (an OBJ with one texture atlas, e.g. a BundleFusion
reconstruction): RGB (the atlas colour as captured, no lighting, supersampled), exact z-depth and scene coordinates
for a pinhole camera, with Open3D's RaycastingScene."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import open3d as o3d

from sceneloc.data.raycast import cast_pixel_rays
from sceneloc.data.synthetic.render import RenderedView
from sceneloc.runtime.errors import InputError
from sceneloc.geometry import Camera, Rigid3


@dataclass(frozen=True)
class TexturedMesh:
    """A scan ready for ray casting. World frame: the mesh file's, metres."""

    vertices: np.ndarray
    """(V, 3) float64 vertex positions (Open3D's OBJ reader splits vertices that carry several texture coordinates:
    equal positions may repeat)."""
    triangles: np.ndarray
    """(F, 3) int32 vertex indices."""
    corner_texels: np.ndarray
    """(F, 3, 2) float32 atlas pixel coordinates (x, y) of each triangle's corners, OpenCV convention (the centre
    of the atlas's top-left texel is (0, 0))."""
    atlas: np.ndarray
    """(H, W, 3) float32 RGB texture atlas, 0..255."""
    scene: o3d.t.geometry.RaycastingScene
    """The triangles, in order: a hit's primitive id indexes `triangles`."""

    def geometry(self) -> o3d.geometry.TriangleMesh:
        """The untextured surface with repeated vertices merged, for writing and distance queries."""
        mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(self.vertices),
                                         o3d.utility.Vector3iVector(self.triangles))
        return mesh.remove_duplicated_vertices()


def load_textured_mesh(path: str | Path) -> TexturedMesh:
    """Read an OBJ (with its .mtl and texture image beside it) that maps every triangle into one texture atlas.
    Raises InputError when the file is missing or unreadable, or has no texture coordinates or texture image."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "missing (expected a textured OBJ mesh)")
    mesh = o3d.io.read_triangle_mesh(str(path))
    if not mesh.has_triangles():
        raise InputError(path, "holds no triangles (not a readable mesh file)")
    if not mesh.has_triangle_uvs():
        raise InputError(path, "has no texture coordinates (vt)")
    materials = np.unique(np.asarray(mesh.triangle_material_ids))
    if len(materials) != 1:
        raise InputError(path, f"uses {len(materials)} texture images; only scans with one atlas are supported")
    image = mesh.textures[materials[0]] if materials[0] < len(mesh.textures) else None
    if image is None or image.is_empty():
        raise InputError(path, "its texture image could not be read (see map_Kd in its .mtl)")
    atlas = np.asarray(image)
    if atlas.ndim != 3 or atlas.shape[2] != 3 or atlas.dtype != np.uint8:
        raise InputError(path, f"texture image is {atlas.shape} {atlas.dtype}, expected 8-bit RGB")
    h, w = atlas.shape[:2]
    uv = np.asarray(mesh.triangle_uvs).reshape(-1, 3, 2)
    # OBJ's v runs up from the image's bottom row, but Open3D's reader stores the texture image flipped upside down,
    # so v indexes its rows top-down as loaded: no flip here.
    texels = (uv * (w, h) - 0.5).astype(np.float32)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
    return TexturedMesh(np.asarray(mesh.vertices).copy(), np.asarray(mesh.triangles).astype(np.int32), texels,
                        atlas.astype(np.float32), scene)


def render_scan(mesh: TexturedMesh, camera: Camera, cam_from_world: Rigid3, supersampling: int = 2) -> RenderedView:
    """Render `mesh` from the pose cam_from_world. Pixels whose centre ray hits nothing have depth 0, scene
    coordinates 0 and black colour.

    Colour is the bilinearly sampled atlas averaged over the hits of a supersampling x supersampling grid of rays
    per pixel (box filter; sub-rays that miss are left out, so hole borders do not darken); depth and scene
    coordinates come from the single ray through the pixel centre, exact intersections with the mesh (to float32
    precision)."""
    if supersampling < 1:
        raise InputError(None, f"supersampling must be >= 1, got {supersampling}")
    if camera.width < 1 or camera.height < 1:
        raise InputError(None, f"camera size {camera.width}x{camera.height} is empty")
    h, w, s = camera.height, camera.width, supersampling
    rays, hits = cast_pixel_rays(mesh.scene, camera, cam_from_world)
    t_hit = hits["t_hit"]
    valid = np.isfinite(t_hit)
    depth = np.where(valid, t_hit, np.float32(0.0))
    coords = rays[..., :3].astype(np.float64) + depth[..., None].astype(np.float64) * rays[..., 3:]
    coords[~valid] = 0.0

    if s > 1:
        _, hits = cast_pixel_rays(mesh.scene, camera.scaled(w * s, h * s), cam_from_world)
    prim = hits["primitive_ids"]
    bary = hits["primitive_uvs"]
    hit = prim != o3d.t.geometry.RaycastingScene.INVALID_ID
    corners = mesh.corner_texels[np.where(hit, prim, 0)]
    # Open3D's barycentrics (b1, b2) weigh corners 1 and 2: p = (1 - b1 - b2) p0 + b1 p1 + b2 p2. Texture
    # coordinates are affine over a triangle, so interpolating them is exact.
    texel = corners[..., 0, :] + bary[..., :1] * (corners[..., 1, :] - corners[..., 0, :]) \
        + bary[..., 1:] * (corners[..., 2, :] - corners[..., 0, :])
    colour = cv2.remap(mesh.atlas, texel[..., 0], texel[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    weight = hit.astype(np.float32)
    colour *= weight[..., None]
    if s > 1:
        colour = cv2.resize(colour, (w, h), interpolation=cv2.INTER_AREA)
        weight = cv2.resize(weight, (w, h), interpolation=cv2.INTER_AREA)
    colour /= np.maximum(weight, 1e-6)[..., None]
    rgb = np.clip(colour + 0.5, 0, 255).astype(np.uint8)
    rgb[~valid] = 0
    return RenderedView(rgb=rgb, depth=depth, scene_coords=coords.astype(np.float32))
