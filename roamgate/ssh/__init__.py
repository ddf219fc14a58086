"""The SSH door's policy and its asyncssh server: login conversation, forward allow-list."""
