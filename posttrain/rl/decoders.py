"""Incremental decoders for the rollout sampler: a prompt is prefilled once, then one token per call.

Two implementations with one interface (`prefill`, `step`):

- `CachedDecoder`: our own decoding forward for Llama-shaped models (Llama, Qwen2, Qwen3, Mistral) over a
  key/value cache allocated once for the whole rollout. It uses the model's own weights and rotary module
  (LoRA-wrapped layers are called as modules, so adapters and any dtype work unchanged), fuses plain
  linear layers with the RMS norm before them, and skips what makes a transformers forward slow at small
  sizes: building a 4-D mask per call, growing the cache with ``torch.cat`` every token, and the generic
  keyword plumbing (see `benchmarks/rollout_vs_hf.py`). A prompt repeated in the batch is prefilled once;
  `extend` runs a whole chunk after the prompt, which `completion_logits` uses to score given completions
  without gradients (the frozen reference's log-probabilities).
- `TransformersDecoder`: the model's own forward with a `DynamicCache`, for every other architecture.

Both compute the same function as the model's full forward (same position ids for left-padded prompts);
`tests/rl/test_sampler.py` checks the sampled tokens' log-probabilities against a training-mode forward.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch

# Architectures whose decoder layer is: pre-norm attention (q/k/v/o projections, optional per-head q/k
# norms, rotary embedding, grouped-query attention) then pre-norm MLP, with residual connections.
LLAMA_SHAPED = frozenset({"llama", "qwen2", "qwen3", "mistral"})


def causal_lm_of(model: Any) -> Any:
    """The transformers causal LM inside a peft wrapper (adapters stay injected in its layers)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def position_ids_for(mask_BT: torch.Tensor) -> torch.Tensor:
    """Positions of left-padded rows: 0 at each row's first real token (padding gets 0 too)."""
    return (mask_BT.long().cumsum(dim=1) - 1).clamp(min=0)


