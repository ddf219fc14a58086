"""Sans-IO IMAP: parsers, serializer and session logic fed bytes, returning events."""
