"""ServeConfig: every setting of the localization service, with its default and why."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from sceneloc.localize.loop import LocalizeConfig


@dataclass
class LiveReconstructionConfig:
    """How `serve --reconstruct` fuses streamed frames (`--set reconstruction.voxel_m=0.02`)."""

    voxel_m: float = 0.04
    """Voxel size, metres: twice `sceneloc reconstruct`'s, as a map's depth is coarser than a sensor's and each
    frame must fuse in a fraction of a second."""
    truncation_voxels: float = 4.0
    """TSDF truncation distance in voxels."""
    max_depth_m: float = 6.0
    """Depth beyond this is not fused."""
    min_inliers: int = 100
    """A frame whose pose RANSAC found with fewer inliers is not fused (counted as `unsure`): one wrong pose paints
    a whole frame's surface in the wrong place, and on our maps right and wrong poses are far apart in inliers
    (hundreds against tens, docs/BENCHMARKS.md), while the service answers every pose above the solver's minimum."""
    min_weight: float = 2.0
    """Surface seen by fewer frames is left out of the mesh: a map's depth has stray cells one frame alone
    puts in free space."""
    mesh_interval_s: float = 2.0
    """Shortest time between two extractions of the mesh."""

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """ValueError naming the first setting that cannot work."""
        for name in ("voxel_m", "truncation_voxels", "max_depth_m"):
            if not getattr(self, name) > 0:
                raise ValueError(f"reconstruction.{name} must be > 0, got {getattr(self, name)}")
        if self.min_inliers < 0 or self.min_weight < 0 or self.mesh_interval_s < 0:
            raise ValueError("reconstruction.min_inliers, min_weight and mesh_interval_s must be >= 0")


@dataclass
class ServeConfig:
    """How `sceneloc serve` listens, how much load it admits and how it localizes. `--set field=value` reaches
    every field (`--set localize.solver.max_iterations=2000` the localize loop's)."""

    host: str = "127.0.0.1"
    """Address to bind. Loopback unless told otherwise: exposing the service is a decision (put it behind TLS)."""
    port: int = 8700
    """TCP port."""
    workers: int = 1
    """Server processes (uvicorn workers), each with the maps loaded and its own localization threads. Requests
    are stateless, so more processes (or machines behind a load balancer) add throughput; metrics are per process."""
    threads: int = 0
    """Localization threads per process; 0: the cores the process may use shared among the workers (at least one
    each). Each runs torch with localize.network_threads threads (1 by default here), so images overlap as the
    pipelined CLI loop's stages do."""
    queue_size: int = 8
    """Requests admitted beyond the ones running (per process). When full, HTTP requests get 503 with Retry-After
    and stream frames a drop notice: memory stays bounded whatever the load."""
    request_timeout_s: float = 30.0
    """Longest a request may take from its first byte to its reply (reading the body, waiting, localizing); an
    expired one gets 408 (body too slow) or 504 (localization too slow)."""
    header_timeout_s: float = 10.0
    """A connection whose request headers are not complete this long after it opened (or after its last
    reply) is answered 408 and closed: a slow-loris client cannot hold connections open."""
    max_body_bytes: int = 16 * 1024 * 1024
    """Largest request body (and WebSocket message); larger ones get 413 before they are read."""
    max_image_pixels: int = 50_000_000
    """Largest image (width x height) decoded; larger ones get 413 from their header alone, so a small file that
    claims a huge image (a decompression bomb) costs nothing."""
    rate_per_s: float = 200.0
    """Requests per second a client (its IP address) may make on average; more get 429 with Retry-After."""
    rate_burst: int = 400
    """Requests a client may make at once before rate_per_s applies (the token bucket's size)."""
    max_connections: int = 512
    """Open connections and tasks the server accepts (uvicorn's limit_concurrency); beyond it, 503."""
    stream_backlog: int = 2
    """Frames a stream holds while its frames in flight (as many as there are threads) are localized; a newer
    frame pushes out the oldest (the client is told)."""
    max_sockets: int = 64
    """Open WebSockets (streams and viewers) per process; more handshakes get 503. uvicorn's max_connections does
    not count upgraded connections."""
    viewer_points: int = 200_000
    """Most points of a map's cloud the viewer gets (a random subset of larger clouds)."""
    device: str = "auto"
    """Device the maps' networks run on: auto | cpu | cuda."""
    localize: LocalizeConfig = field(default_factory=lambda: LocalizeConfig(network_threads=1))
    """The localize loop's settings, as `sceneloc localize` has them, with one torch thread per localization thread."""
    reconstruct: bool = False
    """Fuse the frames streams localize into a mesh per map, with the depth the map implies (serve/live.py; every
    map must be a scene-coordinate map); the viewer shows it as it grows."""
    reconstruction: LiveReconstructionConfig = field(default_factory=LiveReconstructionConfig)
    """How --reconstruct fuses."""

    def validate(self) -> None:
        """Raise ValueError naming the first field that cannot work."""
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        for name in ("workers", "queue_size", "max_body_bytes", "max_image_pixels", "rate_burst", "max_connections",
                     "stream_backlog", "max_sockets", "viewer_points"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.localize.network_threads < 1:
            # 0 (the loop's "one less than torch's count") would have every thread set and restore a count the
            # others are changing; fp32 results depend on it.
            raise ValueError(f"localize.network_threads must be at least 1, got {self.localize.network_threads}")
        self.reconstruction.validate()
        if self.threads < 0:
            raise ValueError(f"threads must be 0 (one per core) or more, got {self.threads}")
        for name in ("request_timeout_s", "header_timeout_s", "rate_per_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
