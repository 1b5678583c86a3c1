"""``python -m backend doctor [--load]``: check a deployment and say what is wrong, in plain words.

One line per check, ``OK``, ``WARN`` (works, but look), ``SKIP`` (not applicable here) or ``FAIL``::

    OK   redis: redis://redis:6379/0 answers (Redis 7.0.15)
    OK   queues: interactive 0 waiting, 0 running, 0 failed; bulk ...; train ...
    FAIL workers: no worker is registered: start `python -m backend worker` on a GPU machine
    OK   label studio: Label Studio 1.23.2 answers at http://label-studio:8080
    OK   label studio credentials: LABEL_STUDIO_API_KEY (legacy token) is valid: user admin@example.com

and a last line with the counts; the exit status is 1 when any check failed, 0 otherwise. Checks: Redis,
queue depths, registered workers, Label Studio's ``/api/version`` and the API key
(``/api/current-user/whoami``), the served checkpoint's files (config, weights, tokenizer, CLIP vision
tower; a hub id is looked up in the Hugging Face cache: ``backend.versions.checkpoint_files``), the GPU
(``nvidia-smi``, then torch in a child process), ``MODEL_DIR`` writable and its free disk space. Nothing
here imports torch; ``--load`` really loads the checkpoint in this process (minutes for a 7B model) and
reports the device.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

import redis
import requests

from backend.operations.settings import Settings
from backend.versions.checkpoint_files import locate, missing_files, vision_tower_name

logger = logging.getLogger(__name__)

Status = Literal["OK", "WARN", "SKIP", "FAIL"]
HTTP_TIMEOUT_S = 5.0
GPU_PROBE_TIMEOUT_S = 120.0
MIN_FREE_BYTES = 1 << 30
"""Below this much free disk in ``MODEL_DIR`` the check fails (1 GiB)."""
LOW_FREE_BYTES = 20 << 30
"""Below this it warns (20 GiB: a 7B checkpoint is ~16 GB, plus fine-tunes and the image cache)."""
_GPU_PROBE = (
    "import json, torch; ok = torch.cuda.is_available(); "
    "print(json.dumps({'cuda': ok, 'torch': torch.__version__, 'cuda_build': torch.version.cuda, "
    "'devices': [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if ok else []}))"
)


@dataclass(frozen=True)
class Check:
    """One finding: its status, what was checked, and what was found (with the fix, on failure)."""

    status: Status
    name: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4} {self.name}: {self.detail}"


def run_checks(settings: Settings, *, load: bool = False) -> list[Check]:
    """Every check, in the order printed (``load``: also load the checkpoint in this process). A check that
    crashes is reported as a FAIL line, never raised: the doctor must finish on a broken machine."""
    steps: list[tuple[str, Callable[[Settings], Check | list[Check]]]] = [
        ("redis", check_redis),
        ("label studio", check_label_studio),
        ("checkpoint", check_checkpoint),
    ]
    if load:
        steps.append(("load", check_load))
    steps += [("gpu", check_gpu), ("model dir", check_model_dir), ("disk", check_disk)]
    checks: list[Check] = []
    for name, step in steps:
        try:
            found = step(settings)
        except Exception as exc:  # a crashing check is itself the finding
            logger.debug("check %s crashed", name, exc_info=True)
            found = Check("FAIL", name, f"the check crashed: {type(exc).__name__}: {exc}")
        checks += found if isinstance(found, list) else [found]
    return checks


def doctor(settings: Settings, *, load: bool = False, out: TextIO = sys.stdout) -> int:
    """Run the checks, print one line each and a summary; returns the exit status (1 if any failed)."""
    checks = run_checks(settings, load=load)
    for check in checks:
        print(check.line(), file=out)
    counts = {status: sum(c.status == status for c in checks) for status in ("OK", "WARN", "SKIP", "FAIL")}
    summary = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    print(f"doctor: {summary}" + (": FAILED" if counts["FAIL"] else ""), file=out)
    return 1 if counts["FAIL"] else 0


def check_redis(settings: Settings) -> list[Check]:
    """Redis answers; queue depths; registered workers and the queues they serve."""
    from rq import Worker

    from backend.jobs.queues import (
        QUEUE_NAMES,
        QueueUnavailableError,
        registry_counts,
    )
    from backend.operations.redis_client import connect, describe_connection

    if settings.redis_url is None:
        note = "REDIS_URL is not set: `serve` runs an embedded Redis and one worker under MODEL_DIR/queue"
        return [
            Check("SKIP", "redis", note + " (one machine)"),
            Check("SKIP", "queues", "no shared Redis to inspect"),
            Check("SKIP", "workers", "no shared Redis to inspect"),
        ]
    connection = connect(settings)
    where = f"redis at {describe_connection(connection)}"
    try:
        version = connection.info("server").get("redis_version", "?")
        counts = registry_counts(connection)
        workers = Worker.all(connection=connection)
    except (redis.exceptions.RedisError, OSError, QueueUnavailableError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
        return [
            Check(
                "FAIL", "redis", f"{where} does not answer ({reason}); check REDIS_URL and that Redis runs"
            ),
            Check("SKIP", "queues", "Redis is unreachable"),
            Check("SKIP", "workers", "Redis is unreachable"),
        ]
    finally:
        connection.close()
    checks = [Check("OK", "redis", f"{where} answers (Redis {version})")]
    depth = "; ".join(
        f"{name} {c['queued']} waiting, {c['started']} running, {c['failed']} failed"
        for name, c in counts.items()
    )
    full = [name for name, c in counts.items() if c["queued"] >= settings.max_queued]
    if full:
        checks.append(Check("WARN", "queues", f"{depth}; full (MAX_QUEUED={settings.max_queued}): {full}"))
    else:
        checks.append(Check("OK", "queues", depth))
    if not workers:
        checks.append(
            Check(
                "FAIL",
                "workers",
                "no worker is registered: start `python -m backend worker` (it registers once its model "
                "has loaded); predictions wait in the queue until one does",
            )
        )
        return checks
    described = []
    for worker in workers:
        job = worker.get_current_job_id()
        state = f"busy with job {job}" if job else str(worker.get_state())
        listens = ",".join(worker.queue_names())
        described.append(f"{worker.name} on {worker.hostname} (pid {worker.pid}, {state}, queues {listens})")
    served = {name for worker in workers for name in worker.queue_names()}
    missing = [name for name in QUEUE_NAMES if name not in served]
    status: Status = "WARN" if missing else "OK"
    detail = f"{len(workers)} registered: " + "; ".join(described)
    if missing:
        detail += f"; no worker listens to {', '.join(missing)}"
    checks.append(Check(status, "workers", detail))
    return checks


def check_label_studio(settings: Settings) -> list[Check]:
    """Label Studio answers ``/api/version``; the API key is accepted by ``/api/current-user/whoami``."""
    from backend.images.errors import ImageFetchError
    from backend.images.label_studio_auth import LabelStudioAuth

    url = settings.label_studio_url.rstrip("/") if settings.label_studio_url else None
    if url is None:
        return [
            Check(
                "SKIP",
                "label studio",
                "LABEL_STUDIO_URL is not set: images and late predictions use the host and token that "
                "Label Studio sends to /setup; `preannotate` and `corrections export` need it",
            )
        ]
    try:
        response = requests.get(f"{url}/api/version", timeout=HTTP_TIMEOUT_S)
    except requests.RequestException as exc:
        reason = f"{type(exc).__name__}: {exc}"
        return [Check("FAIL", "label studio", f"cannot reach {url} ({reason}); check LABEL_STUDIO_URL")]
    if response.status_code != 200:
        return [Check("FAIL", "label studio", f"{url}/api/version answered HTTP {response.status_code}")]
    try:
        release = response.json().get("release", "?")
    except ValueError:
        return [Check("FAIL", "label studio", f"{url}/api/version did not answer JSON: is it Label Studio?")]
    checks = [Check("OK", "label studio", f"Label Studio {release} answers at {url}")]
    if not settings.label_studio_api_key:
        checks.append(
            Check(
                "WARN",
                "label studio credentials",
                "LABEL_STUDIO_API_KEY is not set: the token Label Studio sends to /setup is used",
            )
        )
        return checks
    session = requests.Session()
    auth = LabelStudioAuth(
        url, settings.label_studio_api_key, session=session, timeout=HTTP_TIMEOUT_S, verify_tls=True
    )
    name = "label studio credentials"
    try:
        header = auth.header(url)
        whoami = session.get(
            f"{url}/api/current-user/whoami", headers={"Authorization": header}, timeout=HTTP_TIMEOUT_S
        )
    except ImageFetchError as exc:
        checks.append(Check("FAIL", name, str(exc)))
        return checks
    except requests.RequestException as exc:
        checks.append(Check("FAIL", name, f"cannot reach {url}: {type(exc).__name__}: {exc}"))
        return checks
    finally:
        session.close()
    if whoami.status_code in (401, 403):
        checks.append(
            Check(
                "FAIL",
                name,
                f"LABEL_STUDIO_API_KEY ({auth.kind} token) was rejected (HTTP {whoami.status_code}); copy "
                "it again from Label Studio's Account & Settings (legacy tokens need "
                "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true on Label Studio)",
            )
        )
    elif whoami.status_code != 200:
        checks.append(Check("FAIL", name, f"/api/current-user/whoami answered HTTP {whoami.status_code}"))
    else:
        user = _json_field(whoami, "email") or _json_field(whoami, "username") or "?"
        checks.append(Check("OK", name, f"LABEL_STUDIO_API_KEY ({auth.kind} token) is valid: user {user}"))
    return checks


def _json_field(response: requests.Response, key: str) -> str | None:
    try:
        value = response.json().get(key)
    except (ValueError, AttributeError):
        return None
    return str(value) if value else None


def check_checkpoint(settings: Settings) -> list[Check]:
    """The served checkpoint's files: config.json, weights (all shards), tokenizer, CLIP vision tower."""
    from backend.operations.version_names import VersionError
    from backend.versions.serving import demo_checkpoint_dir, served_version

    if settings.checkpoint is None:
        demo = demo_checkpoint_dir(settings)
        return [
            Check(
                "WARN",
                "checkpoint",
                f"CORES_CHECKPOINT is not set: the TINY RANDOM demo checkpoint ({demo}) is served and its "
                "masks are noise; set CORES_CHECKPOINT to a CoReS folder or hub id (Shawnee-bxy/CoReS)",
            )
        ]
    try:
        served = served_version(settings)
    except (VersionError, OSError) as exc:
        return [Check("FAIL", "checkpoint", f"cannot tell which model version to serve: {exc}")]
    what = f"model version {served.name} ({served.source}) from {served.checkpoint}"
    found = locate(served.checkpoint)
    if found.folder is None:
        return [Check("FAIL" if found.fatal else "WARN", "checkpoint", f"{what}: {found.problem}")]
    folder = found.folder
    missing = missing_files(folder)
    if missing:
        return [Check("FAIL", "checkpoint", f"{what}: {'; '.join(missing)}")]
    return [Check("OK", "checkpoint", f"{what}: config, weights and tokenizer present"), _check_tower(folder)]


