"""Localization off the event loop: a fixed set of threads, each with its own Localizer per (map, scene), behind an
admission limit, so that a burst of requests is answered or refused at once instead of piling up in memory.

Threads rather than processes: the maps are loaded once and shared read-only, and the work releases the GIL
(torch's kernels, pycolmap's SIFT, poselib's RANSAC). Each thread keeps its own predictor because predictors hold
per-image state (SIFT extractors, scratch buffers)."""

from __future__ import annotations

import io
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from sceneloc.api import AnyMap, Localizer
from sceneloc.data.scene import Undistortion, read_image, undistort
from sceneloc.geometry import Camera
from sceneloc.localize.estimate import PoseEstimate
from sceneloc.localize.loop import LocalizeConfig


@dataclass
class LocalizeJob:
    """One image to localize: the uploaded bytes and the camera they were taken with."""

    map_name: str
    scene: str | None
    """For a multi-scene map: the scene name or "auto"; None for other maps."""
    image: bytes
    """The encoded image (JPEG or PNG) as uploaded."""
    camera: Camera
    """Pinhole camera of the undistorted image."""
    undistortion: Undistortion | None
    name: str
    """What the estimate and messages call the image."""
    deadline: float
    """time.monotonic() after which the job is not started (its client has been answered 504)."""


class Expired(Exception):
    """A job taken from the queue after its deadline: not run."""


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class LocalizationPool:
    """`threads` localization threads over `maps`; at most threads + queue_size jobs admitted at a time."""

    def __init__(self, maps: dict[str, AnyMap], config: LocalizeConfig, threads: int, queue_size: int):
        self.maps = maps
        self.config = config
        self.threads = threads
        self.capacity = threads + queue_size
        self._executor = ThreadPoolExecutor(threads, "sceneloc-localize")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._admitted = 0
        self._running = 0
        # The loop sets torch's threads to network_threads around each image and restores the count it found;
        # starting from the same count keeps concurrent images from restoring each other's (ServeConfig refuses 0).
        torch.set_num_threads(config.network_threads)

    @property
    def running(self) -> int:
        """Jobs being localized now."""
        return self._running

    @property
    def waiting(self) -> int:
        """Jobs admitted and not started yet (the queue depth)."""
        return self._admitted - self._running

    @property
    def full(self) -> bool:
        """Whether a job submitted now would be refused."""
        return self._admitted >= self.capacity

    def submit(self, job: LocalizeJob) -> Future | None:
        """Admit `job` and return the future of its PoseEstimate, or None when the pool is full (or shut down)."""
        with self._lock:
            if self._admitted >= self.capacity:
                return None
            self._admitted += 1
        try:
            future = self._executor.submit(self._run, job)
        except RuntimeError:  # shut down: refused like a full pool, its slot given back
            self._release(None)
            return None
        future.add_done_callback(self._release)
        return future

    def _release(self, _: Future | None) -> None:
        with self._lock:
            self._admitted -= 1

    def _run(self, job: LocalizeJob) -> PoseEstimate:
        with self._lock:
            self._running += 1
        try:
            if time.monotonic() > job.deadline:
                raise Expired(job.name)
            rgb = undistort(read_image(io.BytesIO(job.image), job.name), job.camera, job.undistortion)
            return self._localizer(job.map_name, job.scene).localize(rgb, job.camera, job.name)
        finally:
            with self._lock:
                self._running -= 1

    def _localizer(self, map_name: str, scene: str | None) -> Localizer:
        localizers = self._local.__dict__.setdefault("localizers", {})
        key = (map_name, scene)
        if key not in localizers:
            localizers[key] = Localizer(self.maps[map_name], self.config, scene)
        return localizers[key]

    def shutdown(self) -> None:
        """Stop the threads after the jobs running now; jobs not started are cancelled (at shutdown uvicorn has
        answered every HTTP request already; what is left belongs to streams it has closed)."""
        self._executor.shutdown(wait=True, cancel_futures=True)
