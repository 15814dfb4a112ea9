"""Multi-stage run pipelines for algorithms other than GRPO (``posttrain run`` dispatches here)."""
