"""Data curation: duplicates, decontamination against the recipe's own evaluations, quality filters,
mixtures and curricula (issue 24). The `curate` stage kind (`posttrain.config.curate`,
`posttrain.stages.curate`) runs `posttrain.curation.curate.curate` and writes ``stage:NAME/rows``.

Why a stage kind and not `curate:` options on each stage's data: a curated set is a product of its own,
with its own fingerprint, manifest and report section, made once and read by any number of stages (SFT, the
RL prompts, pre-training's replay) through the ``stage:NAME/OUTPUT`` mechanism the RLAIF stages already
use; a mixture has several sources, which one stage's `data:` (one source) cannot hold; the stage that
reads it is re-run exactly when the curation changes (its data fingerprint is the curate stage's), and
a stage whose curation did not change is reused. Options on every data spec would re-run curation inside
each consuming stage, hide it from the run's list of stages, and thread mixture settings through every
loader (SFT, preference, RL prompts), which other issues own.

The stage knows the recipe's evaluation sets (every `evaluations:` entry and each stage's `heldout:`): the
recipe loader fills them into `decontaminate.sets` (`posttrain.config.curate.bind_evaluation_sets`), so
decontamination is on by default, against all of them, and a change to an evaluation set re-runs it. Every
training stage has the same `decontaminate:` setting, applied to its own data before it trains
(`posttrain.curation.training`, called by the pipeline), with the same index and rules.

Modules: `text` (a row's text, words, n-grams), `dedup` (exact hashing, MinHash-LSH via `datasketch`),
`decontamination` (n-gram index of evaluation rows), `quality` (length, Gopher repetition, characters,
the user's filter), `rules` (the rules in order, with the tally), `mixture` (weights, counts, curriculum),
`stream` (reading sources and spooling kept rows on disk), `curate` (one job end to end), `training` (a
training stage's own data). No torch here.
"""
