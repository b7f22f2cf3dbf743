"""Ready-to-use interfaces: enhancement (FRCRN) and separation (MossFormer)."""

from speechbrain_ext.inference.enhancement import EnhanceFRCRN
from speechbrain_ext.inference.separation import SeparateMossFormer
from speechbrain_ext.inference.streaming import FRCRNStreamer, stream_file

__all__ = ["EnhanceFRCRN", "FRCRNStreamer", "SeparateMossFormer", "stream_file"]
