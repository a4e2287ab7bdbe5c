"""SCINR: one scene-coordinate head for many scenes (scene-conditional implicit neural regression, thesis ch. 4).

Per feature row i of scene n:
    D_n                      learned scene embedding (n_scenes, d)
    Theta_n = H(D_n)         hypernet: per-scene parameters of the SCRA layers            (eq. 4.5)
    z_i = f_A(f_i; Theta_n)  SCRA: encoder feature -> latent code
    h_i = MLP(z_i)           the regressor; with use_position the thesis' f_M instead: a synthesis branch over
                             gamma(x_i), the positional encoding of the pixel position (eq. 4.3), modulated by z_i:
                             alpha_0 = m_0(z_i), h_0 = alpha_0 * s_0(gamma(x_i)),
                             alpha_{l+1} = m_l(alpha_l, z_i), h_{l+1} = alpha_{l+1} * s_l(h_l)     (eq. 4.7)
    y_i = dehomogenise(out(h_i)) + mean + Delta y_n,  Delta y_n = a_n + f_C(D_n)          (eq. 4.8)
with `mean` the one global offset and a_n a fixed anchor per scene (see ScinrHead).

Hypernet choice: generating full w x w SCRA weights from D_n would make H's last layer d x w^2 per layer
(16.8 M parameters for d = 64, w = 512). H instead generates, per SCRA layer, K coefficients that mix K learned
full-rank bases into the scene's weight W_n = W + sum_k c_nk B_k (a hypernet producing the weights of a linear
combination, as in the work the thesis cites as [69]), plus a per-channel gain and shift (FiLM) of the output. W
carries what all scenes have in common, the bases give each scene full-rank capacity of its own, and since rows
are grouped by scene a row costs one dense product, as in a single-scene head.

Defaults differ from the thesis where measurements said so (docs/BENCHMARKS.md section 10): no pixel position
(use_position) and hence no modulation, and a 512-wide regressor.

Each `use_*` flag of ScinrConfig switches one module on or off for the paper's ablation (Table 4.4); the parameters
of a module that is off are absent, not merely unused."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


@dataclass
class ScinrConfig:
    """Shape of the SCINR head and which of its modules are on."""

    embedding_dim: int = 64
    """d: length of each learned scene embedding D_n."""
    width: int = 512
    """Width of the SCRA layers and length of the latent codes z_i."""
    num_scra_layers: int = 2
    """Scene-conditioned layers of f_A after its shared input layer (a skip connection spans them)."""
    scra_bases: int = 4
    """K: full-rank weight bases per SCRA layer. The hypernet generates K mixing coefficients c_n per layer and
    scene n's layer adds sum_k c_nk B_k to the shared weight (0: per-channel gain and shift only). Two quick-rooms in
    one head, 5,000 steps each: K = 4 fits them to 16-18 px and localizes 55 % / 48 % of their queries at (5 cm,
    5 deg), a rank-4 update per scene instead 19-22 px and 41 % / 33 % (a single-scene map each: 50 % / 32 %)."""
    hypernet_width: int = 64
    """Hidden width of the hypernet H."""
    num_modulation_layers: int = 3
    """Layers of the synthesis branch s (and of the modulator m), or of the plain MLP replacing them."""
    modulation_width: int = 512
    """Width of the synthesis branch and the modulator, or of the plain MLP (as wide as a single-scene head: 256
    fits one quick-room to 19.6 px and localizes 36 % of its queries at (5 cm, 5 deg), 512 to 14.7 px and 53 %)."""
    pe_frequencies: int = 6
    """L: frequencies 2^0 .. 2^(L-1) (times pi) of the positional encoding of the normalised pixel position."""
    complement_width: int = 64
    """Hidden width of the complement module f_C."""
    use_scra: bool = True
    """Condition f_A on the scene through the hypernet; off: f_A is the same layers, shared by all scenes."""
    use_position: bool = False
    """Give the regressor each row's pixel position x_i, as the thesis does (eq. 4.6). Off by default: a scene
    coordinate does not depend on where in the image a surface appears, and with the position the network fits the
    mapping views as well but carries worse to new viewpoints (one quick-room, 5,000 steps: 15.6 px training error
    and 18 % at (5 cm, 5 deg) with it, 14.7 px and 53 % without; docs/BENCHMARKS.md section 10)."""
    use_modulation: bool = False
    """Synthesis branch over the encoded position, modulated by the latent codes (eq. 4.7; needs use_position);
    off: a plain MLP on z_i (and gamma(x_i) with use_position)."""
    use_positional_encoding: bool = True
    """With use_position: encode the pixel position with sines and cosines; off: the raw normalised position
    (2 numbers)."""
    use_complement: bool = True
    """Add the per-scene coordinate bias Delta y_n = f_C(D_n); off: only the global mean offset."""
    min_inverse_scale: float = 0.01
    """Lower bound of the homogeneous output's w (as HeadConfig): predictions reach 1 / this times the raw output."""
    max_inverse_scale: float = 4.0
    """Upper bound of w."""

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """Raise ValueError naming the first field that cannot work."""
        for name in ("embedding_dim", "width", "num_scra_layers", "hypernet_width", "num_modulation_layers",
                     "modulation_width", "complement_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("scra_bases", "pe_frequencies"):
            if getattr(self, name) < 0:
                raise ValueError(f"model.{name} must be at least 0, got {getattr(self, name)}")
        if self.use_position and self.use_positional_encoding and self.pe_frequencies < 1:
            raise ValueError("model.pe_frequencies must be at least 1 with use_positional_encoding")
        if self.use_modulation and not self.use_position:
            raise ValueError("model.use_modulation needs model.use_position: its synthesis branch runs over the "
                             "pixel position")
        if not 0 < self.min_inverse_scale < self.max_inverse_scale:
            raise ValueError(f"model.min_inverse_scale..max_inverse_scale must be a positive range, got "
                             f"{self.min_inverse_scale}..{self.max_inverse_scale}")


def normalised_positions(pixels: np.ndarray | torch.Tensor, K: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Pixel positions (N, 2) with intrinsics K (3, 3) or (N, 3, 3) -> ((u - cx) / fx, (v - cy) / fy) (N, 2) float32.

    The position is normalised by the camera rather than by the image size: the buffer keeps each augmented frame's
    K but not its size, and this form also gives the same code for the same viewing ray at every resolution and
    augmentation scale (within +-tan(fov / 2), about +-0.6 for a 60-degree lens)."""
    pixels = torch.as_tensor(pixels, dtype=torch.float32)
    K = torch.as_tensor(K, dtype=torch.float32)
    f = torch.stack([K[..., 0, 0], K[..., 1, 1]], -1)
    c = torch.stack([K[..., 0, 2], K[..., 1, 2]], -1)
    return (pixels - c) / f


def positional_encoding(positions: torch.Tensor, frequencies: int) -> torch.Tensor:
    """gamma(x) of eq. 4.3: (N, 2) -> (N, 4 L): sin(2^k pi x) for k < L, then cos(2^k pi x), per coordinate."""
    scales = math.pi * 2.0 ** torch.arange(frequencies, dtype=positions.dtype, device=positions.device)
    angles = (positions[:, :, None] * scales).reshape(len(positions), -1)
    return torch.cat([torch.sin(angles), torch.cos(angles)], 1)


class ScraModule(nn.Module):
    """f_A with hypernet H: features (N, C) + per-row scene index -> latent codes z (N, width).

    Layer l computes relu((W_n x + b) * (1 + g_n) + beta_n) with W_n = W + sum_k c_nk B_k and (c_n, g_n, beta_n)
    = H(D_n): the shared weight W, K full-rank bases B_k of the layer, the hypernet's mixing coefficients c_n and a
    per-channel gain and shift (FiLM)."""

    def __init__(self, in_channels: int, config: ScinrConfig):
        super().__init__()
        w, k = config.width, config.scra_bases
        self.width, self.n_bases = w, k
        self.input_layer = nn.Linear(in_channels, w)
        self.layers = nn.ModuleList(nn.Linear(w, w) for _ in range(config.num_scra_layers))
        if k:
            # One parameter per layer: slicing a stacked tensor would make its backward fill a full-size zero tensor.
            self.bases = nn.ParameterList(nn.Parameter(torch.randn(k, w, w) * (0.1 / math.sqrt(w)))
                                          for _ in range(config.num_scra_layers))
        self.per_layer = 2 * w + k
        self.hypernet = nn.Sequential(nn.Linear(config.embedding_dim, config.hypernet_width), nn.ReLU(),
                                      nn.Linear(config.hypernet_width, self.per_layer * config.num_scra_layers))
        # Generated parameters start small, so every scene begins close to the shared layers and the scenes separate
        # as training finds it useful; they still differ from the start, so the embeddings get gradients.
        with torch.no_grad():
            self.hypernet[-1].weight.mul_(0.1)
            self.hypernet[-1].bias.zero_()

    def forward(self, features: torch.Tensor, scene: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        n, w = len(embeddings), self.width
        theta = self.hypernet(embeddings)  # (n_scenes, per_layer * layers): Theta_n for every scene at once
        # (N, n_scenes): selecting each row's gain and shift by a product with its one-hot scene row is far cheaper
        # to differentiate than indexing (whose backward is a scatter-add).
        one_hot = F.one_hot(scene, n).to(theta.dtype)
        x = F.relu(self.input_layer(features))
        y = x
        for i, layer in enumerate(self.layers):
            p = theta[:, i * self.per_layer:(i + 1) * self.per_layer]
            out = self._grouped_layer(y, scene, layer, p[:, 2 * w:], self.bases[i]) if self.n_bases else layer(y)
            y = F.relu(out * (1 + one_hot @ p[:, :w]) + one_hot @ p[:, w:2 * w])
        return x + y

    @staticmethod
    def _grouped_layer(y: torch.Tensor, scene: torch.Tensor, layer: nn.Linear, coefficients: torch.Tensor,
                       bases: torch.Tensor) -> torch.Tensor:
        """y (N, w) -> y W_n^T + b with W_n = W + sum_k c_nk B_k for each row's scene n: coefficients (n_scenes, K),
        bases (K, w, w). One product per scene on its block of rows (training batches come grouped by scene; other
        rows are sorted first), so a row costs what a shared layer costs."""
        weights = layer.weight + torch.einsum("nk,kow->now", coefficients, bases.to(coefficients.dtype))
        order = None
        if len(scene) > 1 and bool((scene[1:] < scene[:-1]).any()):
            order = torch.argsort(scene, stable=True)
            y, scene = y[order], scene[order]
        counts = torch.bincount(scene, minlength=len(weights)).tolist()
        # unbind, not weights[n]: each indexing's backward would fill a zero tensor of all scenes' weights.
        out = torch.cat([F.linear(block, weight, layer.bias)
                         for weight, block in zip(weights.unbind(0), y.split(counts)) if len(block)])
        return out if order is None else out[torch.argsort(order)]


class SharedAdjust(nn.Module):
    """f_A without SCRA (ablation): the same layers, one set for all scenes."""

    def __init__(self, in_channels: int, config: ScinrConfig):
        super().__init__()
        self.input_layer = nn.Linear(in_channels, config.width)
        self.layers = nn.ModuleList(nn.Linear(config.width, config.width) for _ in range(config.num_scra_layers))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.input_layer(features))
        y = x
        for layer in self.layers:
            y = F.relu(layer(y))
        return x + y


class ModulationModule(nn.Module):
    """f_M of eq. 4.7: synthesis branch s over the encoded position, each layer's output scaled by the modulator's
    alpha_l computed from the latent code (and the previous alpha). (N, width) + (N, P) -> (N, modulation_width)."""

    def __init__(self, position_dim: int, config: ScinrConfig):
        super().__init__()
        mw, w, k = config.modulation_width, config.width, config.num_modulation_layers
        self.synthesis = nn.ModuleList([nn.Linear(position_dim, mw)] + [nn.Linear(mw, mw) for _ in range(k - 1)])
        self.modulator = nn.ModuleList([nn.Linear(w, mw)] + [nn.Linear(mw + w, mw) for _ in range(k - 1)])

    def forward(self, z: torch.Tensor, encoded_position: torch.Tensor) -> torch.Tensor:
        alpha = F.relu(self.modulator[0](z))
        h = alpha * F.relu(self.synthesis[0](encoded_position))
        for s, m in zip(self.synthesis[1:], self.modulator[1:]):
            alpha = F.relu(m(torch.cat([alpha, z], 1)))
            h = alpha * F.relu(s(h))
        return h


class PlainRegressor(nn.Module):
    """f_M without modulation: an MLP on z, or on [z, encoded position] with use_position, with the same depth and
    width."""

    def __init__(self, position_dim: int, config: ScinrConfig):
        super().__init__()
        mw = config.modulation_width
        self.layers = nn.ModuleList([nn.Linear(config.width + position_dim, mw)]
                                    + [nn.Linear(mw, mw) for _ in range(config.num_modulation_layers - 1)])

    def forward(self, z: torch.Tensor, encoded_position: torch.Tensor | None) -> torch.Tensor:
        h = z if encoded_position is None else torch.cat([z, encoded_position], 1)
        for layer in self.layers:
            h = F.relu(layer(h))
        return h


class ScinrHead(nn.Module):
    """features (N, C), normalised pixel positions (N, 2) (see `normalised_positions`; read only with
    use_position), scene index (N,) int64 -> world scene coordinates (N, 3), all scenes in one global frame.

    scene_centres (n_scenes, 3): the mean mapping camera centre of each scene. Their mean is the global offset
    `mean`. The complement bias is Delta y_n = a_n + f_C(D_n), with the anchor a_n fixed to scene n's centre minus
    `mean` and f_C (last layer zero at the start) learning the metre-scale remainder. Learning a 500 m offset
    through f_C's weights instead does not work: AdamW moves every weight by about the learning rate per step, so
    the offset jitters by metres per step (two tiny rooms 1 km apart: median reprojection error 25-37 px after 500
    steps, against 13-17 px for the same rooms 10 m apart). Leave scene_centres None when a state dict is loaded
    next."""

    def __init__(self, in_channels: int, config: ScinrConfig, n_scenes: int,
                 scene_centres: torch.Tensor | None = None):
        super().__init__()
        config.validate()
        if n_scenes < 1:
            raise ValueError(f"a SCINR head needs at least one scene, got {n_scenes}")
        self.config = config
        self.n_scenes = n_scenes
        if config.use_scra or config.use_complement:
            self.embeddings = nn.Parameter(torch.randn(n_scenes, config.embedding_dim))
        self.adjust = ScraModule(in_channels, config) if config.use_scra else SharedAdjust(in_channels, config)
        position_dim = (4 * config.pe_frequencies if config.use_positional_encoding else 2) if config.use_position \
            else 0
        regressor = ModulationModule if config.use_modulation else PlainRegressor
        self.regressor = regressor(position_dim, config)
        self.output_layer = nn.Linear(config.modulation_width, 4)
        centres = torch.zeros(n_scenes, 3) if scene_centres is None else \
            torch.as_tensor(scene_centres, dtype=torch.float32).reshape(n_scenes, 3)
        self.register_buffer("mean", centres.mean(0))
        if config.use_complement:
            self.complement = nn.Sequential(nn.Linear(config.embedding_dim, config.complement_width), nn.ReLU(),
                                            nn.Linear(config.complement_width, 3))
            nn.init.zeros_(self.complement[2].weight)
            nn.init.zeros_(self.complement[2].bias)
            self.register_buffer("anchors", centres - self.mean)

    def scene_offsets(self) -> torch.Tensor:
        """Delta y_n for every scene: (n_scenes, 3) float32 metres (zeros without the complement module)."""
        if not self.config.use_complement:
            return torch.zeros(self.n_scenes, 3, device=self.mean.device)
        with torch.autocast(self.mean.device.type, enabled=False):
            return self.anchors + self.complement(self.embeddings.float())

    @property
    def reads_positions(self) -> bool:
        """True when forward() uses the pixel positions (use_position); otherwise they may be None."""
        return self.config.use_position

    def forward(self, features: torch.Tensor, positions: torch.Tensor | None, scene: torch.Tensor) -> torch.Tensor:
        if self.config.use_scra:
            z = self.adjust(features, scene, self.embeddings)
        else:
            z = self.adjust(features)
        encoded = None
        if self.config.use_position:
            encoded = (positional_encoding(positions, self.config.pe_frequencies)
                       if self.config.use_positional_encoding else positions)
        h = self.regressor(z, encoded)
        # Output layer and offsets in float32: bfloat16 would quantise coordinates to ~0.4 %, i.e. 4 m at 1 km.
        with torch.autocast(features.device.type, enabled=False):
            out = self.output_layer(h.float())
            w = (F.softplus(out[:, 3:4]) + self.config.min_inverse_scale).clamp(max=self.config.max_inverse_scale)
            return out[:, :3] / w + self.mean + self.scene_offsets()[scene]

    def no_decay_parameters(self) -> list[nn.Parameter]:
        """Parameters that tell scenes apart (embeddings, complement): weight decay would pull the scenes' codes and
        biases towards each other."""
        params = [self.embeddings] if hasattr(self, "embeddings") else []
        return params + (list(self.complement.parameters()) if self.config.use_complement else [])
