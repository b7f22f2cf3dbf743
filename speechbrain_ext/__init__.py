"""speechbrain-ext: FRCRN enhancement and MossFormer separation for SpeechBrain."""

__version__ = "0.1.0"

from speechbrain_ext._torch_pair import check_torch_pair as _check_torch_pair

_check_torch_pair()
