"""One end of a resumable stream: byte offsets, acknowledgements, the capped resend buffer.

An Endpoint outlives its carriers. The rules it keeps (tests/resume check each):

1. Offsets count bytes from 0, per direction. `sent`: bytes the application wrote here;
   `received`: bytes that arrived from the peer (into the inbound buffer); `consumed`: bytes the
   application read from it. consumed <= received.
2. acked <= transmitted <= sent. The resend buffer holds exactly the bytes [acked, sent), and
   sent - acked <= cap: write() takes nothing beyond `room` and raises BufferFull instead, so the
   caller applies back-pressure (a full buffer loses nothing).
3. A DATA frame must start exactly at `received`: a carrier is reliable and in order, and every
   carrier starts at the offset this end reported. A gap or an overlap is a protocol error.
4. An ACK (or the ack in a DATA frame) may not pass `sent`; an older one changes nothing.
   Acknowledged means read by the peer's application (or reported at a resume, rule 6), so the
   peer's inbound buffer is bounded by this end's cap; a peer with more than MAX_WINDOW bytes
   unacknowledged is a protocol error.
5. An acknowledgement is sent once ACK_EVERY bytes have been read since the last one, on every
   DATA frame (piggybacked), and once everything is read after the peer's CLOSE. A sender
   waits for one only with a full buffer, and cap >= MIN_CAP > ACK_EVERY makes one due then.
6. attach(peer_received) starts a carrier. It needs acked <= peer_received <= sent; the bytes
   before it are dropped from the buffer, the bytes from it on are sent again, in order: nothing
   is sent twice to the peer's application, nothing is skipped. The offset this end reports at the
   same time is `received`, which the peer takes as acknowledged.
7. While detached, nothing is sent; writes are taken up to the cap and reads drain the inbound
   buffer as usual.
8. close() ends this direction at `sent`; its CLOSE frame follows the data and is sent again
   after every attach until the stream is finished. A CLOSE must name `received` exactly.
9. Finished: this end closed, the peer's CLOSE received, and everything sent acknowledged.
"""

from __future__ import annotations

from roamgate.resume.frames import MAX_DATA, Ack, Close, Data, Frame, encode

ACK_EVERY = 16 * 1024
MIN_CAP = 4 * ACK_EVERY  # below this a sender could wait for an acknowledgement never due
MAX_WINDOW = 16 * 1024 * 1024  # the most a peer may leave unacknowledged (its cap)


class StreamError(Exception):
    """The peer broke a rule of the stream: the carrier is dropped (and the stream, if it lies)."""


class BufferFull(Exception):
    """The resend buffer would exceed its cap: write at most `room` bytes, then wait for acks."""


class Endpoint:
    """One direction's sender state and the other's receiver state (rules at the module top)."""

    def __init__(self, cap: int) -> None:
        if not MIN_CAP <= cap <= MAX_WINDOW:
            raise ValueError(f"the resend buffer cap must be {MIN_CAP}-{MAX_WINDOW} bytes")
        self.cap = cap
        self.sent = 0
        self.acked = 0
        self.transmitted = 0
        self.received = 0
        self.consumed = 0
        self.ack_sent = 0  # what the peer knows this end has acknowledged
        self.closed = False  # this end's direction has ended (close())
        self.peer_closed = False
        self.attached = False
        self.carriers = 0
        self._resend = bytearray()  # bytes [acked, sent)
        self._inbound = bytearray()  # bytes [consumed, received)
        self._close_transmitted = False
        self._discarding = False

    # -- the application's side
    @property
    def room(self) -> int:
        if self.closed:
            return 0
        return self.cap - (self.sent - self.acked)

    def write(self, data: bytes) -> None:
        if self.closed:
            raise StreamError("write after close")
        if len(data) > self.room:
            raise BufferFull(
                f"{len(data)} bytes do not fit: {self.sent - self.acked} of {self.cap}"
                " bytes are waiting for the peer's acknowledgement"
            )
        self._resend += data
        self.sent += len(data)

    def close(self) -> None:
        self.closed = True

    @property
    def available(self) -> int:
        return len(self._inbound)

    @property
    def at_eof(self) -> bool:
        """The peer has closed and every byte it sent has been read."""
        return self.peer_closed and not self._inbound

    def read(self, n: int) -> bytes:
        data = bytes(self._inbound[:n])
        del self._inbound[: len(data)]
        self.consumed += len(data)
        return data

    def discard_input(self) -> None:
        """The application will read no more: what comes is taken and thrown away (acknowledged)."""
        self._discarding = True
        self.consumed = self.received
        self._inbound.clear()

    @property
    def finished(self) -> bool:
        return self.closed and self.peer_closed and self.acked == self.sent

    # -- carriers
    def attach(self, peer_received: int) -> int:
        """A new carrier; the peer has `peer_received` bytes. Returns how many are sent again
        (sent on a lost carrier, never received)."""
        if not self.acked <= peer_received <= self.sent:
            raise StreamError(
                f"the peer claims {peer_received} bytes; this end holds {self.acked}-{self.sent}"
            )
        resent = max(0, self.transmitted - peer_received)
        self._ack_to(peer_received)
        self.transmitted = peer_received
        self.ack_sent = max(self.ack_sent, self.received)
        self._close_transmitted = False
        self.attached = True
        self.carriers += 1
        return resent

    def detach(self) -> None:
        self.attached = False

    def receive_frame(self, frame: Frame) -> None:
        match frame:
            case Data(offset=offset, ack=ack, payload=payload):
                if self.peer_closed:
                    raise StreamError("DATA after CLOSE")
                if offset != self.received:
                    raise StreamError(f"DATA at {offset}, expected {self.received}")
                self._on_ack(ack)
                self.received += len(payload)
                if self.received - self.ack_sent > MAX_WINDOW:
                    raise StreamError("the peer left more than MAX_WINDOW bytes unacknowledged")
                if self._discarding:
                    self.consumed = self.received
                else:
                    self._inbound += payload
            case Ack(offset=offset):
                self._on_ack(offset)
            case Close(offset=offset):
                if offset != self.received:
                    raise StreamError(f"CLOSE at {offset}, expected {self.received}")
                self.peer_closed = True
            case _:
                raise StreamError(f"{type(frame).__name__} frame inside a stream")

    def _on_ack(self, offset: int) -> None:
        if offset > self.sent:
            raise StreamError(f"acknowledgement of {offset} bytes; only {self.sent} were sent")
        if offset > self.acked:
            self._ack_to(offset)

    def _ack_to(self, offset: int) -> None:
        del self._resend[: offset - self.acked]
        self.acked = offset

    def _ack_due(self) -> bool:
        behind = self.consumed - self.ack_sent
        if behind <= 0:
            return False
        return behind >= ACK_EVERY or (self.peer_closed and self.consumed == self.received)

    def data_to_send(self) -> bytes:
        """The frames due on the current carrier (nothing while detached)."""
        if not self.attached:
            return b""
        out = bytearray()
        while self.transmitted < self.sent:
            start = self.transmitted - self.acked
            payload = bytes(self._resend[start : start + MAX_DATA])
            ack = max(self.consumed, self.ack_sent)
            out += encode(Data(self.transmitted, ack, payload))
            self.ack_sent = ack
            self.transmitted += len(payload)
        if self._ack_due():
            out += encode(Ack(self.consumed))
            self.ack_sent = self.consumed
        if self.closed and not self._close_transmitted:
            out += encode(Close(self.sent))
            self._close_transmitted = True
        return bytes(out)
