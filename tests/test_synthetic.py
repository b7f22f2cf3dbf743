"""Tests of the synthetic-signal generator (speechbrain_ext.synthetic)."""

import doctest
import time

import numpy as np
import pytest
from scipy.signal import welch

import speechbrain_ext.synthetic as synthetic
from speechbrain_ext.synthetic import (
    babble_noise,
    click_noise,
    hum_noise,
    mix_at_snr,
    pink_noise,
    speech_like,
    two_speaker_mixture,
    white_noise,
)

GENERATORS = [
    speech_like,
    white_noise,
    pink_noise,
    babble_noise,
    hum_noise,
    click_noise,
]


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def power_db(signal):
    """Mean power in dB (float64 accumulation)."""
    return 10 * np.log10(np.mean(np.asarray(signal, dtype=np.float64) ** 2))


def frame_energies_db(signal, sample_rate, frame_seconds):
    """Energy in dB of consecutive non-overlapping frames (-inf-safe)."""
    frame = int(frame_seconds * sample_rate)
    count = signal.size // frame
    frames = signal[: count * frame].astype(np.float64).reshape(count, frame)
    return 10 * np.log10(np.sum(frames**2, axis=1) + 1e-20)


def autocorrelation_pitch(frame, sample_rate, min_f0=60.0, max_f0=400.0):
    """Return ``(f0, normalised autocorrelation peak)`` of one frame."""
    frame = frame.astype(np.float64) - np.mean(frame)
    full = np.correlate(frame, frame, mode="full")[frame.size - 1 :]
    full /= full[0]
    lags = np.arange(int(sample_rate / max_f0), int(sample_rate / min_f0) + 1)
    best = lags[np.argmax(full[lags])]
    return sample_rate / best, full[best]


def loudest_frames(signal, sample_rate, frame_seconds, count):
    """Start indices of the ``count`` most energetic frames."""
    frame = int(frame_seconds * sample_rate)
    energies = frame_energies_db(signal, sample_rate, frame_seconds)
    return [i * frame for i in np.argsort(energies)[::-1][:count]], frame


def median_pitch(signal, sample_rate):
    """Median autocorrelation pitch of the 20 loudest (voiced) 40 ms frames."""
    starts, frame = loudest_frames(signal, sample_rate, 0.04, 20)
    pitches = [
        autocorrelation_pitch(signal[s : s + frame], sample_rate)[0] for s in starts
    ]
    return float(np.median(pitches))


# --------------------------------------------------------------------------
# Generic properties of every generator
# --------------------------------------------------------------------------


@pytest.mark.parametrize("generator", GENERATORS, ids=lambda g: g.__name__)
def test_shape_dtype_and_peak(generator):
    for sample_rate, duration in [(16000, 1.0), (8000, 0.75), (22050, 0.3)]:
        signal = generator(duration, sample_rate, seed=0)
        assert signal.shape == (int(round(duration * sample_rate)),)
        assert signal.dtype == np.float32
        assert np.all(np.isfinite(signal))
        assert np.max(np.abs(signal)) == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("generator", GENERATORS, ids=lambda g: g.__name__)
def test_determinism(generator):
    first = generator(1.0, 16000, seed=7)
    again = generator(1.0, 16000, seed=7)
    other = generator(1.0, 16000, seed=8)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    # A Generator seed is reproducible too.
    from_rng = generator(1.0, 16000, seed=np.random.default_rng(3))
    again = generator(1.0, 16000, seed=np.random.default_rng(3))
    assert np.array_equal(from_rng, again)


@pytest.mark.parametrize("generator", GENERATORS, ids=lambda g: g.__name__)
def test_zero_duration(generator):
    signal = generator(0.0, 16000, seed=0)
    assert signal.shape == (0,) and signal.dtype == np.float32


def test_peak_argument():
    assert np.max(np.abs(speech_like(0.5, peak=0.9))) == pytest.approx(0.9, abs=1e-6)
    assert np.max(np.abs(white_noise(0.5, peak=0.1))) == pytest.approx(0.1, abs=1e-6)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        white_noise(-1.0)
    with pytest.raises(ValueError):
        speech_like(1.0, sample_rate=0)


def test_speed():
    start = time.perf_counter()
    for generator in GENERATORS:
        generator(10.0, 16000, seed=0)
    two_speaker_mixture(10.0, 16000, seed=0)
    # About 0.3-0.5 s on a 2-core machine; loose bound for slow CI runners.
    assert time.perf_counter() - start < 5.0


