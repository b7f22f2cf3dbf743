"""Objective metrics of enhanced and separated speech, on signals in memory.

- :func:`si_snr`: the one SI-SNR of the project (evaluation, the FRCRN training loss, the
  demo, the benchmarks), on numpy arrays or torch tensors;
- :func:`best_permutation`: the one permutation search (separation scores, speaker order
  across chunks, the demo), on a square score matrix;
- PESQ-WB / PESQ-NB (``pesq``), STOI (``pystoi``) and BSS-eval SDR (``mir_eval``);
- DNSMOS (:func:`dnsmos`: the DNS-Challenge's non-intrusive P.835 SIG / BAK / OVRL and P.808
  MOS, from Microsoft's ONNX models as the ``speechmos`` package ships them; no reference);
- :func:`compute_metrics` (one enhanced utterance) and :func:`separation_metrics` (one
  separated mixture): every metric of one item, as the per-item CSVs report them.

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> clean = rng.standard_normal(16000)
>>> round(si_snr(clean + 0.1 * rng.standard_normal(16000), clean), 1)
20.0

Authors: speechbrain-ext contributors
"""

import itertools
import math
import warnings

import numpy as np
import torch
from pesq import pesq as _pesq
from pystoi import stoi as _stoi
from scipy.signal import resample_poly


# --------------------------------------------------------------------------------------------
# SI-SNR and the permutation search
# --------------------------------------------------------------------------------------------


def _si_snr_db(estimate, target, zero_mean, eps, log10):
    """The formula, written once for numpy arrays and torch tensors (same operators)."""
    if zero_mean:
        estimate = estimate - estimate.mean(-1)[..., None]
        target = target - target.mean(-1)[..., None]
    scale = (estimate * target).sum(-1) / ((target * target).sum(-1) + eps)
    projection = scale[..., None] * target
    residual = estimate - projection
    return 10 * log10(((projection * projection).sum(-1) + eps) / ((residual * residual).sum(-1) + eps))


def si_snr(estimate, target, zero_mean=True, eps=1e-8):
    """Scale-invariant signal-to-noise ratio in dB, over the last axis.

    ``SI-SNR = 10 log10(|s_t|^2 / |e - s_t|^2)`` with ``s_t = <e, s> s / |s|^2`` the projection of
    the estimate ``e`` on the target ``s``, both made zero-mean first when ``zero_mean`` (the
    usual definition, used for evaluation). The FRCRN training loss uses ``zero_mean=False``,
    as the official loss does; for speech without a DC offset the two agree.

    Arguments
    ---------
    estimate, target : torch.Tensor, numpy.ndarray or list
        ``[..., T]`` signals; leading axes broadcast (e.g. ``[1, S, T]`` against ``[S, 1, T]``
        scores every pair).
    zero_mean : bool
        Remove each signal's mean before projecting.
    eps : float
        Guards the divisions and the logarithm (silent signals).

    Returns
    -------
    torch.Tensor, float or numpy.ndarray
        ``[...]`` in dB. With a torch tensor among the inputs: a tensor in its dtype and device,
        differentiable (the training loss). Otherwise computed in float64: a float for 1-D
        inputs, an array for more axes.

    Example
    -------
    >>> t = np.sin(np.arange(1000) / 5.0)
    >>> round(si_snr(3.0 * t + 0.01 * np.cos(np.arange(1000) / 3.0), t), 1)
    49.5
    >>> x = torch.randn(2, 1000)
    >>> snr = si_snr(3 * x, x, zero_mean=False)
    >>> snr.shape, bool((snr > 60).all())
    (torch.Size([2]), True)
    """
    if isinstance(estimate, torch.Tensor) or isinstance(target, torch.Tensor):
        like = estimate if isinstance(estimate, torch.Tensor) else target
        estimate, target = (_as_float_tensor(x, like) for x in (estimate, target))
        _check_signals(estimate, target)
        return _si_snr_db(estimate, target, zero_mean, eps, torch.log10)
    estimate, target = np.asarray(estimate, dtype=np.float64), np.asarray(target, dtype=np.float64)
    _check_signals(estimate, target)
    result = _si_snr_db(estimate, target, zero_mean, eps, np.log10)
    return float(result) if np.ndim(result) == 0 else result


