"""The admission count's owner: never negative, released once, an overload refused without changing a count."""

from __future__ import annotations

import random

import pytest

from service.admission import Admission, Ticket
from service.errors import OverloadedError

pytestmark = pytest.mark.unit


def counts(a: Admission) -> tuple[int, int, int]:
    return a.reserved, a.queued, a.depth


def test_a_ticket_moves_its_images_to_the_queue_and_gives_back_the_rest() -> None:
    seen: list[int] = []
    a = Admission(8, on_change=seen.append)
    with a.admit(1) as t:  # one provisional image while the body is read
        t.grow(5)
        assert counts(a) == (5, 0, 5) and t.held == 5
        t.queue(3)  # two of the five failed to decode
        assert counts(a) == (2, 3, 5) and t.held == 2
    assert counts(a) == (0, 3, 3) and t.held == 0  # leaving gave back the two
    a.leave_queue(3)
    assert counts(a) == (0, 0, 0)
    assert seen == [1, 5, 5, 3, 0]  # the depth, at every change and only then


def test_an_overload_is_refused_without_changing_any_count() -> None:
    seen: list[int] = []
    a = Admission(4, on_change=seen.append)
    t = a.admit(3)
    before, calls = counts(a), len(seen)
    with pytest.raises(OverloadedError, match="3/4 images in flight, 2 more do not fit"):
        a.admit(2)
    with pytest.raises(OverloadedError):
        t.grow(5)
    with pytest.raises(OverloadedError):
        a.check(2)
    assert counts(a) == before and t.held == 3 and len(seen) == calls
    a.check(1)  # exactly full is allowed
    t.grow(4)
    assert counts(a) == (4, 0, 4)


def test_a_ticket_is_released_once() -> None:
    a = Admission(4)
    other = a.admit(1)
    t = a.admit(2)
    t.release()
    t.release()  # a second release gives back nothing: the other ticket's image stays counted
    with t:
        pass  # and so does leaving after a release
    assert counts(a) == (1, 0, 1) and t.held == 0 and other.held == 1


def test_no_count_goes_negative() -> None:
    a = Admission(4)
    t = a.admit(2)
    with pytest.raises(ValueError, match="the ticket holds 2"):
        t.queue(3)
    with pytest.raises(ValueError, match="cannot take 3 reserved images: 2 are reserved"):
        a.unreserve(3)
    with pytest.raises(ValueError, match="cannot take 3 reserved"):
        a.to_queue(3)
    with pytest.raises(ValueError, match="cannot take 1 queued images: 0 are queued"):
        a.leave_queue()
    with pytest.raises(ValueError):
        a.unreserve(-1)
    assert counts(a) == (2, 0, 2) and t.held == 2


def test_random_traffic_keeps_the_counts_equal_to_what_the_tickets_and_the_queue_hold() -> None:
    rng = random.Random(0)
    a = Admission(16)
    tickets: list[Ticket] = []
    queue = 0  # images queued and not yet taken out, as a batcher would see them
    refused = 0
    for _ in range(5000):
        op = rng.choice(["admit", "grow", "queue", "release", "leave"])
        try:
            if op == "admit":
                tickets.append(a.admit(rng.randint(1, 6)))
            elif op == "grow" and tickets:
                t = rng.choice(tickets)
                t.grow(t.held + rng.randint(0, 6))
            elif op == "queue" and tickets:
                t = rng.choice(tickets)
                n = rng.randint(0, t.held)
                t.queue(n)
                queue += n
            elif op == "release" and tickets:
                tickets.pop(rng.randrange(len(tickets))).release()
            elif op == "leave" and queue:
                n = rng.randint(1, queue)
                a.leave_queue(n)
                queue -= n
        except OverloadedError:
            refused += 1
        assert a.reserved == sum(t.held for t in tickets) >= 0
        assert a.queued == queue >= 0
        assert a.depth <= a.limit
    assert refused > 0  # the budget was reached, so the refusals were exercised
    for t in tickets:
        t.release()
    a.leave_queue(queue)
    assert counts(a) == (0, 0, 0)
