"""The service's load test (`sceneloc load-test`): a `sceneloc serve` process on a loopback port, driven by 1, 4,
16, ... concurrent HTTP clients for a fixed time each, then by one WebSocket stream at a fixed frame rate, against
the throughput of the in-process localize loop (what `sceneloc localize` runs) on the same map, images and cores.

Every request is counted: answered (200), refused (503 busy, 429 rate, 504 timeout, other codes) or lost (no
HTTP answer at all: a connection error or a client timeout); the server's resident memory is sampled throughout.
Clients honour Retry-After (capped at retry_cap_s), as a real client would. Writes results.json, report.md and
load.png (latency CDF per client count, server memory over time) and server.log.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sceneloc.data import Scene
from sceneloc.runtime.atomic import write_text_atomic
from sceneloc.runtime.errors import InputError
from sceneloc.runtime.memory import rss_mb


@dataclass
class LoadTestConfig:
    """What the load test runs."""

    clients: list[int] = field(default_factory=lambda: [1, 4, 16])
    """Concurrent HTTP clients of each phase."""
    seconds: float = 60.0
    """Length of each HTTP phase."""
    stream_seconds: float = 30.0
    """Length of the stream phase (0: none)."""
    stream_fps: float = 30.0
    """Frames per second the stream client sends (JPEG, quality 90)."""
    warmup_requests: int = 8
    """Requests before the first phase (the threads' first images build their predictors)."""
    max_requests: int = 200_000
    """Bound on the requests of one phase, whatever its time."""
    client_timeout_s: float = 60.0
    """A client gives up on a request after this long (counted as lost)."""
    retry_cap_s: float = 0.25
    """Longest a client waits after a 503/429 before its next request (Retry-After, capped)."""
    baseline_images: int = 200
    """Images the in-process baseline localizes (the query frames, cycled)."""
    serve_args: list[str] = field(default_factory=list)
    """Extra arguments of `sceneloc serve` (e.g. ["--threads", "1", "--set", "queue_size=4"])."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now (the load test's server and the tests' take one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "max": float(np.max(values))}


class _MemorySampler(threading.Thread):
    """The server's RSS every `period_s`, as (seconds since start, MB, phase)."""

    def __init__(self, pid: int, period_s: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.period_s = pid, period_s
        self.samples: list[tuple[float, float, str]] = []
        self.phase = "start"
        self.stop = threading.Event()
        self.start_time = time.monotonic()

    def run(self) -> None:
        while not self.stop.is_set():
            mb = rss_mb(self.pid)
            if mb is not None:
                self.samples.append((time.monotonic() - self.start_time, mb, self.phase))
            self.stop.wait(self.period_s)

    def of(self, phase: str) -> list[float]:
        return [mb for _, mb, p in self.samples if p == phase]


def baseline_throughput(map_path: Path, scene: Scene, n_images: int) -> dict:
    """Images per second of the pipelined localize loop (sceneloc localize's) over n_images query frames."""
    from sceneloc.api import Localizer, load_map

    frames = [scene.frames[i % len(scene.frames)] for i in range(max(n_images, len(scene.frames)))]
    localizer = Localizer(load_map(map_path, "cpu"))
    localizer.localize_scene(Scene(scene.name, scene.root, frames[:8]))  # warm-up, as the server gets
    start = time.perf_counter()
    estimates = localizer.localize_scene(Scene(scene.name, scene.root, frames), show_progress=True)
    wall = time.perf_counter() - start
    return {"images": len(estimates), "seconds": wall, "images_per_s": len(estimates) / wall,
            "localized": sum(e.cam_from_world is not None for e in estimates)}


def _http_phase(url: str, token: str, map_name: str, uploads: list, n_clients: int, config: LoadTestConfig,
                progress_info) -> dict:
    """n_clients threads posting localize requests for config.seconds; every outcome counted."""
    from sceneloc.client import Client, ServiceError

    records: list[tuple[int, float, float]] = []  # (status or -1 for lost, start, latency)
    lock = threading.Lock()
    stop_at = time.monotonic() + config.seconds
    sent = [0]

    def client_loop(index: int) -> None:
        with Client(url, token, timeout_s=config.client_timeout_s) as client:
            i = index
            while time.monotonic() < stop_at:
                with lock:
                    if sent[0] >= config.max_requests:
                        return
                    sent[0] += 1
                image, camera, name = uploads[i % len(uploads)]
                i += n_clients
                t0 = time.monotonic()
                wait = 0.0
                try:
                    client.localize(map_name, image, camera, name=name)
                    status = 200
                except ServiceError as e:
                    status = e.status
                    wait = config.retry_cap_s if status in (429, 503) else 0.0
                except Exception:  # connection refused / reset, client timeout: nothing answered
                    status = -1
                with lock:
                    records.append((status, t0, time.monotonic() - t0))
                if wait:
                    time.sleep(wait)

    threads = [threading.Thread(target=client_loop, args=(k,), daemon=True) for k in range(n_clients)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        time.sleep(0.5)
        with lock:
            ok = sum(r[0] == 200 for r in records)
        progress_info(f"{n_clients} clients: {ok / max(1e-9, time.monotonic() - start):.1f} img/s")
        if time.monotonic() > stop_at + config.client_timeout_s + 5:
            break  # a client hung past its own timeout: report what was counted
    for thread in threads:
        thread.join(timeout=1.0)
    elapsed = max(r[1] + r[2] for r in records) - start if records else config.seconds
    statuses = [r[0] for r in records]
    counts = {str(s): statuses.count(s) for s in sorted(set(statuses)) if s != -1}
    lost = statuses.count(-1)
    latencies_ms = [r[2] * 1e3 for r in records if r[0] == 200]
    return {"clients": n_clients, "seconds": elapsed, "requests": len(records), "answered": counts, "lost": lost,
            "unaccounted": sent[0] - len(records), "images_per_s": counts.get("200", 0) / elapsed,
            "latency_ms": _percentiles(latencies_ms), "latencies_ms": latencies_ms}


def _stream_phase(url: str, token: str, map_name: str, jpegs: list, config: LoadTestConfig) -> dict:
    """One stream client sending config.stream_fps frames per second for stream_seconds; what came back."""
    from sceneloc.client import Client

    sent_at: dict[str, float] = {}
    messages: list[tuple[float, dict]] = []
    with Client(url, token) as client, client.stream(map_name) as stream:
        done_sending = threading.Event()

        def sender() -> None:
            period = 1.0 / config.stream_fps
            start = time.monotonic()
            n = int(config.stream_seconds * config.stream_fps)
            for k in range(n):
                delay = start + k * period - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                image, camera = jpegs[k % len(jpegs)]
                name = f"s{k:06d}"
                sent_at[name] = time.monotonic()
                stream.send(image, camera if k == 0 else None, timestamp=k * period, frame=name)
            done_sending.set()

        thread = threading.Thread(target=sender, daemon=True)
        thread.start()
        deadline = time.monotonic() + config.stream_seconds + 30
        while time.monotonic() < deadline:
            if done_sending.is_set() and len(messages) >= len(sent_at):
                break
            try:
                message = stream.receive(timeout_s=1.0)
            except TimeoutError:
                continue
            messages.append((time.monotonic(), message))
        thread.join(timeout=5)
        # A server started with --reconstruct reports its live mesh (fused frames, fusion rate, vertices).
        reconstruction = next((m.get("reconstruction") for m in client.maps() if m["name"] == map_name), None)
    poses = [(t, m) for t, m in messages if m["type"] == "pose"]
    latencies = [(t - sent_at[m["frame"]]) * 1e3 for t, m in poses if m.get("frame") in sent_at]
    thirds = np.array_split(np.array(latencies), 3) if len(latencies) >= 3 else []
    span = (poses[-1][0] - poses[0][0]) if len(poses) > 1 else float("nan")
    return {"fps_sent": config.stream_fps, "frames": len(sent_at), "poses": len(poses),
            "localized": sum(m.get("cam_from_world") is not None for _, m in poses),
            "dropped": sum(m["type"] == "dropped" for _, m in messages),
            "errors": sum(m["type"] == "error" for _, m in messages),
            "unanswered": len(sent_at) - len(messages), "poses_per_s": (len(poses) - 1) / span if span else None,
            "latency_ms": _percentiles(latencies),
            "latency_ms_by_third": [float(np.mean(x)) for x in thirds],
            "max_backlog": max((m.get("backlog", 0) for _, m in poses), default=0),
            "reconstruction": reconstruction}


def run_load_test(map_path: Path, scene: Scene, out_dir: Path, config: LoadTestConfig) -> dict:
    """The whole test (module docstring); returns and writes its results."""
    from PIL import Image

    from sceneloc.client import frame_upload
    from sceneloc.runtime.progress import make_progress
    from sceneloc.serve.pool import available_cores

    out_dir.mkdir(parents=True, exist_ok=True)
    uploads = []
    jpegs = []
    for frame in scene.frames:
        image, camera = frame_upload(frame)
        uploads.append((image, camera, frame.rgb_path.name))
        buffer = io.BytesIO()
        Image.fromarray(frame.load_rgb()).save(buffer, format="JPEG", quality=90)
        jpegs.append((buffer.getvalue(), camera))
    results: dict = {"map": str(map_path), "queries": len(scene.frames), "config": asdict(config),
                     "cores": available_cores()}
    results["baseline"] = baseline_throughput(map_path, scene, config.baseline_images)

    token = os.urandom(16).hex()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        token_file = Path(tmp) / "token"
        token_file.write_text(token)
        # On the CPU, as the baseline; its output goes to a file (a pipe nobody reads could fill and stall it).
        command = [sys.executable, "-m", "sceneloc", "serve", str(map_path), "--port", str(port),
                   "--token-file", str(token_file), "--device", "cpu", *config.serve_args]
        server_log = out_dir / "server.log"
        with open(server_log, "w") as log_file:
            server = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, text=True)
        try:
            results.update(_drive(server, url, token, map_path.stem, uploads, jpegs, config, server_log,
                                  make_progress))
        finally:
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
            try:
                results["server_exit"] = server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                results["server_exit"] = "killed after 60 s"
    write_text_atomic(out_dir / "results.json", json.dumps(results, indent=1) + "\n")
    write_text_atomic(out_dir / "report.md", format_report(results))
    plot_load(results, out_dir / "load.png")
    return results


def _drive(server: subprocess.Popen, url: str, token: str, map_name: str, uploads: list, jpegs: list,
           config: LoadTestConfig, server_log: Path, make_progress) -> dict:
    from sceneloc.client import Client

    with Client(url, token) as client:
        deadline = time.monotonic() + 180
        while not client.healthy():
            if server.poll() is not None or time.monotonic() > deadline:
                raise InputError(server_log, f"the server did not start: {server_log.read_text()[-300:]}")
            time.sleep(0.5)
        for k in range(config.warmup_requests):
            image, camera, name = uploads[k % len(uploads)]
            client.localize(map_name, image, camera, name=name)
    memory = _MemorySampler(server.pid)
    memory.start()
    phases = []
    with make_progress(True) as progress:
        task = progress.add_task("load test", total=len(config.clients) + (config.stream_seconds > 0), info="")
        for n_clients in config.clients:
            memory.phase = f"{n_clients} clients"
            phase = _http_phase(url, token, map_name, uploads, n_clients, config,
                                lambda info: progress.update(task, info=info))
            rss = memory.of(memory.phase)
            phase["rss_mb"] = {"first": rss[0] if rss else None, "last": rss[-1] if rss else None,
                               "max": max(rss) if rss else None}
            phases.append(phase)
            progress.update(task, advance=1)
        stream = None
        if config.stream_seconds > 0:
            memory.phase = "stream"
            progress.update(task, info=f"stream at {config.stream_fps:g} frames/s")
            stream = _stream_phase(url, token, map_name, jpegs, config)
            progress.update(task, advance=1)
    memory.stop.set()
    memory.join(timeout=2)
    with Client(url, token) as client:
        metrics = client.metrics()
    rejects = {line.split('"')[1]: float(line.split()[-1]) for line in metrics.splitlines()
               if line.startswith("sceneloc_rejects_total{")}
    return {"phases": phases, "stream": stream, "server_rejects": rejects,
            "memory": [[round(t, 2), round(mb, 1), phase] for t, mb, phase in memory.samples]}


def _whole(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def format_report(results: dict) -> str:
    """report.md: the phases' table, the stream's line and the baseline."""
    base = results["baseline"]["images_per_s"]
    lines = [f"# Load test of `sceneloc serve`: {results['map']}", "",
             f"{results['queries']} query images, {results['cores']} cores; baseline (the in-process localize loop, "
             f"as `sceneloc localize`): **{base:.1f} images/s** over {results['baseline']['images']} images.", "",
             "| clients | s | requests | 200 | refused (code: n) | lost | images/s | vs baseline | p50 ms | p95 ms "
             "| p99 ms | server RSS MB first -> last (max) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in results["phases"]:
        refused = ", ".join(f"{k}: {v}" for k, v in p["answered"].items() if k != "200") or "none"
        lat, rss = p["latency_ms"], p["rss_mb"]
        lines.append(f"| {p['clients']} | {p['seconds']:.0f} | {p['requests']} | {p['answered'].get('200', 0)} | "
                     f"{refused} | {p['lost']} | {p['images_per_s']:.1f} | {p['images_per_s'] / base:.0%} | "
                     f"{_whole(lat['p50'])} | {_whole(lat['p95'])} | {_whole(lat['p99'])} | "
                     f"{_whole(rss['first'])} -> {_whole(rss['last'])} ({_whole(rss['max'])}) |")
    s = results.get("stream")
    if s:
        lat = s["latency_ms"]
        lines += ["", f"Stream: {s['frames']} frames sent at {s['fps_sent']:g}/s -> {s['poses']} poses "
                      f"({s['poses_per_s'] or 0:.1f}/s), {s['dropped']} dropped (told), {s['errors']} errors, "
                      f"{s['unanswered']} unanswered; end-to-end latency p50 {lat['p50'] or 0:.0f} ms, p95 "
                      f"{lat['p95'] or 0:.0f} ms, p99 {lat['p99'] or 0:.0f} ms; mean latency by third of the run "
                      + " / ".join(f"{v:.0f}" for v in s["latency_ms_by_third"]) + f" ms; largest backlog "
                      f"{s['max_backlog']}."]
        r = s.get("reconstruction")
        if r:
            lines += ["", f"Live reconstruction: {r['frames']} frames fused, {r['skipped']} skipped while fusion was "
                          f"busy, {r['unsure']} left out as unsure, {r['fps'] or 0:.1f} frames fused per second of "
                          f"fusion, mesh version {r['version']} with {r['vertices']:,} vertices."]
    lines += ["", f"Server-side rejects: {results.get('server_rejects') or 'none'}; server exit code "
                  f"{results.get('server_exit')}.", ""]
    return "\n".join(lines)


def plot_load(results: dict, path: Path) -> None:
    """load.png: the latency CDF of each phase (left) and the server's RSS over the run (right)."""
    from matplotlib.figure import Figure

    from sceneloc.evaluate.plots import save_figure

    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    for p in results["phases"]:
        values = np.sort(p["latencies_ms"])
        if len(values):
            left.plot(values, np.arange(1, len(values) + 1) / len(values), label=f"{p['clients']} clients")
    left.set(xscale="log", xlabel="request latency, ms (answered 200)", ylabel="fraction of requests",
             title="latency")
    left.grid(alpha=0.3)
    left.legend()
    memory = results.get("memory") or []
    for phase in dict.fromkeys(m[2] for m in memory):
        points = [(t, mb) for t, mb, p in memory if p == phase]
        right.plot(*zip(*points), label=phase)
    right.set(xlabel="seconds", ylabel="server RSS, MB", title="server memory")
    right.grid(alpha=0.3)
    if memory:
        right.legend()
    save_figure(fig, path)
