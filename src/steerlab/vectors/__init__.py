"""The steering vector value and the files and objects it travels as: steerlab's safetensors,
llama.cpp's control-vector GGUF, the Hugging Face Hub, repeng's and steering-vectors' objects."""

from steerlab.errors import VectorFileError
from steerlab.vectors.value import HOOK_POINTS, SteeringVector

__all__ = ["HOOK_POINTS", "SteeringVector", "VectorFileError"]
