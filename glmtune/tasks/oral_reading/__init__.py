"""Oral-reading scoring recipe (docs/oral_scoring_spec.md): iFlytek ISE results → rubric metrics → SFT data → scores.

Modules: records (typed model + ParseWarning), parse_compact / parse_xml (parsers), rubric (metric
engine), pinyin_ref + synth + serialize (synthetic ISE data), prompts + answer + build (dataset),
demo_data (the demo's dataset API), zhipu (export/validation), score (task scorer), baseline (the
metrics-only learner a tuned model must beat), cli (`glmtune oral`).
"""
