"""FRCRN in front of SpeechBrain speech recognition.

``EnhanceFRCRN.enhance_batch`` keeps SpeechBrain's conventions (``[B, T]`` waveforms, relative
lengths, the model's device), so its output can go straight into any SpeechBrain ASR
interface's ``transcribe_batch(wavs, wav_lens)`` when both run at 16 kHz. :class:`EnhancedASR`
does the same for any rates: enhance at 16 kHz, resample to the recogniser's rate, transcribe.

Inside a training recipe, a frozen enhancer is a module like any other::

    # hparams: the frozen front-end, loaded once
    enhancer: !apply:speechbrain_ext.inference.EnhanceFRCRN.from_hparams
        source: alibabasglab/FRCRN_SE_16K

    # Brain.compute_forward
    wavs, wav_lens = batch.sig
    with torch.no_grad():
        wavs = self.hparams.enhancer.enhance_batch(wavs, wav_lens)
    feats = self.hparams.compute_features(wavs)
    ...

Authors: speechbrain-ext contributors
"""

import torch
import torchaudio

from speechbrain_ext.audio import read_audio


def asr_sample_rate(asr):
    """Sample rate a SpeechBrain ASR interface expects (its audio normaliser's, else 16 kHz)."""
    normalizer = getattr(asr, "audio_normalizer", None)
    rate = getattr(normalizer, "sample_rate", None) or getattr(asr.hparams, "sample_rate", None)
    return int(rate or 16000)


class EnhancedASR:
    """Enhance with FRCRN, resample if needed, then transcribe with a SpeechBrain ASR interface.

    Arguments
    ---------
    enhancer : EnhanceFRCRN
        The enhancement front-end.
    asr : speechbrain.inference.interfaces.Pretrained
        Any SpeechBrain ASR interface with ``transcribe_batch(wavs, wav_lens)`` (``EncoderASR``,
        ``EncoderDecoderASR``, ``WhisperASR``, ...).

    Example
    -------
    >>> class EchoASR:  # stands in for a SpeechBrain ASR interface
    ...     hparams = type("H", (), {"sample_rate": 8000})()
    ...     def transcribe_batch(self, wavs, wav_lens):
    ...         return [f"{wavs.shape[-1]} samples"], None
    >>> from speechbrain_ext.inference import EnhanceFRCRN
    >>> from speechbrain_ext.lobes.models.frcrn import FRCRN
    >>> enhancer = EnhanceFRCRN(modules={"model": FRCRN(channels=8, fsmn_hidden=8)}, hparams={"sample_rate": 16000})
    >>> EnhancedASR(enhancer, EchoASR()).transcribe_batch(torch.randn(1, 16000), torch.ones(1))[0]
    ['8000 samples']
    """

    def __init__(self, enhancer, asr):
        self.enhancer = enhancer
        self.asr = asr

    def enhance_for_asr(self, wavs, wav_lens=None, sample_rate=None):
        """Enhanced ``[B, T']`` waveforms at the recogniser's rate, and their relative lengths."""
        wav_lens = torch.ones(wavs.shape[0]) if wav_lens is None else wav_lens
        front_rate = self.enhancer.sample_rate
        if sample_rate and sample_rate != front_rate:
            wavs = torchaudio.functional.resample(wavs.float(), sample_rate, front_rate)
        enhanced = self.enhancer.enhance_batch(wavs, wav_lens)
        target_rate = asr_sample_rate(self.asr)
        if target_rate != front_rate:
            enhanced = torchaudio.functional.resample(enhanced, front_rate, target_rate)
        return enhanced, wav_lens  # relative lengths survive resampling

    def transcribe_batch(self, wavs, wav_lens=None, sample_rate=None):
        """Enhance then transcribe a batch; returns what the ASR interface's ``transcribe_batch`` does.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[B, T]`` waveforms.
        wav_lens : torch.Tensor, optional
            Relative lengths (SpeechBrain convention); all 1 by default.
        sample_rate : int, optional
            Rate of ``wavs`` (default: the enhancer's, 16 kHz).
        """
        enhanced, wav_lens = self.enhance_for_asr(wavs, wav_lens, sample_rate)
        return self.asr.transcribe_batch(enhanced, wav_lens.to(enhanced.device))

    def transcribe_file(self, path):
        """Enhance and transcribe an audio file (any rate and channel count); returns the text."""
        signal = read_audio(path, self.enhancer.sample_rate)[0]
        words, _ = self.transcribe_batch(signal[None], torch.ones(1))
        return words[0]
