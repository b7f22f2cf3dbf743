"""Ready-to-use interfaces: enhancement (FRCRN) and separation (MossFormer)."""

from speechbrain_ext.inference.enhancement import EnhanceFRCRN
from speechbrain_ext.inference.separation import SeparateMossFormer

__all__ = ["EnhanceFRCRN", "SeparateMossFormer"]
