"""The independent reference of the fidelity benches (prefill_fidelity.py, decode_fidelity.py):
transformers' logits for a GGUF, which it loads by dequantizing it with the gguf package."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def reference_logits(path: Path, ids: list[int]) -> np.ndarray:
    """transformers' f32 logits [len(ids), vocab] of the GGUF at path, teacher-forced over ids."""
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
