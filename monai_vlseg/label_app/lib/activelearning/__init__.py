"""Active learning of the monai-vlseg MONAI Label app: the bundles' uncertainty score as a scoring method, and the
most uncertain unlabelled image as the next sample."""

from .uncertainty import SCORE_KEY, MostUncertain, UncertaintyScoring

__all__ = ["SCORE_KEY", "MostUncertain", "UncertaintyScoring"]
