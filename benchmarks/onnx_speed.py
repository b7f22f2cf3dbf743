"""PyTorch against onnxruntime, at the official sizes: time, peak memory, parity, stream latency.

FRCRN (16 kHz, 13.1 M parameters) and MossFormer (8 kHz, 42.1 M) with random weights (the
official ones need a network; the graphs and the timings do not depend on the values) are
exported with :func:`speechbrain_ext.export.export_onnx`. Each (model, backend, duration) then
runs in its own subprocess with 2 threads: the interface (``EnhanceFRCRN`` /
``SeparateMossFormer``: PyTorch with its fused inference kernels, or ``from_onnx``) processes
the whole input in one pass (``enhance_batch`` / ``separate_batch``) for inputs up to
``--file-from`` seconds, and longer ones as a file (``enhance_file`` / ``separate_file`` with
their default chunks: FRCRN 10 s, MossFormer 30 s), fastest of ``--repeats``; its peak
resident memory (``getrusage`` high-water mark) includes loading. Parity: onnxruntime
against PyTorch on the same input (FRCRN: max |difference|; MossFormer: SI-SNR in float64).

The stream step of a causal FRCRN (official size) runs hop by hop on 1 thread, against
``FRCRNStreamer.process`` on the same hops: median and 99th-percentile time per 20 ms hop.

Usage::

    python benchmarks/onnx_speed.py                     # 10 s and 60 s, prints a markdown table
    python benchmarks/onnx_speed.py --seconds 10 --repeats 1 --output table.md
    python benchmarks/onnx_speed.py --models mossformer      # one model (and the stream step)
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

THREADS = 2
RATES = {"frcrn": 16000, "mossformer": 8000}


def build_interface(model, freeze_params, causal=False):
    """The official-size interface with seeded random weights (``freeze_params``: fused, as users get it)."""
    from speechbrain_ext.inference import EnhanceFRCRN, SeparateMossFormer
    from speechbrain_ext.lobes.models.frcrn import FRCRN
    from speechbrain_ext.lobes.models.mossformer import MossFormer

    torch.manual_seed(0)
    if model == "frcrn":
        frcrn = FRCRN(causal=causal)
        with torch.no_grad():  # non-trivial batch-norm statistics, as trained weights have
            for name, tensor in frcrn.state_dict().items():
                if name.endswith("running_var"):
                    tensor.uniform_(0.5, 2.0)
                elif name.endswith("running_mean"):
                    tensor.normal_(0, 0.1)
        return EnhanceFRCRN(modules={"model": frcrn}, hparams={"sample_rate": 16000}, freeze_params=freeze_params)
    moss = MossFormer()
    return SeparateMossFormer(modules={"encoder": moss.encoder, "masknet": moss.masknet, "decoder": moss.decoder},
                              hparams={"sample_rate": 8000, "num_spks": 2}, freeze_params=freeze_params)


def signal(model, seconds):
    from speechbrain_ext.synthetic import speech_like, two_speaker_mixture

    rate = RATES[model]
    if model == "frcrn":
        return torch.from_numpy(speech_like(seconds, rate, seed=1)).float()[None]
    return torch.from_numpy(two_speaker_mixture(seconds, rate, seed=1)[0]).float()[None]


def child(args):
    """One (model, backend, duration): prints a JSON line."""
    torch.set_num_threads(THREADS)
    if args.backend == "onnxruntime":
        from speechbrain_ext.inference import load_onnx

        interface = load_onnx(args.graph, num_threads=THREADS)
    else:
        interface = build_interface(args.model, freeze_params=True)
    run = interface.enhance_batch if args.model == "frcrn" else interface.separate_batch
    x = signal(args.model, args.seconds)
    if args.seconds >= args.file_from:  # as a file, in the interface's default chunks
        import soundfile as sf

        source = args.save + ".wav"
        sf.write(source, x[0].numpy(), RATES[args.model])

        def run(_):
            if args.model == "frcrn":
                interface.enhance_file(source, args.save + ".out.wav", subtype="FLOAT")
                return torch.from_numpy(sf.read(args.save + ".out.wav", dtype="float32")[0])[None]
            return interface.separate_file(source)[None]
    with torch.inference_mode():
        run(x[:, : RATES[args.model]])  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = run(x)
            best = min(best, time.perf_counter() - start)
    np.save(args.save, out.numpy())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": best, "peak_mb": peak}))


def stream_latency(graph, hops=400):
    """Per-hop times (s) of FRCRNStreamer and of the stream-step graph, 1 thread, same hops."""
    from speechbrain_ext.inference import FRCRNStreamer, OnnxFRCRNStreamer

    torch.set_num_threads(1)
    model = build_interface("frcrn", freeze_params=False, causal=True).mods.model.eval()
    noisy = signal("frcrn", hops * 320 / 16000)[0]
    torch_streamer, onnx_streamer = FRCRNStreamer(model, num_threads=1), OnnxFRCRNStreamer(graph, num_threads=1)
    times = {"torch": [], "onnx": []}
    outputs = {"torch": [], "onnx": []}
    for hop in noisy.split(320):
        for name, process in (("torch", torch_streamer.process), ("onnx", onnx_streamer.process)):
            start = time.perf_counter()
            outputs[name].append(process(hop))
            times[name].append(time.perf_counter() - start)
    difference = (torch.cat(outputs["torch"]) - torch.cat(outputs["onnx"])).abs().max().item()
    return {name: np.array(t[20:]) for name, t in times.items()}, difference


def parity_si_snr(estimate, reference):
    estimate, reference = torch.as_tensor(estimate).double(), torch.as_tensor(reference).double()
    scale = (estimate * reference).sum(-1, keepdim=True) / (reference**2).sum(-1, keepdim=True)
    target = scale * reference
    return (10 * torch.log10((target**2).sum(-1) / ((estimate - target) ** 2).sum(-1))).min().item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[10.0, 60.0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["frcrn", "mossformer"], choices=["frcrn", "mossformer"],
                        help="offline models to time (default: both); the stream step always runs")
    parser.add_argument("--output", help="also write the table to this file")
    parser.add_argument("--file-from", type=float, default=30.0,
                        help="process inputs this long or longer as files, in chunks (default: %(default)s s)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--graph", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.seconds = args.seconds[0]
        return child(args)

    from speechbrain_ext.export import export_onnx

    torch.set_num_threads(THREADS)
    folder = tempfile.mkdtemp(prefix="onnx_speed_")
    lines = [f"ONNX export and onnxruntime against PyTorch, official sizes, {THREADS} threads, "
             f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}, "
             f"{os.cpu_count()} CPUs", ""]
    lines += ["| model | audio | PyTorch s | onnxruntime s | ort / torch | PyTorch peak MB | onnxruntime peak MB | "
              "parity |", "|---|---|---|---|---|---|---|---|"]
    exports = {}
    for model in args.models:
        graph = os.path.join(folder, f"{model}.onnx")
        start = time.perf_counter()
        export_onnx(build_interface(model, freeze_params=False), graph)
        exports[model] = (time.perf_counter() - start, os.path.getsize(graph) / 2**20)
        for seconds in args.seconds:
            results = {}
            for backend in ("torch", "onnxruntime"):
                save = os.path.join(folder, f"{model}_{backend}_{seconds}.npy")
                command = [sys.executable, __file__, "--child", "--model", model, "--backend", backend, "--graph", graph,
                           "--seconds", str(seconds), "--repeats", str(args.repeats), "--save", save,
                           "--file-from", str(args.file_from)]
                output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
                results[backend] = json.loads(output.strip().splitlines()[-1])
                results[backend]["out"] = np.load(save)
            ours, theirs = results["onnxruntime"]["out"], results["torch"]["out"]
            if model == "frcrn":
                parity = f"max abs diff {np.abs(ours - theirs).max():.1e}"
            else:
                parity = f"SI-SNR {parity_si_snr(np.moveaxis(ours, -1, 1), np.moveaxis(theirs, -1, 1)):.1f} dB"
            t, o = results["torch"], results["onnxruntime"]
            how = "file, chunked" if seconds >= args.file_from else "one pass"
            lines.append(f"| {model} | {seconds:g} s ({how}) | {t['seconds']:.2f} | {o['seconds']:.2f} | "
                         f"{o['seconds'] / t['seconds']:.2f} | {t['peak_mb']:.0f} | {o['peak_mb']:.0f} | {parity} |")
            print(lines[-1], flush=True)

    stream_graph = os.path.join(folder, "stream.onnx")
    start = time.perf_counter()
    export_onnx(build_interface("frcrn", freeze_params=False, causal=True), stream_graph, streaming=True)
    exports["frcrn stream step"] = (time.perf_counter() - start, os.path.getsize(stream_graph) / 2**20)
    times, difference = stream_latency(stream_graph)
    lines += ["", "Causal FRCRN stream, 1 thread, per 20 ms hop (after 20 warm-up hops):", "",
              "| backend | median ms | p99 ms | real-time factor |", "|---|---|---|---|"]
    for name, label in (("torch", "FRCRNStreamer (PyTorch)"), ("onnx", "stream-step graph (onnxruntime)")):
        t = times[name]
        lines.append(f"| {label} | {1000 * np.median(t):.2f} | {1000 * np.percentile(t, 99):.2f} | "
                     f"{np.mean(t) / 0.02:.2f} |")
    lines += ["", f"Stream outputs: max abs difference {difference:.1e}.", "",
              "| graph | export s | file MB |", "|---|---|---|"]
    lines += [f"| {name} | {seconds:.0f} | {size:.0f} |" for name, (seconds, size) in exports.items()]
    table = "\n".join(lines)
    print(table)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as stream:
            stream.write(table + "\n")


if __name__ == "__main__":
    main()
