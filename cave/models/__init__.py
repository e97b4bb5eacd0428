"""Model providers behind one protocol; the agent loop never sees a provider's own types.

Importing this package does not import the ``anthropic`` SDK: that happens when a model is built.
"""

from ._anthropic import DEFAULT_MODEL, AnthropicModel
from ._fenced import parse_fenced_code
from ._openai_compat import OpenAICompatModel, model_from_name
from ._protocol import PYTHON_TOOL, Model, ModelReply, ModelRequest, ToolCall, Usage

__all__ = [
    "DEFAULT_MODEL",
    "PYTHON_TOOL",
    "AnthropicModel",
    "Model",
    "ModelReply",
    "ModelRequest",
    "OpenAICompatModel",
    "ToolCall",
    "Usage",
    "model_from_name",
    "parse_fenced_code",
]
