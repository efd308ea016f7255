"""grulm: the GRU language model of d2l §9.1 as a library and a command."""

__version__ = "0.1.0"

__all__ = ["GRULM", "GRUConfig", "__version__"]


def __getattr__(name: str):
    # The model, and PyTorch with it, is imported on first use: `import grulm.cli` stays
    # instant, so the command is inside its Ctrl-C handling before the slow import starts.
    if name in ("GRULM", "GRUConfig"):
        from grulm import model

        return getattr(model, name)
    raise AttributeError(f"module 'grulm' has no attribute {name!r}")
