"""The built-in token strategies, re-exported from their method files (kept for old imports).

Each strategy's adapter, Config and registration live in its method file:

| name                 | kind       | needs                                 | file / protocol class                      |
|----------------------|------------|---------------------------------------|--------------------------------------------|
| ``steer``            | weight     | logps, old_logps, old_entropies       | ``steer.py`` / ``Steer``                   |
| ``high_entropy``     | weight     | entropies (or old_entropies)          | ``high_entropy.py`` / ``HighEntropy``      |
| ``clip_cov``         | weight     | logps, old_logps                      | ``cov.py`` / ``ClipCov``                   |
| ``tw_grpo``          | weight     | full_logprobs, group_size             | ``tw_grpo.py`` / ``TwGrpo``                |
| ``kl_cov``           | loss_term  | logps, old_logps (no ratio clipping)  | ``cov.py`` / ``KlCov``                     |
| ``entropy_advantage``| advantage  | entropies                             | ``entropy_advantage.py`` / ``EntropyAdvantage`` |
"""
from .cov import ClipCov, KlCov, clip_cov, kl_cov
from .entropy_advantage import EntropyAdvantage, entropy_advantage_shaping
from .high_entropy import HighEntropy, high_entropy
from .steer import Steer, steer
from .tw_grpo import TwGrpo, tw_grpo

entropy_adv = entropy_advantage_shaping  # the adapter's former name

__all__ = ["steer", "high_entropy", "clip_cov", "tw_grpo", "kl_cov", "entropy_adv", "entropy_advantage_shaping",
           "Steer", "HighEntropy", "ClipCov", "TwGrpo", "KlCov", "EntropyAdvantage"]
