"""A Python client of the deltagate service: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio).

    from deltagate.client import Client

    with Client("http://localhost:8000") as client:
        answer = client.classify(["star.png", "noise.png"])
    for result in answer:
        print(result.label, result.is_ood, result.delta_energy)

Images are file paths, encoded bytes, PIL images or NumPy arrays (uint8, (H, W), (H, W, 3) or (H, W, 4)). A
long list is sent in requests of at most the server's ``max_images_per_request`` (read once from ``GET
/model``), and the answers come back as one :class:`Classification`, in the order of the images. Each request
is retried on 503 (overloaded, not ready) and on connection errors, waiting what ``Retry-After`` says (else an
exponential backoff with jitter), within :class:`RetryPolicy`'s attempts and total time; every other error is
raised at once as :class:`DeltagateError`. Results are the service's own response models
(:class:`service.schemas.ImageResult`), so a field added to the API is a field of the result.

Only the core dependencies are needed (httpx, pydantic, Pillow, NumPy). See ``docs/client.md``.
"""

from __future__ import annotations

import asyncio
import email.utils
import io
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
from PIL import Image

from service.schemas import ClassifyResponse, ImageErrorEntry, ImageResult, ModelRef

__all__ = ["Client", "AsyncClient", "Classification", "RetryPolicy", "DeltagateError", "DeltagateConnectionError",
           "ImageInput"]

ImageInput = str | os.PathLike[str] | bytes | bytearray | memoryview | Image.Image | np.ndarray
OnError = Literal["fail", "skip"]
Prompts = Literal["learned", "zero-shot"]

# Connection failures worth another try: nothing was answered (refused, reset, closed mid-request). A read
# timeout is not among them: the request may still be running, and the timeout is the caller's bound.
_RETRYABLE_ERRORS: tuple[type[Exception], ...] = (
    httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError,
)


class DeltagateError(Exception):
    """An error answer of the service (its ``{"error": {...}}`` envelope), after any retries.

    Attributes:
        status: the HTTP status.
        code: the service's error code (``invalid_image``, ``overloaded``, ...).
        message: what was wrong.
        details: structured details, if any.
        request_id: the request's ``X-Request-ID`` (the server logs it).
        attempts: how many times the request was sent.
    """

    def __init__(self, status: int, code: str, message: str, details: Any = None, request_id: str | None = None,
                 attempts: int = 1) -> None:
        super().__init__(f"{status} {code}: {message}" + (f" (after {attempts} attempts)" if attempts > 1 else ""))
        self.status, self.code, self.message, self.details = status, code, message, details
        self.request_id, self.attempts = request_id, attempts

    @classmethod
    def from_response(cls, response: httpx.Response, attempts: int = 1) -> DeltagateError:
        try:
            body = response.json()
            error = body["error"]
            if isinstance(error, str):  # an Open Inference Protocol route, or a proxy's answer
                error = {"message": error}
        except (ValueError, KeyError, TypeError):
            body, error = {}, {"message": response.text[:500]}
        return cls(response.status_code, str(error.get("code", "http_error")), str(error.get("message", "")),
                   error.get("details"), response.headers.get("x-request-id") or body.get("request_id"), attempts)


class DeltagateConnectionError(ConnectionError):
    """The service could not be reached (or closed the connection) on every attempt."""


@dataclass(frozen=True)
class RetryPolicy:
    """When to send a request again.

    Args:
        attempts: the most times one request is sent (1: never retried).
        backoff_s: the first wait when the server gives no ``Retry-After``; it doubles each time, and the wait
            is drawn between half of it and all of it (jitter, so that clients that failed together do not
            come back together).
        max_backoff_s: the longest such wait.
        total_s: no retry starts later than this after the request was first sent (the waits included).
        statuses: the statuses retried (503: overloaded or not ready; the service answers it before it has
            done any work, so a retry is safe).
    """

    attempts: int = 5
    backoff_s: float = 0.25
    max_backoff_s: float = 8.0
    total_s: float = 60.0
    statuses: frozenset[int] = frozenset({503})

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff_s < 0 or self.max_backoff_s < 0 or self.total_s < 0:
            raise ValueError(f"invalid retry policy: {self}")


