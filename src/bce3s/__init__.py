"""bce3s: long-tailed image recognition with BCE3S (binary cross-entropy based tripartite synergistic learning).

Public entry points: ``bce3s.losses`` (loss functions and modules usable in any training loop),
``bce3s.models``, ``bce3s.data``, ``bce3s.config`` and the ``bce3s`` command line.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
