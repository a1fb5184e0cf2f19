"""Typed, validated recipe sections (pydantic, no torch).

Importing this package registers every stage kind's config class.
"""

from posttrain.config import stages  # noqa: F401
from posttrain.config import preference  # noqa: F401
from posttrain.config import grpo  # noqa: F401
from posttrain.config import ppo  # noqa: F401
from posttrain.config import rlaif  # noqa: F401
