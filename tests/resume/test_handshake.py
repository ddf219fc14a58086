"""The resume handshake refuses wrong proofs, replayed nonces, other users and unknown streams."""

from __future__ import annotations

import pytest

from roamgate.resume.endpoint import MIN_CAP, BufferFull, Endpoint, StreamError
from roamgate.resume.frames import (
    MAX_BODY,
    Ack,
    Close,
    Data,
    Frame,
    FrameDecoder,
    FrameError,
    Open,
    Refused,
    Resume,
    decode_body,
    encode,
)
from roamgate.resume.handshake import (
    ClientStream,
    Entry,
    OpenRequested,
    Refusal,
    ResumeRequested,
    ServerCarrier,
    StreamOpened,
    StreamRefused,
    StreamResumed,
    StreamTable,
    proof,
)
from tests.resume.harness import counter_bytes

CAP = MIN_CAP


class Gateway:
    def __init__(self, grace: float = 600) -> None:
        tokens = counter_bytes()

        def token(n: int) -> bytes:
            return next(tokens)[:n]

        self.token = token
        self.table: StreamTable[None] = StreamTable(
            grace=grace, max_per_user=2, token_bytes=self.token
        )

    def carrier(self) -> ServerCarrier:
        return ServerCarrier(self.token(32))

    def answer(self, carrier: ServerCarrier, data: bytes, user: str, now: float = 0) -> str:
        """Feeds the connector's answer; returns 'opened', 'resumed' or the refusal reason."""
        (event,) = carrier.receive_data(data)
        if isinstance(event, OpenRequested):
            entry = self.table.open(user, Endpoint(CAP), None)
            assert isinstance(entry, Entry)
            carrier.accept_open(entry.endpoint, entry.stream_id, entry.secret)
            return "opened"
        assert isinstance(event, ResumeRequested)
        found = self.table.resume(user, event.request, nonce=carrier.nonce, now=now)
        if isinstance(found, Refusal):
            carrier.refuse()
            return found.reason
        carrier.accept_resume(found.endpoint, event.request.received)
        return "resumed"


def exchange(client: ClientStream, carrier: ServerCarrier) -> bytes:
    """The challenge reaches the connector; returns its answer."""
    client.carrier_up()
    assert client.receive_data(carrier.data_to_send()) == []
    return client.data_to_send()


def opened(gw: Gateway, user: str = "alice") -> tuple[ClientStream, Entry[None]]:
    client = ClientStream(CAP)
    carrier = gw.carrier()
    assert gw.answer(carrier, exchange(client, carrier), user) == "opened"
    (event,) = client.receive_data(carrier.data_to_send())
    assert isinstance(event, StreamOpened)
    (entry,) = [e for e in gw.table.of_user(user) if e.stream_id == event.stream_id]
    entry.endpoint.detach()
    gw.table.detached(entry, 0)
    client.carrier_down()
    return client, entry


def test_a_resume_with_the_right_proof_is_accepted() -> None:
    gw = Gateway()
    client, entry = opened(gw)
    client.endpoint.write(b"held while the line was down")
    carrier = gw.carrier()
    assert gw.answer(carrier, exchange(client, carrier), "alice", now=10) == "resumed"
    assert entry.expires_at is None
    events = client.receive_data(carrier.data_to_send())
    assert events == [StreamResumed(0)]
    carrier.receive_data(client.data_to_send())
    assert entry.endpoint.read(100) == b"held while the line was down"


def test_a_wrong_proof_is_refused() -> None:
    gw = Gateway()
    client, entry = opened(gw)
    carrier = gw.carrier()
    client.carrier_up()
    client.receive_data(carrier.data_to_send())
    client.data_to_send()
    forged = Resume(entry.stream_id, carrier.nonce, b"\0" * 32, 0)
    assert gw.answer(carrier, encode(forged), "alice") == "wrong_proof"
    # The connector hears only "refused", and the stream stays for its owner.
    (event,) = client.receive_data(carrier.data_to_send())
    assert event == StreamRefused("refused")
    assert entry.stream_id in {e.stream_id for e in gw.table.entries()}


def test_a_recorded_resume_replayed_on_a_new_carrier_is_refused() -> None:
    gw = Gateway()
    client, _entry = opened(gw)
    carrier = gw.carrier()
    recorded = exchange(client, carrier)
    assert gw.answer(carrier, recorded, "alice") == "resumed"
    # An eavesdropper on that carrier replays the same RESUME later: its nonce is stale.
    later = gw.carrier()
    assert gw.answer(later, recorded, "alice") == "replayed_nonce"


