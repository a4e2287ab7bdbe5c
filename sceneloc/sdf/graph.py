"""The template graph of LGCL (thesis section 2.3.2) and the two graph convolutions of its G2L network.

- TemplateGraph: the key points (the template mesh's vertices) and its edges, with what the convolutions and the
  similarity loss need: the scaled Laplacian, padded neighbour tables, and the k-ring neighbourhoods.
- ChebConv: the Chebyshev spectral convolution COMA uses (the thesis's LGCL-Cheb): y = sum_k T_k(L~) x W_k + b with
  the recurrence T_0 = x, T_1 = L~ x, T_k = 2 L~ T_{k-1} - T_{k-2} on the scaled normalised Laplacian.
- VertexConv: the spatially varying convolution of FCM (the thesis's LGCL-VC): every vertex mixes its one-ring with
  its own kernels W_ij = sum_m a_ijm B_m drawn from M shared weight bases B_m. FCM learns a coefficient vector a_ij
  per vertex and neighbour (V x degree x M parameters); our compact form (the thesis too re-implemented the kernels
  "in a more compact form", Table 2.1 counts only the bases) computes a_ij from the neighbour's offset p_j - p_i by
  a small MLP, so the coefficients still vary over the surface but cost a few hundred parameters.

Written by hand: both are a dozen lines over torch sparse products, where PyTorch Geometric (which has ChebConv
but not vcConv) would add a dependency tree for them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class TemplateGraph:
    """Key points and the edges between them.

    vertices: (V, 3) float32 key-point positions (the model's normalised frame).
    edges: (E, 2) int64 undirected edges i < j, each once.
    normals: (V, 3) float32 unit vertex normals (outward for a consistently oriented mesh)."""

    vertices: np.ndarray
    edges: np.ndarray
    normals: np.ndarray

    @classmethod
    def from_triangles(cls, vertices: np.ndarray, triangles: np.ndarray) -> "TemplateGraph":
        """The graph of a triangle mesh: (V, 3) vertices, (F, 3) triangles -> its unique edges and its vertex
        normals (Open3D's, from the adjacent triangles)."""
        from sceneloc.evaluate.cloud import legacy_mesh

        tri = np.asarray(triangles, dtype=np.int64)
        pairs = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
        pairs = np.unique(np.sort(pairs, axis=1), axis=0)
        mesh = legacy_mesh(vertices, tri)
        mesh.compute_vertex_normals()
        return cls(np.asarray(vertices, dtype=np.float32), pairs[pairs[:, 0] != pairs[:, 1]],
                   np.asarray(mesh.vertex_normals, dtype=np.float32))

    def tangent_frames(self) -> np.ndarray:
        """(V, 3, 3) float32 rotations whose rows are two tangents and the normal: R_i (x - p_i) has the height
        above key point i's tangent plane as its last coordinate."""
        n = self.normals / np.maximum(np.linalg.norm(self.normals, axis=1, keepdims=True), 1e-12)
        helper = np.where(np.abs(n[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
        t1 = np.cross(n, helper)
        t1 /= np.linalg.norm(t1, axis=1, keepdims=True)
        return np.stack([t1, np.cross(n, t1), n], axis=1).astype(np.float32)

    def mean_edge_length(self) -> float:
        """The edges' mean length (the vertices' units); 1 for a graph without edges."""
        e = self.edges
        return float(np.linalg.norm(self.vertices[e[:, 0]] - self.vertices[e[:, 1]], axis=1).mean()) if len(e) else 1.0

    @property
    def num_vertices(self) -> int:
        return len(self.vertices)

    def adjacency(self) -> torch.Tensor:
        """(V, V) sparse float32 symmetric 0/1 adjacency."""
        e = torch.from_numpy(self.edges)
        index = torch.cat([e, e.flip(1)]).T
        return torch.sparse_coo_tensor(index, torch.ones(index.shape[1]), (self.num_vertices,) * 2,
                                       check_invariants=True).coalesce()

    def degrees(self) -> np.ndarray:
        """(V,) int64 neighbour counts."""
        return np.bincount(self.edges.ravel(), minlength=self.num_vertices)

    def scaled_laplacian(self) -> torch.Tensor:
        """(V, V) sparse L~ = 2 L / lambda_max - I with L = I - D^-1/2 A D^-1/2 and lambda_max taken as 2 (COMA's
        choice), i.e. L~ = -D^-1/2 A D^-1/2; isolated vertices get a zero row."""
        a = self.adjacency()
        d = torch.from_numpy(self.degrees().astype(np.float32)).clamp(min=1).rsqrt()
        i, j = a.indices()
        return torch.sparse_coo_tensor(a.indices(), -d[i] * d[j], a.shape, check_invariants=True).coalesce()

    def neighbour_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(V, 1 + max degree) int64 indices of each vertex itself then its neighbours, padded with the vertex
        itself, and the (V, 1 + max degree) bool mask of the real entries."""
        v = self.num_vertices
        lists = [[i] for i in range(v)]
        for i, j in self.edges:
            lists[i].append(int(j))
            lists[j].append(int(i))
        width = max(len(n) for n in lists)
        table = torch.tensor([n + [n[0]] * (width - len(n)) for n in lists], dtype=torch.int64)
        mask = torch.tensor([[True] * len(n) + [False] * (width - len(n)) for n in lists])
        return table, mask

    def ring_averagers(self, rings: int) -> list[torch.Tensor]:
        """For k = 1..rings, the (V, V) sparse row-normalised operator averaging over each vertex's k-ring: the
        vertices exactly k edges away (Eq. 2.7's N_k(i)). A vertex with an empty k-ring averages itself."""
        adjacency = self.adjacency().to_dense()  # dense (V, V): templates have a few thousand vertices
        reached = torch.eye(self.num_vertices, dtype=torch.bool)
        frontier = reached.clone()
        out = []
        for _ in range(rings):
            grown = (frontier.float() @ adjacency) > 0
            ring = grown & ~reached
            reached |= ring
            frontier = ring
            empty = ~ring.any(1)
            weights = ring.float()
            weights[empty, torch.nonzero(empty).ravel()] = 1.0
            weights = weights / weights.sum(1, keepdim=True)
            out.append(weights.to_sparse().coalesce())
        return out


class ChebConv(nn.Module):
    """Chebyshev graph convolution of order `k` (k matrices of in x out): (V, in) -> (V, out)."""

    def __init__(self, graph: TemplateGraph, n_in: int, n_out: int, k: int):
        super().__init__()
        self.register_buffer("laplacian", graph.scaled_laplacian(), persistent=False)
        self.weight = nn.Parameter(torch.empty(k, n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))
        nn.init.xavier_uniform_(self.weight.view(k * n_in, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        terms = [x]
        if len(self.weight) > 1:
            terms.append(torch.sparse.mm(self.laplacian, x))
        while len(terms) < len(self.weight):
            terms.append(2 * torch.sparse.mm(self.laplacian, terms[-1]) - terms[-2])
        return torch.einsum("kvi,kio->vo", torch.stack(terms), self.weight) + self.bias


class VertexConv(nn.Module):
    """Spatially varying one-ring convolution with `bases` shared weight bases (in x out): (V, in) -> (V, out).
    y_i = mean over j in {i} + N(i) of sum_m a_m(p_j - p_i) x_j B_m, the coefficients a from a (3 -> 16 -> bases)
    MLP of the offset in units of the mean edge length."""

    def __init__(self, graph: TemplateGraph, n_in: int, n_out: int, bases: int):
        super().__init__()
        table, mask = graph.neighbour_table()
        p = torch.from_numpy(graph.vertices)
        offsets = (p[table] - p[:, None]) / graph.mean_edge_length()
        self.register_buffer("table", table, persistent=False)
        self.register_buffer("weights", mask.float() / mask.sum(1, keepdim=True), persistent=False)
        self.register_buffer("offsets", offsets, persistent=False)
        self.coefficients = nn.Sequential(nn.Linear(3, 16), nn.ELU(), nn.Linear(16, bases))
        self.basis = nn.Parameter(torch.empty(bases, n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))
        nn.init.xavier_uniform_(self.basis.view(bases * n_in, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.coefficients(self.offsets) * self.weights[..., None]  # (V, N, M)
        per_basis = torch.einsum("vi,mio->vmo", x, self.basis)  # (V, M, out): x_j B_m for every j
        return torch.einsum("vnm,vnmo->vo", a, per_basis[self.table]) + self.bias
