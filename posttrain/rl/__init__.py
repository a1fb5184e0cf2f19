"""The RL machinery every RL stage kind shares: rollout -> reward -> KL -> advantage -> loss -> update.

What makes a kind (GRPO, PPO) itself lives in its stage file (`posttrain.stages.grpo`,
`posttrain.stages.ppo`); nothing here imports `posttrain.stages`. Modules, in the order a step uses them:

- `posttrain.rl.prompts`: prompt rows (question/answer, prompt, messages; built-in arithmetic and code).
- `posttrain.rl.sampler`, `posttrain.rl.decoders`: batched sampling with a key/value cache.
- `posttrain.rl.reward`: the stage's reward entries over the decoded completions.
- `posttrain.rl.policy`: the policy (+ value head) forward, and the frozen reference.
- `posttrain.rl.objective`: the two hooks a stage kind supplies (advantages, loss) and what they read.
- `posttrain.rl.engine`: one step, numbered as the algorithm reads; `posttrain.rl.update`: the optimizer
  steps on a batch of rollouts; `posttrain.rl.heldout`: held-out checks during training.
- `posttrain.rl.setup`: loading the policy and building the engine from a stage's config.
"""
