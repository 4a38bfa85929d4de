"""monai_vlseg: networks, losses, transforms and data tools behind the monai-vlseg MONAI bundles.

The layers and what may import what: docs/architecture.md.
"""

import warnings

from monai_vlseg._lazy import install_moved_modules

__version__ = "0.2.0"

# MONAI 1.6's LoadImage builds every reader it knows, including the nvImageCodec DICOM reader, which warns on each
# run where that optional GPU decoder is absent (every CPU machine) although pydicom then decodes as it should.
warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register")
# the 0.1 module paths (monai_vlseg.data.*, monai_vlseg.handlers) resolve to their new homes for one release
install_moved_modules()