def _as_float_tensor(signal, like):
    """``signal`` as a floating-point tensor; a non-tensor takes the dtype and device of ``like``."""
    dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
    if not isinstance(signal, torch.Tensor):
        return torch.as_tensor(np.asarray(signal), device=like.device).to(dtype)
    return signal if signal.is_floating_point() else signal.to(dtype)


def _check_signals(estimate, target):
    if estimate.ndim == 0 or target.ndim == 0 or estimate.shape[-1] != target.shape[-1]:
        raise ValueError(
            f"si_snr needs signals of one length (last axis), got shapes {tuple(estimate.shape)} and "
            f"{tuple(target.shape)}"
        )


def si_snr_matrix(references, estimates, zero_mean=True):
    """SI-SNR in dB of every estimate against every reference: the scores of
    :func:`best_permutation`.

    Arguments
    ---------
    references, estimates : numpy.ndarray, torch.Tensor or list
        ``[speakers, T]`` each (any number of estimates).
    zero_mean : bool
        See :func:`si_snr`.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        ``[references, estimates]``: ``scores[i, j]`` is estimate ``j`` against reference ``i``.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> sources = rng.standard_normal((2, 1000))
    >>> scores = si_snr_matrix(sources, sources[::-1] + 0.1 * rng.standard_normal((2, 1000)))
    >>> scores.shape, bool(scores[0, 1] > 15 > scores[0, 0])
    ((2, 2), True)
    """
    if not isinstance(references, torch.Tensor) and not isinstance(estimates, torch.Tensor):
        references, estimates = np.asarray(references, np.float64), np.asarray(estimates, np.float64)
    # [1, E, T] against [R, 1, T]: every pair in one broadcast computation.
    return si_snr(estimates[None, :, :], references[:, None, :], zero_mean=zero_mean)


def best_permutation(scores):
    """The assignment of estimates to references that maximises the total score.

    An exhaustive search over the ``n!`` assignments (as SpeechBrain's PIT wrappers do): exact,
    and quick for the 2 or 3 speakers of speech separation.

    Arguments
    ---------
    scores : numpy.ndarray, torch.Tensor or nested list
        ``[n, n]``: ``scores[i, j]`` is the score of estimate ``j`` for reference ``i`` (higher
        is better: SI-SNR, correlation, ...).

    Returns
    -------
    tuple of int
        ``permutation[i]`` is the estimate of reference ``i``. Among equal totals the first in
        lexicographic order wins, so ties keep the given order.

    Example
    -------
    >>> best_permutation([[0.1, 0.9], [0.8, 0.2]])
    (1, 0)
    >>> best_permutation(np.zeros((3, 3)))  # a tie: the given order
    (0, 1, 2)
    """
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().to("cpu", torch.float64).numpy()
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1] or scores.shape[0] == 0:
        raise ValueError(f"best_permutation needs a square [n, n] score matrix, got shape {scores.shape}")
    count = len(scores)
    orders = np.array(list(itertools.permutations(range(count))))  # lexicographic: identity first
    totals = scores[np.arange(count), orders].sum(axis=1)
    return tuple(int(j) for j in orders[int(np.argmax(totals))])  # argmax: the first of equal totals


# --------------------------------------------------------------------------------------------
# PESQ and STOI
# --------------------------------------------------------------------------------------------


