"""monai_vlseg: networks, losses, transforms and data tools behind the monai-vlseg MONAI bundles."""

import warnings

__version__ = "0.1.0"

# MONAI 1.6's LoadImage builds every reader it knows, including the nvImageCodec DICOM reader, which warns on each
# run where that optional GPU decoder is absent (every CPU machine) although pydicom then decodes as it should.
warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register")
