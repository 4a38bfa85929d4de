from .dicomweb import LABEL_ALGORITHM_TYPES, VLSegDICOMwebDatastore

__all__ = ["LABEL_ALGORITHM_TYPES", "VLSegDICOMwebDatastore"]
