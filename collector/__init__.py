"""evalterm collector: receives ratings and transaction events, links them and stores them."""

__version__ = "0.1.0"
