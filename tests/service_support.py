"""Helpers shared by the service tests: generated images and an in-process running app."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import numpy as np
from fastapi import FastAPI
from PIL import Image

from service.app import create_app
from service.settings import Settings


def encode(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    """(H, W, 3) uint8 -> encoded image bytes."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def class_image(cls: int, num_classes: int = 4, size: int = 64, fmt: str = "PNG") -> bytes:
    """An image the dummy engine classifies as ``cls`` with a large ΔEnergy (in-distribution)."""
    arr = np.zeros((size, size, 3), np.uint8)
    width = size // num_classes
    arr[:, cls * width : (cls + 1) * width] = 255
    return encode(arr, fmt)


def uniform_image(value: int = 128, size: tuple[int, int] = (40, 50)) -> bytes:
    """A flat image: the dummy engine gives it ΔEnergy ≈ 0.3, below its threshold (OOD)."""
    return encode(np.full((*size, 3), value, np.uint8))


def noise_image(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    return encode(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def files(*images: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart ``file`` fields for httpx."""
    return [("file", (f"img{i}.png", data, "image/png")) for i, data in enumerate(images)]


def dummy_settings(**overrides: object) -> Settings:
    base: dict[str, object] = {"engine": "dummy", "bundle_path": "/nonexistent/bundle", "max_wait_ms": 2.0}
    return Settings(**{**base, **overrides})  # type: ignore[arg-type]


@asynccontextmanager
async def running(app: FastAPI, wait_ready: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan (load, warm-up; stop at exit) and give an httpx client on it."""
    async with app.router.lifespan_context(app):
        if wait_ready:
            await app.state.runtime.wait_started()
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


@asynccontextmanager
async def serve(settings: Settings | None = None) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    app = create_app(settings or dummy_settings())
    async with running(app) as client:
        yield client, app
