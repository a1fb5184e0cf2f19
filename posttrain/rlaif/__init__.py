"""RLAIF: a constitution of principles, the critique -> revise loop and the pairwise AI judge.

- `posttrain.rlaif.constitution`: the constitution file format (principles, prompt templates) and its checks.
- `posttrain.rlaif.checks`: program-checkable principles (the ground truth of the built-in demonstration).
- `posttrain.rlaif.filters`: degenerate revisions (empty, unchanged, too long, template echo).
- `posttrain.rlaif.critique`: the critique -> revise rounds of Bai et al. 2022 (arXiv 2212.08073 §3).
- `posttrain.rlaif.judge`: pairwise judgements asked in both orders, labelled only when both agree.
- `posttrain.rlaif.language_model`: any causal LM as the writer, critic, reviser or judge.

Everything but `language_model` is plain Python (no torch), so it is testable with stub models.
"""
