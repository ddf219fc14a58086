"""A held login's questions as keyboard-interactive rounds (the callback's "calling you back").

asyncssh asks for each round by calling validate_kbdint_response and wants the next challenge
as its return value, while the login runs as one coroutine that awaits the answer. This bridge
joins the two: the login task asks here, the door turns the question into the next challenge
and hands the client's answer back when it comes.
"""

from __future__ import annotations

import asyncio


class KbdRound:
    """The WaitingClient of an SSH login (roamgate.callback.waiting)."""

    can_ask = True

    def __init__(self) -> None:
        self.questions: asyncio.Queue[tuple[str, str]] = asyncio.Queue(maxsize=1)
        self._answer: asyncio.Future[str | None] | None = None

    async def ask(self, instruction: str, prompt: str) -> str | None:
        self._answer = asyncio.get_running_loop().create_future()
        await self.questions.put((instruction, prompt))
        return await self._answer

    async def keepalive(self, text: str) -> None:
        return None  # SSH keeps the connection alive itself; text goes out with the next round

    def answer(self, text: str | None) -> None:
        """The client's answer to the last question (None: it cannot answer any more)."""
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(text)
