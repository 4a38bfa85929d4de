"""monai_vlseg: networks, losses, transforms and data tools behind the monai-vlseg MONAI bundles."""

__version__ = "0.1.0"
