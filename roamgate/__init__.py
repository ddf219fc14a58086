"""roamgate: a remote-access gateway for reading corporate mail on the road."""

__version__ = "0.1.0"
