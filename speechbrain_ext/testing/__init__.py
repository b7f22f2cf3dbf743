"""Test helpers: deterministic synthetic audio (``speechbrain_ext.testing.audio``)."""

from speechbrain_ext.testing.audio import (
    babble_noise,
    click_noise,
    hum_noise,
    mix_at_snr,
    pink_noise,
    speech_like,
    two_speaker_mixture,
    white_noise,
)

__all__ = [
    "babble_noise",
    "click_noise",
    "hum_noise",
    "mix_at_snr",
    "pink_noise",
    "speech_like",
    "two_speaker_mixture",
    "white_noise",
]
