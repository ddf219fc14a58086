"""FETCH plans for lean renditions, the response splitter and sequence sets, as transcripts."""

from __future__ import annotations

import pytest

from roamgate.gateway.lean_cache import LeanCache
from roamgate.imap.assemble import Assembler
from roamgate.imap.command_parser import CommandParser
from roamgate.imap.events import LIST_END, NEED_DATA, Event, LineEnd, ResponseStart
from roamgate.imap.fetch_plan import LeanItem, header_length, item_range, plan_fetch
from roamgate.imap.fetch_response import BodyChunk, BodyEnd, FetchSplitter, ListClosed
from roamgate.imap.response_parser import ResponseParser
from roamgate.imap.sequence_set import parse_sequence_set
from roamgate.imap.serialize import serialize_command, serialize_events
from roamgate.imap.values import Command


def command(line: bytes) -> Command:
    parser, assembler = CommandParser(), Assembler()
    parser.receive_data(line)
    while True:
        event = parser.next_event()
        assert event is not NEED_DATA
        item = assembler.push(event)  # type: ignore[arg-type]
        if isinstance(item, Command):
            return item


def test_whole_message_items_become_one_stored_message_and_uid() -> None:
    plan = plan_fetch(command(b"a1 FETCH 1:5 (FLAGS RFC822.SIZE BODY.PEEK[HEADER] ENVELOPE)\r\n"))
    assert plan is not None
    assert serialize_command(plan.upstream) == b"a1 FETCH 1:5 (FLAGS ENVELOPE UID BODY.PEEK[])\r\n"
    assert serialize_command(plan.from_cache) == b"a1 FETCH 1:5 (FLAGS ENVELOPE UID)\r\n"
    assert [i.key for i in plan.lean] == [b"RFC822.SIZE", b"BODY[HEADER]"]
    assert not plan.seen and not plan.keep_uid and plan.message_set == b"1:5"


def test_items_that_set_seen_ask_for_body_and_the_seen_setter() -> None:
    plan = plan_fetch(command(b"a2 UID FETCH 7 (RFC822)\r\n"))
    assert plan is not None and plan.seen and plan.keep_uid and plan.uid_command
    assert serialize_command(plan.upstream) == b"a2 UID FETCH 7 (UID BODY[])\r\n"
    assert serialize_command(plan.from_cache) == (
        b"a2 UID FETCH 7 (UID BODY[HEADER.FIELDS (X-ROAMGATE-SEEN)])\r\n"
    )


def test_macros_ranges_and_what_passes_through() -> None:
    plan = plan_fetch(command(b"a3 FETCH 2 FAST\r\n"))
    assert plan is not None and [i.key for i in plan.lean] == [b"RFC822.SIZE"]
    plan = plan_fetch(command(b"a4 FETCH 2 (BODY.PEEK[]<0.100> BODY[TEXT]<5.10>)\r\n"))
    assert plan is not None
    assert plan.lean == (
        LeanItem(b"BODY[]<0>", "all", (0, 100)),
        LeanItem(b"BODY[TEXT]<5>", "text", (5, 10)),
    )
    for line in (
        b"a5 FETCH 2 (BODY.PEEK[2] BODYSTRUCTURE)\r\n",
        b"a6 FETCH 2 (BODY.PEEK[HEADER.FIELDS (SUBJECT)] FLAGS)\r\n",
        b"a7 FETCH 2 (BINARY.PEEK[1] ENVELOPE)\r\n",
        b"a8 STORE 2 +FLAGS (\\Seen)\r\n",
    ):
        assert plan_fetch(command(line)) is None, line


def test_item_ranges_are_cut_from_one_rendition() -> None:
    size, header = 1000, 300
    assert item_range(LeanItem(b"BODY[]", "all"), size, header) == (0, 1000)
    assert item_range(LeanItem(b"BODY[HEADER]", "header"), size, header) == (0, 300)
    assert item_range(LeanItem(b"BODY[TEXT]", "text"), size, header) == (300, 700)
    assert item_range(LeanItem(b"BODY[TEXT]<0>", "text", (690, 50)), size, header) == (990, 10)
    assert item_range(LeanItem(b"BODY[]<0>", "all", (5000, 5)), size, header) == (1000, 0)


