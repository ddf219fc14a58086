"""Both ends of a resumable stream over a simulated carrier that a test cuts at chosen bytes."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

from roamgate.resume.endpoint import Endpoint
from roamgate.resume.handshake import (
    ClientStream,
    Entry,
    OpenRequested,
    Refusal,
    ResumeRequested,
    ServerCarrier,
    StreamRefused,
    StreamTable,
)

CAP = 64 * 1024


def counter_bytes() -> Iterator[bytes]:
    """Deterministic 'random' bytes for ids, secrets and nonces (distinct every call)."""
    for n in itertools.count(1):
        yield n.to_bytes(8, "big") * 8


@dataclass
class Run:
    """One client stream and the gateway's table; the carrier is two byte queues."""

    client_data: bytes
    server_data: bytes
    cuts: list[int]  # bytes delivered on a carrier (both directions) before it is cut
    deliver: int = 997  # bytes moved per step and direction
    read: int = 1500  # bytes an application reads per step
    client: ClientStream = field(default_factory=lambda: ClientStream(CAP))
    now: float = 0.0

    def __post_init__(self) -> None:
        tokens = counter_bytes()

        def token(n: int) -> bytes:
            return next(tokens)[:n]

        self._token = token
        self.table: StreamTable[None] = StreamTable(
            grace=600, max_per_user=4, token_bytes=self._token
        )
        self.entry: Entry[None] | None = None
        self.client_got = bytearray()
        self.server_got = bytearray()
        self._c_written = 0
        self._s_written = 0
        self.carriers = 0
        self.refusals: list[str] = []
        self.orphans = 0
        self._new_carrier()

    # -- the carrier
    def _new_carrier(self) -> None:
        self.carriers += 1
        self.server = ServerCarrier(self._token(32))
        self.client.carrier_up()
        self.c2s = bytearray()
        self.s2c = bytearray()
        self.on_carrier = 0
        self.budget = self.cuts.pop(0) if self.cuts else None

    def _cut(self) -> None:
        self.client.carrier_down()
        if self.entry is not None and self.server.endpoint is self.entry.endpoint:
            self.entry.endpoint.detach()
            self.table.detached(self.entry, self.now)
        self._new_carrier()

    def _move(self, queue: bytearray, limit: int) -> bytes:
        n = min(len(queue), limit)
        if self.budget is not None:
            n = min(n, self.budget - self.on_carrier)
        data = bytes(queue[:n])
        del queue[:n]
        self.on_carrier += n
        return data

    def _server_events(self, data: bytes) -> None:
        for event in self.server.receive_data(data):
            if isinstance(event, OpenRequested):
                opened = self.table.open("alice", Endpoint(CAP), None)
                assert not isinstance(opened, Refusal)
                if self.entry is not None:
                    # The OPENED answer was cut off: the connector opens again and the first
                    # stream is an orphan the connector never saw a byte of (it expires).
                    assert not self.client_got and not self.server_got
                    self.orphans += 1
                    self._s_written = 0
                self.entry = opened
                self.server.accept_open(opened.endpoint, opened.stream_id, opened.secret)
            elif isinstance(event, ResumeRequested):
                found = self.table.resume(
                    "alice", event.request, nonce=self.server.nonce, now=self.now
                )
                assert not isinstance(found, Refusal), found
                self.server.accept_resume(found.endpoint, event.request.received)

    # -- one round: applications write and read, the carrier moves bytes both ways
    def step(self) -> None:
        ce = self.client.endpoint
        if self._c_written < len(self.client_data) and ce.room:
            chunk = self.client_data[self._c_written : self._c_written + min(ce.room, 3000)]
            ce.write(chunk)
            self._c_written += len(chunk)
        elif self._c_written == len(self.client_data) and not ce.closed:
            ce.close()
        self.client_got += ce.read(self.read)
        se = self.entry.endpoint if self.entry is not None else None
        if se is not None:
            if self._s_written < len(self.server_data) and se.room:
                chunk = self.server_data[self._s_written : self._s_written + min(se.room, 5000)]
                se.write(chunk)
                self._s_written += len(chunk)
            elif self._s_written == len(self.server_data) and not se.closed:
                se.close()
            self.server_got += se.read(self.read)
        self.c2s += self.client.data_to_send()
        self.s2c += self.server.data_to_send()
        up = self._move(self.c2s, self.deliver)
        if up:
            self._server_events(up)
        down = self._move(self.s2c, self.deliver)
        if down:
            for event in self.client.receive_data(down):
                if isinstance(event, StreamRefused):
                    self.refusals.append(event.reason)
        if self.budget is not None and self.on_carrier >= self.budget:
            self._cut()

    def finished(self) -> bool:
        return (
            self.entry is not None
            and self.client.endpoint.finished
            and self.entry.endpoint.finished
            and self.client.endpoint.at_eof
            and self.entry.endpoint.at_eof
        )

    def run(self, max_steps: int = 100_000) -> None:
        for _ in range(max_steps):
            if self.finished():
                return
            self.step()
        raise AssertionError("the stream did not finish")
