"""Low-level operators (selective scan: fused CPU kernel, chunked PyTorch scan, mamba-ssm's CUDA kernel; cross-scan);
``mamba_ssm`` is imported only inside this subpackage."""

from .selective_scan import (
    SCAN_BACKEND_ENV,
    SCAN_BACKENDS,
    mamba_ssm_available,
    resolve_scan_backend,
    selective_scan,
    selective_scan_ref,
    selective_scan_traceable,
)

__all__ = [
    "SCAN_BACKEND_ENV",
    "SCAN_BACKENDS",
    "mamba_ssm_available",
    "resolve_scan_backend",
    "selective_scan",
    "selective_scan_ref",
    "selective_scan_traceable",
]
