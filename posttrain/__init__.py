"""posttrain: post-training with reweighting."""
__version__ = "0.1.0"
