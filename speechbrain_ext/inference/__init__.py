"""Ready-to-use interfaces: enhancement (FRCRN, MossFormer2, MossFormerGAN) and separation (MossFormer, MossFormer2)."""

from speechbrain_ext.inference.enhancement import (
    EnhanceFRCRN,
    EnhanceMossFormer2,
    EnhanceMossFormerGAN,
    WaveformEnhancer,
    enhancer_for,
)
from speechbrain_ext.inference.onnx import OnnxFRCRNStreamer, load_onnx
from speechbrain_ext.inference.separation import SeparateMossFormer
from speechbrain_ext.inference.streaming import FRCRNStreamer, stream_file

__all__ = [
    "EnhanceFRCRN", "EnhanceMossFormer2", "EnhanceMossFormerGAN", "FRCRNStreamer", "OnnxFRCRNStreamer", "SeparateMossFormer",
    "WaveformEnhancer", "enhancer_for", "load_onnx", "stream_file",
]
