"""Settings: defaults, the DELTAGATE_ env prefix, validation, warm-up buckets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.server import settings_to_env
from service.settings import Settings

pytestmark = pytest.mark.unit


def test_defaults_match_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(f"DELTAGATE_{name.upper()}", raising=False)
    s = Settings()
    assert s.bundle_path == Path("bundles/default") and s.port == 8000 and s.api_key is None


def test_env_prefix_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELTAGATE_ENGINE", "onnx")
    monkeypatch.setenv("DELTAGATE_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("DELTAGATE_API_KEY", "s3cret")
    s = Settings()
    assert s.engine == "onnx" and s.max_batch_size == 8
    assert s.api_key is not None and s.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)  # SecretStr keeps the key out of reprs and logs


@pytest.mark.parametrize("bad", [{"engine": "tensorrt"}, {"max_batch_size": 0},
                                 {"max_batch_size": 64, "max_queue_size": 8}, {"device": "tpu"}])
def test_invalid_settings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(("size", "buckets"), [(1, [1]), (8, [1, 2, 4, 8]), (12, [1, 2, 4, 8, 12])])
def test_batch_buckets(size: int, buckets: list[int]) -> None:
    assert Settings(max_batch_size=size).batch_buckets() == buckets


def test_settings_round_trip_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings(engine="dummy", max_wait_ms=3.5, api_key="k", warmup=False, pad_to_bucket=True)  # type: ignore[arg-type]
    for key, value in settings_to_env(s).items():
        monkeypatch.setenv(key, value)
    assert Settings() == s


def test_server_refuses_a_missing_bundle_before_starting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from models.errors import BundleError
    from service import server
    from tests.service_support import forbid_server_start

    forbid_server_start(monkeypatch)
    monkeypatch.setattr(server, "configure_logging", lambda *a: None)  # keep pytest's log handlers
    with pytest.raises(BundleError, match="manifest.json"):
        server.run(Settings(engine="onnx", bundle_path=tmp_path / "nope"))


def test_docs_settings_table_is_generated_from_the_settings() -> None:
    from service.settings import settings_table

    doc = (Path(__file__).parents[3] / "docs" / "service.md").read_text(encoding="utf-8")
    start, end = "<!-- settings-table:start -->\n", "\n<!-- settings-table:end -->"
    assert start in doc and end in doc
    table = doc.split(start, 1)[1].split(end, 1)[0]
    assert table == settings_table(), (
        "docs/service.md's settings table is stale; regenerate it with "
        "python -c \"from service.settings import settings_table; print(settings_table())\""
    )


@pytest.mark.parametrize(("bad", "needle"), [
    ({"max_images_per_request": 32, "max_queue_size": 16}, "a full request could never be admitted"),
    ({"max_batch_size": 64, "max_queue_size": 32}, "a batch could never fill"),
])
def test_settings_that_cannot_work_are_refused_with_the_reason(bad: dict[str, object], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        Settings(**bad)  # type: ignore[arg-type]
