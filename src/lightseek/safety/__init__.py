"""Content safety: a policy over the MLCommons hazard categories (S1-S13), a cascade of rules, a
fast linear classifier and a model stage, moderation in the server, and an audit trail.

- `policy`: categories, the OpenAI mapping, thresholds and actions (YAML).
- `data`: the shared safety sets mapped to the categories, with fixed splits.
- `rules`, `classifier`: the cascade's stages; `cascade`: `Moderator`, the audit log and metrics.
- `commands`: `lightseek safety train | check`.
"""
