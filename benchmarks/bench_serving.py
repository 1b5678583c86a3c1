"""CPU serving overhead per interactive request: HTTP + queue + image fetch + result formatting, with the
model's own time subtracted. Runs the real processes: ``python -m backend serve`` (waitress) and one
``python -m backend worker`` with a tiny random checkpoint, against a real Redis.

    python benchmarks/bench_serving.py [--requests 50] [--redis redis://127.0.0.1:6379/15] [--json out.json]

For every request: client latency (POST /predict until the answer), and from the finished job's record the
worker's own split (fetch, model, format). Overhead = latency - model time. The request's path is split by
the job's timestamps (one machine, one clock): client send -> enqueued (HTTP in, parse, enqueue), enqueued ->
started (worker wake-up, job load), started -> ended (the job), ended -> client received (result saved,
the web woken, answer built and sent). Prints p50/p95 and writes JSON.
The Redis database given is flushed before and after.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC
from pathlib import Path
from typing import Any

import numpy as np
import redis
import requests
from PIL import Image
from rq.job import Job
from rq.serializers import JSONSerializer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cores.bench import latency_stats

ROOT = Path(__file__).resolve().parents[1]
QUERIES = ("the thing you would use to cut the bread", "where would a tired person sit?", "the red cup")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve_images(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(folder), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"))
    parser.add_argument("--image-size", default="768x1024")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    h, w = (int(v) for v in args.image_size.split("x"))
    connection = redis.Redis.from_url(args.redis)
    connection.flushdb()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run(
            [sys.executable, "-m", "cores", "make-tiny-checkpoint", str(work / "ck")],
            check=True,
            capture_output=True,
            cwd=ROOT,
        )
        images = work / "images"
        images.mkdir()
        rng = np.random.default_rng(0)
        for i in range(8):
            Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(
                images / f"{i}.jpg", quality=90
            )
        image_server, image_base = _serve_images(images)
        port = _free_port()
        env = {
            **os.environ,
            "CORES_CHECKPOINT": str(work / "ck"),
            "REDIS_URL": args.redis,
            "PORT": str(port),
            "MODEL_DIR": str(work / "models"),
            "ALLOW_PRIVATE_NETWORKS": "true",
            "CORES_DEVICE": "cpu",
        }
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "backend", "serve"],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
            subprocess.Popen(
                [sys.executable, "-m", "backend", "worker"],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
        ]
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 120
            while time.time() < deadline:
                try:
                    metrics = requests.get(f"{url}/metrics", timeout=1).text
                    if "\ncores_workers 1" in metrics:
                        break
                except requests.ConnectionError:
                    pass
                time.sleep(0.5)
            else:
                raise SystemExit("backend did not become ready")
            config = (ROOT / "backend" / "label_config.xml").read_text()
            session = requests.Session()
            sent: dict[int, float] = {}
            received: dict[int, float] = {}

            def predict(i: int) -> float:
                body = {
                    "tasks": [{"id": i + 1, "data": {"image": f"{image_base}/{i % 8}.jpg"}}],
                    "project": "1.1",
                    "label_config": config,
                    "params": {
                        "context": {
                            "result": [
                                {
                                    "from_name": "prompt",
                                    "to_name": "image",
                                    "type": "textarea",
                                    "value": {"text": [QUERIES[i % len(QUERIES)]]},
                                }
                            ]
                        }
                    },
                }
                sent[i + 1] = time.time()
                start = time.perf_counter()
                answer = session.post(f"{url}/predict", json=body, timeout=60)
                elapsed = (time.perf_counter() - start) * 1000
                received[i + 1] = time.time()
                answer.raise_for_status()
                if not answer.json()["results"][0].get("result"):
                    raise SystemExit(f"prediction failed: {answer.text[:300]}")
                return elapsed

            for i in range(3):  # warm-up: model, caches, connections
                predict(i)
            connection.delete(*connection.keys("rq:results:*") or ["none"])
            latencies = [predict(i) for i in range(args.requests)]
            timings = []
            for key in connection.scan_iter("rq:job:*"):
                job_id = key.decode().split(":", 2)[2]
                try:
                    job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
                except Exception:
                    continue
                value = job.return_value()
                if isinstance(value, dict) and "timings" in value and job.started_at and job.enqueued_at:
                    split = dict(value["timings"])
                    split["queue_wait_ms"] = (job.started_at - job.enqueued_at).total_seconds() * 1000
                    split["job_ms"] = (
                        (job.ended_at - job.started_at).total_seconds() * 1000 if job.ended_at else 0
                    )
                    task = int(job.args[0]["tasks"][0]["id"])
                    if task in sent and job.ended_at:
                        enqueued = job.enqueued_at.replace(tzinfo=UTC).timestamp()
                        ended = job.ended_at.replace(tzinfo=UTC).timestamp()
                        split["web_in_ms"] = (enqueued - sent[task]) * 1000
                        split["web_out_ms"] = (received[task] - ended) * 1000
                    timings.append(split)
            timings = timings[-args.requests :]
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)
            image_server.shutdown()
            connection.flushdb()
    model = statistics.median(t["model_ms"] for t in timings)
    report: dict[str, Any] = {
        "requests": args.requests,
        "image_size": [h, w],
        "latency": latency_stats(latencies),
        "worker_model_ms_p50": round(model, 2),
        "worker_fetch_ms_p50": round(statistics.median(t.get("fetch_ms", 0.0) for t in timings), 2),
        "worker_format_ms_p50": round(statistics.median(t.get("format_ms", 0.0) for t in timings), 2),
        "rq_queue_wait_ms_p50": round(statistics.median(t["queue_wait_ms"] for t in timings), 2),
        "rq_job_ms_p50": round(statistics.median(t["job_ms"] for t in timings), 2),
        "web_in_ms_p50": round(statistics.median(t.get("web_in_ms", 0.0) for t in timings), 2),
        "web_out_ms_p50": round(statistics.median(t.get("web_out_ms", 0.0) for t in timings), 2),
        "job_minus_model_ms_p50": round(statistics.median(t["job_ms"] - t["model_ms"] for t in timings), 2),
        "overhead": latency_stats([lat - model for lat in latencies]),
        "jobs_with_timings": len(timings),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
