"""Low-level operators (selective scan); ``mamba_ssm`` is imported only inside this subpackage."""

from .selective_scan import (
    SCAN_BACKEND_ENV,
    SCAN_BACKENDS,
    mamba_ssm_available,
    resolve_scan_backend,
    selective_scan,
    selective_scan_ref,
)

__all__ = [
    "SCAN_BACKEND_ENV",
    "SCAN_BACKENDS",
    "mamba_ssm_available",
    "resolve_scan_backend",
    "selective_scan",
    "selective_scan_ref",
]
