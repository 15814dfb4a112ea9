"""VADER sentiment reward (``vaderSentiment``, a lexicon shipped inside the package: offline, instant)."""
from __future__ import annotations

import threading

from .base import RewardFunction, check_choice, check_type
from .registry import register_reward

_ANALYZER = None
_LOCK = threading.Lock()


def vader_analyzer():
    """The process-wide ``SentimentIntensityAnalyzer`` (built once; reading the lexicon takes ~0.1 s)."""
    global _ANALYZER
    if _ANALYZER is None:
        with _LOCK:
            if _ANALYZER is None:
                from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

                _ANALYZER = SentimentIntensityAnalyzer()
    return _ANALYZER


class VaderSentiment(RewardFunction):
    default_name = "vader_sentiment"

    def __init__(self, field: str, rescale: bool, name: str | None):
        super().__init__(name)
        self.field = field
        self.rescale = rescale

    def score(self, texts, *, prompts, completion_ids, **kwargs):
        analyzer = vader_analyzer()
        out = []
        for text in texts:
            value = float(analyzer.polarity_scores(text)[self.field]) if text.strip() else 0.0
            if self.field == "compound" and self.rescale:
                value = (value + 1.0) / 2.0
            out.append(value)
        return out


@register_reward("vader_sentiment")
def vader_sentiment(*, field: str = "compound", rescale: bool = True, name: str | None = None) -> VaderSentiment:
    """VADER sentiment of the completion (Hutto & Gilbert 2014).

    ``field="compound"``: normalised overall polarity in [-1, 1]; with ``rescale=True`` (default) mapped to [0, 1]
    as (compound + 1) / 2, so neutral text scores 0.5. ``field`` ``"pos"``, ``"neg"`` or ``"neu"``: the proportion
    of the text in that class, in [0, 1] (``rescale`` does not apply). An empty or whitespace-only completion is
    neutral: compound 0 (0.5 rescaled), pos/neg/neu 0.
    """
    owner = "vader_sentiment"
    check_type(owner, "field", field, str)
    check_choice(owner, "field", field, ("compound", "pos", "neg", "neu"))
    check_type(owner, "rescale", rescale, bool)
    return VaderSentiment(field, rescale, name)
