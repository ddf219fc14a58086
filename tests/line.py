"""A TCP line between two programs that a test can cut: a hotel line or a dial-up that drops."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from types import TracebackType

from roamgate.demo.dovecot import free_port


class Line:
    """127.0.0.1:port relayed to target; cut() drops every connection, down() refuses new ones."""

    def __init__(
        self,
        target_port: int,
        target_host: str = "127.0.0.1",
        *,
        cut_after: Callable[[], int | None] | None = None,
    ) -> None:
        """cut_after: for each connection, how many bytes (both ways) it carries before the
        line drops it, cutting a chunk in the middle; None: no cut."""
        self.target = (target_host, target_port)
        self.cut_after = cut_after
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._stopped = threading.Event()
        self._down = threading.Event()
        self.accepted = 0
        self.cuts = 0
        self.bytes_down = 0  # gateway -> client
        self._thread = threading.Thread(target=self._serve, name="line", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._down.is_set():
                client.close()  # no carrier
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            # The timeout was for connecting: left on, a gateway silent for 5 s (a loaded
            # machine) made the pump's recv time out and drop the line uninvited.
            upstream.settimeout(None)
            self.accepted += 1
            with self._lock:
                self._socks |= {client, upstream}
            budget = [self.cut_after() if self.cut_after is not None else None]
            pair = (client, upstream)
            for src, dst, count in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(
                    target=self._pump, args=(src, dst, count, budget, pair), daemon=True
                ).start()

    def _pump(
        self,
        src: socket.socket,
        dst: socket.socket,
        count: bool,
        budget: list[int | None],
        pair: tuple[socket.socket, socket.socket],
    ) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                cut = False
                with self._lock:
                    left = budget[0]
                    if left is not None and left < 0:
                        break  # the other direction has cut this connection already
                    if left is not None:
                        if len(data) >= left:
                            data, cut = data[:left], True
                        budget[0] = -1 if cut else left - len(data)
                if count:
                    self.bytes_down += len(data)
                dst.sendall(data)
                if cut:
                    self._cut_pair(pair)
                    break
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            with self._lock:
                self._socks -= {src, dst}

    def _cut_pair(self, pair: tuple[socket.socket, socket.socket]) -> None:
        for s in pair:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        with self._lock:
            self.cuts += 1

    def cut(self) -> None:
        """Drop every connection on the line now (both ends see a reset or EOF)."""
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self.cuts += 1

    def down(self) -> None:
        self._down.set()
        self.cut()

    def up(self) -> None:
        self._down.clear()

    def close(self) -> None:
        self._stopped.set()
        self.cut()
        self._listener.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Line:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
