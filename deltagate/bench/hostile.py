"""Issue 16's request-level attacks, before and after: what each costs a real server and how it is answered.

Each configuration is a checkout of deltagate (e.g. an older commit unpacked with ``git archive``)
serving the same bundle with the same settings (a small admission budget, so that the slow-body
attack needs few connections). Every round runs each attack against every configuration in turn
(interleaved), each server in its own process on 127.0.0.1:

* ``strip``: a complete 1x100000 PNG of a few hundred bytes (the resize scaled the short side up);
* ``json_array``: a 2 MB JSON array of 1M integers where the images go;
* ``json_deep``: 100k-deep nesting; ``top_k_json``: a top_k of 5000 digits; ``top_k_form``: "²";
* ``slow_bodies``: ``--slow`` connections trickle multipart bodies (4 bytes/s) while normal
  requests are sent one after another for 6 s (the body read timeout is 4 s); the share of normal
  requests answered 200, and what the slow senders were answered.

Per attack: the status, the answer's size, the seconds, and the server's peak resident growth
(``VmHWM`` reset before each, Linux ``clear_refs``). The JSON has every round; the table medians.
Run::

    git archive <base> | tar -x -C /tmp/before
    python -m deltagate.bench.hostile --config before=/tmp/before --config after=. \\
        --rounds 3 --out results/hostile/request-level.json
"""

from __future__ import annotations

import argparse
import json
import logging
import select
import socket
import statistics
import struct
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from deltagate.server_process import ServerProcess, deltagate_server
from models.markdown import markdown_table
from service.settings import Settings

__all__ = ["PNG_SIGNATURE", "png_chunk", "bilevel_png", "reset_peak_rss_kib", "peak_rss_kib", "SlowSender", "ATTACKS",
           "main"]

logger = logging.getLogger(__name__)

MIB = 1024 * 1024


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC (for hand-made headers that claim what they like)."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bilevel_png(width: int, height: int) -> bytes:
    """A complete, decodable 1-bit PNG of width x height black pixels (zlib makes it tiny)."""
    rows = (b"\0" + b"\0" * ((width + 7) // 8)) * height  # filter byte + packed pixels, per row
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(rows, 9))
            + png_chunk(b"IEND", b""))


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} for pid {pid}")


def reset_peak_rss_kib(pid: int) -> int:
    """Reset the process's peak resident size to its current one (Linux ``clear_refs`` 5); returns it (KiB)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status_kib(pid, "VmHWM")


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident size since the last reset (KiB)."""
    return _status_kib(pid, "VmHWM")


def status_line(response: bytes) -> int | None:
    """The status of a raw HTTP response, or None when nothing (or no status line) came."""
    if not response.startswith(b"HTTP/1."):
        return None
    return int(response.split(b" ", 2)[1])


@dataclass
class SlowSender:
    """A client that sends a multipart request's headers at once, then its body one byte at a time when told.

    Args:
        url: the server's base URL.
        declared: the ``Content-Length`` it announces (never reached by a slow sender).
    """

    url: str
    declared: int = 10_000
    sock: socket.socket = field(init=False)
    opened: float = field(init=False)
    answer: bytes = b""
    answered_after: float | None = None  # seconds from opening to the first byte of the answer
    closed: bool = False  # the server closed the connection (EOF or reset)

    def __post_init__(self) -> None:
        host, port = self.url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10.0)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = ("POST /classify HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary=slow\r\n"
                f"Content-Length: {self.declared}\r\n\r\n--slow\r\n"
                'Content-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n')
        self.opened = time.monotonic()
        self.sock.sendall(head.encode())

    def tick(self) -> None:
        """Send one more body byte (unless the server has answered) and read what has come."""
        self.poll()
        if self.answered_after is None and not self.closed:
            try:
                self.sock.send(b"x")
            except OSError:
                self.closed = True

    def poll(self) -> None:
        """Read whatever the server has sent, without blocking."""
        while not self.closed and select.select([self.sock], [], [], 0)[0]:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                self.closed = True
                return
            if not chunk:
                self.closed = True
                return
            if self.answered_after is None:
                self.answered_after = time.monotonic() - self.opened
            self.answer += chunk

    @property
    def status(self) -> int | None:
        return status_line(self.answer)

    @property
    def error(self) -> dict[str, Any]:
        """The JSON error body of the answer."""
        return json.loads(self.answer.split(b"\r\n\r\n", 1)[1])

    def close(self) -> None:
        self.sock.close()


def _small_png() -> bytes:
    return bilevel_png(64, 64)


def _post(client: httpx.Client, **kwargs: Any) -> dict[str, Any]:
    """One POST /classify on ``client``'s kept-alive connection (a new one costs ~0.1 s of client set-up)."""
    start = time.perf_counter()
    response = client.post("/classify", **kwargs)
    return {"status": response.status_code, "answer_bytes": len(response.content),
            "seconds": round(time.perf_counter() - start, 4)}


def _json(body: bytes) -> dict[str, Any]:
    return {"content": body, "headers": {"content-type": "application/json"}}


