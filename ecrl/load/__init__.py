"""Load: Locust-equivalent user model and the load shapes (one definition for every backend)."""

from ecrl.load.shapes import BUILTIN_SHAPES, LoadShape, get_shape, load_trace

__all__ = ["BUILTIN_SHAPES", "LoadShape", "get_shape", "load_trace"]
