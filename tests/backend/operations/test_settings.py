"""Settings from the environment, model version names, the demo checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.jobs.encodings import encoding_store_dir
from backend.operations.settings import Settings, SettingsError
from backend.versions.serving import demo_checkpoint_dir, ensure_checkpoint, model_version


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.port == 9090
    assert settings.mode == "answer"
    assert settings.redis_url is None
    assert settings.model_dir == Path("models")
    assert settings.predict_deadline == 60.0
    assert settings.max_queued == 256
    assert settings.basic_auth_user is None
    assert settings.allow_private_networks is False
    assert settings.level_labels == {}


def test_every_variable_is_read() -> None:
    env = {
        "CORES_CHECKPOINT": "/ckpt/cores-7b",
        "CORES_DEVICE": "cuda:1",
        "CORES_DTYPE": "float16",
        "CORES_MODE": "Generate",
        "REDIS_URL": "redis://r:6379/2",
        "MODEL_DIR": "/data/models",
        "MODEL_VERSION": "v7",
        "LABEL_STUDIO_URL": "http://ls:8080",
        "LABEL_STUDIO_API_KEY": "abc",
        "BASIC_AUTH_USER": "u",
        "BASIC_AUTH_PASS": "p",
        "PORT": "9191",
        "PREDICT_DEADLINE": "45.5",
        "JOB_TIMEOUT": "900",
        "MAX_QUEUED": "10",
        "RESULT_TTL": "60",
        "FAILURE_TTL": "120",
        "PREDICT_BATCH_SIZE": "4",
        "CORES_LEVEL_LABELS": "1=Kitchen, 2=Knife",
        "ALLOW_PRIVATE_NETWORKS": "yes",
        "LOCAL_FILES_DOCUMENT_ROOT": "/srv/files",
        "LOG_LEVEL": "debug",
        "WORKERS": "3",
        "THREADS": "16",
    }
    settings = Settings.from_env(env)
    assert (settings.checkpoint, settings.device, settings.dtype, settings.mode) == (
        "/ckpt/cores-7b",
        "cuda:1",
        "float16",
        "generate",
    )
    assert settings.port == 9191
    assert settings.predict_deadline == 45.5
    assert settings.max_queued == 10
    assert settings.level_labels == {1: "Kitchen", 2: "Knife"}
    assert settings.allow_private_networks is True
    assert settings.log_level == "DEBUG"
    assert (settings.workers, settings.threads) == (3, 16)
    assert Settings.from_env(settings.to_env()) == settings  # children see the same settings


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "abc"}, "PORT must be an integer, got 'abc'"),
        ({"PORT": "70000"}, "PORT must be a port number"),
        ({"PREDICT_DEADLINE": "100"}, "below Label Studio's 100 s"),
        ({"PREDICT_DEADLINE": "soon"}, "PREDICT_DEADLINE must be a number"),
        ({"CORES_MODE": "fast"}, "CORES_MODE must be one of answer, generate"),
        ({"MAX_QUEUED": "0"}, "MAX_QUEUED must be an integer >= 1"),
        ({"ALLOW_PRIVATE_NETWORKS": "maybe"}, "ALLOW_PRIVATE_NETWORKS must be true/false"),
        ({"BASIC_AUTH_USER": "u"}, "BASIC_AUTH_USER/BASIC_AUTH_PASS"),
        ({"CORES_LEVEL_LABELS": "1-Kitchen"}, "CORES_LEVEL_LABELS"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL must be one of"),
        ({"LABEL_STUDIO_URL": "ls:8080"}, "LABEL_STUDIO_URL must be a plain http://"),
    ],
)
def test_invalid_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("checkpoint", "override", "expected"),
    [
        ("/models/cores-7b-v2/", None, "cores-cores-7b-v2"),
        ("Shawnee-bxy/CoReS", None, "cores-CoReS"),
        ("/models/my model!", None, "cores-my-model"),
        (None, None, "cores-tiny-demo"),
        ("/models/x", "prod-42", "prod-42"),
    ],
)
def test_model_version(checkpoint: str | None, override: str | None, expected: str) -> None:
    assert model_version(Settings(checkpoint=checkpoint, model_version=override)) == expected


def test_configured_checkpoint_is_kept(tmp_path: Path) -> None:
    settings = Settings(checkpoint="/somewhere", model_dir=tmp_path)
    assert ensure_checkpoint(settings) is settings
    assert not demo_checkpoint_dir(settings).exists()


def test_demo_checkpoint_is_reused_when_present(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(model_dir=tmp_path)
    demo = demo_checkpoint_dir(settings)
    demo.mkdir(parents=True)
    (demo / "config.json").write_text("{}")
    with caplog.at_level("WARNING"):
        assert ensure_checkpoint(settings).checkpoint == str(demo)
    assert "RANDOM" in caplog.text


def test_encoding_store_and_warm_settings(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"MODEL_DIR": str(tmp_path), "ENCODING_STORE_BYTES": "1000", "WARM_ENCODERS": "0"}
    )
    assert settings.encoding_store_bytes == 1000
    assert settings.warm_encoders is False
    assert encoding_store_dir(settings) == tmp_path / "cache" / "encodings"
    assert Settings.from_env(settings.to_env()) == settings
    assert Settings.from_env({}).warm_encoders is True
    with pytest.raises(SettingsError, match="ENCODING_STORE_BYTES"):
        Settings.from_env({"ENCODING_STORE_BYTES": "-1"})
