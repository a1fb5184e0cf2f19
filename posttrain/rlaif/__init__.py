"""RLAIF: the critique -> revise loop and the pairwise AI judge, driven by a constitution of principles.

The constitution file format and its program checks are data the recipe names, so they live in
`posttrain.data.constitution` and `posttrain.data.principle_checks`; the built-in demonstration data in
`posttrain.data.rlaif_demonstrations`.

- `posttrain.rlaif.filters`: degenerate revisions (empty, unchanged, too long, template echo).
- `posttrain.rlaif.critique`: the critique -> revise rounds of Bai et al. 2022 (arXiv 2212.08073 §3).
- `posttrain.rlaif.judge`: pairwise judgements asked in both orders, labelled only when both agree.
- `posttrain.rlaif.language_model`: any causal LM as the writer, critic, reviser or judge.
- `posttrain.rlaif.runtime`: what the `constitutional` and `ai_judge` stages share (role models, outputs).

Everything but `language_model` is plain Python (no torch), so it is testable with stub models.
"""
