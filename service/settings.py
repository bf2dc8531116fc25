"""Service settings: one pydantic-settings class, read from ``DELTAGATE_*`` environment variables.

Nothing else in the service reads ``os.environ``; the app receives a :class:`Settings` through
:func:`service.app.create_app` and routes get it through :mod:`service.deps`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "EngineName", "DeviceName"]

EngineName = Literal["torch", "onnx", "dummy", "onnx-int8"]
DeviceName = Literal["auto", "cpu", "cuda"]


class Settings(BaseSettings):
    """Every knob of the service. Env names are the field names upper-cased with ``DELTAGATE_``."""

    model_config = SettingsConfigDict(env_prefix="DELTAGATE_", extra="ignore", frozen=True)

    # --- model ---------------------------------------------------------------------------------
    bundle_path: Path = Field(Path("bundles/default"), description="Exported model bundle directory.")
    engine: EngineName = Field("torch", description="Inference engine: torch, onnx, onnx-int8 or dummy (tests).")
    device: DeviceName = Field("auto", description="auto = CUDA when available, else CPU.")
    warmup: bool = Field(True, description="One forward per batch-size bucket before readiness.")
    dummy_num_classes: int = Field(4, ge=2, description="Classes of the dummy engine when no bundle.")

    # --- batching ------------------------------------------------------------------------------
    max_batch_size: int = Field(16, ge=1, le=1024, description="Largest batch per forward.")
    max_wait_ms: float = Field(5.0, ge=0.0, le=10_000.0, description="Longest wait to fill a batch.")
    max_queue_size: int = Field(256, ge=1, description="Images waiting for a forward; beyond: 503.")
    pad_to_bucket: bool | None = Field(
        None, description="Pad batches to a power-of-two bucket (stable shapes); None = on CUDA only."
    )
    request_timeout_s: float = Field(30.0, gt=0.0, description="Deadline of a request; past it: 504.")
    retry_after_s: int = Field(1, ge=1, description="Retry-After header (seconds) on 503.")
    preprocess_workers: int = Field(2, ge=1, le=64, description="Threads that decode and preprocess.")

    # --- limits --------------------------------------------------------------------------------
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="Request body limit (413).")
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Pixel count limit per image, from the header (413)."
    )
    max_images_per_request: int = Field(16, ge=1, description="Images per request (413 beyond).")
    default_top_k: int = Field(5, ge=1, description="Entries of the top_k list when not asked for.")

    # --- server --------------------------------------------------------------------------------
    host: str = Field("0.0.0.0", description="Bind address.")  # all interfaces: runs in a container
    port: int = Field(8000, ge=1, le=65535, description="Bind port.")
    workers: int = Field(1, ge=1, description="Uvicorn worker processes (each loads the model).")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    graceful_shutdown_s: float = Field(30.0, ge=0.0, description="Time in-flight requests get on stop.")
    api_key: SecretStr | None = Field(
        None, description="If set, /classify and /model need 'Authorization: Bearer <key>'."
    )

    @model_validator(mode="after")
    def _queue_holds_a_batch(self) -> Settings:
        if self.max_queue_size < self.max_batch_size:
            raise ValueError("max_queue_size must be >= max_batch_size")
        return self

    def batch_buckets(self) -> list[int]:
        """Powers of two up to ``max_batch_size``, and ``max_batch_size`` itself: warm-up shapes."""
        buckets = [1]
        while buckets[-1] * 2 < self.max_batch_size:
            buckets.append(buckets[-1] * 2)
        if buckets[-1] != self.max_batch_size:
            buckets.append(self.max_batch_size)
        return buckets
