"""Kinds of protocol error and the fixed texts reported for them (never exception text)."""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    """What went wrong; the caller picks its reply code (BAD, BYE, TOOBIG) from this."""

    LINE_TOO_LONG = "line-too-long"
    LITERAL_TOO_LARGE = "literal-too-large"
    NESTING_TOO_DEEP = "nesting-too-deep"
    BAD_SYNTAX = "bad-syntax"
    BAD_CHARACTER = "bad-character"
    BAD_UTF8 = "bad-utf8"
    BAD_LITERAL = "bad-literal"
    LITERAL_REFUSED = "literal-refused"
    DATA_BEFORE_CONTINUATION = "data-before-continuation"
    TRUNCATED = "truncated"


# The complete set of texts a peer can be sent; each is a constant so nothing derived from input
# (or from a Python exception) ever reaches the wire.
LINE_TOO_LONG = "Line too long"
LITERAL_TOO_LARGE = "Literal too large"
NESTING_TOO_DEEP = "Too deeply nested"
EMPTY_LINE = "Empty line"
MISSING_CRLF = "Line must end with CRLF"
INVALID_TAG = "Invalid tag"
MISSING_NAME = "Missing command name"
INVALID_NAME = "Invalid command name"
MISSING_RESPONSE_NAME = "Missing response name"
INVALID_NUMBER = "Invalid message number"
MISSING_SPACE = "Missing space"
EXTRA_SPACE = "Unexpected space"
UNEXPECTED_EOL = "Unexpected end of line"
UNEXPECTED_CHAR = "Unexpected character"
UNEXPECTED_CLOSE = "Unexpected closing bracket"
UNCLOSED_LIST = "Missing ')'"
UNCLOSED_BRACKET = "Missing ']'"
NUL_CHAR = "NUL byte not allowed"
EIGHT_BIT = "8-bit character outside a quoted string or literal"
CONTROL_CHAR = "Control character not allowed"
UNTERMINATED_QUOTED = "Unterminated quoted string"
BAD_ESCAPE = "Invalid escape in quoted string"
BAD_UTF8 = "Invalid UTF-8 in quoted string"
INVALID_LITERAL = "Invalid literal"
INVALID_LITERAL_SIZE = "Invalid literal size"
INVALID_PARTIAL = "Invalid partial range"
INVALID_CODE = "Invalid response code"
NUL_IN_LITERAL = "NUL byte in literal (use literal8)"
LITERAL_REFUSED = "Literal refused"
DATA_BEFORE_CONTINUATION = "Data sent before continuation"
TRUNCATED = "Connection closed in the middle of a line"


class LineError(Exception):
    """Raised inside the tokenizer; the engine turns it into a ProtocolError event.

    It never leaves the package: `next_event` catches it at the segment boundary.
    """

    __slots__ = ("kind", "message")

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
