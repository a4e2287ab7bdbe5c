"""Semantic segmentation metrics: the confusion matrix, IoU per class and their mean (mIoU) over the classes of
data/synthetic/room.SEMANTIC_CLASSES, for 2D label maps (a segmentation model's pixels against a renderer's) and
for labelled meshes (a reconstruction's vertices against the class of the nearest ground-truth triangle)."""

from __future__ import annotations

import numpy as np
import open3d as o3d

from sceneloc.data.synthetic.room import SEMANTIC_CLASSES


def confusion_matrix(predicted: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts, rows the true class, columns the predicted one, over the elements whose true label is a
    class (UNLABELLED and anything >= K are left out). predicted, truth: integer arrays of one shape."""
    keep = truth < num_classes
    pairs = truth[keep].astype(np.int64) * num_classes + predicted[keep].astype(np.int64)
    return np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def class_iou(confusion: np.ndarray) -> np.ndarray:
    """(K,) intersection over union per class from a confusion matrix; NaN for a class neither present nor
    predicted."""
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def segmentation_scores(confusion: np.ndarray) -> dict:
    """{"miou": mean IoU over the classes present, "accuracy" (the share of elements labelled right), "iou":
    {class: IoU or None}}."""
    iou = class_iou(confusion)
    return {"miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
            "accuracy": float(np.trace(confusion) / max(confusion.sum(), 1)),
            "iou": {name: (None if np.isnan(v) else float(v)) for name, v in zip(SEMANTIC_CLASSES, iou)}}


def triangle_labels(mesh: o3d.t.geometry.TriangleMesh, vertex_labels: np.ndarray) -> np.ndarray:
    """(T,) label of each triangle of a mesh labelled per vertex: the label two or three of its vertices share,
    else its first vertex's."""
    per_vertex = vertex_labels[mesh.triangle.indices.numpy()]
    a, b, c = per_vertex.T
    return np.where((b == c) & (a != b), b, a)


def mesh_semantic_scores(positions: np.ndarray, labels: np.ndarray, truth: o3d.t.geometry.TriangleMesh,
                         truth_labels: np.ndarray, tau: float) -> dict:
    """segmentation_scores of the vertices (V, 3) of a reconstruction labelled `labels` (V,) against the label of
    the truth triangle nearest each (truth_labels: the truth's labels per vertex), over the vertices within tau
    metres of the truth (the others are not on any true surface: accuracy and completeness measure them); plus
    "n_vertices_scored"."""
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(truth)
    closest = scene.compute_closest_points(o3d.core.Tensor(np.ascontiguousarray(positions, np.float32)))
    distance = np.linalg.norm(closest["points"].numpy() - positions, axis=1)
    near = distance <= tau
    truth_of = triangle_labels(truth, truth_labels)[closest["primitive_ids"].numpy()[near]]
    confusion = confusion_matrix(labels[near], truth_of, len(SEMANTIC_CLASSES))
    return {**segmentation_scores(confusion), "n_vertices_scored": int(near.sum())}