def retry_after_s(response: httpx.Response, now: float | None = None) -> float | None:
    """The wait a response's ``Retry-After`` asks for (seconds or an HTTP date), None if it has none."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass
class _Tries:
    """One request's retry state: what to do after each outcome (shared by both clients)."""

    policy: RetryPolicy
    on_retry: Callable[[int, float, httpx.Response | None], None] | None = None
    started: float = field(default_factory=time.monotonic)
    sent: int = 0

    def after(self, outcome: httpx.Response | Exception) -> float | httpx.Response:
        """The response to return, or the seconds to wait before sending again.

        Raises:
            DeltagateError: an error answer that is not retried, or the last one when no retry is left.
            DeltagateConnectionError: the last connection error when no retry is left.
        """
        self.sent += 1
        response = outcome if isinstance(outcome, httpx.Response) else None
        if response is not None and response.status_code not in self.policy.statuses:
            if response.is_error:
                raise DeltagateError.from_response(response, self.sent)
            return response
        asked = retry_after_s(response) if response is not None else None
        backoff = min(self.policy.max_backoff_s, self.policy.backoff_s * 2 ** (self.sent - 1))
        delay = asked if asked is not None else random.uniform(backoff / 2, backoff)
        if self.sent >= self.policy.attempts or time.monotonic() - self.started + delay > self.policy.total_s:
            if response is not None:
                raise DeltagateError.from_response(response, self.sent)
            assert isinstance(outcome, Exception)
            raise DeltagateConnectionError(f"no answer after {self.sent} attempts: {outcome}") from outcome
        if self.on_retry is not None:
            self.on_retry(self.sent, delay, response)
        return delay


@dataclass
class Classification:
    """The answers for one :meth:`Client.classify` call: a result per classified image, in input order.

    Iterating, indexing and ``len`` go over :attr:`results`; ``result.index`` is the image's position in the
    call's list (not in the request it went in).
    """

    results: list[ImageResult]
    errors: list[ImageErrorEntry]  # with on_error="skip": the images that could not be classified
    model: ModelRef
    request_ids: list[str]  # one per request sent (X-Request-ID: the server's log lines carry it)
    label_set: str | None = None  # the classes answered with: None = the bundle's own (label sets: issue 17)
    calibrated: bool = True  # whether the threshold was calibrated on ID images of these classes

    def __iter__(self) -> Iterator[ImageResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, i: int) -> ImageResult:
        return self.results[i]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def encode_image(image: ImageInput, index: int) -> tuple[str, bytes]:
    """One image as (filename, encoded bytes) for the multipart body.

    Raises:
        TypeError: not one of the accepted kinds, or an array that is not an 8-bit image.
        OSError: a path that cannot be read.
    """
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        return path.name, path.read_bytes()
    if isinstance(image, bytes | bytearray | memoryview):
        return f"image{index}", bytes(image)
    if isinstance(image, Image.Image):
        return f"image{index}.png", _png(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4))):
            raise TypeError(f"image {index}: an array must be uint8 of shape (H, W), (H, W, 3) or (H, W, 4); got "
                            f"{image.dtype} {image.shape} (for floats in [0, 1]: (a * 255).round().astype(np.uint8))")
        return f"image{index}.png", _png(Image.fromarray(image))
    raise TypeError(f"image {index}: a path, bytes, a PIL image or a NumPy array, not {type(image).__name__}")


@dataclass(frozen=True)
class _Call:
    """What one classify call sends in each request (everything but the images)."""

    params: dict[str, Any]
    fields: dict[str, Any]
    asks_label_set: bool = False

    @classmethod
    def of(cls, top_k: int | None, on_error: OnError, label_set: str | None, labels: Sequence[str] | None,
           prompts: Prompts | None) -> _Call:
        if label_set is not None and labels is not None:
            raise ValueError("give either label_set (a named set) or labels (ad-hoc), not both")
        params: dict[str, Any] = {"on_error": on_error}
        if top_k is not None:
            params["top_k"] = top_k
        if label_set is not None:
            params["label_set"] = label_set
        if prompts is not None:
            params["prompts"] = prompts
        fields = {"labels": list(labels)} if labels is not None else {}
        return cls(params, fields, label_set is not None or labels is not None)

    def files(self, images: Sequence[ImageInput], first: int) -> list[tuple[str, tuple[str, bytes]]]:
        return [("file", encode_image(image, first + i)) for i, image in enumerate(images)]


