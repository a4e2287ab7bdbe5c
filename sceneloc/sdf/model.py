"""The signed-distance models of `sceneloc sdf` and their files.

- LgclNet, LGCL (thesis section 2.3, Figure 2.1): one 8-value code per key point of a template mesh (the global code
  z^G split evenly over the vertices), a 4-layer graph network G2L (Chebyshev or vertex convolutions, sdf.graph)
  turning them into 64-value local codes z^L_i, and a shared SDF-4 decoder that reads the local code of the key
  point nearest to the query (its region R_i, Eq. 2.3) with the query in that key point's local frame T_i (Eq. 2.2).
  The thesis leaves T_i open; ours is the key point's tangent frame (origin at the key point, third axis its
  normal, in units of the template's edge length), and a local SDF is its key point's tangent plane plus what the
  decoder adds (zero at the start): every region starts as the right sign on both sides of the surface. Local
  spheres (SAL's initialisation, kept for the baseline) left the deep interior, where few samples fall and regions
  from opposite sides meet, positive, and marching cubes then found inner sheets there.
- DeepSdfNet, the global-code baseline: one code for the shape and a DeepSDF-style 8-layer decoder with the input
  joined again at the fourth layer; its width is chosen so that it has as many parameters as LGCL
  (sdf_budget_width).

Both take and give the model's normalised frame (the shape's bounding-box centre at the origin, its farthest vertex
at distance 1); SdfModel maps world coordinates (the mesh's units) in and distances out. Decoders use Softplus
(beta 100); the baseline's starts from a sphere (SAL's geometric initialisation, Atzmon and Lipman), LGCL's from
zero (its field then is the tangent planes)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import nn

from sceneloc import __version__
from sceneloc.maps.files import config_from_metadata, load_map_file, metadata_field, save_map_file
from sceneloc.sdf.graph import ChebConv, TemplateGraph, VertexConv

SDF_FORMAT = "sceneloc-sdf"
FORMAT_VERSION = 1
METHODS = ("lgcl", "deepsdf")
KERNELS = ("cheb", "vc")
INIT_RADIUS = 0.5
"""Radius of the sphere the baseline's decoder starts from (normalised units: the shape fits in the unit
sphere)."""
MAX_TEMPLATE = 8000
"""Most key points: the similarity loss's k-ring operators are built from a dense V x V adjacency (256 MB here)."""
QUERY_CHUNK = 65536
"""Points per forward pass when evaluating many."""