def distinct_prompts(prompt_ids_BP: torch.Tensor, prompt_mask_BP: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(first_U, rows_B)``: the first row holding each distinct left-padded prompt, and for every row the
    index of its prompt in ``first_U`` (so ``prompt_ids_BP[first_U][rows_B]`` equals ``prompt_ids_BP``)."""
    unique_UP, rows_B = torch.unique(
        prompt_ids_BP.masked_fill(~prompt_mask_BP.bool(), -1), dim=0, return_inverse=True
    )
    first_U = torch.full((unique_UP.shape[0],), len(rows_B), dtype=torch.long, device=rows_B.device)
    first_U = first_U.scatter_reduce(0, rows_B, torch.arange(len(rows_B), device=rows_B.device), "amin")
    return first_U, rows_B


def supports_cached_decoder(model: Any) -> bool:
    """Whether `CachedDecoder` can run this model (a Llama-shaped causal LM without sliding windows)."""
    lm = causal_lm_of(model)
    config = getattr(lm, "config", None)
    if config is None or getattr(config, "model_type", None) not in LLAMA_SHAPED:
        return False
    if getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None):
        return False
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    core = getattr(lm, "model", None)
    return (
        all(kind == "full_attention" for kind in layer_types)
        and core is not None
        and all(hasattr(core, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb"))
    )


def _plain_linear(module: Any) -> bool:
    """A bare `nn.Linear` (not wrapped by LoRA or quantisation), whose weights may be fused with others'."""
    return type(module) is torch.nn.Linear


def _norm_weight(module: Any) -> tuple[torch.Tensor, float] | None:
    """``(weight, eps)`` of an RMS norm of the Llama kind (``weight * x / rms(x)``), or None for another norm."""
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    weight = getattr(module, "weight", None)
    if not type(module).__name__.endswith("RMSNorm") or not isinstance(weight, torch.Tensor) or eps is None:
        return None
    return weight, float(eps)


def _fused_linear(modules: Sequence[Any], norm: Any = None) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """One weight (and bias) computing several plain linear layers on the same input, or None.

    With ``norm`` (an RMS norm applied to that input) its elementwise weight is folded into the columns:
    ``linear(w * n(x), W) == linear(n(x), W * w)``, so the decoder normalises without the multiply.
    """
    if not all(_plain_linear(m) for m in modules):
        return None
    weight = torch.cat([m.weight for m in modules]).detach()
    if norm is not None:
        weight = weight * _norm_weight(norm)[0].detach().to(weight.dtype)
    if all(m.bias is None for m in modules):
        return weight, None
    biases = [m.bias if m.bias is not None else torch.zeros_like(m.weight[:, 0]) for m in modules]
    return weight, torch.cat(biases).detach()


class _RMSNorm:
    """Calls an RMS norm of the Llama kind as one fused op where possible; ``scale=False`` leaves out the
    elementwise weight (folded into the next linear layer by `_fused_linear`)."""

    def __init__(self, module: Any, scale: bool = True):
        self.module = module
        found = _norm_weight(module)
        self.eps = found[1] if found is not None else None
        self.weight = (found[0] if scale else None) if found is not None else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.eps is None:
            return self.module(x)
        return torch.nn.functional.rms_norm(x, x.shape[-1:], self.weight, self.eps)


class _Layer:
    """One decoder layer's pieces. With ``fuse`` and plain linear layers (no LoRA): q/k/v in one matrix and
    gate/up in another, each with the RMS norm before it folded in; otherwise the model's own modules."""

    def __init__(self, layer: Any, fuse: bool = True):
        attn, mlp = layer.self_attn, layer.mlp
        self.attn, self.mlp = attn, mlp
        gated = all(hasattr(mlp, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn"))
        fold_input = fuse and _norm_weight(layer.input_layernorm) is not None
        fold_post = fuse and gated and _norm_weight(layer.post_attention_layernorm) is not None
        self.qkv = (
            _fused_linear([attn.q_proj, attn.k_proj, attn.v_proj], layer.input_layernorm if fold_input else None)
            if fuse
            else None
        )
        self.gate_up = (
            _fused_linear([mlp.gate_proj, mlp.up_proj], layer.post_attention_layernorm if fold_post else None)
            if fuse and gated
            else None
        )
        self.input_norm = _RMSNorm(layer.input_layernorm, scale=not (fold_input and self.qkv is not None))
        self.post_norm = _RMSNorm(layer.post_attention_layernorm, scale=not (fold_post and self.gate_up is not None))
        self.q_norm = _RMSNorm(attn.q_norm) if hasattr(attn, "q_norm") else None
        self.k_norm = _RMSNorm(attn.k_norm) if hasattr(attn, "k_norm") else None
        self.o_weight = _fused_linear([attn.o_proj]) if fuse else None
        self.down_weight = _fused_linear([mlp.down_proj]) if fuse and gated else None

    def project_qkv(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The fused ``[q | k | v]`` projection of the normalised input, or the three separately."""
        normed = self.input_norm(x)
        if self.qkv is None:
            return self.attn.q_proj(normed), self.attn.k_proj(normed), self.attn.v_proj(normed)
        return torch.nn.functional.linear(normed, *self.qkv)

    def project_out(self, x: torch.Tensor) -> torch.Tensor:
        if self.o_weight is None:
            return self.attn.o_proj(x)
        return torch.nn.functional.linear(x, *self.o_weight)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.post_norm(x)
        if self.gate_up is None:
            return self.mlp(normed)
        gate, up = torch.nn.functional.linear(normed, *self.gate_up).chunk(2, dim=-1)
        hidden = self.mlp.act_fn(gate) * up
        if self.down_weight is None:
            return self.mlp.down_proj(hidden)
        return torch.nn.functional.linear(hidden, *self.down_weight)


class CachedDecoder:
    """Decoding forward of a Llama-shaped model over a preallocated key/value cache.

    Built per rollout: fused weights are copies taken at construction, so build a new decoder after the
    weights change. Where the model has no adapters (plain `nn.Linear` layers), each RMS norm's weight is
    folded into the matrix after it, q/k/v and gate/up are one matrix product each, the rotary embedding
    is applied to queries and keys together, and the padding mask is an additive bias built once per
    token for all layers; the result equals the model's forward up to float rounding (tests check tokens
    and log-probabilities against the unfused path, ``fuse=False``, and a training-mode forward).

    Args:
        model: a causal LM (or a peft model around one) for which `supports_cached_decoder` is true.
        batch_size: rows decoded together.
        max_length: prompt tokens plus new tokens; the cache holds this many positions.
        fuse: fold norms and fuse linear layers where the layers are plain; False calls every module.
    """

    def __init__(self, model: Any, batch_size: int, max_length: int, fuse: bool = True):
        self.lm = causal_lm_of(model)
        self.core = self.lm.model
        config = self.lm.config
        first = self.core.layers[0].self_attn
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(first, "head_dim", None) or config.hidden_size // self.heads
        self.scaling = float(getattr(first, "scaling", self.head_dim**-0.5))
        self.layers = [_Layer(layer, fuse) for layer in self.core.layers]
        head = self.lm.lm_head
        fold_head = fuse and _norm_weight(self.core.norm) is not None
        self.head = _fused_linear([head], self.core.norm if fold_head else None) if fuse else None
        self.final_norm = _RMSNorm(self.core.norm, scale=self.head is None or not fold_head)
        weight = self.core.embed_tokens.weight
        shape = (len(self.layers), batch_size, self.kv_heads, max_length, self.head_dim)
        self.keys = torch.zeros(shape, dtype=weight.dtype, device=weight.device)
        self.values = torch.zeros_like(self.keys)
        # 0 where a key may be attended to, -inf at padding: one additive mask shared by every layer
        self.key_bias_BT = torch.zeros(batch_size, max_length, dtype=weight.dtype, device=weight.device)
        self.next_position_B = torch.zeros(batch_size, dtype=torch.long, device=weight.device)
        # rotary tables for every position, computed once by the model's own rotary module; rotate_half(x)
        # is roll(x, D/2) with the first half negated, so the sign goes into the sine table
        positions_1T = torch.arange(max_length, device=weight.device)[None]
        cos_1TD, sin_1TD = self.core.rotary_emb(weight[:1, None], positions_1T)
        self.cos_TD = cos_1TD[0].to(weight.dtype)
        half = self.head_dim // 2
        self.signed_sin_TD = torch.cat([-sin_1TD[0, :, :half], sin_1TD[0, :, half:]], dim=-1).to(weight.dtype)
        self.length = 0  # cache slots filled

    def prefill(self, prompt_ids_BP: torch.Tensor, prompt_mask_BP: torch.Tensor) -> torch.Tensor:
        """Runs the left-padded prompts; returns the logits of the next token, (B, V).

        A prompt repeated in the batch (GRPO's group of samples per prompt) is run once and its keys and
        values copied to every row that has it.
        """
        length = prompt_ids_BP.shape[1]
        mask_BP = prompt_mask_BP.bool()
        self.key_bias_BT[:, :length].masked_fill_(~mask_BP, float("-inf"))
        positions_BP = position_ids_for(mask_BP)
        self.next_position_B = positions_BP[:, -1] + 1
        first_U, rows_B = distinct_prompts(prompt_ids_BP, mask_BP)
        if first_U.shape[0] == prompt_ids_BP.shape[0]:
            return self._forward(prompt_ids_BP, positions_BP, self._prefill_mask(mask_BP))
        logits_UV = self._forward(
            prompt_ids_BP[first_U], positions_BP[first_U], self._prefill_mask(mask_BP[first_U]), cache_rows_B=rows_B
        )
        return logits_UV[rows_B]

    def _prefill_mask(self, mask_BP: torch.Tensor) -> torch.Tensor:
        """The boolean attention mask of left-padded prompts, laid out for grouped-query attention."""
        length = mask_BP.shape[1]
        causal_PP = torch.ones(length, length, dtype=torch.bool, device=mask_BP.device).tril()
        # a padding query may see only itself, so no row of the mask is empty (an empty row gives NaN)
        attend_BPP = (causal_PP & mask_BP[:, None, :]) | torch.eye(length, dtype=torch.bool, device=mask_BP.device)
        group = self.heads // self.kv_heads
        # grouped-query attention: the `group` query heads sharing a key/value head are extra query rows
        return attend_BPP[:, None, None].expand(-1, 1, group, length, length).reshape(-1, 1, group * length, length)

    def step(self, tokens_B: torch.Tensor) -> torch.Tensor:
        """Appends one token per row (finished rows pass any token; it is never read); returns (B, V) logits."""
        positions_B1 = self.next_position_B[:, None]
        self.next_position_B = self.next_position_B + 1
        # one query row per head group: the (B, 1, 1, S) bias broadcasts over heads and groups
        return self._forward(tokens_B[:, None], positions_B1, self.key_bias_BT[:, None, None, : self.length + 1])

    def extend(self, ids_BT: torch.Tensor) -> torch.Tensor:
        """Appends T tokens per row at once (causal within them, all of them read as real); returns the
        logits after each, (B, T, V). Scores given completions after `prefill` without sampling."""
        steps, start = ids_BT.shape[1], self.length
        end = start + steps
        positions_BT = self.next_position_B[:, None] + torch.arange(steps, device=ids_BT.device)
        self.next_position_B = self.next_position_B + steps
        # query t sees every earlier key and the chunk's keys up to itself; rows (group, t) as in prefill
        key_index_S = torch.arange(end, device=ids_BT.device)
        query_index_T = torch.arange(start, end, device=ids_BT.device)
        future_TS = key_index_S[None, :] > query_index_T[:, None]
        bias_TS = torch.zeros(future_TS.shape, dtype=self.key_bias_BT.dtype, device=ids_BT.device).masked_fill(future_TS, float("-inf"))
        group = self.heads // self.kv_heads
        attend = self.key_bias_BT[:, None, None, :end] + bias_TS.repeat(group, 1)[None, None]
        return self._forward(ids_BT, positions_BT, attend, all_positions=True)

    def _rotary(self, x_BTND: torch.Tensor, cos_BT1D: torch.Tensor, signed_sin_BT1D: torch.Tensor) -> torch.Tensor:
        """The rotary embedding: ``x * cos + rotate_half(x) * sin``, with rotate_half as a roll."""
        return x_BTND * cos_BT1D + torch.roll(x_BTND, self.head_dim // 2, dims=-1) * signed_sin_BT1D

    @torch.no_grad()
    def _forward(
        self,
        ids_BT: torch.Tensor,
        positions_BT: torch.Tensor,
        attend: torch.Tensor,
        cache_rows_B: torch.Tensor | None = None,
        all_positions: bool = False,
    ) -> torch.Tensor:
        """Runs ``ids_BT`` after what the cache holds; returns the last position's logits, (B, V), or with
        ``all_positions`` every position's, (B, T, V). With
        ``cache_rows_B`` (an empty cache only) the rows are distinct prompts and cache row b receives the
        keys and values of row ``cache_rows_B[b]``."""
        batch, steps = ids_BT.shape
        start, end = self.length, self.length + steps
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        group = heads // kv_heads
        q_size, kv_size = heads * head_dim, kv_heads * head_dim
        hidden_BTH = self.core.embed_tokens(ids_BT)
        cos_BT1D, sin_BT1D = self.cos_TD[positions_BT][:, :, None], self.signed_sin_TD[positions_BT][:, :, None]
        for index, layer in enumerate(self.layers):
            projected = layer.project_qkv(hidden_BTH)
            if isinstance(projected, torch.Tensor) and layer.q_norm is None:
                # fused [q | k | v]: one rotary over the query and key heads together
                qk_BTND = projected[..., : q_size + kv_size].reshape(batch, steps, heads + kv_heads, head_dim)
                qk_BTND = self._rotary(qk_BTND, cos_BT1D, sin_BT1D)
                query, key = qk_BTND[:, :, :heads], qk_BTND[:, :, heads:]
                value = projected[..., q_size + kv_size :]
            else:
                query, key, value = projected if isinstance(projected, tuple) else projected.split([q_size, kv_size, kv_size], -1)
                query = query.reshape(batch, steps, heads, head_dim)
                key = key.reshape(batch, steps, kv_heads, head_dim)
                if layer.q_norm is not None:  # Qwen3: RMS norm per head before the rotary embedding
                    query, key = layer.q_norm(query), layer.k_norm(key)
                query, key = self._rotary(query, cos_BT1D, sin_BT1D), self._rotary(key, cos_BT1D, sin_BT1D)
            key, value = key.transpose(1, 2), value.reshape(batch, steps, kv_heads, head_dim).transpose(1, 2)
            if cache_rows_B is None:
                self.keys[index, :, :, start:end], self.values[index, :, :, start:end] = key, value
                key, value = self.keys[index, :, :, :end], self.values[index, :, :, :end]
            else:  # prefill of distinct prompts: attend to their own keys, fill every row of the cache
                self.keys[index, :, :, start:end], self.values[index, :, :, start:end] = key[cache_rows_B], value[cache_rows_B]
            # grouped-query attention without copying keys: the `group` query heads sharing a key/value head
            # are extra query rows of that head (the mask is laid out to match)
            attended = torch.nn.functional.scaled_dot_product_attention(
                query.transpose(1, 2).reshape(batch, kv_heads, group * steps, head_dim),
                key,
                value,
                attn_mask=attend,
                scale=self.scaling,
            )
            attended_BTH = attended.reshape(batch, heads, steps, head_dim).transpose(1, 2)
            hidden_BTH = hidden_BTH + layer.project_out(attended_BTH.reshape(batch, steps, heads * head_dim))
            hidden_BTH = hidden_BTH + layer.feed_forward(hidden_BTH)
        self.length = end
        last = self.final_norm(hidden_BTH if all_positions else hidden_BTH[:, -1])
        return self.lm.lm_head(last) if self.head is None else torch.nn.functional.linear(last, *self.head)


class TransformersDecoder:
    """The model's own forward with a transformers `DynamicCache` (any causal LM)."""

    def __init__(self, model: Any, batch_size: int, max_length: int):
        self.model = model
        self.lm = causal_lm_of(model)
        self.cache, self.cache_argument = new_cache(self.lm)
        self.mask_BT = torch.zeros(batch_size, 0, dtype=torch.long, device=self.lm.device)
        self.next_position_B = torch.zeros(batch_size, dtype=torch.long, device=self.lm.device)

    def prefill(self, prompt_ids_BP: torch.Tensor, prompt_mask_BP: torch.Tensor) -> torch.Tensor:
        self.mask_BT = prompt_mask_BP.long()
        positions_BP = position_ids_for(self.mask_BT)
        self.next_position_B = positions_BP[:, -1] + 1
        return self._forward(prompt_ids_BP, positions_BP)

    def step(self, tokens_B: torch.Tensor) -> torch.Tensor:
        self.mask_BT = torch.cat([self.mask_BT, torch.ones_like(self.mask_BT[:, :1])], dim=1)
        positions_B1 = self.next_position_B[:, None]
        self.next_position_B = self.next_position_B + 1
        return self._forward(tokens_B[:, None], positions_B1)

    @torch.no_grad()
    def _forward(self, ids_BT: torch.Tensor, positions_BT: torch.Tensor) -> torch.Tensor:
        output = self.lm(
            input_ids=ids_BT,
            attention_mask=self.mask_BT,
            position_ids=positions_BT,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_argument: self.cache},
        )
        return output.logits[:, -1]


def completion_logits(
    model: Any, prompt_ids_BP: torch.Tensor, prompt_mask_BP: torch.Tensor, completion_ids_BC: torch.Tensor
) -> torch.Tensor:
    """Logits predicting each completion token, (B, C, V), without gradients, by `CachedDecoder`: a prompt
    repeated in the batch is run once and the completions in one chunk after it. Equals the model's
    forward over prompt + completion (tokens after a row's end token see the padding before them as real,
    which changes only positions that are themselves padding)."""
    completion_length = completion_ids_BC.shape[1]
    decoder = CachedDecoder(model, prompt_ids_BP.shape[0], prompt_ids_BP.shape[1] + completion_length)
    first_B1V = decoder.prefill(prompt_ids_BP, prompt_mask_BP)[:, None]
    if completion_length == 1:
        return first_B1V
    return torch.cat([first_B1V, decoder.extend(completion_ids_BC[:, :-1])], dim=1)


def new_cache(model: Any) -> tuple[Any, str]:
    """An empty transformers `DynamicCache` for ``model`` (a causal LM or its backbone), and the name of the
    forward argument that takes it (transformers 5 renamed `past_key_values` to `cache`)."""
    from transformers import DynamicCache

    forward = inspect.signature(model.forward).parameters
    argument = "cache" if "cache" in forward else "past_key_values"
    config = getattr(model, "config", None)
    takes_config = "config" in inspect.signature(DynamicCache).parameters
    return (DynamicCache(config=config) if takes_config and config is not None else DynamicCache()), argument


def make_decoder(model: Any, batch_size: int, max_length: int, backend: str = "auto") -> CachedDecoder | TransformersDecoder:
    """The decoder for ``model``: ``"cached"``, ``"transformers"``, or ``"auto"`` (cached where supported)."""
    if backend == "cached" or (backend == "auto" and supports_cached_decoder(model)):
        if not supports_cached_decoder(model):
            raise ValueError(
                f"the cached decoder supports Llama-shaped models ({', '.join(sorted(LLAMA_SHAPED))}) without "
                f"sliding-window attention; use backend 'transformers' for {type(causal_lm_of(model)).__name__}"
            )
        return CachedDecoder(model, batch_size, max_length)
    if backend not in ("auto", "transformers"):
        raise ValueError(f"unknown decoder backend {backend!r}; valid: auto, cached, transformers")
    return TransformersDecoder(model, batch_size, max_length)
