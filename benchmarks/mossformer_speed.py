"""Speed and memory of our MossFormer / MossFormer2 models against the reference implementations.

The reference of MossFormer is ModelScope's, of the MossFormer2 separator (``mossformer2``) and
enhancer (``mossformer2_se``: features, network, mask and resynthesis as ClearVoice decodes,
dithering off) and of MossFormerGAN (``mossformergan``: ClearVoice's own one-pass decoding)
ClearerVoice-Studio's. Both run the official architecture (24 blocks, 512
channels) with the same random weights on the same noise (8 kHz for MossFormer, 16 kHz for
the MossFormer2 separator, 48 kHz for the enhancer), on CPU with 2 threads under
``torch.inference_mode()``. Every (implementation, duration) pair runs in its own subprocess, so
that its peak resident memory (``getrusage`` high-water mark) is its own. Prints a markdown table.

Usage::

    python benchmarks/mossformer_speed.py                  # MossFormer, 10 s and 60 s
    python benchmarks/mossformer_speed.py --seconds 10 --repeats 3 --output table.md
    python benchmarks/mossformer_speed.py --model mossformer2 --seconds 3 10
    python benchmarks/mossformer_speed.py --model mossformer2_se --seconds 10 60

Each (implementation, duration) pair runs ``--repeats`` times, alternating the two
implementations; the fastest run of each is reported.

Running the reference on 60 s of audio takes minutes on 2 cores.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

from machine import cpu_description

THREADS = 2
SAMPLE_RATES = {"mossformer": 8000, "mossformer2": 16000, "mossformer2_se": 48000, "mossformergan": 16000}
TITLES = {"mossformer": "MossFormer (8 kHz)", "mossformer2": "MossFormer2 separation (16 kHz)",
          "mossformer2_se": "MossFormer2 enhancement (48 kHz)", "mossformergan": "MossFormerGAN enhancement (16 kHz)"}
OFFICIAL = dict(
    num_spks=2, kernel_size=16, in_channels=512, out_channels=512, stride=8, bias=False,
    num_blocks=24, d_model=512, attn_dropout=0.1, group_size=256, query_key_dim=128,
    expansion_factor=4.0, causal=False, norm="ln",
)
IMPLEMENTATIONS = ("ours", "reference")


def write_random_official_checkpoint(model_name, directory, seed=0):
    """Saves a reference model with random weights in its official layout: MossFormer as
    encoder/masknet/decoder.bin, MossFormer2 as ClearerVoice-Studio's {'model': state dict}."""
    if model_name in ("mossformer2", "mossformer2_se", "mossformergan"):
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
        from conftest import make_reference_mossformer2, make_reference_mossformer2_se, make_reference_mossformer_gan

        reference = {"mossformer2": lambda: make_reference_mossformer2(dim=512, num_blocks=24, seed=seed),
                     "mossformer2_se": lambda: make_reference_mossformer2_se(seed=seed),
                     "mossformergan": lambda: make_reference_mossformer_gan(seed=seed)}[model_name]()
        torch.save({"model": reference.state_dict()}, os.path.join(directory, f"{model_name}.pt"))
        return
    from modelscope.models.audio.separation.mossformer import MossFormer as ReferenceMossFormer

    torch.manual_seed(seed)
    model = ReferenceMossFormer(directory, **OFFICIAL)
    with torch.no_grad():  # the q/k scales start tiny; make the attention matter
        for name, tensor in model.state_dict().items():
            if name.endswith("qk_offset_scale.gamma"):
                tensor.normal_()
    for filename, module in (("encoder", model.encoder), ("masknet", model.mask_net), ("decoder", model.decoder)):
        torch.save(module.state_dict(), os.path.join(directory, f"{filename}.bin"))


