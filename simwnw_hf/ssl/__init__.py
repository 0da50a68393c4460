"""SSL building blocks: losses, heads, momentum encoders, pair encoding and frameworks."""

FRAMEWORK_NAMES = ("simclr", "simsiam", "byol", "moco", "vicreg", "dino")
