"""Model providers behind one protocol; the agent loop never sees a provider's own types."""

from ._protocol import PYTHON_TOOL, Model, ModelReply, ModelRequest, ToolCall, Usage

__all__ = ["PYTHON_TOOL", "Model", "ModelReply", "ModelRequest", "ToolCall", "Usage"]
