"""The learned distinctiveness scorer of structure maps (scores.py's kind "learned"): a small MLP over a point's
features, its file format, and the copy shipped with the package (trained by train_scores.py; card:
DISTINCTIVENESS.md beside it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from sceneloc import __version__
from sceneloc.mapping.structure.scores import FEATURE_NAMES

SHIPPED_MODEL = Path(__file__).with_name("distinctiveness.safetensors")
MODEL_FORMAT = "sceneloc-distinctiveness"
MODEL_FORMAT_VERSION = 1


class DistinctivenessNet(nn.Module):
    """features (P, F) -> (P,) logits of the probability that a query seeing the point matches it correctly.
    Inputs are standardised by the training set's mean and std (buffers saved with the weights)."""

    def __init__(self, n_features: int = len(FEATURE_NAMES), width: int = 32):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.mlp = nn.Sequential(nn.Linear(n_features, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, 1))
        self.width = width

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp((features - self.mean) / self.std).squeeze(-1)

    @torch.no_grad()
    def reliability(self, features: np.ndarray) -> np.ndarray:
        """(P, F) float32 -> (P,) float64 probabilities, in fp32 whatever the stored precision."""
        net = self.float().eval()
        return torch.sigmoid(net(torch.from_numpy(np.ascontiguousarray(features, np.float32)))).double().numpy()


def save_scorer(path: str | Path, net: DistinctivenessNet, training: dict) -> None:
    """fp16 safetensors weights (the standardisation in fp32) plus JSON metadata (format, width, features,
    how it was trained), written atomically."""
    from safetensors.torch import save_file

    from sceneloc.maps.files import save_map_file

    tensors = {k: (v.float() if k in ("mean", "std") else v.half()).detach().contiguous()
               for k, v in net.state_dict().items()}
    metadata = {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "sceneloc_version": __version__,
                "width": net.width, "features": list(FEATURE_NAMES), "training": training}
    save_map_file(path, tensors, metadata, save_file)


def load_scorer(path: str | Path = SHIPPED_MODEL) -> DistinctivenessNet:
    """The distinctiveness model in `path` (default: the one shipped); InputError for anything else."""
    from safetensors.torch import load_file

    from sceneloc.maps.files import load_map_file, metadata_field
    from sceneloc.runtime.errors import InputError

    tensors, meta = load_map_file(path, "distinctiveness model", MODEL_FORMAT, MODEL_FORMAT_VERSION, load_file)
    if metadata_field(path, meta, "features", list) != list(FEATURE_NAMES):
        raise InputError(path, f"was trained on other point features than {', '.join(FEATURE_NAMES)}")
    net = DistinctivenessNet(len(FEATURE_NAMES), metadata_field(path, meta, "width", int))
    try:
        net.load_state_dict({k: v.float() for k, v in tensors.items()})
    except RuntimeError as error:
        raise InputError(path, f"weights do not fit the model: {str(error).splitlines()[0]}") from None
    return net
