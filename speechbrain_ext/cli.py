"""The ``speechbrain-ext`` command line.

Each subcommand is a function ``_run_<name>(args)`` returning the exit status;
:func:`build_parser` declares them. Per-file problems are reported in one line each and in the
final summary, never as a traceback.
"""

import argparse
import os
import sys

import speechbrain_ext

DEFAULT_MODELS = {
    "enhancement": "alibabasglab/FRCRN_SE_16K",
    "separation": "iic/speech_mossformer_separation_temporal_8k",
}
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".au", ".w64", ".caf")


def _interface(task):
    from speechbrain_ext.inference import EnhanceFRCRN, SeparateMossFormer

    return EnhanceFRCRN if task == "enhancement" else SeparateMossFormer


def _load_model(task, args):
    """Load the interface, or exit with one sentence explaining why it could not be loaded."""
    source = args.model or DEFAULT_MODELS[task]
    run_opts = {"device": args.device} if getattr(args, "device", None) else None
    try:
        return _interface(task).from_hparams(source=source, revision=args.revision, run_opts=run_opts)
    except Exception as error:  # any loading failure: one line, no traceback
        message = str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__
        raise SystemExit(f"speechbrain-ext: cannot load model {source!r}: {message}") from None


def collect_inputs(paths):
    """Expand files and folders (recursively) into ``(file, relative_name)`` pairs, plus errors.

    Returns
    -------
    (list of tuple, list of tuple)
        Audio files with the path to use under the output folder, and ``(path, reason)`` for
        inputs that are missing or folders without audio.
    """
    found, errors = [], []
    for path in paths:
        if os.path.isdir(path):
            files = sorted(
                os.path.join(root, name)
                for root, _, names in os.walk(path)
                for name in names
                if name.lower().endswith(AUDIO_EXTENSIONS) and not name.startswith(".")
            )
            if not files:
                errors.append((path, "folder holds no audio files"))
            found.extend((f, os.path.relpath(f, path)) for f in files)
        elif os.path.exists(path):
            found.append((path, os.path.basename(path)))
        else:
            errors.append((path, "no such file or folder"))
    return found, errors


def _outputs_for(task, relative, outdir, num_spks=2):
    stem = os.path.splitext(relative)[0]
    if task == "enhancement":
        return [os.path.join(outdir, stem + ".wav")]
    return [os.path.join(outdir, f"{stem}_spk{s + 1}.wav") for s in range(num_spks)]


def _process(task, args):
    from tqdm import tqdm

    from speechbrain_ext.inference.audio import audio_info
    from speechbrain_ext.inference.streaming import stream_file

    inputs, failed = collect_inputs(args.inputs)
    model = _load_model(task, args)
    num_spks = getattr(model.hparams, "num_spks", 2)
    todo, skipped = [], []
    for path, relative in inputs:
        outputs = _outputs_for(task, relative, args.output_dir, num_spks)
        if not args.overwrite and all(os.path.exists(o) for o in outputs):
            skipped.append(path)
        else:
            todo.append((path, relative, outputs))

    durations = {}
    for path, _, _ in todo:
        try:
            info = audio_info(path)
            durations[path] = info.frames / info.samplerate
        except ValueError:
            durations[path] = 0.0  # reported when processed
    channels = args.channels if args.channels in ("mix", "all") else int(args.channels)
    output_rate = args.output_rate if args.output_rate in (None, "input") else int(args.output_rate)
    options = dict(batch_size=args.batch_size, channels=channels, output_rate=output_rate, subtype=args.subtype)
    if args.chunk_seconds is not None:  # else the interface's default for its model
        options["chunk_seconds"] = args.chunk_seconds or None
    done = []
    with tqdm(total=round(sum(durations.values()), 1), unit="s", desc=task, disable=args.quiet) as progress:
        for path, relative, outputs in todo:
            progress.set_postfix_str(os.path.basename(path))
            try:
                if task == "separation":
                    model.separate_file(path, os.path.dirname(outputs[0]), **options)
                else:
                    if args.stream:
                        result = stream_file(model, path, outputs[0], block_size=args.block_size,
                                             channels=channels, output_rate=output_rate, subtype=args.subtype)
                    else:
                        result = model.enhance_file(path, outputs[0], **options)
                    if result["clipped_samples"]:
                        tqdm.write(f"{path}: {result['clipped_samples']} samples clipped to full scale")
                done.append(path)
            except Exception as error:
                message = str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__
                failed.append((path, message))
                tqdm.write(f"failed: {path}: {message}")
            progress.update(round(durations[path], 1))

    print(f"{task}: {len(done)} done, {len(skipped)} skipped (output exists), {len(failed)} failed")
    for path, reason in failed:
        print(f"  failed: {path}: {reason}")
    return 1 if failed else 0


