"""Callback verification, the asyncio side: channels, the login hold, HTTP handlers."""
