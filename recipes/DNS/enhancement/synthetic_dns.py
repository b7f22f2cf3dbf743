#!/usr/bin/env python3
"""A miniature DNS-Challenge (interspeech2020) folder made of generated signals.

It has the real layout, so the recipe runs on it unchanged: tests, demos and the learning
benchmark use it where the real data (about 900 GB) is not at hand. The wideband
(interspeech2020, 16 kHz) layout by default; with ``fullband=True`` the fullband one at 48 kHz
(``datasets_fullband/clean_fullband/read_speech/``, ``noise_fullband/``, RIRs and a synthetic
test set in the same places)::

    datasets/clean/*.wav                          speech-like signals
    datasets/noise/*.wav                          white / pink / babble / hum / click noises
    datasets/impulse_responses/SLR26/simulated_rirs_16k/smallroom/Room001/*.wav
                                                  exponentially decaying synthetic RIRs
    datasets/test_set/synthetic/no_reverb/{clean,noisy}/   clean_fileid_N.wav <-> ..._fileid_N.wav
    datasets/test_set/synthetic/with_reverb/{clean,noisy}/ (reverberant clean as reference, as in DNS)

Every signal comes from ``speechbrain_ext.synthetic`` and a seed; the training material
and the test set are drawn from independent seed streams, so the test set is held out.

Usage: python synthetic_dns.py OUTPUT_FOLDER [--num_clean 8] [--clean_seconds 1.5] [...]

Authors
 * speechbrain-ext contributors
"""

import argparse
import os

import numpy as np
import soundfile as sf
from scipy.signal import fftconvolve

from speechbrain_ext.synthetic import (
    babble_noise,
    click_noise,
    hum_noise,
    mix_at_snr,
    pink_noise,
    speech_like,
    white_noise,
)

SAMPLE_RATE = 16000
NOISE_GENERATORS = {
    "white": white_noise,
    "pink": pink_noise,
    "babble": babble_noise,
    "hum": hum_noise,
    "clicks": click_noise,
}
RIR_FOLDER = os.path.join("impulse_responses", "SLR26", "simulated_rirs_16k", "smallroom", "Room001")
# Offset that makes the held-out test material independent of the training material.
TEST_SEED_OFFSET = 1_000_003


def synthetic_rir(rng, sample_rate=SAMPLE_RATE, seconds=0.25):
    """A room impulse response: a direct-path impulse after a short delay, then an
    exponentially decaying noise tail (RT60 drawn in 0.2-0.6 s)."""
    length = int(seconds * sample_rate)
    delay = int(rng.integers(10, 80))
    rt60 = rng.uniform(0.2, 0.6)
    time = np.arange(length) / sample_rate
    tail = rng.standard_normal(length) * 10 ** (-3 * time / rt60) * 0.3
    rir = np.zeros(length)
    rir[delay:] = tail[: length - delay]
    rir[delay] = 1.0
    return (rir / np.max(np.abs(rir)) * 0.9).astype(np.float32)


def _write(path, signal, rate=SAMPLE_RATE):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, signal, rate, subtype="PCM_16")