def _run_enhance(args):
    return _process("enhancement", args)


def _run_separate(args):
    return _process("separation", args)


def _run_convert(args):
    from speechbrain_ext.inference.sources import write_speechbrain_folder

    model = _load_model(args.task, args)
    written = write_speechbrain_folder(model, args.output_dir, model.CARD)
    print(f"wrote a SpeechBrain-format {args.task} model to {args.output_dir}:")
    for path in written:
        print(f"  {path}")
    return 0


def _run_demo(args):
    from speechbrain_ext.demo import run_demo

    run_demo(args.output_dir)
    return 0


def _add_model_arguments(parser, default):
    parser.add_argument("--model", help=f"model source: a SpeechBrain-format folder or Hugging Face repo, an "
                        f"official repo id, or a folder of official weights (default: {default})")
    parser.add_argument("--revision", help="pin a Hub revision (branch, tag or commit) of --model")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cpu)")


def _add_processing_arguments(parser, task):
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files or folders (searched recursively)")
    parser.add_argument("-o", "--output-dir", required=True, help="folder for the results (mirrors input folders)")
    _add_model_arguments(parser, DEFAULT_MODELS[task])
    parser.add_argument("--batch-size", type=int, default=1, help="chunks per forward pass (default: 1)")
    parser.add_argument("--chunk-seconds", type=float,
                        help="process long files in chunks of this length; 0 = whole file at once "
                        "(default: 10 for enhancement, 30 for separation)")
    parser.add_argument("--channels", default="mix",
                        help="'mix' (average channels, default), 'all' (each channel), or a channel index")
    parser.add_argument("--output-rate", help="'input' to write at the input's sample rate, or a rate in Hz "
                        "(default: the model's rate)")
    parser.add_argument("--subtype", default="PCM_16", choices=["PCM_16", "PCM_24", "FLOAT"],
                        help="output sample format; PCM is clipped to full scale, never wrapped (default: PCM_16)")
    parser.add_argument("--overwrite", action="store_true", help="redo files whose outputs exist (default: skip)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser():
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="speechbrain-ext",
        description="FRCRN speech enhancement and MossFormer speech separation for SpeechBrain.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {speechbrain_ext.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser("demo", help="enhance and separate the bundled examples offline")
    demo.add_argument("-o", "--output-dir", default="demo_output", help="where to write (default: demo_output)")
    demo.set_defaults(run=_run_demo)

    enhance = commands.add_parser("enhance", help="remove noise from speech files with FRCRN (16 kHz)")
    _add_processing_arguments(enhance, "enhancement")
    enhance.add_argument("--stream", action="store_true",
                         help="process block by block as a live input would be (needs a causal model, 40 ms latency)")
    enhance.add_argument("--block-size", type=int, default=320, help="samples per block with --stream (default: 320)")
    enhance.set_defaults(run=_run_enhance)

    separate = commands.add_parser("separate", help="separate two speakers with MossFormer (8 kHz)")
    _add_processing_arguments(separate, "separation")
    separate.set_defaults(run=_run_separate)

    convert = commands.add_parser("convert", help="official checkpoint(s) -> SpeechBrain-format model folder")
    convert.add_argument("task", choices=sorted(DEFAULT_MODELS), help="which model the source holds")
    convert.add_argument("-o", "--output-dir", required=True, help="folder to write hyperparams.yaml + *.ckpt to")
    _add_model_arguments(convert, " or ".join(f"{m} ({t})" for t, m in DEFAULT_MODELS.items()))
    convert.set_defaults(run=_run_convert)

    from speechbrain_ext.evaluation import add_evaluate_arguments, run_evaluate

    evaluate = commands.add_parser("evaluate", help="score enhanced (PESQ, STOI, SI-SNR) or separated (SDR, SI-SNR, PIT) files against references")
    add_evaluate_arguments(evaluate)
    evaluate.set_defaults(run=run_evaluate)
    return parser


def main(argv=None):
    """Entry point of the ``speechbrain-ext`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
