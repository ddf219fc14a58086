"""The demo and test peers: a private Dovecot with a sample corporate mailbox."""
