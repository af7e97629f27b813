"""convae's version, where every layer can read it (the package itself, above them all, cannot be imported from below)."""

__version__ = "0.1.0"
