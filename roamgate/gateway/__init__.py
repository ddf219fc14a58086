"""The asyncio shell: listeners, relays and the serve loop."""
