"""The RL engine that the `ppo` and `grpo` stages share: rollout -> reward -> advantage -> loss -> update.

Modules, in the order a step uses them:

- `posttrain.rl.prompts`: prompt rows (question/answer, prompt, messages; built-in arithmetic and code).
- `posttrain.rl.sampler`, `posttrain.rl.decoders`: batched sampling with a key/value cache.
- `posttrain.rl.reward`: the stage's reward entries over the decoded completions.
- `posttrain.rl.policy`: the policy (+ value head) forward, and the frozen reference.
- `posttrain.rl.objectives`: what PPO and GRPO do differently (advantage, loss).
- `posttrain.rl.engine`: the loop; `posttrain.rl.heldout`: held-out checks during training.
- `posttrain.rl.stage`: the stage class both kinds register.
"""
