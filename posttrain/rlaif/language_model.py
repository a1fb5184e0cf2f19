"""Any causal LM as a role of the RLAIF loop: the policy that answers, the critic, the reviser, the judge.

Role prompts are user messages rendered with the model's chat template. Text comes from the project's
batched KV-cache sampler (`posttrain.rl.sampler`); the judge's margin is read from one forward pass, as
log p(first label) - log p(second label) for the first answer token (no sampling, so a verdict is
reproducible). A role model is named in a recipe as ``policy`` (the stage's own model), ``stage:NAME``
(the checkpoint of an earlier stage of the run) or a local folder / hub id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from posttrain.config.common import ModelSpec
from posttrain.data.packing import ChatRenderer
from posttrain.models.checkpoint import stage_checkpoint
from posttrain.rl.decoders import position_ids_for
from posttrain.rl.sampler import RolloutSampler, SamplingSettings, decode_completions, end_token_ids, left_pad
from posttrain.data.constitution import JUDGE_LABELS, Constitution
from posttrain.rlaif.judge import JudgeQuery

POLICY = "policy"


def resolve_model_reference(reference: str, stages_dir: Path) -> str | None:
    """None for ``policy``; the checkpoint folder for ``stage:NAME``; otherwise the reference itself."""
    if reference == POLICY:
        return None
    return stage_checkpoint(reference, stages_dir, "model")


def load_role_model(reference: str, policy: Any, tokenizer: Any, stages_dir: Path, spec: ModelSpec, device: str):
    """``(model, tokenizer)`` for a role: the policy itself, or a frozen model loaded from its reference."""
    from posttrain.models.checkpoint import load_model_and_tokenizer

    path = resolve_model_reference(reference, stages_dir)
    if path is None:
        return policy, tokenizer
    model, role_tokenizer = load_model_and_tokenizer(spec, path, device=device)
    return model.eval().requires_grad_(False), role_tokenizer


class RoleModel:
    """A causal LM answering role prompts in batches.

    Args:
        model, tokenizer: the model (any causal LM with a chat template) and its tokenizer.
        batch_size: prompts per sampler or forward call.
        max_prompt_tokens: longer prompts keep their last tokens (and are counted in `cut_prompts`).
    """

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 64, max_prompt_tokens: int = 512):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_prompt_tokens = batch_size, max_prompt_tokens
        self.renderer = ChatRenderer(tokenizer)
        self.sampler = RolloutSampler(end_token_ids(model, tokenizer), tokenizer.pad_token_id)
        self.samplers: dict[str, Any] = {"native": self.sampler}  # one per backend (`generation.backend`)
        self.cut_prompts = 0
        self._label_ids: list[int] | None = None

    def encode(self, conversations: Sequence[list[dict[str, str]]]) -> list[list[int]]:
        texts = [self.renderer(messages, add_generation_prompt=True) for messages in conversations]
        encoded = [list(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        out = []
        for ids in encoded:
            if len(ids) > self.max_prompt_tokens:
                self.cut_prompts += 1
                ids = ids[-self.max_prompt_tokens :]
            out.append(ids)
        return out

    def sampler_for(self, backend: str, vllm: Any = None) -> Any:
        """The sampler of a resolved ``generation.backend``; for ``vllm``, an engine built with the role's
        ``generation.vllm`` settings (``vllm``: a `VLLMSpec`; None: the defaults) once, at its first use, and
        one engine per distinct settings. A role model does not train, so its weights never need syncing."""
        if backend == "native":
            return self.sampler
        from posttrain.config.rl import GenerationSpec, VLLMSpec

        spec = vllm if vllm is not None else VLLMSpec()
        key = f"{backend}:{spec.model_dump_json()}"
        if key not in self.samplers:
            from posttrain.rl.rollout_backend import make_rollout_sampler

            # room for the longest role prompt and a long answer (the engine caps it at the model's positions)
            self.samplers[key] = make_rollout_sampler(
                backend, GenerationSpec(vllm=spec), self.model, self.tokenizer, max_model_len=self.max_prompt_tokens + 1024,
                seed=0,
            )
        return self.samplers[key]

    def close(self) -> None:
        """Shuts down the vLLM engines this role built (the native sampler holds nothing)."""
        for key in [k for k in self.samplers if k != "native"]:
            self.samplers.pop(key).close()

    def generate(
        self, conversations: Sequence[list[dict[str, str]]], settings: SamplingSettings, generator: torch.Generator | None,
        backend: str = "native", vllm: Any = None,
    ) -> list[tuple[str, bool]]:
        """One completion per conversation: (text, cut off by ``max_new_tokens``), from the ``backend`` sampler
        (``vllm``: the role's `VLLMSpec` when the backend is vllm)."""
        ids = self.encode(conversations)
        sampler = self.sampler_for(backend, vllm)
        out: list[tuple[str, bool]] = []
        for start in range(0, len(ids), self.batch_size):
            rollout = sampler.sample(self.model, ids[start : start + self.batch_size], settings, generator)
            texts = decode_completions(self.tokenizer, rollout.completion_ids_BC, rollout.completion_mask_BC)
            out += list(zip(texts, rollout.truncated_B.tolist()))
        return out

    def answer(
        self, user_texts: Sequence[str], settings: SamplingSettings, generator: torch.Generator | None,
        backend: str = "native", vllm: Any = None,
    ) -> list[tuple[str, bool]]:
        """Completions of single user messages (the critic's and the reviser's prompts)."""
        return self.generate([[{"role": "user", "content": text}] for text in user_texts], settings, generator, backend, vllm)

    def label_ids(self) -> list[int]:
        """The first token of each judge label as the assistant's first token."""
        if self._label_ids is None:
            ids = [self.tokenizer(label, add_special_tokens=False)["input_ids"][0] for label in JUDGE_LABELS]
            if len(set(ids)) != len(ids):
                raise ValueError(f"the judge labels {JUDGE_LABELS} start with the same token for this tokenizer")
            self._label_ids = ids
        return self._label_ids

    @torch.no_grad()
    def judge_margins(self, constitution: Constitution, queries: list[JudgeQuery]) -> list[float]:
        """Per query, log p(``A``) - log p(``B``) as the judge's first answer token (> 0: first is better)."""
        prompts = [[{"role": "user", "content": constitution.judge_prompt(q.principle, q.prompt, q.first, q.second)}]
                   for q in queries]
        ids = self.encode(prompts)
        first, second = self.label_ids()
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        margins: list[float] = []
        try:
            for start in range(0, len(ids), self.batch_size):
                input_ids, mask = left_pad(ids[start : start + self.batch_size], self.tokenizer.pad_token_id, device)
                logits = self.model(input_ids=input_ids, attention_mask=mask.long(),
                                    position_ids=position_ids_for(mask), use_cache=False).logits[:, -1].float()
                logprobs = torch.log_softmax(logits, dim=-1)
                margins += (logprobs[:, first] - logprobs[:, second]).tolist()
        finally:
            self.model.train(was_training)
        return margins

    def scorer(self, constitution: Constitution):
        """This model as a `posttrain.rlaif.judge.Scorer` under ``constitution``'s judge template."""
        return lambda queries: self.judge_margins(constitution, queries)
