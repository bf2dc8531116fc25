"""Service settings: one pydantic-settings class, read from ``DELTAGATE_*`` environment variables.

Nothing else in the service reads ``os.environ``; the app receives a :class:`Settings` through
:func:`service.app.create_app` and routes get it through :mod:`service.deps`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.cpu_budget import cpu_budget

__all__ = ["Settings", "EngineName", "DeviceName", "ThreadPlan", "default_text", "settings_table"]

EngineName = Literal["auto", "torch", "onnx", "onnx-int8", "dummy", "onnx-fp16"]
DeviceName = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class ThreadPlan:
    """How the CPU budget is split: engine instances x intra-op threads, and decode workers."""

    budget: int  # whole CPUs the process may use (service.cpu_budget)
    instances: int  # engine instances, each with its own inference thread
    intra_op_threads: int  # threads inside one instance's forward
    decode_workers: int  # threads that decode and preprocess

    @classmethod
    def derive(
        cls, budget: int, instances: int | None, intra_op: int | None, decode: int | None
    ) -> ThreadPlan:
        """Fill the unset numbers from the budget (docs/service.md has the measurement behind them).

        Args:
            budget: whole CPUs (:func:`service.cpu_budget.cpu_budget`).
            instances: explicit instance count, or None.
            intra_op: explicit intra-op threads per instance, or None.
            decode: explicit decode workers, or None.
        """
        n = instances or _default_instances(budget)
        return cls(budget, n, intra_op or max(1, budget // n), decode or budget)


def _default_instances(budget: int) -> int:
    """One instance per 4 CPUs (each with 4 intra-op threads), at least one.

    A batch-1 forward gains little past ~4 intra-op threads, while independent instances keep
    cores busy between batches; on small budgets (<= 4 CPUs) one instance with every CPU gives the
    lowest concurrency-1 latency. With a noisy neighbour, ``DELTAGATE_INSTANCES=<budget>`` with one
    thread each may give more throughput (docs/service.md).
    """
    return max(1, budget // 4)


class Settings(BaseSettings):
    """Every knob of the service. Env names are the field names upper-cased with ``DELTAGATE_``."""

    model_config = SettingsConfigDict(env_prefix="DELTAGATE_", extra="ignore", frozen=True)

    # --- model ---------------------------------------------------------------------------------
    bundle_path: Path = Field(Path("bundles/default"), description="Exported model bundle directory.")
    engine: EngineName = Field(
        "auto", description="Inference engine: auto (the bundle's fastest graph whose recorded parity with "
        "model.onnx passes, docs/bundle.md; else onnx if the bundle has model.onnx, else torch), torch, onnx, "
        "onnx-int8 (the bundle's int8 graph), onnx-fp16 (its float16 graph, for CUDA) or dummy (tests)."
    )  # auto: an ONNX-only install (the core dependencies) serves the default bundle
    device: DeviceName = Field(
        "auto", description="auto = CUDA when available, else CPU; cuda = refuse to start unless every instance "
        "runs on CUDA."
    )
    warmup: bool = Field(True, description="One forward per batch-size bucket before readiness.")
    dummy_num_classes: int = Field(4, ge=2, description="Classes of the dummy engine when no bundle.")

    # --- batching ------------------------------------------------------------------------------
    max_batch_size: int = Field(16, ge=1, le=1024, description="Largest batch per forward.")
    max_wait_ms: float = Field(
        0.0, ge=0.0, le=10_000.0,
        description="Longest time a batch's first image waits for company on an idle instance (0 = none: "
        "an idle instance takes what is waiting at once; batches grow only while every instance is busy).",
    )
    max_queue_size: int = Field(
        256, ge=1, description="Images admitted and not yet in a forward (being parsed, decoded or queued; a body "
        "still arriving holds none); beyond: 503."
    )
    pad_to_bucket: bool | None = Field(
        None, description="Pad batches to a power-of-two bucket (stable shapes); None = on CUDA only."
    )
    request_timeout_s: float = Field(30.0, gt=0.0, description="Deadline of a request; past it: 504.")
    retry_after_s: int = Field(1, ge=1, description="Retry-After header (seconds) on 503.")
    preprocess_workers: int | None = Field(
        None, ge=1, le=64, description="Threads that decode and preprocess; None = the CPU budget."
    )
    fast_decode: bool = Field(
        True, description="Decode JPEGs much larger than the model input at reduced scale (DCT draft mode)."
    )
    device_decode: Literal["auto", "on", "off"] = Field(
        "auto", description="Decode JPEGs and preprocess on the torch engine's device (nvJPEG on CUDA; other formats "
        "stay on the CPU): auto = when the torch engine runs on CUDA; on = also on the CPU (tests); off = never.",
    )
    cuda_graphs: bool = Field(
        True, description="Torch engine on CUDA: replay one captured CUDA graph per batch-size bucket."
    )

    # --- engine instances and threads (Triton's instance_group) --------------------------------
    instances: int | None = Field(
        None, ge=1, le=64,
        description="Engine instances, each with its own session and inference thread; None = derived "
        "from the CPU budget (see service.cpu_budget).",
    )
    intra_op_threads: int | None = Field(
        None, ge=1, le=256, description="Intra-op threads per instance; None = CPU budget / instances."
    )
    inter_op_threads: int = Field(1, ge=1, le=256, description="ONNX Runtime inter-op threads per instance.")
    compute_nice: int = Field(
        10, ge=0, le=19, description="Nice increment of the compute threads (forwards, engine thread pools, decode "
        "pool) over the event loop's thread (Linux), so that 503s and health checks are answered while they hold "
        "every core; 0 = same priority.",
    )
    gc_freeze: bool = Field(
        True, description="Once the model is loaded and warmed up, move everything alive into the garbage "
        "collector's permanent generation (gc.freeze), so that a full collection under load walks only the objects "
        "made since, not the model's and libraries' (it holds the event loop while it runs).",
    )
    spin_wait: bool = Field(
        False, description="Let ONNX Runtime's idle threads spin (lower latency on dedicated cores, "
        "burns CPU a noisy neighbour or the decode threads need)."
    )

    # --- limits --------------------------------------------------------------------------------
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="Request body limit (413).")
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Pixel count limit per image, from the header (413)."
    )
    max_aspect_ratio: float = Field(
        32.0, ge=1.0, description="Longest side / shortest side of an image, from the header (400 beyond): the resize "
        "scales the short side to the model input, so a 1x100000 strip would become 224x22400000.",
    )
    max_resized_pixels: int = Field(
        4_000_000, ge=1, description="Pixels of an image once resized for the model (before the crop), from the "
        "header (413 beyond); at least the model input's image_size squared.",
    )
    max_images_per_request: int = Field(16, ge=1, description="Images per request (413 beyond).")
    max_error_details: int = Field(
        20, ge=1, le=1000, description="Problems listed in an error's details; beyond, one entry counts the rest.",
    )
    body_read_timeout_s: float = Field(
        20.0, gt=0.0, description="Longest time from a request's arrival until its whole body is received; past it: "
        "408 and the connection is closed. No admission slot is held while a body arrives.",
    )
    max_body_bytes_in_flight: int = Field(
        512 * 1024 * 1024, ge=1024, description="Bytes of request bodies held at once by a worker process, over all "
        "its requests (being received or served); a body that would pass it gets 503. Counts bytes received, not "
        "declared.",
    )
    default_top_k: int = Field(5, ge=1, description="Entries of the top_k list when not asked for.")

    # --- connections (service.connections; each limit, its default and why: docs/operations.md) ---
    keepalive_timeout_s: int = Field(
        5, ge=1, le=3600, description="Idle time a keep-alive connection may wait for its next request before it is "
        "closed.",
    )
    header_timeout_s: float = Field(
        10.0, gt=0.0, le=3600.0, description="Time from a connection's opening (or a next request's first byte) to its "
        "complete request headers; past it: 408 if part of a request came, else the connection is closed (slowloris).",
    )
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, description="Request line and headers of one request, in bytes; beyond: 431.",
    )
    max_connections: int = Field(
        2048, ge=1, description="Open connections per worker process; beyond: answered 503 at once and closed, and "
        "logged. Lowered at start to what the open-file limit allows (see docs/operations.md).",
    )

    # --- server --------------------------------------------------------------------------------
    host: str = Field(
        "127.0.0.1", description="Bind address: 127.0.0.1 = this machine only; 0.0.0.0 = every interface (the "
        "container images and the Kubernetes manifests set it)."
    )
    port: int = Field(8000, ge=1, le=65535, description="Bind port.")
    workers: int = Field(1, ge=1, description="Uvicorn worker processes (each loads the model).")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level (third-party libraries' lines only at debug)."
    )
    log_format: Literal["json", "console"] = Field(
        "json", description="Log lines: json (one object per line, for log collectors) or console (readable)."
    )
    graceful_shutdown_s: float = Field(30.0, ge=0.0, description="Time in-flight requests get on stop.")
    shutdown_grace_s: float = Field(
        2.0, ge=0.0, le=60.0, description="On stop, the time a connection accepted before it, whose request has not "
        "come yet, gets for that request (answered, then closed); within graceful_shutdown_s. 0: closed at once.",
    )
    drain_s: float = Field(
        1.0, ge=0.0, description="On SIGTERM (every worker): seconds of answering new requests 503 while still "
        "listening, before new connections are stopped and the graceful shutdown; clients are told to go elsewhere "
        "instead of being reset."
    )
    exit_on_error: bool = Field(
        True, description="Exit (status 3) when the bundle or engine fails to load, so a supervisor restarts it."
    )  # Triton's --exit-on-error; off: the process stays up, /healthz and /readyz say 503
    metrics_dir: Path | None = Field(
        None, description="With workers > 1: directory of the per-process metric files (emptied at start); "
        "default: a new temporary directory."
    )
    api_key: SecretStr | None = Field(
        None, description="If set, /classify and /model need 'Authorization: Bearer <key>'."
    )
    ui: bool = Field(True, description="Serve the try-it page at / (false: / answers 404).")

    # --- label sets (docs/label-sets.md) -------------------------------------------------------
    label_sets_dir: Path | None = Field(
        None, description="Directory of named label sets (one JSON file each); None = the bundle's label-sets/."
    )
    label_sets_poll_s: float = Field(
        2.0, ge=0.0, le=3600.0, description="How often each worker looks for new or changed label-set files "
        "(seconds; 0 = on every request); an unknown name is always looked up on disk before a 404."
    )
    admin_key: SecretStr | None = Field(
        None, description="If set, PUT /label-sets/{name} needs 'Authorization: Bearer <admin key>'; unset: "
        "creating label sets over HTTP is off (403)."
    )
    max_label_sets: int = Field(64, ge=1, le=10_000, description="Named label sets a server loads and accepts (PUT of "
                                "a new name beyond: 409).")
    max_labels: int = Field(256, ge=2, le=4096, description="Labels per label set, named or ad hoc (422 beyond).")
    max_label_chars: int = Field(100, ge=1, le=1000, description="Characters per label (422 beyond).")
    label_cache_size: int = Field(
        4096, ge=0, description="Ad-hoc label embeddings kept per worker (LRU, keyed by label text and prompt mode)."
    )
    max_label_set_examples: int = Field(
        2048, ge=1, le=100_000, description="Example images of one PUT /label-sets/{name}, all labels together "
        "(413 beyond); the body limit (max_body_bytes) applies too."
    )
    max_example_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Bytes of one example image (413 beyond).")
    label_set_timeout_s: float = Field(
        600.0, gt=0.0, description="Deadline of a PUT /label-sets/{name} with examples (they go through the "
        "batches chunk by chunk, waiting for room in the in-flight budget); past it: 504 or 503."
    )
    metrics_label_sets: int = Field(
        16, ge=0, le=1000, description="Named label sets with their own value of the metrics' label_set label (the "
        "first ones used); later ones count as 'other', ad-hoc labels as 'ad-hoc'."
    )

    @model_validator(mode="after")
    def _limits_that_can_work(self) -> Settings:
        if self.max_queue_size < self.max_batch_size:
            raise ValueError(
                f"max_queue_size ({self.max_queue_size}) must be >= max_batch_size ({self.max_batch_size}): "
                "a batch could never fill"
            )
        if self.max_images_per_request > self.max_queue_size:
            raise ValueError(
                f"max_images_per_request ({self.max_images_per_request}) must be <= max_queue_size "
                f"({self.max_queue_size}): a full request could never be admitted"
            )
        if self.max_body_bytes_in_flight < self.max_body_bytes:
            raise ValueError(
                f"max_body_bytes_in_flight ({self.max_body_bytes_in_flight}) must be >= max_body_bytes "
                f"({self.max_body_bytes}): a body of the largest size could never be received"
            )
        if self.device_decode == "on" and self.engine != "torch":
            raise ValueError(f"device_decode=on needs the torch engine (engine is {self.engine!r})")
        return self

    def threads(self) -> ThreadPlan:
        """Instances, intra-op threads and decode workers: the explicit settings, else CPU-budget defaults.

        With ``workers > 1`` each uvicorn worker process gets an equal share of the budget, so the
        processes together do not start more threads than the CPUs they may use.
        """
        budget = max(1, cpu_budget() // self.workers)
        return ThreadPlan.derive(budget, self.instances, self.intra_op_threads, self.preprocess_workers)

    def batch_buckets(self) -> list[int]:
        """Powers of two up to ``max_batch_size``, and ``max_batch_size`` itself: warm-up shapes."""
        buckets = [1]
        while buckets[-1] * 2 < self.max_batch_size:
            buckets.append(buckets[-1] * 2)
        if buckets[-1] != self.max_batch_size:
            buckets.append(self.max_batch_size)
        return buckets


def default_text(name: str) -> str:
    """A setting's default as the docs and ``deltagate serve --help`` show it ("unset" for None)."""
    value = Settings.model_fields[name].default
    return "unset" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def settings_table() -> str:
    """The Markdown table of every setting (env name, default, description), as in docs/service.md.

    Generated from ``Settings.model_fields``, so the docs cannot drift: a test compares the two.
    """
    from models.markdown import markdown_table

    rows = []
    for name, field in Settings.model_fields.items():
        default = default_text(name)
        rows.append([f"`DELTAGATE_{name.upper()}`", default if default == "unset" else f"`{default}`",
                     field.description or ""])
    return markdown_table(["env variable", "default", "meaning"], rows)
