"""farm: an experiment farm for autoresearch-style campaigns on Ray."""

__version__ = "0.1.0"
