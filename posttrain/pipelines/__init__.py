"""Run pipelines: one skeleton (``skeleton``: output dirs, resume, evaluation, outputs) and each algorithm's part
(``grpo``, ``dpo`` with its ``reward_model`` stage); ``checks`` (pre-flight, shared with ``posttrain validate``),
``outdirs`` (where a run writes and how it replaces a previous one), ``trl_args`` (TRL configs from a recipe)."""
