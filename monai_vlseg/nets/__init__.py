"""Networks of the monai-vlseg bundles."""

from .c2seg import (
    BCAM,
    C2Seg,
    C2SegEncoder,
    C2SegFusion,
    C2SegPretrainNet,
    DualAttention,
    KGate,
)
from .lightm_unet import LightMUNet, ResMambaBlock, ResUpBlock
from .lcpdn import CPRFL, LCPDN, LTFR, CLIPImageEncoder, PromptedDiffusionUNet
from .segmamba import GSC, SegMamba, SegMambaEncoder, ToMLayer
from .tifcmamba import (
    BiDF,
    CLIPTowers,
    TIFCImageSegmenter,
    TIFCMamba,
    TIFCTextSegmenter,
)
from .ua_vls import UAVLS, MoDAB, SSMix
from .ultralight_vm_unet import SCAttBridge, UltraLightVMUNet
from .vm_unet import VMUNet, VSSLayer

__all__ = [
    "UltraLightVMUNet",
    "SCAttBridge",
    "ResUpBlock",
    "ResMambaBlock",
    "LightMUNet",
    "BCAM",
    "BiDF",
    "C2Seg",
    "CLIPImageEncoder",
    "CLIPTowers",
    "CPRFL",
    "C2SegEncoder",
    "C2SegFusion",
    "C2SegPretrainNet",
    "DualAttention",
    "GSC",
    "KGate",
    "LCPDN",
    "LTFR",
    "MoDAB",
    "PromptedDiffusionUNet",
    "SSMix",
    "SegMamba",
    "SegMambaEncoder",
    "TIFCImageSegmenter",
    "TIFCMamba",
    "TIFCTextSegmenter",
    "ToMLayer",
    "UAVLS",
    "VMUNet",
    "VSSLayer",
]
