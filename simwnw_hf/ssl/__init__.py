"""SSL building blocks: losses, heads, momentum encoders, pair encoding and frameworks."""


def __getattr__(name):
    # FRAMEWORK_NAMES is derived from the one registry, imported only when asked for (PEP 562)
    if name == "FRAMEWORK_NAMES":
        from .frameworks import FRAMEWORK_NAMES

        return FRAMEWORK_NAMES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