def _merge(answers: Sequence[tuple[int, httpx.Response]], call: _Call) -> Classification:
    """The requests' answers (each with its first image's position) as one :class:`Classification`.

    Raises:
        DeltagateError: label sets were asked for, but the service answered without saying which classes it
            used (a service older than label sets ignores the arguments: its bundle's classes would pass for
            the ones asked).
    """
    results: list[ImageResult] = []
    errors: list[ImageErrorEntry] = []
    bodies = []
    for first, response in answers:
        body = response.json()
        if call.asks_label_set and "label_set" not in body:
            raise DeltagateError(response.status_code, "label_sets_unsupported", "the service answered with its "
                                 "bundle's classes: it does not serve label sets (label_set=, labels=)",
                                 request_id=body.get("request_id"))
        parsed = ClassifyResponse.model_validate(body)
        results += [r.model_copy(update={"index": r.index + first}) for r in parsed.results]
        errors += [e.model_copy(update={"index": e.index + first}) for e in parsed.errors]
        bodies.append((parsed, body))
    (first_parsed, first_body), *_ = bodies
    return Classification(results, errors, first_parsed.model, [p.request_id for p, _ in bodies],
                          first_body.get("label_set"), bool(first_body.get("calibrated", True)))


@contextmanager
def _numbered_from(first: int) -> Iterator[None]:
    """An error answer's ``details["index"]`` counted in the call's list, not in its request (whose first image
    is the call's ``first``); the message keeps the server's words."""
    try:
        yield
    except DeltagateError as exc:
        if isinstance(exc.details, dict) and isinstance(exc.details.get("index"), int):
            exc.details = {**exc.details, "index": exc.details["index"] + first}
        raise


def _chunks(count: int, size: int) -> list[range]:
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


def _max_images(model_info: dict[str, Any]) -> int:
    return int(model_info["batching"]["max_images_per_request"])


class _Base:
    def __init__(self, url: str, api_key: str | None, timeout: float | httpx.Timeout,
                 retry: RetryPolicy | None, max_images_per_request: int | None,
                 on_retry: Callable[[int, float, httpx.Response | None], None] | None) -> None:
        self.url = url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.max_images_per_request = max_images_per_request
        self.on_retry = on_retry
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = timeout

    def _tries(self) -> _Tries:
        return _Tries(self.retry, self.on_retry)


