"""Run: execute a rewritten program in this process (``local``)."""

from .local import CompiledStage, PipelineModule

__all__ = ["PipelineModule", "CompiledStage"]
