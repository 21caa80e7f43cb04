"""eva: open-ended RLHF by asymmetric self-play (arXiv 2411.00062), as a library and a CLI.

Importing the package imports nothing heavy: torch, transformers, trl and vllm load inside
the backends that need them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("eva-platform")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