# --------------------------------------------------------------------------
# speech_like
# --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_speech_has_pauses(seed):
    speech = speech_like(5.0, 16000, seed=seed)
    energies = frame_energies_db(speech, 16000, 0.05)
    quiet = energies <= energies.max() - 40.0
    assert quiet.sum() >= 3  # several silent 50 ms frames...
    assert (~quiet).sum() >= 0.4 * energies.size  # ...but mostly speech


@pytest.mark.parametrize("f0", [100.0, 150.0, 220.0])
def test_speech_is_harmonic_at_the_requested_pitch(f0):
    sample_rate = 16000
    speech = speech_like(3.0, sample_rate, seed=4, f0=f0)
    starts, frame = loudest_frames(speech, sample_rate, 0.04, 1)
    voiced = speech[starts[0] : starts[0] + frame]
    estimated, peak = autocorrelation_pitch(voiced, sample_rate)
    assert peak > 0.6  # strongly periodic: a voiced frame
    # The contour stays within about +/-3.5 semitones of the base pitch.
    assert f0 * 2 ** (-4 / 12) < estimated < f0 * 2 ** (4 / 12)


def test_speech_spectrum_changes_like_vowels():
    """The spectral centroid of voiced frames must move (formants glide)."""
    sample_rate = 16000
    speech = speech_like(4.0, sample_rate, seed=5, f0=120.0)
    starts, frame = loudest_frames(speech, sample_rate, 0.04, 30)
    freqs = np.fft.rfftfreq(frame, 1 / sample_rate)
    centroids = []
    for start in starts:
        windowed = speech[start : start + frame] * np.hanning(frame)
        spectrum = np.abs(np.fft.rfft(windowed)) ** 2
        centroids.append(np.sum(freqs * spectrum) / np.sum(spectrum))
    assert np.ptp(centroids) > 200.0


