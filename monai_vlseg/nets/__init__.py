"""Networks of the monai-vlseg bundles."""

from .ua_vls import UAVLS, MoDAB, SSMix

__all__ = ["MoDAB", "SSMix", "UAVLS"]