def _check_tower(folder: Path) -> Check:
    """The CLIP vision tower the config names: a folder beside the checkpoint, a folder, a cached hub id."""
    tower = vision_tower_name(folder) or "?"
    found = locate(str(folder / tower)) if (folder / tower).is_dir() else locate(tower)
    if found.folder is None:
        return Check("FAIL" if found.fatal else "WARN", "vision tower", f"{tower}: {found.problem}")
    if not (found.folder / "config.json").is_file():
        return Check("FAIL", "vision tower", f"{tower}: no config.json in {found.folder}")
    return Check("OK", "vision tower", f"{tower} found at {found.folder}")


def check_load(settings: Settings) -> Check:
    """Load the served checkpoint in this process (imports torch), as a worker would."""
    from backend.versions.serving import ensure_checkpoint, served_version

    started = time.monotonic()
    try:
        served = served_version(ensure_checkpoint(settings))
        from cores.inference.pipeline import CoresPipeline

        pipeline = CoresPipeline.from_pretrained(
            served.checkpoint, device=settings.device, dtype=settings.dtype
        )
    except Exception as exc:  # any failure is the finding; the message says which
        return Check("FAIL", "load", f"{type(exc).__name__}: {exc}")
    return Check(
        "OK", "load", f"{served.name} loaded on {pipeline.device} in {time.monotonic() - started:.1f} s"
    )


