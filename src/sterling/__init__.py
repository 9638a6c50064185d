"""Sterling: a marketplace for the use of private data, never the data itself."""

__version__ = "0.1.0"
