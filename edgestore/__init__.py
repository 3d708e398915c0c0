"""edgestore: a self-hosted upload and storage server for huge files."""

__version__ = "0.1.0"