@dataclass
class SdfConfig:
    """The shape of a signed-distance model."""

    method: str = "lgcl"
    """lgcl (local codes on a template graph) or deepsdf (one global code, the baseline)."""
    kernel: str = "cheb"
    """LGCL's graph convolution: cheb (Chebyshev, LGCL-Cheb) or vc (vertex convolution, LGCL-VC)."""
    template_vertices: int = 1500
    """Key points: the vertices of the shape decimated to about this many (the thesis: the 6,890 of its body
    template)."""
    vertex_code: int = 8
    """Length of each key point's code (the thesis: 8)."""
    g2l_channels: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    """Output channels of the G2L layers (Table 2.1); the last is the local code's length."""
    kernel_size: int = 6
    """Chebyshev order (cheb, Table 2.1: 6) or number of weight bases (vc); 6 for both gives them the same weights."""
    decoder_width: int = 128
    """Hidden width of LGCL's SDF-4 decoder (Table 2.1)."""
    decoder_layers: int = 4
    """Linear layers of LGCL's decoder (SDF-4)."""
    correction_bound: float = 1.0
    """LGCL: the most (in template edge lengths) a local SDF may differ from its key point's tangent plane (the
    decoder's output through bound * tanh(. / bound)); 0: unbounded. A bound keeps the sign of points far from every
    sample (deep inside, far outside) that of the tangent plane, where an unbounded decoder extrapolates."""
    global_code: int = 64
    """Length of the baseline's global code (the thesis's SDF-4: 64)."""
    global_layers: int = 8
    """Linear layers of the baseline's decoder (DeepSDF: 8, the input joined again at the fourth)."""
    global_width: int = 0
    """Hidden width of the baseline's decoder; 0: the width that gives it LGCL-Cheb's parameter count (net plus
    codes) for this template size."""

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, not {self.kernel!r}")
        if not 4 <= self.template_vertices <= MAX_TEMPLATE:
            raise ValueError(f"template_vertices must be from 4 to {MAX_TEMPLATE:,}, not {self.template_vertices}")
        if not self.g2l_channels or min(self.g2l_channels) < 1:
            raise ValueError(f"g2l_channels must be positive channel counts, not {self.g2l_channels}")
        for name in ("vertex_code", "kernel_size", "decoder_width", "global_code"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if not self.decoder_layers >= 2:
            raise ValueError(f"decoder_layers must be at least 2, not {self.decoder_layers}")
        if not self.global_layers >= 2:
            raise ValueError(f"global_layers must be at least 2, not {self.global_layers}")
        if not self.correction_bound >= 0:
            raise ValueError(f"correction_bound must be 0 (unbounded) or positive, not {self.correction_bound}")
        if not (self.global_width == 0 or self.global_width >= self.global_code + 4):
            raise ValueError(f"global_width must be 0 (sized to LGCL) or at least global_code + 4 (the layer before "
                             f"the skip joins the input to it), not {self.global_width}")

    def to_dict(self) -> dict:
        return asdict(self)


class SdfDecoder(nn.Module):
    """MLP (N, code + 3) -> (N,) signed distance, Softplus(beta 100) between layers, the input joined again at
    layer `skip` (None: never). With a `radius`, SAL's geometric initialisation to the sphere |x| - radius with the
    code's weights zero (so every code starts as the same sphere); without, a zero last layer (the decoder starts
    as 0, for a correction to another field)."""

    def __init__(self, code: int, width: int, layers: int, radius: float | None, skip: int | None = None):
        super().__init__()
        n_in = code + 3
        self.skip = skip
        dims = [n_in] + [width] * (layers - 1) + [1]
        self.layers = nn.ModuleList()
        for i in range(layers):
            out = dims[i + 1] - n_in if skip is not None and i + 1 == skip else dims[i + 1]
            linear = nn.Linear(dims[i], out)
            if i == layers - 1 and radius is None:
                nn.init.zeros_(linear.weight)
                nn.init.zeros_(linear.bias)
            elif i == layers - 1:
                nn.init.normal_(linear.weight, mean=math.sqrt(math.pi) / math.sqrt(dims[i]), std=1e-6)
                nn.init.constant_(linear.bias, -radius)
            else:
                nn.init.normal_(linear.weight, 0.0, math.sqrt(2) / math.sqrt(out))
                nn.init.zeros_(linear.bias)
                if i == 0 or (skip is not None and i == skip):
                    linear.weight.data[:, -n_in:-3] = 0.0  # the code's inputs
            self.layers.append(linear)
        self.activation = nn.Softplus(beta=100)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        h = inputs
        for i, layer in enumerate(self.layers):
            if self.skip is not None and i == self.skip:
                h = torch.cat([h, inputs], -1) / math.sqrt(2)
            h = layer(h)
            if i < len(self.layers) - 1:
                h = self.activation(h)
        return h[:, 0]


class LgclNet(nn.Module):
    """Local geometry codes on a template graph. forward((N, 3) normalised points, (N,) region indices,
    (V, C) local codes) -> (N,) normalised signed distances."""

    def __init__(self, config: SdfConfig, graph: TemplateGraph):
        super().__init__()
        self.config = config
        self.codes = nn.Parameter(torch.randn(graph.num_vertices, config.vertex_code) * 0.1)  # z^G, split per vertex
        conv = ChebConv if config.kernel == "cheb" else VertexConv
        channels = [config.vertex_code] + list(config.g2l_channels)
        self.g2l = nn.ModuleList(conv(graph, a, b, config.kernel_size) for a, b in zip(channels, channels[1:]))
        self.register_buffer("key_points", torch.from_numpy(graph.vertices), persistent=False)
        self.register_buffer("frames", torch.from_numpy(graph.tangent_frames()), persistent=False)
        self.local_scale = graph.mean_edge_length()
        """Unit of the local frames (the template's mean edge length): T_i(x) = R_i (x - p_i) / local_scale."""
        self.decoder = SdfDecoder(channels[-1], config.decoder_width, config.decoder_layers, None)

    def local_codes(self) -> torch.Tensor:
        """(V, C) z^L = G2L(z^G)."""
        h = self.codes
        for i, layer in enumerate(self.g2l):
            h = layer(h)
            if i < len(self.g2l) - 1:
                h = nn.functional.elu(h)
        return h

    def forward(self, points: torch.Tensor, regions: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        local = torch.einsum("nij,nj->ni", self.frames[regions], points - self.key_points[regions]) / self.local_scale
        correction = self.decoder(torch.cat([codes[regions], local], -1))
        bound = self.config.correction_bound
        if bound > 0:
            correction = bound * torch.tanh(correction / bound)
        return (local[:, 2] + correction) * self.local_scale

    def latent_parameters(self) -> int:
        return self.codes.numel()


class DeepSdfNet(nn.Module):
    """One global code and a DeepSDF-style decoder. Same call as LgclNet; the regions are ignored."""

    def __init__(self, config: SdfConfig, width: int):
        super().__init__()
        self.config = config
        self.codes = nn.Parameter(torch.randn(1, config.global_code) * 0.1)
        self.decoder = SdfDecoder(config.global_code, width, config.global_layers, INIT_RADIUS,
                                  skip=config.global_layers // 2)

    def local_codes(self) -> torch.Tensor:
        return self.codes

    def forward(self, points: torch.Tensor, regions: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([codes.expand(len(points), -1), points], -1))

    def latent_parameters(self) -> int:
        return self.codes.numel()


def count_parameters(net: LgclNet | DeepSdfNet) -> dict:
    """{"net": network weights, "latent": codes} as Table 2.2 lists them."""
    latent = net.latent_parameters()
    return {"net": sum(p.numel() for p in net.parameters()) - latent, "latent": latent}


def lgcl_cheb_parameters(config: SdfConfig, vertices: int) -> int:
    """Parameters (net + codes) of LGCL-Cheb with this config on a template of `vertices` key points."""
    channels = [config.vertex_code] + list(config.g2l_channels)
    g2l = sum(config.kernel_size * a * b + b for a, b in zip(channels, channels[1:]))
    return vertices * config.vertex_code + g2l + _decoder_parameters(channels[-1], config.decoder_width,
                                                                     config.decoder_layers, None)


def _decoder_parameters(code: int, width: int, layers: int, skip: int | None) -> int:
    return sum(p.numel() for p in SdfDecoder(code, width, layers, 1.0, skip).parameters())


def sdf_budget_width(config: SdfConfig, vertices: int) -> int:
    """The baseline decoder width whose parameters (net + global code) come closest to LGCL-Cheb's."""
    target = lgcl_cheb_parameters(config, vertices)
    skip = config.global_layers // 2
    total = lambda w: _decoder_parameters(config.global_code, w, config.global_layers, skip) + config.global_code  # noqa: E731
    low, high = config.global_code + 4, 4096
    while high - low > 1:  # the count grows with the width
        mid = (low + high) // 2
        low, high = (mid, high) if total(mid) <= target else (low, mid)
    return min((low, high), key=lambda w: abs(total(w) - target))


def build_net(config: SdfConfig, graph: TemplateGraph) -> LgclNet | DeepSdfNet:
    """The network `config` describes, on `graph` (LGCL) or sized by it (the baseline)."""
    if config.method == "lgcl":
        return LgclNet(config, graph)
    return DeepSdfNet(config, config.global_width or sdf_budget_width(config, graph.num_vertices))


@dataclass
class Normalisation:
    """world = normalised * scale + centre: the shape's bounding-box centre (3,) and farthest-vertex distance."""

    centre: np.ndarray
    scale: float

    @classmethod
    def of(cls, vertices: np.ndarray) -> "Normalisation":
        centre = (vertices.min(0) + vertices.max(0)) / 2
        return cls(centre.astype(np.float64), float(np.linalg.norm(vertices - centre, axis=1).max()))

    def to_model(self, points: np.ndarray) -> np.ndarray:
        return ((points - self.centre) / self.scale).astype(np.float32)

    def to_world(self, points: np.ndarray) -> np.ndarray:
        return points * self.scale + self.centre


class SdfModel:
    """A fitted signed-distance model: the network, its template graph (key points, edges), the normalisation and
    the record of its fitting."""

    def __init__(self, net: LgclNet | DeepSdfNet, graph: TemplateGraph, normalisation: Normalisation,
                 training: dict | None = None):
        self.net, self.graph, self.normalisation = net.eval(), graph, normalisation
        self.training = training or {}
        self._tree = cKDTree(graph.vertices)

    @property
    def config(self) -> SdfConfig:
        return self.net.config

    @property
    def name(self) -> str:
        if self.config.method == "deepsdf":
            return "DeepSDF"
        return "LGCL-Cheb" if self.config.kernel == "cheb" else "LGCL-VC"

    def key_point_distance(self, points: np.ndarray) -> np.ndarray:
        """(N,) distance of each normalised point (N, 3) to its nearest key point (normalised units)."""
        return self._tree.query(points, k=1, workers=-1)[0]

    def regions(self, points: np.ndarray) -> np.ndarray:
        """(N,) int64 index of the key point nearest to each normalised point (N, 3): its region (Eq. 2.3)."""
        return self._tree.query(points, k=1, workers=-1)[1].astype(np.int64)

    @torch.no_grad()
    def sdf_normalised(self, points: np.ndarray) -> np.ndarray:
        """(N,) float32 signed distances of normalised points (N, 3), in normalised units."""
        codes = self.net.local_codes()
        out = np.empty(len(points), dtype=np.float32)
        for i in range(0, len(points), QUERY_CHUNK):
            chunk = np.ascontiguousarray(points[i:i + QUERY_CHUNK], dtype=np.float32)
            out[i:i + len(chunk)] = self.net(torch.from_numpy(chunk), torch.from_numpy(self.regions(chunk)),
                                             codes).numpy()
        return out

    def sdf(self, points: np.ndarray) -> np.ndarray:
        """(N,) float32 signed distances (the mesh's units; negative inside) of world points (N, 3)."""
        return self.sdf_normalised(self.normalisation.to_model(points)) * np.float32(self.normalisation.scale)

    def parameters(self) -> dict:
        return count_parameters(self.net)

    def save(self, path: str | Path) -> None:
        """Model file: fp32 safetensors (weights, key points, edges) plus JSON metadata (config, normalisation,
        fitting record), written atomically."""
        from safetensors.torch import save_file

        tensors = {f"net.{k}": v.detach().contiguous() for k, v in self.net.state_dict().items()}
        tensors["template.vertices"] = torch.from_numpy(self.graph.vertices)
        tensors["template.edges"] = torch.from_numpy(self.graph.edges)
        tensors["template.normals"] = torch.from_numpy(self.graph.normals)
        metadata = {"format": SDF_FORMAT, "format_version": FORMAT_VERSION, "sceneloc_version": __version__,
                    "config": self.config.to_dict(),
                    "normalisation": {"centre": self.normalisation.centre.tolist(),
                                      "scale": self.normalisation.scale},
                    "training": self.training}
        save_map_file(path, tensors, metadata, save_file)


def load_sdf_model(path: str | Path) -> SdfModel:
    """The model in `path` (from `sceneloc sdf fit`); InputError for anything else."""
    from safetensors.torch import load_file

    from sceneloc.runtime.errors import InputError

    tensors, meta = load_map_file(path, "SDF model", SDF_FORMAT, FORMAT_VERSION, load_file)
    config = config_from_metadata(path, SdfConfig, metadata_field(path, meta, "config", dict), "config")
    centre = metadata_field(path, meta, "normalisation.centre", list)
    scale = metadata_field(path, meta, "normalisation.scale", (int, float))
    try:
        config.validate()
        graph = TemplateGraph(tensors.pop("template.vertices").numpy().astype(np.float32),
                              tensors.pop("template.edges").numpy().astype(np.int64),
                              tensors.pop("template.normals").numpy().astype(np.float32))
        if len(centre) != 3 or not all(isinstance(c, (int, float)) for c in centre) or not scale > 0:
            raise ValueError("bad normalisation")
        net = build_net(config, graph)
        net.load_state_dict({k.removeprefix("net."): v for k, v in tensors.items()})
    except (KeyError, ValueError, RuntimeError) as e:
        raise InputError(path, f"SDF model does not match its config ({str(e).splitlines()[0]})") from None
    training = meta.get("training") if isinstance(meta.get("training"), dict) else {}
    return SdfModel(net, graph, Normalisation(np.asarray(centre, dtype=np.float64), float(scale)), training)
