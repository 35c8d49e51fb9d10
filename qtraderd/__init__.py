"""qtraderd: a self-hosted crypto trading daemon that learns from its own trades."""

__version__ = "0.1.0"
