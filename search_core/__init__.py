"""Reverse image search: detect → choose an object → crop → embed → k-NN.

The library behind ``app.py`` and ``python -m search_core``; see the README for the design.
"""

__version__ = "0.1.0"
