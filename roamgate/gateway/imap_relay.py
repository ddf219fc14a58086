"""After login: relay a client and the upstream IMAP session both ways, streaming literals.

Both directions are parsed, not copied: a command reaches the upstream only as events the codec
understood and wrote back, literal bodies pass through in chunks (never held whole), and the
upstream's capabilities are filtered on the way back. Two pumps run side by side; they share a
little state about what the upstream owes the client:

- a literal from the client waits for the upstream's continuation request, so a refused APPEND
  is refused by the server itself (end to end) and nothing is sent that it did not ask for;
- IDLE waits for the upstream's answer before the client's next line is read, so the DONE line
  can be read raw; a long IDLE is renewed upstream before 29 minutes without the client seeing it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from roamgate.gateway.compress import DeflateWriter, InflateReader
from roamgate.gateway.lean_cache import (
    IMMUTABLE_ITEMS,
    MAX_ITEM,
    CachedMessage,
    CacheKey,
    LeanCache,
)
from roamgate.gateway.lean_fetch import LeanFetch
from roamgate.gateway.streams import Reader, Writer
from roamgate.gateway.upstream import READ_SIZE, UpstreamImap
from roamgate.imap import capabilities
from roamgate.imap.assemble import Assembler
from roamgate.imap.command_parser import CommandParser
from roamgate.imap.deflate import InflateError, looks_compressed
from roamgate.imap.errors import ErrorKind
from roamgate.imap.events import (
    LINE_END,
    LIST_END,
    LIST_START,
    NEED_DATA,
    PAUSED,
    Atom,
    CodeEnd,
    CodeStart,
    CommandStart,
    ConnectionClosed,
    Event,
    LineEnd,
    LiteralChunk,
    LiteralEnd,
    LiteralStart,
    Number,
    ProtocolError,
    RawLine,
    ResponseKind,
    ResponseStart,
    Signal,
    Text,
)
from roamgate.imap.fetch_plan import FetchPlan, plan_fetch
from roamgate.imap.sequence_set import SequenceSet, parse_sequence_set
from roamgate.imap.serialize import EventWriter, command_events, error_reply
from roamgate.imap.values import Command, ValueList, astring
from roamgate.profiles import BUILTIN_PROFILES, DEFAULT_PROFILE, LinkProfile

log = logging.getLogger("roamgate.imap")

# Commands the proxy answers itself after login instead of passing them on.
_LOCAL_VERBS = frozenset({"STARTTLS", "LOGIN", "AUTHENTICATE", "COMPRESS"})
_FLUSH_AT = 64 * 1024
# On lean profiles these lines are read whole before they go upstream: a FETCH may be rewritten,
# and a SELECT names the mailbox whose renditions the cache keeps.
_COLLECTED_VERBS = frozenset({"FETCH", "UID FETCH", "SELECT", "EXAMINE"})
_PREFETCH_MAX = 5000
# Literal chunks at least this long that look compressed take the cheap DEFLATE path.
_LOW_EFFORT_MIN = 1024
_LOGOUT_WAIT = 10.0  # seconds for the upstream to answer a LOGOUT the proxy sent itself


@dataclass(frozen=True)
class RelaySettings:
    idle_timeout: float = 1800.0  # client silent this long (outside IDLE): autologout
    idle_renew: float = 25 * 60.0  # renew upstream IDLE before servers' 30-minute limit
    keepalive: float = 120.0  # an untagged OK to an idling client when all is quiet


class RelayEnded(Exception):
    """Internal: one side finished; the reason goes to the audit trail."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ImapRelay:
    """Runs until either side closes; returns the reason."""

    def __init__(
        self,
        client_reader: Reader,
        client_writer: Writer,
        client_parser: CommandParser,
        upstream: UpstreamImap,
        settings: RelaySettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        profile: LinkProfile = BUILTIN_PROFILES[DEFAULT_PROFILE],
        profile_name: str = DEFAULT_PROFILE,
    ) -> None:
        self.cr = client_reader
        self.cw = client_writer
        self.cp = client_parser
        self.up = upstream
        self.settings = settings
        self.clock = clock
        # The session's link profile (chosen at login): how whole-message fetches are shaped.
        self.profile = profile
        self.profile_name = profile_name
        self.bytes_in = 0
        self.bytes_out = 0
        # COMPRESS=DEFLATE toward the client (RFC 4978), once the client asked for it.
        self._deflate: DeflateWriter | None = None
        self._to_up = EventWriter()
        self._to_client = EventWriter()
        self._up_buf = bytearray()
        self._line_mark = 0  # where the client's current command starts in _up_buf
        self._client_buf = bytearray()
        self._client_lock = asyncio.Lock()  # whole lines to the client from either pump
        # What the upstream owes: a continuation for a literal or IDLE, per client tag.
        self._await_tag: bytes | None = None
        self._await: asyncio.Future[bool] | None = None
        self._relay_continuation = True
        self._swallow_tags: set[bytes] = set()
        self._swallow_continuations = 0
        self._rename: dict[bytes, bytes] = {}
        self._aborted: set[bytes] = set()  # client tags whose remaining events are dropped
        self._outstanding: set[bytes] = set()  # client tags the upstream has not completed
        self._idle_tag: bytes | None = None  # the client's IDLE, while idling
        self._logout = False
        self._up_line_open = False
        self._last_client_write = clock()
        self._last_client_read = clock()
        self._idle_since = clock()
        self._upstream_idle_tag: bytes = b""
        self._upstream_bye = False
        # Lean renditions (slow profiles). An untagged FETCH response does not say which
        # command it answers, and Dovecot answers pipelined FETCHes interleaved, so a FETCH
        # with a lean plan runs alone: after every earlier command has completed, and before
        # the client's next command is read. Every FETCH response meanwhile is its own.
        self._plan: FetchPlan | None = None
        self._progress = asyncio.Event()  # set when the upstream completes a command
        self._lean: LeanFetch | None = None
        # Named in every lean marker: the account that shows messages as stored (`bob#lan`).
        self.original_login: str | None = None
        self.lean_messages = 0
        self.lean_bytes_saved = 0
        # The selected mailbox as the upstream reported it, for the rendition cache: its name,
        # UIDVALIDITY and the UID of each sequence number as far as FETCH answers told it.
        self.cache: LeanCache | None = None  # the door's, set with user_name
        self.offer_compress = True  # False inside an SSH tunnel that compresses already
        # A resumable stream whose grace period ran out: the client will not come back, so the
        # upstream session is logged out rather than dropped (see _logout_upstream).
        self.logout_when_client_gone = False
        self.user_name = ""
        self.cache_hits = 0
        self.prefetched = 0
        self._mailbox: str | None = None
        self._uidvalidity: int | None = None
        self._uids: list[int | None] = []
        self._selecting: tuple[bytes, str] | None = None  # (client tag, mailbox) under way
        self._select_uidvalidity: int | None = None
        self._select_exists = 0
        self._code: bytes | None = None  # the response code being read (`[UIDVALIDITY`)
        self._plan_cached: dict[int, bytes] = {}
        # Headers first: after a SELECT the newest messages' renditions are made for the cache
        # while the slow client is still reading the SELECT's answer.
        self._prefetch_due = False
        self._prefetch_tag: bytes | None = None
        self._prefetch_probe = False  # the proxy's FETCH asks for UIDs only
        self._wake = asyncio.Event()  # wakes the client pump for a prefetch
        self._read_task: asyncio.Future[bytes] | None = None

    # -- running
    async def run(self) -> str:
        tasks = [
            asyncio.create_task(self._client_pump(), name="imap-client-pump"),
            asyncio.create_task(self._upstream_pump(), name="imap-upstream-pump"),
        ]
        reason = "closed"
        try:
            done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if isinstance(exc, RelayEnded):
                    reason = exc.reason
                elif exc is not None:
                    if isinstance(exc, ConnectionError | ssl.SSLError | OSError):
                        reason = "connection_lost"
                    else:
                        log.error("relay failed: %s", type(exc).__name__, exc_info=exc)
                        reason = "internal_error"
                        await self._bye(b"Internal error, closing.")
        finally:
            for task in tasks:
                task.cancel()
            if self._read_task is not None:
                self._read_task.cancel()
                tasks.append(self._read_task)  # type: ignore[arg-type]
            await asyncio.gather(*tasks, return_exceptions=True)
        return reason

    async def end(self, text: bytes) -> None:
        """Close from outside (admin revoke, shutdown): a BYE between lines, if possible."""
        await self._bye(text)

    # -- client -> upstream
    async def _client_event(self, wait: float | None, *, between: bool = False) -> Event | Signal:
        """The next client event, or PAUSED when a synchronising literal awaits our decision.

        between: the client is between commands, so the proxy may use the upstream (prefetch).
        """
        while True:
            event = self.cp.next_event()
            if event is NEED_DATA:
                await self._flush_up()
                self._wake.clear()
                if between and self._prefetch_due and self._idle_tag is None:
                    await self._prefetch()
                try:
                    data = await self._read_client(wait)
                    if data is None:
                        continue  # woken for proxy work
                except InflateError as exc:
                    log.info("invalid compressed data from the client: %s", exc)
                    await self._bye(b"Invalid compressed data.")
                    raise RelayEnded("client_protocol_error") from None
                if self._deflate is None:  # while compressed, the reader counts wire bytes
                    self.bytes_in += len(data)
                self.cp.receive_data(data)
                continue
            return event

    async def _read_client(self, wait: float | None) -> bytes | None:
        """Bytes from the client, or None when woken for proxy work first.

        The read is never cancelled by a time-out or a wake-up (a cancelled read of the
        compressed stream could lose bytes); the same read is awaited again next time.
        """
        if self._read_task is None:
            self._read_task = asyncio.ensure_future(self.cr.read(READ_SIZE))
        waker: asyncio.Future[object] = asyncio.ensure_future(self._wake.wait())
        reading: asyncio.Future[object] = self._read_task  # type: ignore[assignment]
        try:
            done, _ = await asyncio.wait(
                {reading, waker}, timeout=wait, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waker.cancel()
        if reading in done:
            task, self._read_task = self._read_task, None
            return task.result()
        if not done:
            raise TimeoutError
        return None

    def _client_silent_too_long(self) -> bool:
        """Autologout only when nothing is owed either way (a slow FETCH is not idleness)."""
        quiet = self.clock() - max(self._last_client_write, self._last_client_read)
        return not self._outstanding and quiet >= self.settings.idle_timeout

    async def _client_pump(self) -> None:
        command: CommandStart | None = None
        local = False
        local_args: list[Event] = []  # the arguments of a command the proxy answers itself
        partial_sent = False
        literal_ok = False
        collecting: list[Event] | None = None  # a FETCH line held until it can be planned
        while True:
            if self._idle_tag is not None:
                timeout = self._idle_wait_left()
            else:
                timeout = self.settings.idle_timeout
            try:
                event = await self._client_event(
                    timeout, between=command is None and collecting is None
                )
            except TimeoutError:
                if self._idle_tag is not None:
                    await self._renew_idle()
                elif self._client_silent_too_long():
                    await self._bye(b"Autologout; idle for too long.")
                    raise RelayEnded("idle_timeout") from None
                continue
            self._last_client_read = self.clock()
            if event is PAUSED:
                # The synchronising literal just announced: answer as the upstream did.
                if literal_ok:
                    self.cp.accept_literal()
                else:
                    self.cp.reject_literal()
                continue
            assert not isinstance(event, Signal)
            if collecting is not None:
                if isinstance(event, LineEnd):
                    collecting.append(event)
                    await self._send_collected(collecting)
                    collecting = command = None
                    if len(self._up_buf) >= _FLUSH_AT:
                        await self._flush_up()
                    continue
                if isinstance(event, ProtocolError):
                    collecting = None  # nothing of the line went upstream
                elif isinstance(event, LiteralStart | RawLine | ConnectionClosed):
                    # Not a plain line (a literal): relay it the usual way from here on. A
                    # SELECT written so names a mailbox the cache will not follow.
                    if isinstance(collecting[0], CommandStart) and collecting[0].verb in (
                        "SELECT",
                        "EXAMINE",
                    ):
                        self._forget_mailbox()
                    for held in collecting:
                        self._write_up(held)
                    collecting = None
                else:
                    collecting.append(event)
                    continue
            match event:
                case CommandStart():
                    command = event
                    partial_sent = False
                    local = event.verb in _LOCAL_VERBS
                    local_args = []
                    if not local:
                        self._outstanding.add(event.tag)
                        self._line_mark = len(self._up_buf)
                        if event.verb in ("CLOSE", "UNSELECT"):
                            self._forget_mailbox()
                        if self.profile.lean and event.verb in _COLLECTED_VERBS:
                            collecting = [event]
                            continue
                        self._write_up(event)
                        if event.verb == "LOGOUT":
                            self._logout = True
                case LiteralStart():
                    assert command is not None
                    literal_ok = False
                    if local or command.tag in self._aborted:
                        continue
                    # The upstream is asked first (always as a synchronising literal), so a
                    # refusal comes from the server itself; the client's `+` is the upstream's.
                    literal_ok = await self._send_literal_header(
                        command.tag, event, relay_plus=event.synchronizing
                    )
                    partial_sent = True
                    if not literal_ok:
                        self._aborted.add(command.tag)
                case LiteralChunk(data=data):
                    if command is not None and not local and command.tag not in self._aborted:
                        self._up_buf += data
                        if len(self._up_buf) >= _FLUSH_AT:
                            await self._flush_up()
                case LiteralEnd():
                    pass
                case LineEnd():
                    assert command is not None
                    tag = command.tag
                    if local and command.verb == "COMPRESS":
                        await self._compress(tag, local_args)
                    elif local:
                        await self._send_client(tag + b" BAD Not available in this state.\r\n")
                    elif tag in self._aborted:
                        # The upstream refused a literal and has answered; drop the rest.
                        self._aborted.discard(tag)
                    elif command.verb == "IDLE":
                        await self._start_idle(tag, event)
                    else:
                        # Flushed when the client has nothing more for now (_client_event), so
                        # pipelined commands leave in one write.
                        self._write_up(event)
                        self._line_mark = len(self._up_buf)  # a failed next line ends here
                        if len(self._up_buf) >= _FLUSH_AT:
                            await self._flush_up()
                    command = None
                case RawLine(data=data):
                    await self._done_idle(data)
                case ProtocolError():
                    await self._client_error(event, command, partial_sent)
                    command = None
                case ConnectionClosed():
                    if self.logout_when_client_gone and not self._logout and command is None:
                        await self._logout_upstream()
                    # After LOGOUT the client may hang up before the upstream does.
                    raise RelayEnded("logout" if self._logout else "client_closed")
                case _:
                    if command is not None and not local and command.tag not in self._aborted:
                        self._write_up(event)
                    elif local:
                        local_args.append(event)

    async def _logout_upstream(self) -> None:
        """LOGOUT upstream between commands (ending an IDLE first); the upstream pump ends the
        relay when the server closes, or this gives up after a while."""
        lines = b"DONE\r\n" if self._idle_tag is not None else b""
        self._logout = True
        self.up.writer.write(bytes(self._up_buf) + lines + b"rgbye LOGOUT\r\n")
        self._up_buf.clear()
        await self.up.writer.drain()
        await asyncio.sleep(_LOGOUT_WAIT)

    def _write_up(self, event: Event) -> None:
        self._up_buf += self._to_up.write(event)

    async def _send_collected(self, events: list[Event]) -> None:
        """A whole FETCH or SELECT line: as the client wrote it, or a FETCH rewritten and run
        alone (see _plan), from the cache when every rendition it needs is there."""
        assembler = Assembler(max_literal_total=0)
        item = None
        for event in events:
            item = assembler.push(event)
        plan = None
        if isinstance(item, Command):
            if item.verb in ("SELECT", "EXAMINE"):
                self._forget_mailbox()
                name = astring(item.args[0]) if item.args else None
                if name is not None:
                    self._selecting = (item.tag, name.decode("utf-8", "replace"))
                    self._select_uidvalidity, self._select_exists = None, 0
            else:
                plan = plan_fetch(item)
        if plan is None:
            for event in events:
                self._write_up(event)
            self._line_mark = len(self._up_buf)
            return
        tag = plan.upstream.tag
        await self._flush_up()
        await self._wait_until(lambda: self._outstanding <= {tag})
        if self._prefetch_due:
            # The first FETCH after a SELECT came before the prefetch could start (or with the
            # SELECT): the prefetch goes first, as it covers what such a FETCH usually asks.
            await self._prefetch(pending=tag)
        cached = self._cached_renditions(plan)
        if cached and self._answerable(plan, cached):
            await self._answer_from_cache(plan, cached)
            return
        self._plan = plan
        self._plan_cached = {uid: m.rendition for uid, m in (cached or {}).items()}
        for event in command_events(plan.from_cache if cached else plan.upstream):
            self._write_up(event)
        await self._flush_up()
        await self._wait_until(lambda: tag not in self._outstanding)

    @staticmethod
    def _other_items(plan: FetchPlan) -> list[bytes] | None:
        """The upper-case names of the items besides the lean ones and UID (None: not atoms)."""
        args = plan.from_cache.args
        if len(args) != 2 or not isinstance(args[1], ValueList):
            return None  # CHANGEDSINCE and the like: the upstream answers
        names = []
        for item in args[1].items:
            if not isinstance(item, Atom):
                return None
            if item.value.upper() != b"UID":
                names.append(item.value.upper())
        return names

    def _answerable(self, plan: FetchPlan, cached: dict[int, CachedMessage]) -> bool:
        """Nothing the upstream must say: lean items, UIDs and cached immutable items only."""
        names = self._other_items(plan)
        if plan.seen or names is None:
            return False
        return all(name in m.items for name in names for m in cached.values())

    async def _answer_from_cache(self, plan: FetchPlan, cached: dict[int, CachedMessage]) -> None:
        """Header fetches answered without the upstream, as its answer would have become."""
        tag = plan.upstream.tag
        names = self._other_items(plan) or []
        seqs = {uid: n for n, uid in enumerate(self._uids, 1) if uid in cached}
        async with self._client_lock:
            for uid, seq in sorted(seqs.items(), key=lambda pair: pair[1]):
                start = ResponseStart(ResponseKind.UNTAGGED, None, seq, b"FETCH")
                lean = LeanFetch(
                    start,
                    plan.lean,
                    self.profile,
                    profile_name=self.profile_name,
                    original_login=self.original_login,
                )
                self._write_client(start)
                self._write_client(LIST_START)
                if plan.keep_uid:
                    self._write_client(Atom(b"UID"))
                    self._write_client(Number(uid))
                for name in names:
                    self._write_client(Atom(name))
                    self._client_buf += b" " + cached[uid].items[name]
                for out in lean.items_from(cached[uid].rendition):
                    self._write_client(out)
                    if len(self._client_buf) >= _FLUSH_AT:
                        await self._flush_client()
                self._write_client(LIST_END)
                self._write_client(LINE_END)
                lean.close()
                self.cache_hits += 1
            self._client_buf += tag + b" OK Fetch completed (from the gateway's cache).\r\n"
            await self._flush_client()
        self._outstanding.discard(tag)

    # -- the rendition cache and the selected mailbox
    def _key(self, uid: int) -> CacheKey:
        assert self._mailbox is not None and self._uidvalidity is not None
        return (self.user_name, self.profile_name, self._mailbox, self._uidvalidity, uid)

    def _forget_mailbox(self) -> None:
        self._mailbox, self._uidvalidity, self._uids = None, None, []
        self._selecting = None

    def _cached_renditions(self, plan: FetchPlan) -> dict[int, CachedMessage] | None:
        """Every rendition the plan needs, by UID, if the cache has them all (else None)."""
        if self.cache is None or self._mailbox is None or self._uidvalidity is None:
            return None
        wanted = parse_sequence_set(plan.message_set)
        count = len(self._uids)
        if wanted is None or not count:
            return None
        if plan.uid_command:
            uids = self._uids_in(wanted)
            if uids is None:
                return None
        else:
            if any(max(lo, hi) > count for lo, hi in wanted.ranges):
                return None  # a number past EXISTS: the server's BAD, not ours
            seqs = wanted.members(count, _PREFETCH_MAX)
            if seqs is None:
                return None
            found_uids = [self._uids[n - 1] for n in seqs]
            if any(u is None for u in found_uids):
                return None
            uids = [u for u in found_uids if u is not None]
        found: dict[int, CachedMessage] = {}
        for uid in uids:
            entry = self.cache.get(self._key(uid))
            if entry is None:
                return None
            found[uid] = entry
        return found or None

    def _uids_in(self, wanted: SequenceSet) -> list[int] | None:
        """The UIDs of the mailbox in a UID set, or None if an unknown UID could be among them.

        UIDs rise with sequence numbers, so an unknown one lies between its known neighbours.
        """
        last = self._uids[-1]
        if last is None:
            return None  # `*` and the top of the range are not known
        resolved = wanted.resolve(last)
        above = [last] * len(self._uids)  # the next known UID after each position
        nearest = last
        for n in range(len(self._uids) - 1, -1, -1):
            above[n] = nearest
            nearest = self._uids[n] or nearest
        found: list[int] = []
        below = 0  # the known UID before the current position
        for n, uid in enumerate(self._uids):
            if uid is not None:
                below = uid
                if uid in resolved:
                    found.append(uid)
            elif any(lo < above[n] and hi > below for lo, hi in resolved.ranges):
                return None
        return found

    def _observe(self, event: Event) -> None:
        """Follow the selected mailbox in what the upstream says (EXISTS, EXPUNGE, UIDVALIDITY)."""
        if isinstance(event, ResponseStart):
            self._code = None
            if event.kind is ResponseKind.UNTAGGED and event.verb == "VANISHED":
                # QRESYNC reports expunges by UID; rather than follow it, the cache stops
                # answering for this mailbox until the next SELECT.
                self._forget_mailbox()
            if event.kind is ResponseKind.UNTAGGED and event.number is not None:
                verb = event.verb
                if verb == "EXISTS":
                    if self._selecting is not None:
                        self._select_exists = event.number
                    elif self._mailbox is not None and event.number >= len(self._uids):
                        self._uids.extend([None] * (event.number - len(self._uids)))
                elif verb == "EXPUNGE" and 1 <= event.number <= len(self._uids):
                    uid = self._uids.pop(event.number - 1)
                    if uid is not None and self.cache is not None and self._mailbox is not None:
                        self.cache.drop(self._key(uid))
        elif isinstance(event, CodeStart):
            self._code = event.name.upper()
        elif isinstance(event, Number) and self._code == b"UIDVALIDITY":
            self._select_uidvalidity = event.value
            self._code = None
        elif isinstance(event, CodeEnd):
            self._code = None

    def _selected(self, ok: bool) -> None:
        """The SELECT / EXAMINE under way has been answered."""
        assert self._selecting is not None
        _, name = self._selecting
        self._selecting = None
        if not ok or self._select_uidvalidity is None:
            return
        self._mailbox, self._uidvalidity = name, self._select_uidvalidity
        self._uids = [None] * self._select_exists
        if self.cache is not None:
            self.cache.drop_mailbox(self.user_name, name, keep_uidvalidity=self._uidvalidity)
        if self.profile.prefetch_depth and self._uids and self.cache is not None:
            self._prefetch_due = True
            self._wake.set()

    async def _prefetch(self, pending: bytes | None = None) -> None:
        """The newest messages' renditions into the cache, before the client's next command.

        pending: the tag of a client command read but not yet sent (it waits for this).
        """
        self._prefetch_due = False
        await self._wait_until(lambda: self._outstanding <= {pending} - {None})
        if self.cache is None or self._mailbox is None or not self._uids:
            return
        n = len(self._uids)
        first = max(1, n - min(self.profile.prefetch_depth, _PREFETCH_MAX) + 1)
        # First the UIDs (a few bytes each), then the bodies of only those not cached yet: a
        # mailbox opened again costs the upstream no second read of its newest messages.
        await self._own_fetch(b"FETCH %d:%d (UID)" % (first, n), probe=True)
        missing = [
            uid
            for uid in self._uids[first - 1 :]
            if uid is not None and self.cache.get(self._key(uid)) is None
        ]
        if missing and self._mailbox is not None:
            uid_set = b",".join(b"%d" % uid for uid in missing)
            await self._own_fetch(
                b"UID FETCH " + uid_set + b" (UID INTERNALDATE ENVELOPE BODYSTRUCTURE BODY.PEEK[])"
            )
        log.debug("prefetch of %d:%d: %d rendered", first, n, len(missing))

    async def _own_fetch(self, command: bytes, *, probe: bool = False) -> None:
        """A FETCH under the proxy's own tag whose answers go to the cache, not the client."""
        tag = self.up.next_tag()
        self._prefetch_tag, self._prefetch_probe = tag, probe
        self.up.writer.write(tag + b" " + command + b"\r\n")
        await self.up.writer.drain()
        await self._wait_until(lambda: self._prefetch_tag is None)

    async def _wait_until(self, done: Callable[[], bool]) -> None:
        while not done():
            self._progress.clear()
            await self._progress.wait()

    async def _flush_up(self) -> None:
        if self._up_buf:
            self.up.writer.write(bytes(self._up_buf))
            self._up_buf.clear()
            self._line_mark = 0
            await self.up.writer.drain()

    async def _send_literal_header(
        self, tag: bytes, literal: LiteralStart, *, relay_plus: bool
    ) -> bool:
        """Send a literal header upstream as synchronising and wait for its `+` (or refusal)."""
        loop = asyncio.get_running_loop()
        self._await = loop.create_future()
        self._await_tag = tag
        self._relay_continuation = relay_plus
        self._write_up(LiteralStart(literal.size, True, literal.binary))
        await self._flush_up()
        try:
            return await self._await
        finally:
            self._await = None
            self._await_tag = None

    async def _start_idle(self, tag: bytes, line_end: LineEnd) -> None:
        # The future exists before the command leaves, so the upstream's answer cannot race it.
        loop = asyncio.get_running_loop()
        self._await = loop.create_future()
        self._await_tag = tag
        self._relay_continuation = True
        self._write_up(line_end)
        await self._flush_up()
        try:
            idling = await self._await
        finally:
            self._await = None
            self._await_tag = None
        if idling:
            self._idle_tag = tag
            self._idle_since = self.clock()
            self._upstream_idle_tag = tag
            self.cp.expect_raw_line()

    def _idle_wait_left(self) -> float:
        return max(0.1, self._idle_since + self.settings.idle_renew - self.clock())

    async def _renew_idle(self) -> None:
        # DONE then a fresh IDLE under our own tag; the client sees neither exchange.
        self._swallow_tags.add(self._upstream_idle_tag)
        tag = self.up.next_tag()
        self._rename[tag] = self._idle_tag or tag
        self._swallow_continuations += 1
        self._upstream_idle_tag = tag
        self.up.writer.write(b"DONE\r\n" + tag + b" IDLE\r\n")
        await self.up.writer.drain()
        self._idle_since = self.clock()
        log.debug("renewed upstream IDLE")

    async def _done_idle(self, data: bytes) -> None:
        if data.strip().upper() != b"DONE":
            log.info("client sent something other than DONE during IDLE; ending the IDLE")
        self._idle_tag = None
        self.up.writer.write(b"DONE\r\n")
        await self.up.writer.drain()

    async def _client_error(
        self, error: ProtocolError, command: CommandStart | None, partial_sent: bool
    ) -> None:
        tag = error.tag
        if error.kind is ErrorKind.LITERAL_REFUSED and tag is not None and tag in self._aborted:
            # Refused because the upstream refused it; its answer already went to the client.
            self._aborted.discard(tag)
            return
        # Only the failed command's own bytes go: pipelined commands before it still leave.
        del self._up_buf[self._line_mark :]
        if error.fatal:
            await self._send_client(error_reply(error))
            raise RelayEnded("client_protocol_error")
        if partial_sent and command is not None:
            # Part of this command (up to a literal) is upstream already. An unfinished quoted
            # string makes the upstream refuse the whole command, so no half APPEND is stored;
            # the upstream's BAD answers the client.
            self.up.writer.write(b' "\r\n')
            await self.up.writer.drain()
        else:
            if tag is not None:
                self._outstanding.discard(tag)
            await self._send_client(error_reply(error))

    # -- upstream -> client
    async def _upstream_event(self) -> Event:
        while True:
            event = self.up.parser.next_event()
            if event is NEED_DATA:
                await self._flush_client()
                timeout = None
                if self._idle_tag is not None and not self._up_line_open:
                    timeout = self.settings.keepalive
                try:
                    data = await asyncio.wait_for(self.up.reader.read(READ_SIZE), timeout)
                except TimeoutError:
                    if self._idle_tag is not None and not self._up_line_open:
                        await self._send_client(b"* OK Still here\r\n")
                    continue
                self.up.parser.receive_data(data)
                continue
            if event is PAUSED:
                raise RelayEnded("upstream_protocol_error")
            return event

    async def _upstream_pump(self) -> None:
        drop = False  # the current line is not for the client
        filtering = False  # inside a CAPABILITY list: withhold what the proxy cannot relay
        done_tag: bytes | None = None
        while True:
            event = await self._upstream_event()
            self._observe(event)
            if self._lean is not None and not isinstance(
                event, LineEnd | ProtocolError | ConnectionClosed
            ):
                await self._lean_event(self._lean, event)
                continue
            match event:
                case ResponseStart(kind=kind, tag=tag):
                    self._up_line_open = True
                    drop, filtering, done_tag = False, False, None
                    await self._client_lock.acquire()
                    if kind is ResponseKind.CONTINUATION:
                        drop = self._on_continuation()
                    elif kind is ResponseKind.TAGGED and tag is not None:
                        drop, event = self._on_tagged(event)
                        done_tag = tag
                    elif event.verb == "CAPABILITY":
                        filtering = True
                    elif event.verb == "FETCH" and (self._plan or self._prefetch_tag):
                        self._lean = self._new_lean(event)
                        drop = self._lean.silent  # written later if it is not the prefetch's
                    elif event.verb == "BYE":
                        self._upstream_bye = True
                    if not drop:
                        self._write_client(event)
                case CodeStart(name=name):
                    filtering = name.upper() == b"CAPABILITY"
                    if not drop:
                        self._write_client(event)
                case CodeEnd():
                    if filtering and not drop:
                        self._write_own_capabilities()
                    filtering = False
                    if not drop:
                        self._write_client(event)
                case Atom(value=value) if filtering:
                    if not drop and capabilities.relayable(value.decode("ascii", "replace")):
                        self._write_client(event)
                case LineEnd():
                    if self._end_lean():
                        drop = False  # an unsolicited FETCH held during a prefetch, passed on
                    if filtering and not drop:
                        self._write_own_capabilities()
                    if not drop:
                        self._write_client(event)
                    # Lines are batched until the upstream has nothing more for now (the
                    # NEED_DATA in _upstream_event flushes): one TLS record for many lines.
                    if len(self._client_buf) >= _FLUSH_AT:
                        await self._flush_client()
                    self._up_line_open = False
                    self._client_lock.release()
                    if done_tag is not None:
                        self._completed(done_tag)
                case LiteralChunk(data=data):
                    if not drop:
                        await self._literal_to_client(data)
                case ProtocolError():
                    await self._upstream_error(event)
                case ConnectionClosed():
                    self._end_lean()
                    if self._logout:
                        raise RelayEnded("logout")
                    if not self._upstream_bye:
                        await self._bye(b"The mail server closed the connection.")
                    raise RelayEnded("upstream_closed")
                case Text() if drop:
                    pass
                case _:
                    if not drop:
                        self._write_client(event)

    def _on_continuation(self) -> bool:
        """True if the `+` line is dropped (it was for the proxy, not the client)."""
        if self._swallow_continuations:
            self._swallow_continuations -= 1
            return True
        if self._await is not None and not self._await.done():
            relay = self._relay_continuation
            self._await.set_result(True)
            return not relay
        return False

    def _on_tagged(self, event: ResponseStart) -> tuple[bool, ResponseStart]:
        tag = event.tag
        assert tag is not None
        if tag in self._swallow_tags:
            self._swallow_tags.discard(tag)
            return True, event
        if self._await is not None and not self._await.done() and tag == self._await_tag:
            self._await.set_result(False)  # the upstream refused the literal or the IDLE
        if tag == self._prefetch_tag:
            self._prefetch_tag = None
            self._progress.set()
            return True, event
        client_tag = self._rename.pop(tag, tag)
        if self._plan is not None and self._plan.upstream.tag == client_tag:
            self._plan = None
        if self._selecting is not None and self._selecting[0] == client_tag:
            self._selected(event.verb == "OK")
        if client_tag != tag:
            return False, ResponseStart(event.kind, client_tag, event.number, event.name)
        return False, event

    def _completed(self, tag: bytes) -> None:
        self._outstanding.discard(self._rename.get(tag, tag))
        self._progress.set()

    def _write_client(self, event: Event) -> None:
        self._client_buf += self._to_client.write(event)

    async def _flush_client(self) -> None:
        if self._client_buf:
            data = bytes(self._client_buf)
            self._client_buf.clear()
            self._to_wire(data)
            self._last_client_write = self.clock()
            await self.cw.drain()

    async def _send_client(self, data: bytes) -> None:
        """A whole line from the proxy itself, never in the middle of a relayed line."""
        async with self._client_lock:
            # Relayed lines still batched go first, so the client sees the upstream's order.
            await self._flush_client()
            self._to_wire(data)
            await self.cw.drain()

    def _to_wire(self, data: bytes) -> None:
        """Bytes for the client; bytes_out counts what goes on the wire (compressed, if so)."""
        self.cw.write(data)
        if self._deflate is None:  # else the DeflateWriter counts (_count_out)
            self.bytes_out += len(data)

    def _count_out(self, n: int) -> None:
        self.bytes_out += n

    def _count_in(self, n: int) -> None:
        self.bytes_in += n

    async def _literal_to_client(self, data: bytes) -> None:
        """Literal bytes for the client; compressed ones (JPEG, ZIP, ...) cost little CPU."""
        deflate = self._deflate
        if deflate is not None and len(data) >= _LOW_EFFORT_MIN and looks_compressed(data):
            await self._flush_client()  # what came before goes through the normal stream
            deflate.write(data, incompressible=True)
            self._last_client_write = self.clock()
            await deflate.drain()
            return
        self._client_buf += data
        if len(self._client_buf) >= _FLUSH_AT:
            await self._flush_client()

    def _write_own_capabilities(self) -> None:
        """The proxy's own post-login extensions, at the end of a relayed CAPABILITY list."""
        for name in capabilities.postlogin([], compress=self.offer_compress):
            self._write_client(Atom(name.encode("ascii")))

    # -- COMPRESS=DEFLATE (RFC 4978) toward the client
    async def _compress(self, tag: bytes, args: list[Event]) -> None:
        if not self.offer_compress:
            await self._send_client(tag + b" BAD The link is compressed already.\r\n")
            return
        if self._deflate is not None:
            await self._send_client(tag + b" NO [COMPRESSIONACTIVE] DEFLATE is active already.\r\n")
            return
        if len(args) != 1 or not isinstance(args[0], Atom) or args[0].value.upper() != b"DEFLATE":
            await self._send_client(tag + b" BAD Only COMPRESS DEFLATE is supported.\r\n")
            return
        if self.cp.buffered:
            # The client compresses from our OK on: bytes it sent before seeing the OK cannot be
            # told apart from compressed ones (RFC 4978 forbids pipelining after COMPRESS).
            log.info("client sent %d bytes after COMPRESS before its answer", self.cp.buffered)
            await self._bye(b"Commands after COMPRESS before its answer.")
            raise RelayEnded("client_protocol_error")
        async with self._client_lock:
            await self._flush_client()  # responses owed so far go uncompressed, before the OK
            self._to_wire(tag + b" OK DEFLATE active\r\n")
            await self.cw.drain()
            # From the CRLF of that OK on, both directions are compressed (RFC 4978 section 3).
            level = self.profile.compression_level
            self._deflate = DeflateWriter(self.cw, level, on_wire=self._count_out)
            self.cw = self._deflate
            self.cr = InflateReader(self.cr, max_output=READ_SIZE, on_wire=self._count_in)
        log.debug("COMPRESS=DEFLATE active at level %d", level)

    async def _lean_event(self, lean: LeanFetch, event: Event) -> None:
        for out in lean.push(event):
            self._write_client(out)
            if len(self._client_buf) >= _FLUSH_AT:
                await self._flush_client()
        if lean.closed and not lean.tail_written:
            lean.tail_written = True
            for out in lean.tail_events():
                self._write_client(out)
                if len(self._client_buf) >= _FLUSH_AT:
                    await self._flush_client()

    def _new_lean(self, start: ResponseStart) -> LeanFetch:
        plan = None if self._prefetch_tag else self._plan
        return LeanFetch(
            start,
            plan.lean if plan is not None else (),
            self.profile,
            profile_name=self.profile_name,
            original_login=self.original_login,
            keep_uid=plan.keep_uid if plan is not None else False,
            cached=self._plan_cached if plan is not None else None,
            silent=plan is None,
            probe=plan is None and self._prefetch_probe,
            record=IMMUTABLE_ITEMS,
        )

    def _end_lean(self) -> bool:
        """The FETCH response is over; True if it was held back and has now been passed on."""
        lean, self._lean = self._lean, None
        if lean is None:
            return False
        try:
            uid, seq = lean.uid, lean.seq
            if uid is not None and seq is not None and 1 <= seq <= len(self._uids):
                self._uids[seq - 1] = uid
            if lean.from_cache:
                self.cache_hits += 1
            elif (
                lean.has_rendition
                and uid is not None
                and self.cache is not None
                and self._mailbox is not None
                and self._uidvalidity is not None
            ):
                if lean.size <= MAX_ITEM:
                    self.cache.put(self._key(uid), lean.rendition(), lean.recorded_items())
                self.prefetched += lean.silent
            if lean.report is not None and not lean.silent:
                self.lean_messages += 1
                self.lean_bytes_saved += lean.report.input_bytes - lean.report.output_bytes
            return lean.silent and not lean.ours
        finally:
            lean.close()

    async def _upstream_error(self, error: ProtocolError) -> None:
        log.warning("unparseable line from the upstream (%s)", error.kind.value)
        self._end_lean()
        if self._up_line_open:
            self._up_line_open = False
            self._client_buf.clear()
            self._to_client = EventWriter()
            self._client_lock.release()
        if error.fatal:
            await self._bye(b"The mail server sent something the gateway cannot relay.")
            raise RelayEnded("upstream_protocol_error")
        if error.tag is not None:
            tag = self._rename.pop(error.tag, error.tag)
            await self._send_client(
                tag + b" NO [SERVERBUG] The mail server's answer could not be relayed.\r\n"
            )

    async def _bye(self, text: bytes) -> None:
        try:
            if self._client_lock.locked():
                # In the middle of a relayed line: a BYE now would corrupt it; just close.
                return
            await asyncio.wait_for(self._send_client(b"* BYE " + text + b"\r\n"), 5)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError):
            pass