def test_a_second_answer_on_one_carrier_is_a_protocol_error() -> None:
    gw = Gateway()
    carrier = gw.carrier()
    # The nonce is used up by the first answer: no second OPEN or RESUME on the same carrier.
    with pytest.raises(StreamError, match="second answer"):
        carrier.receive_data(encode(Open()) + encode(Open()))
    with pytest.raises(StreamError, match="Ack before OPEN"):
        gw.carrier().receive_data(encode(Ack(0)))


def test_another_user_cannot_resume_even_with_the_proof() -> None:
    gw = Gateway()
    client, _entry = opened(gw, "alice")
    carrier = gw.carrier()
    assert gw.answer(carrier, exchange(client, carrier), "mallory") == "other_user"


def test_an_unknown_stream_and_an_expired_one_are_refused() -> None:
    gw = Gateway(grace=60)
    client, entry = opened(gw)
    carrier = gw.carrier()
    unknown = Resume(b"u" * 16, carrier.nonce, proof(b"s" * 32, b"u" * 16, carrier.nonce), 0)
    assert gw.answer(carrier, encode(unknown), "alice") == "unknown_stream"
    carrier = gw.carrier()
    assert gw.answer(carrier, exchange(client, carrier), "alice", now=61) == "expired"
    assert gw.table.entries() == []
    # Still "expired" (not unknown) afterwards, for the audit trail.
    carrier = gw.carrier()
    client.carrier_down()
    client2 = ClientStream(CAP)
    client2.stream_id, client2._secret = entry.stream_id, entry.secret
    assert gw.answer(carrier, exchange(client2, carrier), "alice", now=62) == "expired"


def test_expiry_returns_the_streams_whose_grace_has_passed() -> None:
    gw = Gateway(grace=60)
    _client, entry = opened(gw)
    assert gw.table.expired(59.9) == []
    assert gw.table.expired(60) == [entry]
    assert len(gw.table) == 0


def test_a_user_has_a_bounded_number_of_streams() -> None:
    gw = Gateway()
    opened(gw)
    opened(gw)
    assert gw.table.open("alice", Endpoint(CAP), None) == Refusal("too_many_streams")
    assert isinstance(gw.table.open("bob", Endpoint(CAP), None), Entry)


def test_the_resend_buffer_is_capped_with_a_clear_error() -> None:
    end = Endpoint(CAP)
    end.write(b"x" * (CAP - 10))
    assert end.room == 10
    with pytest.raises(BufferFull, match="acknowledgement"):
        end.write(b"y" * 11)
    assert end.sent == CAP - 10  # nothing of the refused write was taken
    end.attach(0)
    end.data_to_send()
    end.receive_frame(Ack(CAP - 10))
    assert end.room == CAP
    with pytest.raises(ValueError, match="cap"):
        Endpoint(1024)


def test_offsets_that_break_the_rules_are_protocol_errors() -> None:
    end = Endpoint(CAP)
    end.write(b"abc")
    end.attach(0)
    with pytest.raises(StreamError, match="expected 0"):
        end.receive_frame(Data(5, 0, b"gap"))
    with pytest.raises(StreamError, match="only 3 were sent"):
        end.receive_frame(Ack(4))
    with pytest.raises(StreamError, match="holds 0-3"):
        end.attach(9)
    with pytest.raises(StreamError, match="CLOSE at 1"):
        end.receive_frame(Close(1))
    with pytest.raises(StreamError, match="inside a stream"):
        end.receive_frame(Refused("x"))


def test_the_decoder_takes_frames_one_byte_at_a_time_and_caps_a_frame() -> None:
    frames: list[Frame] = [Data(0, 0, b"hello"), Ack(5), Close(5)]
    wire = b"".join(encode(f) for f in frames)
    decoder = FrameDecoder()
    got = []
    for i in range(len(wire)):
        got += decoder.feed(wire[i : i + 1])
    assert got == frames
    assert decoder.buffered == 0
    with pytest.raises(FrameError, match="exceeds"):
        FrameDecoder().feed(b"\x10" + (MAX_BODY + 1).to_bytes(4, "big"))
    with pytest.raises(FrameError, match="unknown frame kind"):
        decode_body(99, b"")
    with pytest.raises(FrameError, match="expected 32"):
        decode_body(1, b"short")