class Client(_Base):
    """A blocking client of one deltagate service.

    Args:
        url: the service's base URL, e.g. ``http://localhost:8000``.
        api_key: the service's API key, if it has one (``Authorization: Bearer``).
        timeout: seconds per HTTP request (connect, write, read), or an ``httpx.Timeout``.
        retry: when to retry (default :class:`RetryPolicy`); ``RetryPolicy(attempts=1)`` never retries.
        max_images_per_request: images per request; default: the server's (``GET /model``, read once).
        on_retry: called before each retry with (attempts so far, seconds to wait, the 503 response or None for
            a connection error): for logging.
        transport: an httpx transport (tests: ``httpx.MockTransport``).
    """

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float | httpx.Timeout = 60.0,
                 retry: RetryPolicy | None = None, max_images_per_request: int | None = None,
                 on_retry: Callable[[int, float, httpx.Response | None], None] | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(url, api_key, timeout, retry, max_images_per_request, on_retry)
        self._http = httpx.Client(base_url=self.url, headers=self._headers, timeout=timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        tries = self._tries()
        while True:
            try:
                outcome: httpx.Response | Exception = self._http.request(method, path, **kwargs)
            except _RETRYABLE_ERRORS as exc:
                outcome = exc
            step = tries.after(outcome)
            if isinstance(step, httpx.Response):
                return step
            time.sleep(step)

    def model(self) -> dict[str, Any]:
        """``GET /model``: the bundle, its classes, threshold, engine and batching limits."""
        return dict(self._send("GET", "/model").json())

    def ready(self) -> bool:
        """Whether the service is ready (``GET /readyz``), without retrying."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def classify(self, images: Sequence[ImageInput] | ImageInput, *, top_k: int | None = None,
                 on_error: OnError = "fail", label_set: str | None = None, labels: Sequence[str] | None = None,
                 prompts: Prompts | None = None) -> Classification:
        """Classify images; an out-of-distribution one has ``is_ood`` true (refuse its label).

        Args:
            images: one image or a list (paths, bytes, PIL images, uint8 arrays); sent in requests of at most
                ``max_images_per_request``, one after the other.
            top_k: entries of each result's ``top_k`` (default: the server's).
            on_error: ``fail``: an image that does not decode raises :class:`DeltagateError` (400/413);
                ``skip``: it is listed in ``errors`` and the others are answered. Either way images are counted
                in the call's list (``details["index"]``, ``result.index``).
            label_set: classify against this named label set instead of the bundle's classes.
            labels: classify against these ad-hoc labels (zero-shot; ``calibrated`` is false).
            prompts: prompt mode of ad-hoc labels (``learned`` or ``zero-shot``; default: the bundle's).

        Raises:
            DeltagateError: an error answer (after retries for 503).
            DeltagateConnectionError: the service could not be reached.
            TypeError, OSError: an image that cannot be read or is not of an accepted kind.
            ValueError: both ``label_set`` and ``labels``, or no image.
        """
        items = _as_list(images)
        call = _Call.of(top_k, on_error, label_set, labels, prompts)
        size = self.max_images_per_request or _max_images(self.model())
        self.max_images_per_request = size
        answers = []
        for part in _chunks(len(items), size):
            with _numbered_from(part.start):
                answers.append((part.start, self._send("POST", "/classify", params=call.params, data=call.fields,
                                                       files=call.files(items[part.start:part.stop], part.start))))
        return _merge(answers, call)


class AsyncClient(_Base):
    """The asyncio twin of :class:`Client` (same arguments); ``classify`` sends up to ``max_concurrency``
    requests at once."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float | httpx.Timeout = 60.0,
                 retry: RetryPolicy | None = None, max_images_per_request: int | None = None,
                 on_retry: Callable[[int, float, httpx.Response | None], None] | None = None,
                 max_concurrency: int = 4, transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(url, api_key, timeout, retry, max_images_per_request, on_retry)
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.max_concurrency = max_concurrency
        self._http = httpx.AsyncClient(base_url=self.url, headers=self._headers, timeout=timeout,
                                       transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        tries = self._tries()
        while True:
            try:
                outcome: httpx.Response | Exception = await self._http.request(method, path, **kwargs)
            except _RETRYABLE_ERRORS as exc:
                outcome = exc
            step = tries.after(outcome)
            if isinstance(step, httpx.Response):
                return step
            await asyncio.sleep(step)

    async def model(self) -> dict[str, Any]:
        """``GET /model``."""
        return dict((await self._send("GET", "/model")).json())

    async def ready(self) -> bool:
        """Whether the service is ready (``GET /readyz``), without retrying."""
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    async def classify(self, images: Sequence[ImageInput] | ImageInput, *, top_k: int | None = None,
                       on_error: OnError = "fail", label_set: str | None = None,
                       labels: Sequence[str] | None = None, prompts: Prompts | None = None) -> Classification:
        """As :meth:`Client.classify`; the requests of a long list run ``max_concurrency`` at a time."""
        items = _as_list(images)
        call = _Call.of(top_k, on_error, label_set, labels, prompts)
        size = self.max_images_per_request or _max_images(await self.model())
        self.max_images_per_request = size
        limit = asyncio.Semaphore(self.max_concurrency)

        async def one(part: range) -> tuple[int, httpx.Response]:
            async with limit:
                files = call.files(items[part.start:part.stop], part.start)
                with _numbered_from(part.start):
                    return part.start, await self._send("POST", "/classify", params=call.params, data=call.fields,
                                                        files=files)

        return _merge(await asyncio.gather(*(one(part) for part in _chunks(len(items), size))), call)


def _as_list(images: Sequence[ImageInput] | ImageInput) -> list[ImageInput]:
    single = isinstance(images, str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray)
    items: list[ImageInput] = [images] if single else list(images)  # type: ignore[list-item, arg-type]
    if not items:
        raise ValueError("no image to classify")
    return items
