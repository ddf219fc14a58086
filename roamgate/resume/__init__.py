"""Sans-IO resumable streams: framing, byte offsets and acknowledgements, the resume handshake."""