def test_speech_has_syllable_rate_modulation():
    """The amplitude envelope's modulation spectrum peaks at a few Hz."""
    sample_rate = 16000
    speech = speech_like(20.0, sample_rate, seed=6).astype(np.float64)
    hop = 160  # 100 Hz envelope
    frames = speech[: speech.size // hop * hop].reshape(-1, hop)
    envelope = np.sqrt(np.mean(frames**2, axis=1))
    envelope -= envelope.mean()
    modulation = np.abs(np.fft.rfft(envelope)) ** 2
    rates = np.fft.rfftfreq(envelope.size, 1 / 100)
    band = (rates > 0.5) & (rates < 20)
    peak_rate = rates[band][np.argmax(modulation[band])]
    assert 1.0 < peak_rate < 8.0


def test_speech_f0_none_draws_a_voice_per_seed():
    pitches = [median_pitch(speech_like(3.0, 16000, seed=s), 16000) for s in range(6)]
    assert all(70 < p < 330 for p in pitches)
    assert np.ptp(pitches) > 20  # different seeds, different voices


# --------------------------------------------------------------------------
# Noises
# --------------------------------------------------------------------------


def spectral_slope_db_per_decade(signal, sample_rate, low, high):
    freqs, psd = welch(signal.astype(np.float64), fs=sample_rate, nperseg=4096)
    band = (freqs >= low) & (freqs <= high)
    slope, _ = np.polyfit(np.log10(freqs[band]), 10 * np.log10(psd[band]), 1)
    return slope


def test_pink_noise_slope():
    noise = pink_noise(10.0, 16000, seed=0)
    slope = spectral_slope_db_per_decade(noise, 16000, 50.0, 6000.0)
    assert slope == pytest.approx(-10.0, abs=2.0)


def test_white_noise_is_flat():
    noise = white_noise(10.0, 16000, seed=0)
    slope = spectral_slope_db_per_decade(noise, 16000, 50.0, 6000.0)
    assert slope == pytest.approx(0.0, abs=1.0)
    assert abs(np.mean(noise)) < 0.01


@pytest.mark.parametrize("seed", range(4))
def test_hum_energy_is_at_mains_harmonics(seed):
    sample_rate = 16000
    hum = hum_noise(2.0, sample_rate, seed=seed).astype(np.float64)
    power = np.abs(np.fft.rfft(hum)) ** 2
    freqs = np.fft.rfftfreq(hum.size, 1 / sample_rate)

    def share_at_multiples(mains):
        distance = np.abs(freqs - mains * np.round(freqs / mains))
        return power[(distance <= 1.0) & (freqs > 0)].sum() / power.sum()

    assert max(share_at_multiples(50.0), share_at_multiples(60.0)) > 0.999
    fundamental = freqs[np.argmax(power)]
    assert fundamental in (50.0, 60.0)


def test_hum_explicit_frequency():
    hum = hum_noise(1.0, 16000, seed=0, mains_freq=60.0).astype(np.float64)
    power = np.abs(np.fft.rfft(hum)) ** 2
    assert power[60] / power.sum() > 0.3  # 1 Hz bins: bin 60 is 60 Hz
    assert power[50] / power.sum() < 1e-6


def test_clicks_are_sparse():
    clicks = click_noise(10.0, 16000, seed=0, clicks_per_second=5.0)
    active = np.abs(clicks) > 0.01 * np.max(np.abs(clicks))
    assert active.mean() < 0.02
    assert np.mean(clicks == 0) > 0.9
    # Clicks come in separate bursts, roughly clicks_per_second * duration.
    onsets = np.flatnonzero(np.diff(np.r_[0, (clicks != 0).astype(int)]) == 1)
    assert 20 <= onsets.size <= 80


def test_babble_has_fewer_pauses_than_one_voice():
    single = frame_energies_db(speech_like(5.0, 16000, seed=0), 16000, 0.05)
    babble = frame_energies_db(babble_noise(5.0, 16000, seed=0), 16000, 0.05)
    single_quiet = np.mean(single < single.max() - 20)
    babble_quiet = np.mean(babble < babble.max() - 20)
    assert babble_quiet < single_quiet


# --------------------------------------------------------------------------
# Mixing
# --------------------------------------------------------------------------


@pytest.mark.parametrize("snr_db", [-10.0, -2.5, 0.0, 5.0, 20.0])
@pytest.mark.parametrize("noise_seconds", [0.3, 2.0, 5.0])  # loop, equal, crop
def test_mix_at_snr_is_exact(snr_db, noise_seconds):
    clean = speech_like(2.0, 16000, seed=1)
    noise = pink_noise(noise_seconds, 16000, seed=2)
    mixture, scaled_noise = mix_at_snr(clean, noise, snr_db)
    assert mixture.dtype == np.float32 and scaled_noise.dtype == np.float32
    assert mixture.shape == clean.shape == scaled_noise.shape
    assert power_db(clean) - power_db(scaled_noise) == pytest.approx(snr_db, abs=0.01)
    np.testing.assert_allclose(mixture, clean + scaled_noise, atol=1e-6)


def test_mix_at_snr_loops_short_noise():
    clean = speech_like(1.0, 8000, seed=0)
    noise = white_noise(0.1, 8000, seed=0)
    _, scaled_noise = mix_at_snr(clean, noise, 0.0)
    np.testing.assert_allclose(scaled_noise[:800], scaled_noise[800:1600], rtol=1e-6)


def test_mix_at_snr_rejects_silent_noise():
    with pytest.raises(ValueError):
        mix_at_snr(speech_like(0.5), np.zeros(100, dtype=np.float32), 0.0)


# --------------------------------------------------------------------------
# Two-speaker mixtures
# --------------------------------------------------------------------------


def test_two_speaker_mixture_shapes_and_sum():
    mixture, sources = two_speaker_mixture(2.0, seed=0)
    assert mixture.shape == (16000,) and sources.shape == (2, 16000)
    assert mixture.dtype == np.float32 and sources.dtype == np.float32
    np.testing.assert_allclose(sources.sum(0), mixture, atol=1e-6)
    assert np.max(np.abs(mixture)) == pytest.approx(0.5, abs=1e-6)
    again, _ = two_speaker_mixture(2.0, seed=0)
    other, _ = two_speaker_mixture(2.0, seed=1)
    assert np.array_equal(mixture, again) and not np.array_equal(mixture, other)


@pytest.mark.parametrize("seed", range(3))
def test_two_speakers_differ_in_pitch(seed):
    sample_rate = 8000
    _, sources = two_speaker_mixture(4.0, sample_rate, seed=seed)
    low, high = (median_pitch(source, sample_rate) for source in sources)
    assert low < high
    assert 75 < low < 170 and 140 < high < 300
    assert not np.allclose(sources[0], sources[1])


@pytest.mark.parametrize("gain_db", [-6.0, 0.0, 3.0])
def test_two_speaker_relative_gain(gain_db):
    _, sources = two_speaker_mixture(2.0, seed=0, gain_db=gain_db)
    relative_db = power_db(sources[1]) - power_db(sources[0])
    assert relative_db == pytest.approx(gain_db, abs=0.01)


# --------------------------------------------------------------------------
# Documentation
# --------------------------------------------------------------------------


def test_doctests():
    result = doctest.testmod(synthetic)
    assert result.attempted > 10
    assert result.failed == 0


def test_public_functions_are_documented():
    for function in GENERATORS + [mix_at_snr, two_speaker_mixture]:
        doc = function.__doc__
        for section in ("Arguments", "Returns", "Example", ">>>"):
            assert section in doc, f"{function.__name__} lacks {section}"