def check_gpu(
    settings: Settings, run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run
) -> Check:
    """Whether the device the worker wants exists: ``nvidia-smi``, then torch in a child process."""
    device = settings.device or "auto"
    if device.startswith(("cpu", "mps")):
        return Check("OK", "gpu", f"CORES_DEVICE={device}: no GPU needed")
    smi = shutil.which("nvidia-smi")
    listed = ""
    if smi:
        query = [smi, "--query-gpu=name,memory.used,memory.total,driver_version", "--format=csv,noheader"]
        try:
            done = run(query, capture_output=True, text=True, timeout=30, check=False)
            listed = "; ".join(line.strip() for line in done.stdout.splitlines() if line.strip())
        except (OSError, subprocess.SubprocessError) as exc:
            listed = f"nvidia-smi failed: {exc}"
    try:
        probe = run(
            [sys.executable, "-c", _GPU_PROBE],
            capture_output=True,
            text=True,
            timeout=GPU_PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return Check("FAIL", "gpu", f"the torch probe did not finish: {exc}")
    if probe.returncode != 0 and "No module named 'torch'" in probe.stderr:
        return Check(
            "SKIP", "gpu", "torch is not installed here (a web-only install): run doctor on the worker"
        )
    try:
        found = json.loads(probe.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return Check("FAIL", "gpu", f"the torch probe failed: {probe.stderr.strip()[-300:]}")
    seen = f" (nvidia-smi: {listed})" if listed else ""
    if found["cuda"]:
        devices = ", ".join(found["devices"])
        return Check(
            "OK", "gpu", f"torch {found['torch']} sees {len(found['devices'])} GPU(s): {devices}{seen}"
        )
    why = f"torch {found['torch']} (CUDA build {found['cuda_build']}) sees no GPU{seen}"
    if device == "auto":
        return Check("WARN", "gpu", f"{why}: the worker will run on the CPU (very slow for the 7B model)")
    return Check("FAIL", "gpu", f"CORES_DEVICE={device} but {why}")


def check_model_dir(settings: Settings) -> Check:
    """``MODEL_DIR`` exists (or can be made) and a file can be written there."""
    folder = settings.model_dir
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check("FAIL", "model dir", f"MODEL_DIR={folder} is not writable ({exc}); fix its owner/mode")
    return Check("OK", "model dir", f"MODEL_DIR={folder.resolve()} is writable")


def check_disk(settings: Settings) -> Check:
    """Free space on ``MODEL_DIR``'s file system."""
    folder = next(
        (p for p in (settings.model_dir, *settings.model_dir.resolve().parents) if p.exists()), Path("/")
    )
    free = shutil.disk_usage(folder).free
    shown = f"{free / (1 << 30):.1f} GiB free on {folder.resolve()}"
    if free < MIN_FREE_BYTES:
        return Check(
            "FAIL", "disk", f"only {shown}: fine-tunes, the image cache and the correction log need room"
        )
    if free < LOW_FREE_BYTES:
        return Check("WARN", "disk", f"{shown}: a 7B checkpoint needs ~16 GB, each fine-tune as much")
    return Check("OK", "disk", shown)