def resample(signal, from_rate, to_rate):
    """``signal`` (``[..., T]``) resampled from ``from_rate`` to ``to_rate`` Hz (polyphase,
    ``scipy.signal.resample_poly``); returned as is when the rates are equal.

    Example
    -------
    >>> resample(np.ones(160), 16000, 8000).shape
    (80,)
    """
    if from_rate == to_rate:
        return signal
    divisor = math.gcd(int(from_rate), int(to_rate))
    return resample_poly(signal, int(to_rate) // divisor, int(from_rate) // divisor, axis=-1)


def _pesq_rate(sample_rate):
    """The rate PESQ runs at for audio at ``sample_rate``: 16 kHz, or 8 kHz for narrowband audio."""
    return 16000 if sample_rate >= 16000 else 8000


def _pesq_or_nan(rate, reference, degraded, mode):
    """PESQ, or NaN (with a warning) when the signal has no utterance PESQ can find."""
    try:
        with np.errstate(divide="ignore", invalid="ignore"):  # pesq normalises silence by 0
            return float(_pesq(rate, reference, degraded, mode))
    except Exception as error:  # NoUtterancesError, BufferTooShortError, ...
        warnings.warn(f"PESQ ({mode}) could not score a file: {error.__class__.__name__}: {error}")
        return float("nan")


def pesq_wb(clean, enhanced, sample_rate=16000):
    """Wideband PESQ (P.862.2), computed at 16 kHz.

    Audio at another rate above 16 kHz is resampled to 16 kHz first; audio below 16 kHz has no
    wideband content and scores NaN. Returns NaN (with a warning) when PESQ finds no speech.

    Arguments
    ---------
    clean, enhanced : numpy.ndarray
        ``[T]`` each, at ``sample_rate``.
    sample_rate : int
        In Hz.

    Example
    -------
    >>> from speechbrain_ext.synthetic import speech_like
    >>> clean = speech_like(1.0, 16000, seed=0)
    >>> round(pesq_wb(clean, clean), 2)
    4.64
    """
    if sample_rate < 16000:
        return float("nan")
    clean, enhanced = (resample(np.asarray(x, np.float64), sample_rate, 16000) for x in (clean, enhanced))
    return _pesq_or_nan(16000, clean, enhanced, "wb")


def pesq_nb(clean, enhanced, sample_rate=16000):
    """Narrowband PESQ (P.862), at 16 kHz (``pesq``'s 'nb' mode) or at 8 kHz for 8 kHz audio.

    Arguments
    ---------
    clean, enhanced : numpy.ndarray
        ``[T]`` each, at ``sample_rate``.
    sample_rate : int
        In Hz.

    Example
    -------
    >>> from speechbrain_ext.synthetic import speech_like
    >>> clean = speech_like(1.0, 8000, seed=0)
    >>> round(pesq_nb(clean, clean, sample_rate=8000), 2)
    4.55
    """
    rate = _pesq_rate(sample_rate)
    clean, enhanced = (resample(np.asarray(x, np.float64), sample_rate, rate) for x in (clean, enhanced))
    return _pesq_or_nan(rate, clean, enhanced, "nb")


def stoi(clean, enhanced, sample_rate=16000):
    """Short-time objective intelligibility (``pystoi``, classic not extended), in [0, 1].

    Arguments
    ---------
    clean, enhanced : numpy.ndarray
        ``[T]`` each, at ``sample_rate``.
    sample_rate : int
        In Hz.

    Example
    -------
    >>> from speechbrain_ext.synthetic import speech_like
    >>> clean = speech_like(1.0, 16000, seed=0)
    >>> round(stoi(clean, clean), 3)
    1.0
    """
    return float(_stoi(np.asarray(clean, np.float64), np.asarray(enhanced, np.float64), sample_rate, extended=False))


def compute_metrics(clean, enhanced, sample_rate, noisy=None):
    """Every metric of one utterance: ``pesq_wb, pesq_nb, stoi, si_snr`` of the enhanced signal
    and, with ``noisy``, the same for the noisy input (``*_noisy``) and ``si_snr_improvement``.

    Arguments
    ---------
    clean, enhanced : numpy.ndarray
        ``[T]`` each, at ``sample_rate``.
    sample_rate : int
        In Hz.
    noisy : numpy.ndarray, optional
        ``[T]``, the noisy input.

    Returns
    -------
    dict
        Metric name to float.

    Example
    -------
    >>> from speechbrain_ext.synthetic import pink_noise, speech_like
    >>> clean = speech_like(1.0, 16000, seed=0)
    >>> noisy = clean + 0.05 * pink_noise(1.0, 16000, seed=1)
    >>> metrics = compute_metrics(clean, 0.5 * (clean + noisy), 16000, noisy=noisy)
    >>> sorted(metrics)[:5]
    ['pesq_nb', 'pesq_nb_noisy', 'pesq_wb', 'pesq_wb_noisy', 'si_snr']
    >>> bool(metrics["si_snr_improvement"] > 5)
    True
    """
    metrics = {
        "pesq_wb": pesq_wb(clean, enhanced, sample_rate),
        "pesq_nb": pesq_nb(clean, enhanced, sample_rate),
        "stoi": stoi(clean, enhanced, sample_rate),
        "si_snr": si_snr(enhanced, clean),
    }
    if noisy is not None:
        metrics.update(
            pesq_wb_noisy=pesq_wb(clean, noisy, sample_rate),
            pesq_nb_noisy=pesq_nb(clean, noisy, sample_rate),
            stoi_noisy=stoi(clean, noisy, sample_rate),
            si_snr_noisy=si_snr(noisy, clean),
        )
        metrics["si_snr_improvement"] = metrics["si_snr"] - metrics["si_snr_noisy"]
    return metrics


# --------------------------------------------------------------------------------------------
# DNSMOS: quality without a reference
# --------------------------------------------------------------------------------------------

#: DNSMOS columns: P.835 speech quality (SIG), background (BAK), overall (OVRL); P.808 MOS.
DNSMOS_METRICS = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808")
#: The rate the DNSMOS models run at.
DNSMOS_RATE = 16000


def dnsmos(signal, sample_rate):
    """DNSMOS of one recording, the DNS-Challenge's non-intrusive quality estimate: no clean
    reference needed, so it scores real recordings.

    Microsoft's DNSMOS P.835 model (SIG, BAK, OVRL, on 1-5 scales, after its polynomial fit)
    and P.808 model, as the ``speechmos`` package ships and runs them (onnxruntime): the audio
    at 16 kHz is scored over 9.01 s windows every second and averaged (shorter audio is
    repeated to 9.01 s, as DNSMOS does). Audio at another rate is resampled to 16 kHz; audio
    whose peak exceeds full scale is scaled down to it (the models take samples in [-1, 1]).

    Arguments
    ---------
    signal : numpy.ndarray
        ``[T]``.
    sample_rate : int
        In Hz.

    Returns
    -------
    dict
        ``dnsmos_sig, dnsmos_bak, dnsmos_ovrl, dnsmos_p808`` (floats).

    Example
    -------
    >>> from speechbrain_ext.synthetic import pink_noise, speech_like
    >>> clean = 0.3 * speech_like(3.0, 16000, seed=0)
    >>> quiet, noisy = dnsmos(clean, 16000), dnsmos(clean + 0.1 * pink_noise(3.0, 16000, seed=1), 16000)
    >>> sorted(quiet), bool(quiet["dnsmos_bak"] > noisy["dnsmos_bak"])
    (['dnsmos_bak', 'dnsmos_ovrl', 'dnsmos_p808', 'dnsmos_sig'], True)
    """
    try:
        from speechmos import dnsmos as speechmos_dnsmos
    except ImportError as error:
        raise ImportError(
            f"DNSMOS needs the speechmos package and onnxruntime ({error}): pip install 'speechbrain-ext[dnsmos]'"
        ) from None
    audio = resample(np.asarray(signal, np.float64), sample_rate, DNSMOS_RATE)
    if not len(audio):
        raise ValueError("DNSMOS cannot score an empty signal")
    peak = np.abs(audio).max()
    if peak > 1:
        audio = audio / peak
    scores = speechmos_dnsmos.run(audio.astype(np.float32), DNSMOS_RATE)
    return {f"dnsmos_{name}": float(scores[f"{name}_mos"]) for name in ("sig", "bak", "ovrl", "p808")}


# --------------------------------------------------------------------------------------------
# Separation
# --------------------------------------------------------------------------------------------


def _as_sources(signals, role):
    """``signals`` as a float64 ``[speakers, samples]`` array (at least two speakers)."""
    array = np.asarray(signals, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 2:
        raise ValueError(f"{role} must be [speakers (>= 2), samples], got shape {array.shape}")
    return array


def bss_eval_sdr(sources, estimates):
    """BSS-eval SDR in dB of each estimate against the source of the same index.

    Computed by ``mir_eval.separation.bss_eval_sources`` (512-tap distortion filters, as in
    SpeechBrain's separation recipes) without a permutation search: order the estimates first
    (:func:`best_permutation`). mir_eval refuses silent (all-zero) signals: their SDR is NaN,
    with a warning.

    Arguments
    ---------
    sources, estimates : numpy.ndarray
        ``[speakers, samples]`` each.

    Returns
    -------
    numpy.ndarray
        ``[speakers]`` SDR in dB.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> sources = rng.standard_normal((2, 4000))
    >>> estimates = sources + 0.1 * rng.standard_normal((2, 4000))  # noise 20 dB down
    >>> [round(float(v)) for v in bss_eval_sdr(sources, estimates)]
    [21, 21]
    """
    try:
        from mir_eval.separation import bss_eval_sources
    except ImportError:  # pragma: no cover - a declared dependency
        raise ImportError("SDR needs the mir_eval package: pip install mir_eval") from None
    sources, estimates = _as_sources(sources, "sources"), _as_sources(estimates, "estimates")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # mir_eval 0.8 deprecates its separation module
        try:
            sdr, _, _, _ = bss_eval_sources(sources, estimates, compute_permutation=False)
        except ValueError as error:  # a silent reference or estimate
            warnings.warn(f"SDR could not be computed: {error}")
            return np.full(len(sources), np.nan)
    return np.asarray(sdr, dtype=np.float64)


def separation_metrics(mixture, sources, estimates):
    """SDR, SDRi, SI-SNR and SI-SNRi of one mixture, each the mean over the speakers.

    The estimates may come in any order: they are matched to the sources by the permutation of
    best mean SI-SNR (:func:`best_permutation` of :func:`si_snr_matrix`), which the SDR uses
    too. The improvements are over the unprocessed mixture taken as the estimate of every
    source, as in SpeechBrain's separation recipes.

    Arguments
    ---------
    mixture : numpy.ndarray
        ``[samples]``.
    sources, estimates : numpy.ndarray
        ``[speakers, samples]`` each, same length as the mixture.

    Returns
    -------
    dict
        ``sdr``, ``sdr_i``, ``si-snr``, ``si-snr_i`` (dB) and ``permutation``
        (``estimates[permutation[i]]`` is the estimate of ``sources[i]``).

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> sources = rng.standard_normal((2, 4000))
    >>> estimates = sources + 0.1 * rng.standard_normal((2, 4000))  # noise 20 dB down
    >>> metrics = separation_metrics(sources.sum(0), sources, 3.0 * estimates[::-1])
    >>> metrics["permutation"], round(metrics["si-snr"]), round(metrics["si-snr_i"])
    ((1, 0), 20, 20)
    """
    sources, estimates = _as_sources(sources, "sources"), _as_sources(estimates, "estimates")
    mixture = np.asarray(mixture, dtype=np.float64)
    if mixture.shape != sources.shape[1:] or estimates.shape != sources.shape:
        raise ValueError(
            f"mixture {mixture.shape}, sources {sources.shape} and estimates {estimates.shape} do not match"
        )
    scores = si_snr_matrix(sources, estimates)
    permutation = best_permutation(scores)
    si_snrs = scores[np.arange(len(sources)), list(permutation)]
    mixture_si_snr = np.mean(si_snr(mixture, sources))  # the mixture against every source
    sdr = np.mean(bss_eval_sdr(sources, estimates[list(permutation)]))
    mixture_sdr = np.mean(bss_eval_sdr(sources, np.repeat(mixture[None], len(sources), axis=0)))
    return {
        "sdr": float(sdr),
        "sdr_i": float(sdr - mixture_sdr),
        "si-snr": float(np.mean(si_snrs)),
        "si-snr_i": float(np.mean(si_snrs) - mixture_si_snr),
        "permutation": permutation,
    }
