"""The offline demo: enhance and separate the bundled examples with the bundled demo weights.

The demo weights (``pretrained/demo-frcrn-16k``, ``pretrained/demo-mossformer-8k``) are small
models trained with this project's own recipes on synthesised speech (espeak-ng, flite and
festival voices, ``benchmarks/demo_weights.py``); their model cards say exactly how they were
made and what they are and are not for. The examples (``pretrained/examples``) are voices and
noises the demo models never heard in training, with their clean references, so the demo can
print the scores it achieved.

    speechbrain-ext demo                 # writes demo_output/: wavs + spectrograms.png

Authors: speechbrain-ext contributors
"""

import argparse
import os
import sys

import numpy as np
import soundfile as sf

from speechbrain_ext.inference.sources import CARDS_DIR

EXAMPLES_DIR = os.path.join(CARDS_DIR, "examples")
DEMO_CARDS = {"enhancement": "demo-frcrn-16k", "separation": "demo-mossformer-8k"}


def _demo_enhancement(card_dir, output_dir):
    from speechbrain_ext.evaluation import EvaluationItem, plot_spectrograms
    from speechbrain_ext.evaluation.metrics import compute_metrics, dnsmos, si_snr
    from speechbrain_ext.inference import EnhanceFRCRN

    noisy_path = os.path.join(EXAMPLES_DIR, "noisy.wav")
    clean_path = os.path.join(EXAMPLES_DIR, "noisy_clean.wav")
    enhanced_path = os.path.join(output_dir, "enhanced.wav")
    EnhanceFRCRN.from_hparams(source=card_dir).enhance_file(noisy_path, enhanced_path)
    clean, noisy, enhanced = (sf.read(p)[0] for p in (clean_path, noisy_path, enhanced_path))
    before, after = si_snr(noisy, clean), si_snr(enhanced, clean)
    png = plot_spectrograms([EvaluationItem("example", clean_path, enhanced_path, noisy_path)],
                            os.path.join(output_dir, "spectrograms.png"))
    print(f"enhancement: {enhanced_path}: SI-SNR {before:.1f} dB -> {after:.1f} dB "
          f"(improvement {after - before:+.1f} dB); spectrograms: {png}")
    scores = compute_metrics(clean, enhanced, 16000, noisy)
    print(f"  PESQ-WB {scores['pesq_wb_noisy']:.2f} -> {scores['pesq_wb']:.2f}, "
          f"STOI {scores['stoi_noisy']:.3f} -> {scores['stoi']:.3f}")
    try:
        quality = {name: dnsmos(signal, 16000) for name, signal in (("noisy", noisy), ("enhanced", enhanced))}
    except ImportError:
        print("  (pip install 'speechbrain-ext[dnsmos]' adds DNSMOS, the DNS-Challenge's no-reference score)")
        return
    print("  DNSMOS " + ", ".join(f"{key.upper()} {quality['noisy'][f'dnsmos_{key}']:.2f} -> "
                                   f"{quality['enhanced'][f'dnsmos_{key}']:.2f}" for key in ("sig", "bak", "ovrl")))


def _demo_separation(card_dir, output_dir):
    from speechbrain_ext.evaluation.metrics import best_permutation, si_snr, si_snr_matrix
    from speechbrain_ext.inference import SeparateMossFormer

    mixture_path = os.path.join(EXAMPLES_DIR, "mixture.wav")
    written = SeparateMossFormer.from_hparams(source=card_dir).separate_file(mixture_path, savedir=output_dir)
    mixture = sf.read(mixture_path)[0]
    sources = np.stack([sf.read(os.path.join(EXAMPLES_DIR, f"mixture_s{i}.wav"))[0] for i in (1, 2)])
    estimates = np.stack([sf.read(p)[0] for p in written])
    # Speaker order is arbitrary: score the assignment of best total SI-SNR.
    scores = si_snr_matrix(sources, estimates)
    order = best_permutation(scores)
    improvement = np.mean([scores[s, e] - si_snr(mixture, sources[s]) for s, e in enumerate(order)])
    print(f"separation: {', '.join(written)}: SI-SNR improvement {improvement:+.1f} dB")


def run_demo(output_dir="demo_output"):
    """Run every demo whose weights are bundled; returns the number of demos run."""
    os.makedirs(output_dir, exist_ok=True)
    ran = 0
    for task, run in (("enhancement", _demo_enhancement), ("separation", _demo_separation)):
        card_dir = os.path.join(CARDS_DIR, DEMO_CARDS[task])
        if not os.path.exists(os.path.join(card_dir, "hyperparams.yaml")):
            print(f"{task}: no demo weights bundled yet ({card_dir}); skipped")
            continue
        run(card_dir, output_dir)
        ran += 1
    print(f"outputs in {os.path.abspath(output_dir)}")
    print("The demo weights are small models trained offline on synthesised voices (their model cards in "
          f"{CARDS_DIR} say how well they do on voices and noises they never heard); they are not for real "
          "recordings. With a network, the official weights are one option away: "
          "speechbrain-ext enhance FILE -o OUT --model alibabasglab/FRCRN_SE_16K")
    return ran


def main(argv=None):
    parser = argparse.ArgumentParser(description="speechbrain-ext offline demo")
    parser.add_argument("-o", "--output-dir", default="demo_output")
    args = parser.parse_args(argv)
    run_demo(args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