def make_synthetic_dns(
    root,
    num_clean=8,
    clean_seconds=1.5,
    num_noise=4,
    noise_seconds=2.0,
    noise_types=("white", "pink", "babble", "hum"),
    num_rirs=2,
    num_test=2,
    test_seconds=1.0,
    test_snr_range=(0.0, 10.0),
    with_reverb_test=True,
    seed=0,
    test_seed=None,
    fullband=False,
):
    """Write a DNS-Challenge-shaped folder of generated audio under ``root``; returns ``root``.

    Arguments
    ---------
    root : str
        Output folder (the "DNS-Challenge" checkout); ``datasets/`` is created in it.
    num_clean, clean_seconds : int, float
        Training speech files and their length.
    num_noise, noise_seconds, noise_types : int, float, tuple
        Noise files (cycling through ``noise_types``) and their length.
    num_rirs : int
        Synthetic impulse responses (0 for none: no ``impulse_responses`` folder).
    num_test, test_seconds, test_snr_range : int, float, tuple
        Pairs per test subset, their length and SNR range (dB).
    with_reverb_test : bool
        Also write ``test_set/synthetic/with_reverb`` (needs ``num_rirs`` > 0 or uses its own RIRs).
    seed : int
        Seed of the training material (clean, noise, RIRs).
    test_seed : int, optional
        Seed of the test set; by default an independent stream derived from ``seed``.
    fullband : bool
        Write the fullband layout (``datasets_fullband/``) at 48 kHz instead of the wideband one.

    Example
    -------
    >>> import tempfile
    >>> root = make_synthetic_dns(tempfile.mkdtemp(), num_clean=2, num_noise=2, num_test=1)
    >>> sorted(os.listdir(os.path.join(root, "datasets")))
    ['clean', 'impulse_responses', 'noise', 'test_set']
    """
    rate = 48000 if fullband else SAMPLE_RATE
    datasets = os.path.join(root, "datasets_fullband" if fullband else "datasets")
    clean_folder = os.path.join("clean_fullband", "read_speech") if fullband else "clean"
    noise_folder = "noise_fullband" if fullband else "noise"
    train_rng = np.random.default_rng(seed)
    test_rng = np.random.default_rng(seed + TEST_SEED_OFFSET if test_seed is None else test_seed)

    def child(rng):
        return int(rng.integers(0, 2**31 - 1))

    for index in range(num_clean):
        speech = speech_like(clean_seconds, rate, seed=child(train_rng))
        _write(os.path.join(datasets, clean_folder, f"book_{index:05d}_chp_0001_reader_{index % 3:05d}_{index}.wav"), speech,
               rate)
    for index in range(num_noise):
        kind = noise_types[index % len(noise_types)]
        noise = NOISE_GENERATORS[kind](noise_seconds, rate, seed=child(train_rng))
        _write(os.path.join(datasets, noise_folder, f"{kind}_{index:04d}.wav"), noise, rate)
    for index in range(num_rirs):
        _write(os.path.join(datasets, RIR_FOLDER, f"Room001-{index + 1:05d}.wav"), synthetic_rir(train_rng, rate), rate)

    subsets = ["no_reverb"] + (["with_reverb"] if with_reverb_test else [])
    for subset in subsets:
        folder = os.path.join(datasets, "test_set", "synthetic", subset)
        for fileid in range(num_test):
            clean = speech_like(test_seconds, rate, seed=child(test_rng)).astype(np.float64)
            if subset == "with_reverb":  # DNS scores reverberant input against the reverberant clean
                clean = fftconvolve(clean, synthetic_rir(test_rng, rate))[: len(clean)]
            kind = noise_types[fileid % len(noise_types)]
            noise = NOISE_GENERATORS[kind](test_seconds, rate, seed=child(test_rng))
            snr = float(test_rng.uniform(*test_snr_range))
            noisy, _ = mix_at_snr(clean, noise, snr)
            scale = min(1.0, 0.9 / max(float(np.max(np.abs(noisy))), float(np.max(np.abs(clean)))))
            _write(os.path.join(folder, "clean", f"clean_fileid_{fileid}.wav"), clean * scale, rate)
            noisy_name = f"clnsp{fileid}_{kind}_{fileid}_snr{round(snr)}_tl-25_fileid_{fileid}.wav"
            _write(os.path.join(folder, "noisy", noisy_name), noisy * scale, rate)
    return root


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="output folder")
    parser.add_argument("--num_clean", type=int, default=8)
    parser.add_argument("--clean_seconds", type=float, default=1.5)
    parser.add_argument("--num_noise", type=int, default=4)
    parser.add_argument("--noise_seconds", type=float, default=2.0)
    parser.add_argument("--num_rirs", type=int, default=2)
    parser.add_argument("--num_test", type=int, default=2)
    parser.add_argument("--test_seconds", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test_seed", type=int, default=None)
    parser.add_argument("--fullband", action="store_true", help="the fullband layout at 48 kHz")
    arguments = vars(parser.parse_args())
    print(make_synthetic_dns(arguments.pop("root"), **arguments))
