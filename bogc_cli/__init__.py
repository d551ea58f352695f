"""bogc: a command-line experiment runner for multimodal learning."""

__version__ = "0.1.0"
