"""roamgate-connect: the laptop side of roamgate's SSH door (local IMAP and submission ports)."""
