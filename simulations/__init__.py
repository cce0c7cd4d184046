"""fedseg simulations package."""

import fedseg  # noqa: F401 - first: Flower's telemetry off before flwr is imported (fedseg/__init__.py)