class _ListToTensor(torch.nn.Module):
    """The reference MossFormer2, returning [B, T, spks] like ours (its own output is a list)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, mix):
        return torch.stack(self.model(mix), dim=-1)


class _ClearVoiceEnhancer(torch.nn.Module):
    """The reference MossFormer2_SE_48K as ClearVoice decodes one input (its one-pass branch, with
    the features' dithering off), [1, T] -> [1, T, 1]."""

    def __init__(self, network):
        super().__init__()
        self.network = network
        self.register_buffer("window", torch.hamming_window(1920, periodic=False))

    def forward(self, mix):
        import torchaudio

        audio = mix[0] * 32768.0
        mels = torchaudio.compliance.kaldi.fbank(audio[None], dither=0.0, frame_length=40.0, frame_shift=8.0,
                                                 num_mel_bins=60, sample_frequency=48000, window_type="hamming")
        deltas = torchaudio.functional.compute_deltas(mels.T)
        features = torch.cat([mels, deltas.T, torchaudio.functional.compute_deltas(deltas).T], dim=1)[None]
        mask = self.network(features)[-1]
        spectrum = torch.stft(audio, 1920, 384, 1920, center=False, window=self.window, return_complex=True)
        out = torch.istft(spectrum * mask[0].T, 1920, 384, 1920, self.window, center=False, length=len(audio))
        return (out / 32768.0)[None, :, None]


class _WithSourceAxis(torch.nn.Module):
    """Our enhancer with a trailing source axis, [B, T] -> [B, T, 1], as the table compares."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, mix):
        return self.model(mix)[..., None]


class _ClearVoiceGAN(torch.nn.Module):
    """The reference MossFormerGAN_SE_16K as ClearVoice decodes one input (one pass), [1, T] -> [1, T, 1]."""

    def __init__(self, network):
        super().__init__()
        self.network = network

    def forward(self, mix):
        from clearvoice.utils import decode
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
        from conftest import MOSSFORMER_GAN_ARGS

        args = argparse.Namespace(**{**MOSSFORMER_GAN_ARGS, "one_time_decode_length": 3600})  # one pass
        out = decode.decode_one_audio_mossformergan_se_16k(self.network, "cpu", mix.numpy(), args)
        return torch.as_tensor(out).float()[None, :, None]


def load_model(model_name, implementation, directory):
    if model_name == "mossformergan":
        checkpoint = os.path.join(directory, "mossformergan.pt")
        if implementation == "ours":
            from speechbrain_ext.convert import mossformer_gan_from_official

            return _WithSourceAxis(mossformer_gan_from_official(checkpoint).fuse_for_inference())  # as the interface
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
        from conftest import MOSSFORMER_GAN_ARGS
        from clearvoice.models.mossformer_gan_se.generator import MossFormerGAN_SE_16K

        network = MossFormerGAN_SE_16K(argparse.Namespace(**MOSSFORMER_GAN_ARGS)).model
        network.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
        return _ClearVoiceGAN(network.eval()).eval()
    if model_name == "mossformer2_se":
        checkpoint = os.path.join(directory, "mossformer2_se.pt")
        if implementation == "ours":
            from speechbrain_ext.convert import mossformer2_se_from_official

            return _WithSourceAxis(mossformer2_se_from_official(checkpoint).fuse_for_inference())
        import argparse as _argparse

        from clearvoice.models.mossformer2_se.mossformer2_se_wrapper import MossFormer2_SE_48K

        network = MossFormer2_SE_48K(_argparse.Namespace()).model
        network.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
        return _ClearVoiceEnhancer(network).eval()
    if model_name == "mossformer2":
        checkpoint = os.path.join(directory, "mossformer2.pt")
        if implementation == "ours":
            from speechbrain_ext.convert import mossformer2_from_official

            return mossformer2_from_official(checkpoint).fuse_for_inference()  # as SeparateMossFormer
        import argparse as _argparse

        from clearvoice.models.mossformer2_ss.mossformer2 import MossFormer2_SS_16K

        args = _argparse.Namespace(num_spks=2, encoder_kernel_size=16, encoder_embedding_dim=512,
                                   mossformer_sequence_dim=512, num_mossformer_layer=24)
        model = MossFormer2_SS_16K(args).model
        model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
        return _ListToTensor(model).eval()
    if implementation == "ours":
        from speechbrain_ext.convert import mossformer_from_official

        return mossformer_from_official(directory, **OFFICIAL).fuse_for_inference()  # as SeparateMossFormer
    from modelscope.models.audio.separation.mossformer import MossFormer as ReferenceMossFormer

    model = ReferenceMossFormer(directory, **OFFICIAL)
    model.load_check_point(directory)
    return model.eval()


def current_rss_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_worker(model_name, implementation, directory, seconds, result_path):
    """Times one forward pass of one implementation; saves its output and statistics."""
    torch.set_num_threads(THREADS)
    model = load_model(model_name, implementation, directory)
    rate = SAMPLE_RATES[model_name]
    generator = torch.Generator().manual_seed(1234)
    mix = 0.1 * torch.randn(1, int(seconds * rate), generator=generator)
    with torch.inference_mode():
        model(mix[:, :rate])  # warm-up on 1 s
        rss_before = current_rss_bytes()
        start, cpu_start = time.perf_counter(), time.process_time()
        output = model(mix)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    torch.save(output, result_path + ".pt")
    with open(result_path + ".json", "w") as file:
        json.dump({"seconds": wall, "cpu_seconds": cpu, "peak_rss": peak, "rss_before": rss_before}, file)


def run_case(model_name, implementation, directory, seconds, workdir):
    """Runs one worker subprocess; returns its statistics and output."""
    result = os.path.join(workdir, f"{implementation}_{seconds:g}s")
    subprocess.run(
        [sys.executable, __file__, "--model", model_name, "--worker", implementation, "--weights", directory,
         "--seconds", str(seconds), "--result", result],
        check=True,
    )
    with open(result + ".json") as file:
        stats = json.load(file)
    return stats, torch.load(result + ".pt", weights_only=True)


def si_snr_db(estimate, target):
    """Worst SI-SNR over sources of ``estimate`` against ``target``, both [B, T, S]."""
    from speechbrain_ext.evaluation.metrics import si_snr

    # float64 and a tiny eps: implementations that agree to rounding score far above 100 dB.
    estimate, target = (x.double().transpose(1, 2) for x in (estimate, target))
    return si_snr(estimate, target, eps=1e-30).min().item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(SAMPLE_RATES), default="mossformer")
    parser.add_argument("--seconds", type=float, nargs="+", default=[10.0, 60.0])
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs per case (the fastest counts)")
    parser.add_argument("--output", help="also write the markdown table to this file")
    parser.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        run_worker(args.model, args.worker, args.weights, args.seconds[0], args.result)
        return

    with tempfile.TemporaryDirectory() as workdir:
        write_random_official_checkpoint(args.model, workdir)
        rows = [
            "| audio | implementation | wall time (s) | real-time factor | time vs reference | CPU time (s) "
            "| peak RSS (GiB) | RSS growth in forward (GiB) | SI-SNR vs reference (dB) | max abs diff |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for seconds in args.seconds:
            stats, outputs = {}, {}
            # Alternate the implementations and keep the fastest run of each, so that a burst
            # of load from other processes does not favour one of them.
            for _ in range(args.repeats):
                for implementation in IMPLEMENTATIONS:
                    run, outputs[implementation] = run_case(args.model, implementation, workdir, seconds, workdir)
                    print(f"{seconds:g} s, {implementation}: {run['seconds']:.2f} s", file=sys.stderr)
                    if implementation not in stats or run["seconds"] < stats[implementation]["seconds"]:
                        stats[implementation] = run

            reference_time = stats["reference"]["seconds"]
            for implementation in IMPLEMENTATIONS:
                s = stats[implementation]
                if implementation == "reference":
                    agreement = "— | —"
                else:
                    difference = (outputs[implementation] - outputs["reference"]).abs().max().item()
                    agreement = f"{si_snr_db(outputs[implementation], outputs['reference']):.1f} | {difference:.1e}"
                rows.append(
                    f"| {seconds:g} s | {implementation} | {s['seconds']:.2f} | {s['seconds'] / seconds:.2f} "
                    f"| {s['seconds'] / reference_time:.2f}× | {s['cpu_seconds']:.1f} | {s['peak_rss'] / 2**30:.2f} "
                    f"| {(s['peak_rss'] - s['rss_before']) / 2**30:.2f} | {agreement} |"
                )

    table = "\n".join(rows)
    header = (
        f"{TITLES[args.model]}, official size, "
        f"random weights, CPU {cpu_description()}, torch {torch.__version__}, "
        f"{THREADS} threads, inference_mode, fastest of {args.repeats} run(s); "
        f"load average at the end: {os.getloadavg()[0]:.2f}\n\n"
    )
    print(header + table)
    if args.output:
        with open(args.output, "w") as file:
            file.write(header + table + "\n")


if __name__ == "__main__":
    main()
