"""transformers running the default model (SmolLM2-135M-Instruct Q4_1, dequantized to f32 by the
gguf package) as the independent reference for what forgert's front ends (server, CLI) print:
greedy token ids, their text from transformers' own tokenizer, and their log-probabilities."""
from __future__ import annotations

import numpy as np

# forgert's logits differ from this reference by <= 7.2e-4 of max|logit| (test_e2e_smollm2,
# decode path); measured 0.054 logits on a chat prompt (max|logit| 37.6). A step whose top-2 gap
# is below MIN_GAP (2x that difference on each side) could flip, so the prompts used are checked
# to have none.
MIN_GAP = 0.25


class SmolLM2Reference:
    def __init__(self, gguf_path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        torch.set_num_threads(2)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                          dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        self.end_of_turn = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self._greedy = {}

    def text_ids(self, text: str) -> list:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def chat_ids(self, messages) -> list:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.text_ids(text)

    def logits(self, ids) -> np.ndarray:
        """f32 [len(ids), vocab] from an empty context."""
        with self.torch.no_grad():
            return self.model(input_ids=self.torch.tensor([list(ids)])).logits[0].float().numpy()

    def greedy(self, ids, max_tokens: int, stop_at_end_of_turn: bool = True):
        """(tokens, finish_reason): argmax decoding until max_tokens or <|im_end|> (not included).
        Asserts every step's choice is clear (top-2 gap >= MIN_GAP). Memoized."""
        key = (tuple(ids), max_tokens, stop_at_end_of_turn)
        if key not in self._greedy:
            self._greedy[key] = self._greedy_run(list(ids), max_tokens, stop_at_end_of_turn)
        return self._greedy[key]

    def _greedy_run(self, ids, max_tokens, stop_at_end_of_turn):
        torch, out = self.torch, []
        with torch.no_grad():
            step_out = self.model(input_ids=torch.tensor([ids]), use_cache=True)
            for step in range(max_tokens):
                row = step_out.logits[0, -1].float().numpy()
                top2 = np.sort(row)[-2:]
                assert top2[1] - top2[0] >= MIN_GAP, (
                    f"the reference nearly ties at step {step} (gap {top2[1] - top2[0]:.3f}): pick another prompt")
                t = int(row.argmax())
                if stop_at_end_of_turn and t == self.end_of_turn:
                    return out, "stop"
                out.append(t)
                step_out = self.model(input_ids=torch.tensor([[t]]), use_cache=True, **self._cache_of(step_out))
        return out, "length"

    def _cache_of(self, out) -> dict:
        """The KV cache of a forward's output, as the next forward's keyword argument
        (transformers 5 renamed past_key_values to cache)."""
        if getattr(out, "cache", None) is not None:
            return {"cache": out.cache}
        return {"past_key_values": out.past_key_values}

    def text(self, tokens) -> str:
        return self.tokenizer.decode(tokens)

    def chosen_logprobs(self, prompt_ids, tokens) -> np.ndarray:
        """log p(tokens[i] | prompt + tokens[:i]) from one teacher-forced pass, in float64."""
        logits = self.logits(list(prompt_ids) + list(tokens))[len(prompt_ids) - 1:-1].astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return logp[np.arange(len(tokens)), tokens]
