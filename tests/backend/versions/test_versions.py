"""Model versions without a model: the store under MODEL_DIR/versions, the pointer, pins, rollback, what the
web reports per request, and ``python -m backend versions``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from backend.jobs.embedded import REPO_ROOT
from backend.operations.settings import Settings, SettingsError
from backend.operations.version_names import PIN_ENV, VersionError
from backend.versions.cli import versions_main
from backend.versions.serving import served_version, version_store
from backend.versions.store import VersionStore
from backend.web.app import create_app


def staged_checkpoint(root: Path, name: str = "staged") -> Path:
    """A folder that looks like a checkpoint to the store (the web never loads it)."""
    folder = root / "training" / name / "checkpoint"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "finetune.json").write_text(json.dumps({"steps": 3}))
    return folder


def publish(store: VersionStore, parent: str, tag: str, pin: str | None = None):
    staged = staged_checkpoint(store.root.parent, tag)
    return store.publish(staged, {"parent": parent, "samples": {"exported": 5}}, pin=pin)


@pytest.fixture
def store(tmp_path: Path) -> VersionStore:
    return VersionStore(tmp_path, "cores-base", "/checkpoints/base")


def test_the_base_checkpoint_is_the_implicit_first_version(store: VersionStore) -> None:
    served = store.served()
    assert (served.name, served.source, served.pinned, served.checkpoint) == (
        "cores-base",
        "base",
        False,
        "/checkpoints/base",
    )
    assert [v.name for v in store.list()] == ["cores-base"]
    assert store.read_pointer() is None


def test_publishing_moves_the_checkpoint_in_and_the_pointer_to_it(store: VersionStore) -> None:
    first = publish(store, "cores-base", "a")
    assert first.current
    assert first.held_by is None
    name = first.version.name
    assert name.startswith("v1-")
    folder = store.root / name
    assert folder.is_dir()
    assert not (store.root.parent / "training" / "a" / "checkpoint").exists()
    meta = json.loads((folder / "version.json").read_text())
    assert meta["name"] == name
    assert meta["parent"] == "cores-base"
    assert meta["samples"] == {"exported": 5}
    assert meta["created_at"].endswith("Z")
    pointer = json.loads(store.pointer_path.read_text())
    assert (pointer["version"], pointer["previous"], pointer["pinned"]) == (name, "cores-base", False)
    assert not store.pointer_path.is_symlink()
    assert [p.name for p in store.root.iterdir() if p.name.endswith(".tmp")] == []
    assert store.served().name == name
    assert store.served().checkpoint == str(folder)

    second = publish(store, name, "b")
    assert second.version.name.startswith("v2-")
    assert [v.name for v in store.list()] == ["cores-base", name, second.version.name]
    assert store.served().version.parent == name


def test_a_pin_keeps_published_versions_from_being_served(store: VersionStore) -> None:
    first = publish(store, "cores-base", "a").version.name
    store.set_current("cores-base", pinned=True, reason="test")
    held = publish(store, "cores-base", "b")
    assert not held.current
    assert held.held_by is not None
    assert "pinned to cores-base" in held.held_by
    assert store.served().name == "cores-base"
    assert store.served(first).name == first  # CORES_MODEL_VERSION wins over the pointer
    assert store.served(first).source == "pin"
    by_env = publish(store, "cores-base", "c", pin=first)
    assert not by_env.current
    assert by_env.held_by == f"{PIN_ENV}={first}"

    store.unpin()
    assert store.served().name == "cores-base"  # unpinning keeps the current version...
    last = publish(store, "cores-base", "d")
    assert last.current
    assert store.served().name == last.version.name


def test_rollback_serves_the_parent_pinned_and_stops_at_the_base(store: VersionStore) -> None:
    with pytest.raises(VersionError, match="base version"):
        store.rollback()
    first = publish(store, "cores-base", "a").version.name
    second = publish(store, first, "b").version.name
    pointer = store.rollback()
    assert (pointer.version, pointer.pinned, pointer.previous) == (first, True, second)
    assert store.rollback().version == "cores-base"


def test_missing_versions_are_clear_errors(store: VersionStore) -> None:
    with pytest.raises(VersionError, match="no model version 'v9'; known versions: cores-base"):
        store.served("v9")
    with pytest.raises(VersionError, match="no model version"):
        store.set_current("v9", pinned=True, reason="test")
    with pytest.raises(VersionError, match="no checkpoint"):
        store.publish(store.root.parent, {"parent": "cores-base"})
    store.root.mkdir(parents=True, exist_ok=True)
    store.pointer_path.write_text('{"version": "gone"}')
    with pytest.raises(VersionError, match="names a missing version"):
        store.served()
    store.pointer_path.write_text("not json")
    with pytest.raises(VersionError, match="not a version pointer"):
        store.served()


def test_the_pointer_is_reread_only_when_its_file_changes(
    store: VersionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = publish(store, "cores-base", "a").version.name
    reads: list[Path] = []
    original = Path.read_text

    def counting(self: Path, *args: object, **kwargs: object) -> str:
        if self.name == "current":
            reads.append(self)
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", counting)
    fresh = VersionStore(store.root.parent, "cores-base", "/checkpoints/base")
    for _ in range(5):
        assert fresh.served().name == name
    assert len(reads) == 1
    store.set_current("cores-base", pinned=False, reason="test")
    reads.clear()
    assert fresh.served().name == "cores-base"
    assert fresh.served().name == "cores-base"
    assert len(reads) == 1


def test_settings_read_and_check_the_pin() -> None:
    assert Settings.from_env({PIN_ENV: "v3-20250301-100000"}).pinned_version == "v3-20250301-100000"
    assert Settings.from_env({}).pinned_version is None
    with pytest.raises(SettingsError, match=PIN_ENV):
        Settings.from_env({PIN_ENV: "../etc"})
    with pytest.raises(SettingsError, match=PIN_ENV):
        Settings.from_env({PIN_ENV: "current"})
    env = Settings(pinned_version="v1-x", min_train_samples=4, train_steps=3).to_env()
    assert (env[PIN_ENV], env["MIN_TRAIN_SAMPLES"], env["TRAIN_STEPS"]) == ("v1-x", "4", "3")
    with pytest.raises(SettingsError, match="MIN_TRAIN_SAMPLES"):
        Settings.from_env({"MIN_TRAIN_SAMPLES": "0"})


def test_the_web_reports_the_served_version_per_request(settings: Settings, redis_conn: redis.Redis) -> None:
    client = create_app(settings, connection=redis_conn).test_client()
    store = version_store(settings)
    assert client.post("/setup", json={"project": "1.2"}).get_json() == {"model_version": "cores-cores"}

    name = publish(store, "cores-cores", "a").version.name

    assert client.post("/setup", json={"project": "1.2"}).get_json() == {"model_version": name}
    assert client.get("/versions").get_json() == {"versions": ["cores-cores", name], "model_version": name}
    assert client.get("/health").get_json()["model_version"] == name
    assert f'cores_model_info{{model_version="{name}"}} 1' in client.get("/metrics").get_data(as_text=True)

    pinned = create_app(settings.with_changes(pinned_version="cores-cores"), connection=redis_conn)
    assert pinned.test_client().post("/setup", json={}).get_json() == {"model_version": "cores-cores"}
    with pytest.raises(SettingsError, match="no model version 'v7'"):
        create_app(settings.with_changes(pinned_version="v7"), connection=redis_conn)


def test_versions_command(settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("MODEL_DIR", str(settings.model_dir))
    monkeypatch.setenv("CORES_CHECKPOINT", str(settings.checkpoint))
    monkeypatch.delenv(PIN_ENV, raising=False)
    monkeypatch.delenv("MODEL_VERSION", raising=False)
    store = version_store(settings)
    first = publish(store, "cores-cores", "a").version.name
    second = publish(store, first, "b").version.name

    assert versions_main(["list"]) == 0
    table = capsys.readouterr().out.splitlines()
    header = (
        "version parent created (UTC) samples gIoU per level cIoU per level parent's gIoU correction gate"
    )
    assert table[0].split() == header.split()
    assert [line.split()[0] for line in table[1:]] == ["cores-cores", first, "*"]
    assert table[-1].split()[1:3] == [second, first]

    assert versions_main(["rollback"]) == 0
    assert f"current: {first} (pinned; was {second})" in capsys.readouterr().out
    assert served_version(settings).name == first
    assert versions_main(["current", "--json"]) == 0
    current = json.loads(capsys.readouterr().out)
    assert (current["version"], current["source"], current["pinned"], current["parent"]) == (
        first,
        "pointer",
        True,
        "cores-cores",
    )
    assert versions_main(["pin", second]) == 0
    assert served_version(settings).name == second
    assert versions_main(["unpin"]) == 0
    assert not json.loads(store.pointer_path.read_text())["pinned"]
    assert versions_main(["pin", "nope"]) == 1
    assert "no model version 'nope'" in capsys.readouterr().err
    assert versions_main(["list", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["name"], r["current"]) for r in rows] == [
        ("cores-cores", False),
        (first, False),
        (second, True),
    ]

    monkeypatch.setenv(PIN_ENV, "cores-cores")
    assert versions_main(["current"]) == 0
    assert capsys.readouterr().out.startswith(f"cores-cores: pinned by {PIN_ENV}")


def test_backend_help_lists_and_explains_the_new_commands() -> None:
    def run(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "backend", *args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    top = run("--help")
    for command in ("corrections", "train", "versions"):
        assert command in top
    assert "usage: python -m backend train" in run("train", "--help")
    assert "--min-correction" in run("train", "--help")
    assert "rollback" in run("versions", "--help")
    assert "usage: python -m backend corrections" in run("corrections", "--help")
    assert "--out" in run("corrections", "export", "--help")
