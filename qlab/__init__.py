"""qlab: an interactive, tested workbench for teaching neural-network quantization."""

__version__ = "0.1.0"
