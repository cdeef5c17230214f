"""forgert: fast, trustworthy local LLM inference (Llama-family models on CPU / Metal)."""
from .chat import ChatTemplateError
from .completion import Completion, Timings, Usage
from .errors import ModelFormatError, NonFiniteLogitsError
from .model import Model, TextStream
from .sampling import SamplingParams

__version__ = "0.1.0"
__all__ = ["Model", "Completion", "Usage", "Timings", "TextStream", "SamplingParams",
           "ModelFormatError", "NonFiniteLogitsError", "ChatTemplateError", "__version__"]
