"""Deterministic synthetic signals: speech-like voices, noises and mixtures.

The offline demo makes its examples with these generators at run time, the recipes' synthetic
datasets and the benchmarks build on them, and the tests use them as known inputs.

Nothing here downloads or reads audio: every signal is synthesised from a seed,
so the same call always returns the same samples. All functions return 1-D
``numpy.float32`` arrays (``two_speaker_mixture`` also returns a ``[2, T]``
array of sources) and are vectorised: ten seconds of any signal take from a
few milliseconds (noises) to a few tens of milliseconds (one voice) or a
couple of hundred milliseconds (six-voice babble).

Level convention: every generator peak-normalises its output to ``peak``
(0.5 by default), so nothing clips and levels are predictable.

Seeds: every generator accepts ``seed`` as an ``int`` or as a
``numpy.random.Generator``. A Generator is consumed (its state advances),
which lets one generator drive a whole test deterministically.

Example
-------
>>> clean = speech_like(2.0, sample_rate=16000, seed=1)
>>> noise = pink_noise(2.0, sample_rate=16000, seed=2)
>>> noisy, scaled_noise = mix_at_snr(clean, noise, snr_db=5.0)
>>> noisy.shape, noisy.dtype
((32000,), dtype('float32'))

Authors
 * speechbrain-ext contributors
"""

import numpy as np
from scipy.signal import butter, sosfilt

DEFAULT_PEAK = 0.5

# Formant targets (F1, F2, F3 in Hz) of five vowels for an adult male voice;
# higher voices get them scaled up (shorter vocal tract).
VOWEL_FORMANTS = np.array(
    [
        [730.0, 1090.0, 2440.0],  # /a/
        [530.0, 1840.0, 2480.0],  # /e/
        [270.0, 2290.0, 3010.0],  # /i/
        [570.0, 840.0, 2410.0],  # /o/
        [300.0, 870.0, 2240.0],  # /u/
    ]
)
FORMANT_BANDWIDTHS = np.array([80.0, 100.0, 150.0])

# Formant filters change every hop (and are cross-faded by overlap-add);
# 8 ms is smooth enough for vowel transitions.
FORMANT_HOP_SECONDS = 0.008

# Relative level of fricative noise against voiced sound (both peak 1 first).
FRICATIVE_LEVEL = 0.25


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------


