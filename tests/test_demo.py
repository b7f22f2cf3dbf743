"""The offline demo: bundled demo weights and examples, and the quality of the demo weights."""

import os
import subprocess
import sys

import numpy as np
import soundfile as sf
import torch

from speechbrain_ext.demo import DEMO_CARDS, EXAMPLES_DIR
from speechbrain_ext.evaluation import si_snr
from speechbrain_ext.inference import EnhanceFRCRN
from speechbrain_ext.inference.sources import CARDS_DIR
from speechbrain_ext.synthetic import (
    babble_noise, click_noise, hum_noise, mix_at_snr, pink_noise, speech_like, white_noise,
)

CLI = os.path.join(os.path.dirname(sys.executable), "speechbrain-ext")
NOISES = (white_noise, pink_noise, babble_noise, hum_noise, click_noise)


def test_demo_weights_are_small():
    total = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(CARDS_DIR)
                for f in files if root.rsplit(os.sep, 1)[-1] in DEMO_CARDS.values())
    assert 0 < total <= 20 * 2**20


def test_demo_frcrn_improves_held_out_generated_speech_by_6_db():
    enhancer = EnhanceFRCRN.from_hparams(source=os.path.join(CARDS_DIR, DEMO_CARDS["enhancement"]))
    improvements = []
    for index, noise in enumerate(NOISES):  # seeds unused in training (1), validation or test (2)
        seed = 5000 + 10 * index
        clean = speech_like(4.0, 16000, seed=seed)
        noisy, _ = mix_at_snr(clean, noise(4.0, 16000, seed=seed + 1), snr_db=0.0)
        enhanced = enhancer.enhance_batch(torch.from_numpy(noisy)).numpy()
        improvements.append(si_snr(enhanced, clean) - si_snr(noisy, clean))
    assert np.mean(improvements) >= 6.0, improvements


def test_demo_command_runs_offline_and_writes_results(tmp_path):
    result = subprocess.run([CLI, "demo", "-o", str(tmp_path)], capture_output=True, text=True,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("improvement +") == 2, result.stdout
    assert "PESQ-WB" in result.stdout and "STOI" in result.stdout and "DNSMOS SIG" in result.stdout
    enhanced, rate = sf.read(tmp_path / "enhanced.wav")
    assert rate == 16000 and len(enhanced) == sf.info(os.path.join(EXAMPLES_DIR, "noisy.wav")).frames
    with open(tmp_path / "spectrograms.png", "rb") as stream:
        assert stream.read(8) == b"\x89PNG\r\n\x1a\n"


def test_demo_mossformer_separates_held_out_generated_voices_by_6_db():
    from speechbrain_ext.inference import SeparateMossFormer
    from speechbrain_ext.synthetic import two_speaker_mixture

    separator = SeparateMossFormer.from_hparams(source=os.path.join(CARDS_DIR, DEMO_CARDS["separation"]))
    improvements = []
    for seed in (7000, 7001, 7002):
        mixture, sources = two_speaker_mixture(4.0, 8000, seed=seed)
        estimates = separator.separate_batch(torch.from_numpy(mixture)).numpy().T  # [2, T]
        improvements.append(max(
            np.mean([si_snr(estimates[e], sources[s]) - si_snr(mixture, sources[s]) for s, e in enumerate(order)])
            for order in ((0, 1), (1, 0))
        ))
    assert np.mean(improvements) >= 6.0, improvements