_IMAGE: dict[str, Any] = {"files": {"file": ("a.png", _small_png(), "image/png")}}
ATTACKS: dict[str, dict[str, Any]] = {
    "strip": {"files": {"file": ("strip.png", bilevel_png(1, 100_000), "image/png")}},
    "json_array": _json(b'{"images": [' + b",".join([b"0"] * 1_000_000) + b"]}"),
    "json_deep": _json(b'{"images": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    "top_k_json": _json(b'{"images": ["AAAA"], "top_k": ' + b"9" * 5000 + b"}"),
    "top_k_form": {**_IMAGE, "data": {"top_k": "²"}},
}


def _attack(server: ServerProcess, client: httpx.Client, name: str) -> dict[str, Any]:
    pid = server.proc.pid
    base = reset_peak_rss_kib(pid)
    out = _post(client, **ATTACKS[name])
    out["peak_growth_mib"] = round((peak_rss_kib(pid) - base) / 1024, 1)
    return out


def _slow_bodies(server: ServerProcess, senders: int, seconds: float) -> dict[str, Any]:
    """``senders`` trickling bodies while normal requests go one after another for ``seconds``."""
    slow = [SlowSender(server.url) for _ in range(senders)]
    stop = threading.Event()

    def trickle() -> None:
        while not stop.is_set():
            for sender in slow:
                sender.tick()
            time.sleep(0.25)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    statuses = []
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            statuses.append(client.post("/classify", **_IMAGE).status_code)
    stop.set()
    thread.join()
    for sender in slow:
        sender.poll()
        sender.close()
    return {"normal": len(statuses), "normal_ok_share": round(statuses.count(200) / max(1, len(statuses)), 3),
            "slow_answered": {str(s): sum(1 for x in slow if x.status == s) for s in {x.status for x in slow}}}


@dataclass(frozen=True)
class Config:
    label: str
    repo: Path  # a deltagate checkout (its code is what runs)

    @classmethod
    def parse(cls, text: str) -> Config:
        label, _, repo = text.partition("=")
        return cls(label, Path(repo).resolve())


def run(
    configs: list[Config], bundle: Path, rounds: int, slow: int, port_range: tuple[int, int] | None
) -> dict[str, Any]:
    """Every attack against every configuration, ``rounds`` times, interleaved; the samples."""
    settings = Settings(bundle_path=bundle.resolve(), max_batch_size=4, max_queue_size=8, max_images_per_request=4,
                        body_read_timeout_s=4.0, instances=1, log_level="warning")
    servers = {c.label: deltagate_server(settings, pythonpath=str(c.repo), port_range=port_range, name=c.label)
               for c in configs}
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {c.label: {} for c in configs}
    try:
        for server in servers.values():
            server.start()
        for server in servers.values():
            server.wait_ready()
        for r in range(rounds):
            for name in [*ATTACKS, "slow_bodies"]:
                for label, server in servers.items():
                    with httpx.Client(base_url=server.url, timeout=120.0) as client:
                        _post(client, **_IMAGE)  # the server answers before the attack (and the connection is open)
                        if name == "slow_bodies":
                            sample = _slow_bodies(server, slow, 6.0)
                        else:
                            sample = _attack(server, client, name)
                    with httpx.Client(base_url=server.url, timeout=120.0) as client:  # the attack may close its own
                        sample["after_ok"] = _post(client, **_IMAGE)["status"] == 200
                    samples[label].setdefault(name, []).append(sample)
                    logger.info("round %d %s %s: %s", r, label, name, sample)
    finally:
        for server in servers.values():
            server.__exit__(None, None, None)
    return {"settings": {"bundle": str(bundle), "max_queue_size": 8, "max_batch_size": 4, "body_read_timeout_s": 4.0,
                         "slow_senders": slow}, "rounds": rounds, "samples": samples}


def table(result: dict[str, Any]) -> str:
    """Medians per configuration and attack (every status seen)."""
    rows = []
    for label, attacks in result["samples"].items():
        for name, samples in attacks.items():
            if name == "slow_bodies":
                share = statistics.median(s["normal_ok_share"] for s in samples)
                answered = sorted({f"{k}: {v}" for s in samples for k, v in s["slow_answered"].items()})
                rows.append([label, name, f"normal requests answered 200: {share:.0%}", "", "",
                             f"slow senders answered (status: count): {', '.join(answered)}"])
                continue
            rows.append([label, name, ", ".join(str(x) for x in sorted({s["status"] for s in samples})),
                         f"{statistics.median(s['answer_bytes'] for s in samples):.0f}",
                         f"{statistics.median(s['seconds'] for s in samples):.3f}",
                         f"{statistics.median(s['peak_growth_mib'] for s in samples):.1f}"])
    return markdown_table(["config", "attack", "status", "answer bytes", "seconds", "peak growth (MiB)"], rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--config", action="append", required=True, type=Config.parse, help="label=checkout")
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slow", type=int, default=24, help="Slow senders (3x the budget of 8).")
    parser.add_argument("--ports", default=None, help="first-last port to use, e.g. 18440-18449")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    ports = tuple(int(p) for p in args.ports.split("-")) if args.ports else None
    result = run(args.config, args.bundle, args.rounds, args.slow, ports)  # type: ignore[arg-type]
    result["command"] = "python -m deltagate.bench.hostile " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    args.out.with_suffix(".md").write_text(table(result) + "\n", encoding="utf-8")
    sys.stdout.write(table(result) + "\n")


if __name__ == "__main__":
    main()
