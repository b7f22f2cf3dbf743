"""FRCRN in front of a real SpeechBrain ASR interface (EncoderASR with a tiny random model and a
sentencepiece tokenizer trained here): shapes, devices, lengths and the call path."""

import functools

import numpy as np
import pytest
import sentencepiece
import soundfile as sf
import torch
from speechbrain.decoders import ctc_greedy_decode
from speechbrain.inference.ASR import EncoderASR
from speechbrain.lobes.features import Fbank

from speechbrain_ext.inference import EnhanceFRCRN
from speechbrain_ext.inference.asr import EnhancedASR
from speechbrain_ext.lobes.models.frcrn import FRCRN
from speechbrain_ext.synthetic import speech_like


class TinyCTCEncoder(torch.nn.Module):
    """Fbank -> linear -> log-softmax: the smallest encoder EncoderASR can run."""

    def __init__(self, vocab_size):
        super().__init__()
        self.features = Fbank(n_mels=20)
        self.output = torch.nn.Linear(20, vocab_size)
        self.seen_lengths = []

    def forward(self, wavs, wav_lens):
        self.seen_lengths.append((wavs.shape, wav_lens.clone()))
        return torch.log_softmax(self.output(self.features(wavs)), dim=-1)


@pytest.fixture(scope="module")
def asr(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(["hello world", "speech enhancement", "noise suppression", "frcrn front end"] * 20))
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "tok"), vocab_size=24, model_type="char",
        character_coverage=1.0, bos_id=-1, eos_id=-1, unk_id=1, pad_id=0,
    )
    tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tok.model"))
    torch.manual_seed(0)
    encoder = TinyCTCEncoder(tokenizer.vocab_size())
    return EncoderASR(
        modules={"encoder": encoder},
        hparams={"tokenizer": tokenizer, "decoding_function": functools.partial(ctc_greedy_decode, blank_id=0)},
    )


@pytest.fixture(scope="module")
def enhancer():
    torch.manual_seed(0)
    return EnhanceFRCRN(modules={"model": FRCRN(channels=8, fsmn_hidden=8)}, hparams={"sample_rate": 16000})


def test_enhanced_batch_feeds_transcribe_batch_directly(enhancer, asr):
    wavs = torch.from_numpy(np.stack([speech_like(1.0, seed=1), speech_like(1.0, seed=2)]))
    wav_lens = torch.tensor([1.0, 0.6])
    enhanced = enhancer.enhance_batch(wavs, wav_lens)
    assert enhanced.shape == wavs.shape and enhanced.device == torch.device(asr.device)
    words, tokens = asr.transcribe_batch(enhanced, wav_lens)
    assert len(words) == 2 and all(isinstance(w, str) for w in words)
    shape, lens = asr.mods.encoder.seen_lengths[-1]
    assert tuple(shape) == (2, 16000) and torch.equal(lens, wav_lens)
    assert not enhanced[1, 9600:].any()  # padding stays silent for the recogniser


def test_enhanced_asr_resamples_both_ways(enhancer, asr, tmp_path):
    pipeline = EnhancedASR(enhancer, asr)
    at_8k = torch.from_numpy(speech_like(1.0, 8000, seed=3))[None]
    words, _ = pipeline.transcribe_batch(at_8k, torch.ones(1), sample_rate=8000)
    assert len(words) == 1
    shape, _ = asr.mods.encoder.seen_lengths[-1]
    assert tuple(shape) == (1, 16000)  # enhanced at 16 kHz, fed at the ASR's 16 kHz
    stereo = np.stack([speech_like(1.5, 44100, seed=4)] * 2, axis=1)
    sf.write(tmp_path / "stereo.wav", stereo, 44100)
    assert isinstance(pipeline.transcribe_file(tmp_path / "stereo.wav"), str)
    shape, _ = asr.mods.encoder.seen_lengths[-1]
    assert tuple(shape) == (1, 24000)
