"""The in-flight image budget: one owner of the count of images admitted and not yet in a forward.

The budget (``max_queue_size``) covers every image admitted and not yet taken into a batch, in two
parts that :class:`Admission` keeps, and only it changes:

* **reserved**: admitted by a request whose body is being parsed or whose images are being decoded.
  Each request holds its share through a :class:`Ticket`, which changes it only through the
  admission's methods;
* **queued**: decoded and waiting in :class:`service.batcher.Batcher`'s queue.

Over the budget, :class:`~service.errors.OverloadedError` (503) comes back and no count changes. A
count never goes negative: releasing or moving more than is held is a bug, refused with
:class:`ValueError`, so a double release cannot hide as a budget that slowly grows.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from service.errors import OverloadedError

__all__ = ["Admission", "Ticket"]


class Admission:
    """Images admitted and not yet in a forward (one per batcher; the event loop is its only user).

    Args:
        limit: the most images admitted at once (``max_queue_size``).
        on_change: called with :attr:`depth` whenever it changes (the queue-depth gauge).
    """

    def __init__(self, limit: int, on_change: Callable[[int], None] | None = None) -> None:
        self.limit = limit
        self._reserved = 0
        self._queued = 0
        self._on_change = on_change or (lambda depth: None)

    @property
    def reserved(self) -> int:
        """Images admitted and not queued yet (bodies being parsed, images being decoded)."""
        return self._reserved

    @property
    def queued(self) -> int:
        """Images decoded and waiting for a forward."""
        return self._queued

    @property
    def depth(self) -> int:
        """Images admitted and not yet in a forward (reserved + queued)."""
        return self._reserved + self._queued

    def check(self, n: int) -> None:
        """Refuse if ``n`` more images would not fit; changes nothing.

        Raises:
            OverloadedError: the budget cannot take them now.
        """
        if self.depth + n > self.limit:
            raise OverloadedError(
                f"overloaded: {self.depth}/{self.limit} images in flight, {n} more do not fit; retry later"
            )

    def admit(self, n: int) -> Ticket:
        """Reserve ``n`` images for a new request.

        Raises:
            OverloadedError: they do not fit (nothing reserved).
        """
        self.reserve(n)
        return Ticket(self, n)

    def reserve(self, n: int) -> None:
        """Reserve ``n`` more images (for :meth:`Ticket.grow`).

        Raises:
            OverloadedError: they do not fit (nothing reserved).
        """
        self.check(n)
        self._change(reserved=n)

    def unreserve(self, n: int) -> None:
        """Give back ``n`` reserved images (a request that ends before they were queued)."""
        self._take("reserved", n)
        self._change(reserved=-n)

    def to_queue(self, n: int) -> None:
        """Move ``n`` reserved images to the queue (they stay in the budget, with no await between)."""
        self._take("reserved", n)
        self._change(reserved=-n, queued=n)

    def leave_queue(self, n: int = 1) -> None:
        """``n`` queued images left the queue: taken into a batch, or their request gave up."""
        self._take("queued", n)
        self._change(queued=-n)

    def _take(self, part: str, n: int) -> None:
        held = self._reserved if part == "reserved" else self._queued
        if not 0 <= n <= held:
            raise ValueError(f"cannot take {n} {part} images: {held} are {part}")

    def _change(self, reserved: int = 0, queued: int = 0) -> None:
        if reserved or queued:
            self._reserved += reserved
            self._queued += queued
            self._on_change(self.depth)


class Ticket:
    """A request's reserved images: counted in the budget until they are queued or it is released.

    Made by :meth:`Admission.admit`. Use as a context manager; whatever is still held at exit is
    released (e.g. a request whose body turned out to be invalid).
    """

    def __init__(self, admission: Admission, held: int) -> None:
        self._admission = admission
        self._held = held

    @property
    def held(self) -> int:
        """Images this request holds in the budget and has not queued."""
        return self._held

    def grow(self, total: int) -> None:
        """Hold ``total`` images instead of the provisional count (once the body is read).

        Raises:
            OverloadedError: the budget cannot take the extra images; the ticket keeps what it held.
        """
        if total > self._held:
            self._admission.reserve(total - self._held)
            self._held = total

    def queue(self, n: int) -> None:
        """``n`` of the held images were queued: they move from reserved to queued.

        Raises:
            ValueError: the ticket holds fewer than ``n``.
        """
        if n > self._held:
            raise ValueError(f"cannot queue {n} images: the ticket holds {self._held}")
        self._admission.to_queue(n)
        self._held -= n

    def release(self) -> None:
        """Give back what is still held (idempotent: a second release gives back nothing)."""
        held, self._held = self._held, 0
        self._admission.unreserve(held)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