def _as_generator(seed):
    """Return ``seed`` if it is a Generator, else a new Generator seeded with it."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def _child_seed(rng):
    """Draw an integer seed so that sub-generators are independent but reproducible."""
    return int(rng.integers(0, 2**63 - 1))


def _num_samples(duration, sample_rate):
    """Number of samples of ``duration`` seconds, validating the arguments."""
    if duration < 0:
        raise ValueError(f"duration must be >= 0, got {duration}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
    return int(round(duration * sample_rate))


def _power(signal):
    """Mean power in float64 (float32 sums lose precision on long signals)."""
    signal = np.asarray(signal, dtype=np.float64)
    return float(np.mean(signal**2)) if signal.size else 0.0


def _peak_normalise(signal, peak):
    """Scale ``signal`` so that its largest absolute value equals ``peak``."""
    largest = np.max(np.abs(signal)) if signal.size else 0.0
    if largest == 0:
        return np.zeros(signal.shape, dtype=np.float32)
    return (signal * (peak / largest)).astype(np.float32)


# --------------------------------------------------------------------------
# Speech-like signals
# --------------------------------------------------------------------------


def _word_layout(duration, rng):
    """Return ``(start, end)`` times of words, with silent pauses between them."""
    words = []
    time = rng.uniform(0.05, 0.2)  # leading silence
    while True:
        end = min(time + rng.uniform(0.25, 0.8), duration - 0.02)
        if end - time < 0.08:  # too little room left for a word
            break
        words.append((time, end))
        time = end + rng.uniform(0.12, 0.4)
    if not words:  # very short signals are a single word
        words.append((0.0, duration))
    return words


def _syllable_layout(words, syllable_rate, rng):
    """Split every word into syllables of roughly ``1 / syllable_rate`` seconds.

    Returns a list of dicts with the voiced span, an optional fricative span
    (an unvoiced onset), a stress gain and a vowel index.
    """
    syllables = []
    for start, end in words:
        count = max(1, int(round((end - start) * syllable_rate)))
        # Unequal syllable lengths, summing to the word length.
        weights = rng.uniform(0.7, 1.3, size=count)
        bounds = start + (end - start) * np.concatenate(
            [[0.0], np.cumsum(weights) / weights.sum()]
        )
        for syl_start, syl_end in zip(bounds[:-1], bounds[1:]):
            fricative = None
            voiced_start = syl_start
            if rng.random() < 0.35:
                voiced_start = syl_start + 0.3 * (syl_end - syl_start)
                fricative = (syl_start, voiced_start)
            syllables.append(
                {
                    "voiced": (voiced_start, syl_end),
                    "fricative": fricative,
                    "stress": rng.uniform(0.6, 1.0),
                    "vowel": int(rng.integers(len(VOWEL_FORMANTS))),
                }
            )
    return syllables


def _add_hump(envelope, span, gain, sample_rate):
    """Add a half-sine amplitude hump over ``span`` (seconds) to ``envelope``."""
    first = int(round(span[0] * sample_rate))
    last = min(int(round(span[1] * sample_rate)), envelope.size)
    if last <= first:
        return
    position = (np.arange(first, last) - first + 0.5) / (last - first)
    envelope[first:last] += gain * np.sin(np.pi * position)


def _f0_contour(num_samples, sample_rate, base_f0, words, rng):
    """Per-sample fundamental frequency: slow random wander plus falling words."""
    times = np.arange(num_samples) / sample_rate
    # Random intonation: knots every 150 ms, linearly interpolated (semitones).
    knot_times = np.arange(0.0, num_samples / sample_rate + 0.15, 0.15)
    knots = np.clip(rng.normal(0.0, 1.0, knot_times.size), -2.0, 2.0)
    semitones = np.interp(times, knot_times, knots)
    # Declination: pitch falls by 3 semitones across each word.
    for start, end in words:
        inside = (times >= start) & (times < end)
        progress = (times[inside] - start) / max(end - start, 1e-9)
        semitones[inside] += 1.5 - 3.0 * progress
    return base_f0 * 2.0 ** (semitones / 12.0)


def _bandlimited_sawtooth(f0, sample_rate):
    """Sawtooth with time-varying ``f0`` (Hz per sample), anti-aliased by PolyBLEP.

    A sawtooth holds every harmonic of f0 with a -6 dB/octave tilt, close to a
    glottal source; PolyBLEP smooths each wrap so high harmonics do not alias.
    """
    step = f0 / sample_rate
    phase = np.cumsum(step) % 1.0
    saw = 2.0 * phase - 1.0
    just_wrapped = phase < step
    x = phase[just_wrapped] / step[just_wrapped]
    saw[just_wrapped] -= 2.0 * x - x * x - 1.0
    about_to_wrap = phase > 1.0 - step
    x = (phase[about_to_wrap] - 1.0) / step[about_to_wrap]
    saw[about_to_wrap] -= x * x + 2.0 * x + 1.0
    return saw


def _formant_response(tracks, fft_size, sample_rate):
    """Complex frequency response of 3 cascaded formant resonators per frame.

    Each resonator is ``g / (1 + a1 z^-1 + a2 z^-2)`` with poles at the formant
    frequency and bandwidth, and ``g`` chosen for unit gain at DC (as in
    cascade formant synthesisers). ``tracks`` has shape ``[frames, 3]``;
    returns shape ``[frames, fft_size // 2 + 1]``.
    """
    radius = np.exp(-np.pi * FORMANT_BANDWIDTHS / sample_rate)  # [3]
    a1 = -2.0 * radius * np.cos(2.0 * np.pi * tracks / sample_rate)  # [frames, 3]
    a2 = radius**2
    # Single precision is plenty for a test signal and twice as fast.
    a1, a2 = a1.astype(np.float32), a2.astype(np.float32)
    delay = np.exp(-2j * np.pi * np.arange(fft_size // 2 + 1) / fft_size)
    delay = delay.astype(np.complex64)
    delay_squared = delay**2
    # One division at the end: product of gains over product of denominators.
    denominator = np.ones((tracks.shape[0], delay.size), dtype=np.complex64)
    for k in range(3):
        denominator *= 1.0 + a1[:, k : k + 1] * delay + a2[k] * delay_squared
    gain = np.prod(1.0 + a1 + a2, axis=1, keepdims=True)  # unit gain at DC
    return gain / denominator


def _formant_tracks(syllables, frame_times, formant_scale, sample_rate, rng):
    """Interpolate vowel targets between syllable centres -> ``[frames, 3]`` Hz."""
    centres = np.array([np.mean(s["voiced"]) for s in syllables])
    targets = VOWEL_FORMANTS[[s["vowel"] for s in syllables]] * formant_scale
    targets *= rng.uniform(0.95, 1.05, size=targets.shape)  # per-vowel variety
    tracks = np.stack(
        [np.interp(frame_times, centres, targets[:, k]) for k in range(3)],
        axis=-1,
    )
    # Keep resonances safely below Nyquist at low sample rates.
    return np.minimum(tracks, 0.45 * sample_rate)


def _apply_formants(source, tracks, hop, sample_rate):
    """Filter ``source`` through formant resonators that change frame by frame.

    Overlap-add with 50 %-overlapping periodic Hann windows (which sum to
    one): each windowed frame is filtered by its own response in the
    frequency domain, zero-padded to 6 hops so that the resonators' ringing
    (down ~70 dB after 4 hops) is not wrapped around. Fully vectorised,
    unlike a per-block IIR loop.
    """
    frame = 2 * hop
    hops_per_fft = 6
    fft_size = hops_per_fft * hop
    num_frames = tracks.shape[0]
    # One hop of leading zeros so the first samples are covered by two frames.
    padded = np.zeros((num_frames + 1) * hop)
    padded[hop : hop + source.size] = source
    blocks = padded.reshape(num_frames + 1, hop)
    frames = np.concatenate([blocks[:-1], blocks[1:]], axis=1)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(frame) / frame)
    spectra = np.fft.rfft((frames * window).astype(np.float32), n=fft_size)
    spectra *= _formant_response(tracks, fft_size, sample_rate)
    filtered = np.fft.irfft(spectra, n=fft_size)
    filtered = filtered.reshape(num_frames, hops_per_fft, hop)
    output = np.zeros((num_frames + hops_per_fft - 1, hop))
    for offset in range(hops_per_fft):
        output[offset : offset + num_frames] += filtered[:, offset]
    return output.reshape(-1)[hop : hop + source.size]


def _fricative_noise(num_samples, sample_rate, rng):
    """White noise band-passed to the hiss region of fricatives (~2.5-7 kHz)."""
    low = min(2500.0, 0.3 * sample_rate)
    high = min(7000.0, 0.45 * sample_rate)
    sos = butter(4, [low, high], btype="bandpass", fs=sample_rate, output="sos")
    return sosfilt(sos, rng.standard_normal(num_samples))


def speech_like(
    duration,
    sample_rate=16000,
    seed=0,
    f0=None,
    syllable_rate=4.0,
    peak=DEFAULT_PEAK,
):
    """Synthesise a deterministic signal with the main statistics of speech.

    The signal is made of "words" separated by silent pauses (digital zeros,
    apart from a few ms of filter ring-out). Each word holds syllables at about
    ``syllable_rate`` per second, each an amplitude hump of voiced sound, and
    about a third of them start with a fricative noise burst. Voiced sound is a
    band-limited harmonic series on a slowly moving fundamental (random
    intonation plus a fall across each word, within about +/-3.5 semitones of
    ``f0``), filtered by three moving formant resonators that glide between
    vowel targets, so the spectral envelope changes like vowels do.

    Arguments
    ---------
    duration : float
        Length in seconds.
    sample_rate : int
        Sampling rate in Hz.
    seed : int or numpy.random.Generator
        Seed of the random layout, pitch and noise.
    f0 : float or None
        Base fundamental frequency in Hz of the voice. None draws one
        uniformly in 90-250 Hz from ``seed``. Formants are raised for higher
        voices, as vocal tracts of high voices are shorter.
    syllable_rate : float
        Syllables per second (amplitude modulation rate).
    peak : float
        Peak absolute value of the output.

    Returns
    -------
    numpy.ndarray
        Float32 array of shape ``[round(duration * sample_rate)]``.

    Example
    -------
    >>> speech = speech_like(1.5, sample_rate=16000, seed=0)
    >>> speech.shape, speech.dtype
    ((24000,), dtype('float32'))
    >>> float(np.abs(speech).max())
    0.5
    >>> bool(np.array_equal(speech, speech_like(1.5, seed=0)))
    True
    """
    num_samples = _num_samples(duration, sample_rate)
    if num_samples == 0:
        return np.zeros(0, dtype=np.float32)
    rng = _as_generator(seed)
    base_f0 = rng.uniform(90.0, 250.0) if f0 is None else float(f0)
    duration = num_samples / sample_rate

    words = _word_layout(duration, rng)
    syllables = _syllable_layout(words, syllable_rate, rng)

    voiced_envelope = np.zeros(num_samples)
    fricative_envelope = np.zeros(num_samples)
    for syllable in syllables:
        _add_hump(voiced_envelope, syllable["voiced"], syllable["stress"], sample_rate)
        if syllable["fricative"] is not None:
            _add_hump(fricative_envelope, syllable["fricative"], 1.0, sample_rate)

    f0_track = _f0_contour(num_samples, sample_rate, base_f0, words, rng)
    source = _bandlimited_sawtooth(f0_track, sample_rate) * voiced_envelope

    hop = max(1, int(round(FORMANT_HOP_SECONDS * sample_rate)))
    # Frame i of the overlap-add is centred on sample i * hop.
    frame_times = np.arange(num_samples // hop + 2) * hop / sample_rate
    formant_scale = np.clip(base_f0 / 120.0, 1.0, 2.2) ** 0.25
    tracks = _formant_tracks(syllables, frame_times, formant_scale, sample_rate, rng)
    voiced = _apply_formants(source, tracks, hop, sample_rate)

    fricatives = _fricative_noise(num_samples, sample_rate, rng) * fricative_envelope
    speech = _peak_normalise(voiced, 1.0) + FRICATIVE_LEVEL * _peak_normalise(
        fricatives, 1.0
    )
    return _peak_normalise(speech, peak)


# --------------------------------------------------------------------------
# Noises
# --------------------------------------------------------------------------


def white_noise(duration, sample_rate=16000, seed=0, peak=DEFAULT_PEAK):
    """Gaussian white noise (flat spectrum).

    Arguments
    ---------
    duration : float
        Length in seconds.
    sample_rate : int
        Sampling rate in Hz.
    seed : int or numpy.random.Generator
        Seed of the noise.
    peak : float
        Peak absolute value of the output.

    Returns
    -------
    numpy.ndarray
        Float32 array of shape ``[round(duration * sample_rate)]``.

    Example
    -------
    >>> noise = white_noise(0.5, sample_rate=8000, seed=3)
    >>> noise.shape, noise.dtype
    ((4000,), dtype('float32'))
    """
    num_samples = _num_samples(duration, sample_rate)
    rng = _as_generator(seed)
    return _peak_normalise(rng.standard_normal(num_samples), peak)


def pink_noise(
    duration, sample_rate=16000, seed=0, min_freq=20.0, peak=DEFAULT_PEAK
):
    """Pink (1/f) noise: power falls by 10 dB per decade, 3 dB per octave.

    White noise is shaped in the frequency domain by ``1 / sqrt(f)``. The
    shaping is flat below ``min_freq`` so that a huge near-DC drift does not
    dominate the signal, and the DC bin is removed. Being made by one FFT,
    the noise loops seamlessly (its end joins its start).

    Arguments
    ---------
    duration : float
        Length in seconds.
    sample_rate : int
        Sampling rate in Hz.
    seed : int or numpy.random.Generator
        Seed of the noise.
    min_freq : float
        Below this frequency (Hz) the spectrum is flat instead of 1/f.
    peak : float
        Peak absolute value of the output.

    Returns
    -------
    numpy.ndarray
        Float32 array of shape ``[round(duration * sample_rate)]``.

    Example
    -------
    >>> noise = pink_noise(1.0, sample_rate=16000, seed=0)
    >>> noise.shape, noise.dtype
    ((16000,), dtype('float32'))
    """
    num_samples = _num_samples(duration, sample_rate)
    rng = _as_generator(seed)
    if num_samples == 0:
        return np.zeros(0, dtype=np.float32)
    spectrum = np.fft.rfft(rng.standard_normal(num_samples))
    freqs = np.fft.rfftfreq(num_samples, d=1.0 / sample_rate)
    spectrum /= np.sqrt(np.maximum(freqs, min_freq))  # amplitude 1/sqrt(f) -> power 1/f
    spectrum[0] = 0.0
    return _peak_normalise(np.fft.irfft(spectrum, n=num_samples), peak)


def babble_noise(
    duration, sample_rate=16000, seed=0, num_voices=6, peak=DEFAULT_PEAK
):
    """Cocktail-party babble: a sum of independent ``speech_like`` voices.

    Each voice gets its own random pitch (90-250 Hz), layout and equal RMS,
    so with several voices the pauses of one are filled by the others.

    Arguments
    ---------
    duration : float
        Length in seconds.
    sample_rate : int
        Sampling rate in Hz.
    seed : int or numpy.random.Generator
        Seed of all voices.
    num_voices : int
        Number of talkers summed.
    peak : float
        Peak absolute value of the output.

    Returns
    -------
    numpy.ndarray
        Float32 array of shape ``[round(duration * sample_rate)]``.

    Example
    -------
    >>> babble = babble_noise(1.0, sample_rate=8000, seed=0, num_voices=4)
    >>> babble.shape, babble.dtype
    ((8000,), dtype('float32'))
    """
    num_samples = _num_samples(duration, sample_rate)
    rng = _as_generator(seed)
    babble = np.zeros(num_samples)
    for _ in range(num_voices):
        voice = speech_like(duration, sample_rate, seed=_child_seed(rng))
        power = _power(voice)
        if power > 0:  # equal loudness talkers
            babble += voice / np.sqrt(power)
    return _peak_normalise(babble, peak)


def hum_noise(
    duration,
    sample_rate=16000,
    seed=0,
    mains_freq=None,
    num_harmonics=8,
    peak=DEFAULT_PEAK,
):
    """Electrical mains hum: a 50 or 60 Hz tone with harmonics.

    Harmonic amplitudes fall as ``1 / k`` with odd harmonics emphasised (as
    from transformers and rectifiers), with random phases and small random
    level variations. Harmonics at or above Nyquist are dropped.

    Arguments
    ---------
    duration : float
        Length in seconds.
    sample_rate : int
        Sampling rate in Hz.
    seed : int or numpy.random.Generator
        Seed of the phases, levels and (if None) the mains frequency.
    mains_freq : float or None
        Fundamental in Hz; None picks 50 or 60 Hz from ``seed``.
    num_harmonics : int
        Number of harmonics, fundamental included.
    peak : float
        Peak absolute value of the output.

    Returns
    -------
    numpy.ndarray
        Float32 array of shape ``[round(duration * sample_rate)]``.

    Example
    -------
    >>> hum = hum_noise(1.0, sample_rate=16000, seed=0, mains_freq=50.0)
    >>> hum.shape, hum.dtype
    ((16000,), dtype('float32'))
    """
    num_samples = _num_samples(duration, sample_rate)
    rng = _as_generator(seed)
    if mains_freq is None:
        mains_freq = float(rng.choice([50.0, 60.0]))
    times = np.arange(num_samples) / sample_rate
    hum = np.zeros(num_samples)
    for k in range(1, num_harmonics + 1):
        level = (1.0 if k % 2 else 0.5) / k * rng.uniform(0.7, 1.3)
        phase = rng.uniform(0.0, 2.0 * np.pi)
        if k * mains_freq < sample_rate / 2:
            hum += level * np.sin(2.0 * np.pi * k * mains_freq * times + phase)
    return _peak_normalise(hum, peak)


def click_noise(
    duration, sample_rate=16000, seed=0, clicks_per_second=5.0, peak=DEFAULT_PEAK
):
    """Sparse impulsive clicks (crackle of a bad cable, vinyl, key presses).

    Click times follow a Poisson process (at least one click). Each click is
    a 1-4 ms burst of exponentially decaying noise with a random level, and
    everything between clicks is exactly zero.

    Arguments
    ---------
    duration : float
        Length in seconds.
    sample_rate : int
        Sampling rate in Hz.
    seed : int or numpy.random.Generator
        Seed of the click times and shapes.
    clicks_per_second : float
        Mean click rate.
    peak : float
        Peak absolute value of the output (the loudest click).

    Returns
    -------
    numpy.ndarray
        Float32 array of shape ``[round(duration * sample_rate)]``.

    Example
    -------
    >>> clicks = click_noise(1.0, sample_rate=16000, seed=0)
    >>> clicks.shape, clicks.dtype
    ((16000,), dtype('float32'))
    >>> bool(np.mean(clicks == 0) > 0.9)
    True
    """
    num_samples = _num_samples(duration, sample_rate)
    rng = _as_generator(seed)
    clicks = np.zeros(num_samples)
    if num_samples == 0:
        return clicks.astype(np.float32)
    count = max(1, rng.poisson(clicks_per_second * num_samples / sample_rate))
    for start in rng.integers(0, num_samples, size=count):
        length = int(rng.uniform(0.001, 0.004) * sample_rate) + 1
        decay = rng.uniform(0.0002, 0.001) * sample_rate  # time constant, samples
        shape = rng.standard_normal(length) * np.exp(-np.arange(length) / decay)
        shape *= rng.uniform(0.3, 1.0) / np.max(np.abs(shape))
        stop = min(start + length, num_samples)
        clicks[start:stop] += shape[: stop - start]
    return _peak_normalise(clicks, peak)


# --------------------------------------------------------------------------
# Mixing
# --------------------------------------------------------------------------


def mix_at_snr(clean, noise, snr_db):
    """Add ``noise`` to ``clean`` at an exact signal-to-noise ratio.

    The noise is looped or cropped to the length of ``clean`` and scaled so
    that ``10 * log10(power(clean) / power(scaled_noise)) == snr_db``.

    Arguments
    ---------
    clean : numpy.ndarray
        1-D clean signal.
    noise : numpy.ndarray
        1-D noise of any non-zero length.
    snr_db : float
        Wanted clean-to-noise power ratio in dB.

    Returns
    -------
    mixture : numpy.ndarray
        Float32 ``clean + scaled_noise``, same length as ``clean``.
    scaled_noise : numpy.ndarray
        Float32 noise as it was added.

    Example
    -------
    >>> clean = speech_like(1.0, sample_rate=8000, seed=0)
    >>> noise = white_noise(0.3, sample_rate=8000, seed=1)
    >>> mixture, scaled = mix_at_snr(clean, noise, snr_db=10.0)
    >>> mixture.shape, scaled.shape
    ((8000,), (8000,))
    >>> power = lambda x: np.mean(x.astype(np.float64) ** 2)
    >>> round(float(10 * np.log10(power(clean) / power(scaled))), 2)
    10.0
    """
    clean = np.asarray(clean, dtype=np.float64)
    noise = np.asarray(noise, dtype=np.float64)
    if clean.ndim != 1 or noise.ndim != 1:
        raise ValueError("mix_at_snr expects 1-D clean and noise arrays")
    if noise.size == 0 or _power(noise) == 0:
        raise ValueError("noise must be non-empty and not all zeros")
    noise = np.resize(noise, clean.shape)  # loops the noise when it is shorter
    clean_power, noise_power = _power(clean), _power(noise)
    if noise_power == 0:
        raise ValueError("the cropped noise is all zeros; cannot reach an SNR")
    scale = np.sqrt(clean_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    scaled_noise = noise * scale
    return (clean + scaled_noise).astype(np.float32), scaled_noise.astype(np.float32)


def two_speaker_mixture(
    duration,
    sample_rate=8000,
    seed=0,
    gain_db=0.0,
    f0_ranges=((90.0, 140.0), (170.0, 250.0)),
    peak=DEFAULT_PEAK,
):
    """A two-talker mixture for separation tests, with its sources.

    The two voices are independent ``speech_like`` signals whose base pitches
    are drawn from different ranges (a low and a high voice by default), so
    they can be told apart. ``sources.sum(0)`` equals ``mixture``.

    Arguments
    ---------
    duration : float
        Length in seconds.
    sample_rate : int
        Sampling rate in Hz (8 kHz, as in WSJ0-2mix, by default).
    seed : int or numpy.random.Generator
        Seed of both voices.
    gain_db : float
        Power of the second speaker relative to the first, in dB.
    f0_ranges : tuple
        Two ``(low, high)`` ranges in Hz for the base pitch of each speaker.
    peak : float
        Peak absolute value of the mixture (sources are scaled alike).

    Returns
    -------
    mixture : numpy.ndarray
        Float32 array of shape ``[T]``.
    sources : numpy.ndarray
        Float32 array of shape ``[2, T]``.

    Example
    -------
    >>> mixture, sources = two_speaker_mixture(1.0, sample_rate=8000, seed=0)
    >>> mixture.shape, sources.shape
    ((8000,), (2, 8000))
    >>> bool(np.allclose(sources.sum(0), mixture))
    True
    """
    if len(f0_ranges) != 2:
        raise ValueError("f0_ranges needs one (low, high) pair per speaker (2)")
    rng = _as_generator(seed)
    voices = []
    for low, high in f0_ranges:
        f0 = rng.uniform(low, high)
        voice = speech_like(duration, sample_rate, seed=_child_seed(rng), f0=f0)
        voices.append(voice.astype(np.float64))
    first, second = voices
    if _power(first) > 0 and _power(second) > 0:
        second *= np.sqrt(_power(first) / _power(second) * 10.0 ** (gain_db / 10.0))
    sources = np.stack([first, second])
    largest = np.max(np.abs(sources.sum(0))) if sources.size else 0.0
    if largest > 0:
        sources *= peak / largest
    sources = sources.astype(np.float32)
    return sources.sum(0), sources
