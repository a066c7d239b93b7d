"""The one version string of hafen: the package's, the build's and the commit log's "writer"."""

from __future__ import annotations

__all__ = ["__version__"]

#: hafen's version, as installed.
__version__ = "0.1.0"
