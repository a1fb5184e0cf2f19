"""The "reward_model" reward source: a trained reward model's scalar score for prompt + completion.

Loads a Hugging Face `AutoModelForSequenceClassification` checkpoint with a one-output head (what the
posttrain reward-modelling stage and TRL's `RewardTrainer` save) and scores completions in batches.
torch and transformers are imported when the source is built, not when this module is imported, so the
recipe schema and the verifiers stay free of torch.

The text scored is the tokenizer's chat template over [user: prompt, assistant: completion] when the
tokenizer has one and `use_chat_template` is on, else `prompt + completion`. Status is always "ok": a
reward model has no notion of a wrong answer, only a score.

>>> RewardModelSource.kind, RewardModelSource.required_fields
('reward_model', ())
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from posttrain.rewards.base import Example, RewardResult, RewardSource
from posttrain.rewards.registry import register_reward_source


@register_reward_source("reward_model")
class RewardModelSource(RewardSource):
    """Scores from a sequence-classification reward model.

    Args:
        path: Checkpoint directory (or hub id) with a scalar-head sequence-classification model.
        batch_size: Completions per forward pass.
        max_length: Token limit per scored text (longer texts are cut on the tokenizer's truncation side).
        device: torch device, e.g. "cpu" or "cuda".
        use_chat_template: Format prompt/completion with the tokenizer's chat template if it has one.
    """

    def __init__(
        self,
        *,
        path: str,
        batch_size: int = 8,
        max_length: int = 1024,
        device: str = "cpu",
        use_chat_template: bool = True,
    ) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
        if self.model.config.num_labels != 1:
            raise ValueError(
                f"reward_model {path!r}: expected a scalar head (num_labels=1), got num_labels="
                f"{self.model.config.num_labels}"
            )
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:  # needed to find each sequence's last token in a batch
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size, self.max_length, self.device = batch_size, max_length, device
        self.use_chat_template = use_chat_template and getattr(self.tokenizer, "chat_template", None) is not None

    def _text(self, prompt: str, completion: str) -> str:
        if self.use_chat_template:
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
            return str(self.tokenizer.apply_chat_template(messages, tokenize=False))
        return prompt + completion

    def score(
        self, prompts: list[str], completions: list[str], examples: Sequence[Example], step: int
    ) -> list[RewardResult]:
        texts = [self._text(prompt, completion) for prompt, completion in zip(prompts, completions)]
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch: Any = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
            ).to(self.device)
            with self._torch.no_grad():
                logits = self.model(**batch).logits
            scores.extend(float(value) for value in logits[:, 0].float().cpu())
        return [RewardResult(value, "ok", "reward model score") for value in scores]

    def close(self) -> None:
        """Drop the model so its memory can be freed."""
        self.model = None  # type: ignore[assignment]