def split(data: bytes, *, keep_uid: bool = True) -> tuple[bytes, bytes, FetchSplitter]:
    """(what the client gets, the stored message taken out, the splitter)."""
    parser = ResponseParser()
    parser.receive_data(data)
    splitter = FetchSplitter(keep_uid=keep_uid)
    start = parser.next_event()
    assert isinstance(start, ResponseStart)
    out: list[Event] = [start]
    body = b""
    while True:
        event = parser.next_event()
        if event is NEED_DATA:
            break
        for action in splitter.push(event):  # type: ignore[arg-type]
            if isinstance(action, BodyChunk):
                body += action.data
            elif isinstance(action, ListClosed):
                out.append(LIST_END)  # the proxy writes its lean items, then this
            elif not isinstance(action, BodyEnd):
                out.append(action)
        if isinstance(event, LineEnd):
            break
    return serialize_events(out), body, splitter


@pytest.mark.parametrize("keep_uid", [True, False])
def test_the_splitter_takes_out_the_stored_message_and_notes_the_uid(keep_uid: bool) -> None:
    line = (
        b"* 3 FETCH (UID 44 FLAGS (\\Seen) BODY[] {5}\r\nhello BODY[2] {3}\r\nabc"
        b' BODYSTRUCTURE (("text" "plain" NIL NIL NIL "7bit" 1 1)("text" "html" NIL'
        b' NIL NIL "7bit" 1 1) "alternative"))\r\n'
    )
    client, body, splitter = split(line, keep_uid=keep_uid)
    assert body == b"hello" and splitter.uid == 44 and splitter.captured
    uid = b"UID 44 " if keep_uid else b""
    assert client == (
        b"* 3 FETCH (" + uid + b'FLAGS (\\Seen) BODY[2] {3}\r\nabc BODYSTRUCTURE (("text"'
        b' "plain" NIL NIL NIL "7bit" 1 1)("text" "html" NIL NIL NIL "7bit" 1 1) "alternative"))\r\n'
    )


def test_the_seen_setter_is_taken_out_and_other_sections_pass() -> None:
    line = (
        b"* 1 FETCH (UID 9 BODY[HEADER.FIELDS (X-ROAMGATE-SEEN)] {2}\r\n\r\n"
        b" BODY[HEADER.FIELDS (SUBJECT)] {9}\r\nSubject:x FLAGS (\\Seen))\r\n"
    )
    client, body, splitter = split(line)
    assert body == b"" and not splitter.captured
    assert client == (
        b"* 1 FETCH (UID 9 BODY[HEADER.FIELDS (SUBJECT)] {9}\r\nSubject:x FLAGS (\\Seen))\r\n"
    )


def test_sequence_sets() -> None:
    s = parse_sequence_set(b"1:3,7,10:*")
    assert s is not None
    assert s.members(12, 100) == [1, 2, 3, 7, 10, 11, 12]
    assert 11 in s.resolve(12) and 8 not in s.resolve(12)
    assert parse_sequence_set(b"5:*") is not None
    assert parse_sequence_set(b"*:5").members(3, 10) == [3]  # type: ignore[union-attr]
    assert parse_sequence_set(b"1:4294967295").members(10, 5000) == list(range(1, 11))  # type: ignore[union-attr]
    for bad in (b"", b"0", b"1:0", b"a", b"1,,2", b"1:2:3"):
        assert parse_sequence_set(bad) is None, bad


def test_the_cache_is_bounded_and_forgets_a_recreated_mailbox() -> None:
    cache = LeanCache(max_bytes=100)
    for uid in range(1, 6):
        cache.put(("bob", "phs", "INBOX", 1, uid), bytes(30))
    assert cache.bytes <= 100 and len(cache) == 3
    assert cache.get(("bob", "phs", "INBOX", 1, 1)) is None
    entry = cache.get(("bob", "phs", "INBOX", 1, 5))
    assert entry is not None and entry.rendition == bytes(30)
    # A later FETCH that brought fewer items keeps the ones the entry had.
    cache.put(("bob", "phs", "INBOX", 1, 5), bytes(30), {b"ENVELOPE": b"NIL"})
    cache.put(("bob", "phs", "INBOX", 1, 5), bytes(30), {b"BODYSTRUCTURE": b"NIL"})
    entry = cache.get(("bob", "phs", "INBOX", 1, 5))
    assert entry is not None and set(entry.items) == {b"ENVELOPE", b"BODYSTRUCTURE"}
    cache.drop_mailbox("bob", "INBOX", keep_uidvalidity=2)
    assert len(cache) == 0 and cache.bytes == 0
    cache.put(("bob", "phs", "INBOX", 1, 1), bytes(300_000))  # over MAX_ITEM: not kept
    assert len(cache) == 0


def test_a_rendition_without_header_fields_has_a_two_byte_header() -> None:
    assert header_length(b"\r\npara1\r\n\r\npara2\r\n") == 2
    assert header_length(b"From: a\r\n\r\nbody") == 11
    assert header_length(b"From: a\r\n") == 9  # a header and no body
