"""SCINR: one scene-coordinate head for many scenes (scene-conditional implicit neural regression, thesis ch. 4).

Per feature row i of scene n:
    D_n                      learned scene embedding (n_scenes, d)
    Theta_n = H(D_n)         hypernet: per-scene parameters of the SCRA layers            (eq. 4.5)
    z_i = f_A(f_i; Theta_n)  SCRA: encoder feature -> latent code
    gamma(x_i)               positional encoding of the pixel position, L frequencies     (eq. 4.3)
    alpha_0 = m_0(z_i), h_0 = alpha_0 * s_0(gamma(x_i)),
    alpha_{l+1} = m_l(alpha_l, z_i), h_{l+1} = alpha_{l+1} * s_l(h_l)                      (eq. 4.7)
    y_i = dehomogenise(out(h_L)) + mean + Delta y_n,  Delta y_n = a_n + f_C(D_n)          (eq. 4.8)
with `mean` the one global offset and a_n a fixed anchor per scene (see ScinrHead).

Hypernet choice: generating full w x w SCRA weights from D_n would make H's last layer d x w^2 per layer
(16.8 M parameters for d = 64, w = 512). H instead generates, per SCRA layer, a rank-r update U_n V_n^T of a shared
weight plus a per-channel gain and shift (FiLM) of its output: 2 w r + 2 w numbers per layer. The shared weight
carries what all scenes have in common, the generated part what is scene-specific, and a batch mixing scenes still
costs dense matrix products only (the low-rank part is computed for all scenes at once and masked).

Each `use_*` flag of ScinrConfig switches one module off for the paper's ablation (Table 4.4); its parameters are
then absent, not merely unused."""

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
    scra_rank: int = 4
    """Rank r of the per-scene weight update U_n V_n^T the hypernet generates for each SCRA layer (0: per-channel
    gain and shift only)."""
    hypernet_width: int = 64
    """Hidden width of the hypernet H."""
    num_modulation_layers: int = 3
    """Layers of the synthesis branch s (and of the modulator m), or of the plain MLP replacing them."""
    modulation_width: int = 256
    """Width of the synthesis branch and the modulator."""
    pe_frequencies: int = 6
    """L: frequencies 2^0 .. 2^(L-1) (times pi) of the positional encoding of the normalised pixel position."""
    complement_width: int = 64
    """Hidden width of the complement module f_C."""
    use_scra: bool = True
    """Condition f_A on the scene through the hypernet; off: f_A is the same layers, shared by all scenes."""
    use_modulation: bool = True
    """Synthesis branch modulated by the latent codes; off: a plain MLP on [z_i, gamma(x_i)]."""
    use_positional_encoding: bool = True
    """Encode the pixel position with sines and cosines; off: the raw normalised position (2 numbers)."""
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
        for name in ("scra_rank", "pe_frequencies"):
            if getattr(self, name) < 0:
                raise ValueError(f"model.{name} must be at least 0, got {getattr(self, name)}")
        if self.use_positional_encoding and self.pe_frequencies < 1:
            raise ValueError("model.pe_frequencies must be at least 1 with use_positional_encoding")
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

    Layer l computes relu((W x + b + U_n V_n^T x) * (1 + g_n) + beta_n) with (U_n, V_n, g_n, beta_n) = H(D_n)."""

    def __init__(self, in_channels: int, config: ScinrConfig):
        super().__init__()
        w, r = config.width, config.scra_rank
        self.width, self.rank = w, r
        self.input_layer = nn.Linear(in_channels, w)
        self.layers = nn.ModuleList(nn.Linear(w, w) for _ in range(config.num_scra_layers))
        self.per_layer = 2 * w * r + 2 * w
        self.hypernet = nn.Sequential(nn.Linear(config.embedding_dim, config.hypernet_width), nn.ReLU(),
                                      nn.Linear(config.hypernet_width, self.per_layer * config.num_scra_layers))
        # Generated parameters start small, so every scene begins close to the shared layers and the scenes separate
        # as training finds it useful; they still differ from the start, so the embeddings get gradients.
        with torch.no_grad():
            self.hypernet[-1].weight.mul_(0.1)
            self.hypernet[-1].bias.zero_()

    def forward(self, features: torch.Tensor, scene: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        n, w, r = len(embeddings), self.width, self.rank
        theta = self.hypernet(embeddings)  # (n_scenes, per_layer * layers): Theta_n for every scene at once
        mask = F.one_hot(scene, n).to(theta.dtype)[:, :, None] if r else None  # (N, n_scenes, 1)
        x = F.relu(self.input_layer(features))
        y = x
        for l, layer in enumerate(self.layers):
            p = theta[:, l * self.per_layer:(l + 1) * self.per_layer]
            out = layer(y)
            if r:
                v = p[:, :w * r].reshape(n, w, r) / math.sqrt(w)
                u = p[:, w * r:2 * w * r].reshape(n, r, w) / math.sqrt(r)
                # Projections onto every scene's V, masked to the row's own scene, then one product with all U.
                t = (y @ v.permute(1, 0, 2).reshape(w, n * r)).reshape(-1, n, r) * mask
                out = out + t.reshape(-1, n * r) @ u.reshape(n * r, w)
            gain, shift = p[:, 2 * w * r:2 * w * r + w], p[:, 2 * w * r + w:]
            y = F.relu(out * (1 + gain[scene]) + shift[scene])
        return x + y


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
    """f_M without modulation (ablation): an MLP on [z, encoded position] with the same depth and width."""

    def __init__(self, position_dim: int, config: ScinrConfig):
        super().__init__()
        mw = config.modulation_width
        self.layers = nn.ModuleList([nn.Linear(config.width + position_dim, mw)]
                                    + [nn.Linear(mw, mw) for _ in range(config.num_modulation_layers - 1)])

    def forward(self, z: torch.Tensor, encoded_position: torch.Tensor) -> torch.Tensor:
        h = torch.cat([z, encoded_position], 1)
        for layer in self.layers:
            h = F.relu(layer(h))
        return h


class ScinrHead(nn.Module):
    """features (N, C), normalised pixel positions (N, 2) (see `normalised_positions`), scene index (N,) int64 ->
    world scene coordinates (N, 3), all scenes in one global frame.

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
        position_dim = 4 * config.pe_frequencies if config.use_positional_encoding else 2
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

    def forward(self, features: torch.Tensor, positions: torch.Tensor, scene: torch.Tensor) -> torch.Tensor:
        if self.config.use_scra:
            z = self.adjust(features, scene, self.embeddings)
        else:
            z = self.adjust(features)
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
