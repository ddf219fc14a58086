"""The web door: enrollment through one-time invites, and the admin pages (aiohttp)."""
