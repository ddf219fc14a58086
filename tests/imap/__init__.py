"""Tests for the sans-IO IMAP codec: parsers, assembler and serializer."""
