"""Safety: the pipeline every generation passes through."""

from townsquare.safety.pipeline import (
    Decision,
    GuardedText,
    LengthPolicy,
    SafetyPipeline,
    SafetyPolicy,
)

__all__ = ["Decision", "GuardedText", "LengthPolicy", "SafetyPipeline", "SafetyPolicy"]
