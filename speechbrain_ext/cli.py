"""The ``speechbrain-ext`` command line.

Each subcommand is a function ``_run_<name>(args)`` returning the exit status (``evaluate``'s is
public, :func:`run_evaluate`, with :func:`add_evaluate_arguments`, for recipes and scripts);
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
LAYOUT_NAMES = {"speechbrain": "SpeechBrain", "modelscope": "ModelScope", "clearervoice": "ClearerVoice-Studio"}
#: How many skipped (unsupported) files the summary names before it only counts them.
MAX_LISTED = 20


def _interface(task, source):
    from speechbrain_ext.inference import SeparateMossFormer, enhancer_for

    return enhancer_for(source) if task == "enhancement" else SeparateMossFormer


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else error.__class__.__name__


def _load_model(task, args):
    """Load the interface, or exit with one sentence explaining why it could not be loaded."""
    if getattr(args, "onnx", None) or getattr(args, "backend", None) == "onnxruntime":
        return _load_graph(task, args)
    source = args.model or DEFAULT_MODELS[task]
    run_opts = {"device": args.device} if getattr(args, "device", None) else None
    try:
        return _interface(task, source).from_hparams(source=source, revision=args.revision, run_opts=run_opts)
    except Exception as error:  # any loading failure (ours, SpeechBrain's, torch's): one line
        raise SystemExit(f"speechbrain-ext: cannot load model {source!r}: {_first_line(error)}") from None


def _load_graph(task, args):
    """The interface (or, with ``--stream``, the streamer) running an exported graph in onnxruntime."""
    from speechbrain_ext.inference import OnnxFRCRNStreamer, SeparateMossFormer, WaveformEnhancer, load_onnx

    if getattr(args, "backend", None) == "torch":
        raise SystemExit("speechbrain-ext: --onnx runs a graph in onnxruntime: use --backend onnxruntime (or leave "
                         "--backend out)")
    if not args.onnx:
        raise SystemExit("speechbrain-ext: --backend onnxruntime needs --onnx GRAPH (speechbrain-ext export writes one)")
    if args.model:
        raise SystemExit("speechbrain-ext: --model and --onnx both name a model (the graph holds its own): give one")
    run_opts = {"device": args.device} if getattr(args, "device", None) else None
    try:
        if getattr(args, "stream", False):
            return OnnxFRCRNStreamer(args.onnx)
        return load_onnx(args.onnx, SeparateMossFormer if task == "separation" else WaveformEnhancer, run_opts=run_opts)
    except Exception as error:
        raise SystemExit(f"speechbrain-ext: cannot run graph {args.onnx!r}: {_first_line(error)}") from None


def _reason(path, error):
    """The error's message without a leading ``path:`` (the report names the path once)."""
    message = _first_line(error)
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def _output_names(task, num_spks):
    def names(relative):
        stem = os.path.splitext(relative)[0]
        if task == "enhancement":
            return [stem + ".wav"]
        return [f"{stem}_spk{s + 1}.wav" for s in range(num_spks)]

    return names


def _plan(task, args, num_spks=2):
    from speechbrain_ext.errors import OutputConflictError
    from speechbrain_ext.inference.corpus import ManifestError, manifest_inputs, read_manifest
    from speechbrain_ext.inference.files import plan_batch

    if bool(args.inputs) == bool(args.manifest):
        raise SystemExit("speechbrain-ext: give INPUT files or folders, or --manifest FILE (one of the two)")
    try:
        listed, durations = None, {}
        if args.manifest:
            items = read_manifest(args.manifest, args.manifest_column, args.data_root)
            listed = manifest_inputs([path for path, _ in items])
            durations = {path: seconds for path, seconds in items if seconds is not None}
        plan = plan_batch(args.inputs, args.output_dir, _output_names(task, num_spks), args.overwrite, listed)
    except (OutputConflictError, ManifestError) as error:
        raise SystemExit(f"speechbrain-ext: {error}") from None
    return plan, durations


def _durations(jobs, known):
    """Seconds of audio of each job's input (a manifest's durations where it gives them)."""
    from speechbrain_ext.audio import audio_info
    from speechbrain_ext.errors import SpeechBrainExtError

    durations = []
    for job in jobs:
        seconds = known.get(job.input)
        if seconds is None:
            try:
                info = audio_info(job.input)
                seconds = info.frames / info.samplerate
            except SpeechBrainExtError:
                seconds = 0.0  # reported when processed
        durations.append(seconds)
    return durations


def _shared_plan(task, args, workers, num_spks=2):
    """Rank 0's plan of the batch with the input durations, on every rank (planned once, so every
    rank shares out the same jobs); exits on every rank if the plan is refused."""
    from speechbrain_ext.inference.corpus import ManifestError, check_manifest_target

    plan = None
    if workers.main:
        try:
            plan, known = _plan(task, args, num_spks)
            if args.manifest_out:
                check_manifest_target(args.manifest_out)
            plan = (plan, _durations(plan.todo, known), _durations(plan.existing, known))
        except ManifestError as error:
            plan = f"speechbrain-ext: {error}"
        except SystemExit as stop:
            plan = str(stop.code)
    plan = workers.share(plan)
    if isinstance(plan, str):
        raise SystemExit(plan if workers.main else 2)
    return plan


def _process(task, args):
    from speechbrain_ext.inference.corpus import Workers

    with Workers() as workers:
        return _process_share(task, args, workers)


def _process_share(task, args, workers):
    """Plan (rank 0), load the model, run this process's share, and (rank 0) report it all."""
    from speechbrain_ext.inference.corpus import balanced_shares

    plan, durations, existing_durations = _shared_plan(task, args, workers)  # refuses unsafe plans first
    args.device = workers.device(getattr(args, "device", None))
    model = _load_model(task, args)
    mods = getattr(model, "mods", None)  # (none: the onnxruntime streamer, which is causal)
    if getattr(args, "stream", False) and mods is not None and not getattr(mods.model, "causal", False):
        raise SystemExit(f"speechbrain-ext: --stream needs a causal FRCRN (FRCRN(causal=True)); "
                         f"{args.model or DEFAULT_MODELS[task]} holds a non-causal {type(model.mods.model).__name__}")
    num_spks = getattr(getattr(model, "hparams", None), "num_spks", 2)
    if task == "separation" and num_spks != 2:
        plan, durations, existing_durations = _shared_plan(task, args, workers, num_spks)

    share = balanced_shares(durations, workers.world_size)[workers.rank]
    records = _run_jobs(task, args, model, [plan.todo[i] for i in share], [durations[i] for i in share], workers)
    everything = workers.gather(records)
    if not workers.main:
        return 1 if any(r["status"] == "failed" for r in records) else 0
    records = [record for rank_records in everything for record in rank_records]
    return _report(task, args, plan, records, existing_durations, num_spks)


def _run_jobs(task, args, model, jobs, durations, workers):
    """Run this process's jobs; one record (for the manifest) per job."""
    import time

    from tqdm import tqdm

    from speechbrain_ext.errors import SpeechBrainExtError
    from speechbrain_ext.inference.corpus import pack_by_length
    from speechbrain_ext.inference.streaming import stream_file

    options = dict(batch_size=args.batch_size, channels=args.channels, output_rate=args.output_rate,
                   subtype=args.subtype)
    if args.chunk_seconds is not None:  # else the interface's default for its model
        options["chunk_seconds"] = args.chunk_seconds or None
    stream = getattr(args, "stream", False)
    packs = task == "enhancement" and not stream and hasattr(model, "enhance_files")
    # Files no longer than one chunk are one pass of the model either way: those are packed.
    limit = args.chunk_seconds or getattr(getattr(model, "hparams", None), "chunk_seconds", None) \
        or getattr(model, "DEFAULT_CHUNK_SECONDS", 10.0)
    groups = pack_by_length(durations, args.batch_size if packs else 1, limit)
    errors = (SpeechBrainExtError, OSError, RuntimeError, ValueError)
    records = []

    def record(index, seconds, error=None):
        job = jobs[index]
        records.append(dict(input=job.input, outputs=job.outputs, name=job.name, duration=durations[index],
                            status="failed" if error else "done", error=_reason(job.input, error) if error else "",
                            seconds=round(seconds, 3), rank=workers.rank))
        if error:
            tqdm.write(f"failed: {job.input}: {records[-1]['error']}")

    def report_clipping(job, result):
        if result["clipped_samples"]:
            tqdm.write(f"{job.input}: {result['clipped_samples']} samples clipped to full scale")

    quiet = args.quiet or not workers.main
    with tqdm(total=round(sum(durations), 1), unit="s", desc=task, disable=quiet) as progress:
        for group in groups:
            group_jobs = [jobs[i] for i in group]
            progress.set_postfix_str(os.path.basename(group_jobs[0].input))
            started = time.perf_counter()
            if len(group) > 1:
                try:
                    results = model.enhance_files([j.input for j in group_jobs], [j.outputs[0] for j in group_jobs],
                                                  channels=args.channels, output_rate=args.output_rate,
                                                  subtype=args.subtype)
                except errors as error:  # the batch itself failed (e.g. out of memory): each file says so
                    results = [error] * len(group)
                took = time.perf_counter() - started
                total = sum(durations[i] for i in group) or 1.0
                for index, job, result in zip(group, group_jobs, results):
                    share = took * durations[index] / total
                    if isinstance(result, Exception):
                        record(index, share, result)
                    else:
                        report_clipping(job, result)
                        record(index, share)
            else:
                index, job = group[0], group_jobs[0]
                try:
                    if task == "separation":
                        model.separate_file(job.input, os.path.dirname(job.outputs[0]), **options)
                    else:
                        if stream:
                            result = stream_file(model, job.input, job.outputs[0], block_size=args.block_size,
                                                 channels=args.channels, output_rate=args.output_rate,
                                                 subtype=args.subtype)
                        else:
                            result = model.enhance_file(job.input, job.outputs[0], **options)
                        report_clipping(job, result)
                    record(index, time.perf_counter() - started)
                except errors as error:
                    record(index, time.perf_counter() - started, error)
            progress.update(round(sum(durations[i] for i in group), 1))
    return records


def _report(task, args, plan, records, existing_durations, num_spks):
    """Rank 0: the summary of every rank's work and the output manifest; returns the exit status."""
    from speechbrain_ext.audio import AUDIO_EXTENSIONS

    failed = list(plan.failed) + [(r["input"], r["error"]) for r in records if r["status"] == "failed"]
    done = [r for r in records if r["status"] == "done"]
    print(f"{task}: {len(done)} done, {len(plan.existing)} skipped (output exists), {len(failed)} failed, "
          f"{len(plan.unsupported)} skipped (format not supported)")
    for path, reason in failed:
        print(f"  failed: {path}: {reason}")
    for path in plan.unsupported[:MAX_LISTED]:
        print(f"  skipped: {path}: format not supported")
    if len(plan.unsupported) > MAX_LISTED:
        print(f"  ... and {len(plan.unsupported) - MAX_LISTED} more files of formats not supported")
    if plan.unsupported:
        print(f"  (audio formats read: {', '.join(e.lstrip('.') for e in AUDIO_EXTENSIONS)}; convert others, "
              "e.g. m4a, to one of these)")
    if plan.swept:
        print(f"  removed {len(plan.swept)} temporary file(s) left by an interrupted run")

    if args.manifest_out and not _write_output_manifest(args.manifest_out, task, plan, records, existing_durations,
                                                        num_spks):
        return 1
    return 1 if failed else 0


def _write_output_manifest(path, task, plan, records, existing_durations, num_spks):
    """One row per input of the batch (done, existing, failed); False (said) if it cannot be written."""
    from speechbrain_ext.inference.corpus import MANIFEST_COLUMNS, write_manifest

    output_columns = ["output"] if task == "enhancement" else [f"output_spk{s + 1}" for s in range(num_spks)]
    rows = [dict(input=job.input, outputs=job.outputs, name=job.name, duration=seconds, status="exists")
            for job, seconds in zip(plan.existing, existing_durations)]
    rows += [dict(input=failed_input, outputs=[], name="", duration="", status="failed", error=reason)
             for failed_input, reason in plan.failed]
    rows += records
    for row in rows:
        name = row.pop("name")
        row["ID"] = os.path.splitext(name)[0] if name else os.path.basename(row["input"])
        row.update(zip(output_columns, row.pop("outputs")))
        if isinstance(row["duration"], float):
            row["duration"] = round(row["duration"], 3)
    rows.sort(key=lambda row: row["input"])
    try:
        write_manifest(path, rows, [*MANIFEST_COLUMNS, *output_columns, "status", "error", "seconds", "rank"])
        print(f"  manifest: {path}")
    except OSError as error:
        print(f"  failed: cannot write the manifest {path}: {error.strerror or error}")
        return False
    return True


def _run_enhance(args):
    return _process("enhancement", args)


def _run_separate(args):
    return _process("separation", args)


def _run_convert(args):
    from speechbrain_ext.model_folders import ModelFolderError, check_new_folder, write_model_folder

    try:
        check_new_folder(args.output_dir)  # before the model loads
    except ModelFolderError as error:
        raise SystemExit(f"speechbrain-ext: {error}") from None
    model = _load_model(args.task, args)
    source = args.model or DEFAULT_MODELS[args.task]
    try:
        written = write_model_folder(model, args.output_dir, args.to, source=source)
    except (ModelFolderError, OSError) as error:
        raise SystemExit(f"speechbrain-ext: {_first_line(error)}") from None
    print(f"wrote a {LAYOUT_NAMES[args.to]} {args.task} model to {args.output_dir}:")
    for path in written:
        print(f"  {path}")
    return 0


def _run_export(args):
    from speechbrain_ext.export import ExportError, export_onnx

    source = args.model or (DEFAULT_MODELS[args.task] if args.task else None)
    if source is None:
        raise SystemExit("speechbrain-ext: export needs --model SOURCE (or a task, to export its default model)")
    try:
        metadata = export_onnx(source, args.output, task=args.task, streaming=args.streaming,
                               overwrite=args.overwrite, revision=args.revision)
    except ExportError as error:
        raise SystemExit(f"speechbrain-ext: {_first_line(error)}") from None
    except Exception as error:  # loading or tracing failures: one line
        raise SystemExit(f"speechbrain-ext: cannot export {source!r}: {_first_line(error)}") from None
    kinds = {"enhancer": "an enhancer graph (noisy [batch, time] -> enhanced [batch, time])",
             "separator": "a separator graph (mix [batch, time] -> sources [batch, time, speakers])",
             "stream": "a stream-step graph (one hop in, one hop out, state as inputs/outputs)"}
    print(f"wrote {kinds[metadata['kind']]} of {source} to {args.output} "
          f"({metadata['hparams']['sample_rate']} Hz, {metadata['interface']})")
    return 0


def _run_demo(args):
    from speechbrain_ext.demo import run_demo

    run_demo(args.output_dir)
    return 0


def add_evaluate_arguments(parser):
    """Declare the ``evaluate`` options on ``parser`` (an ``argparse`` (sub)parser); returns it.

    Example
    -------
    >>> parser = add_evaluate_arguments(argparse.ArgumentParser())
    >>> args = parser.parse_args(["--task", "separation", "--mix", "m", "--sources", "a", "b", "--estimates", "c", "d"])
    >>> args.task, args.sources
    ('separation', ['a', 'b'])
    """
    from speechbrain_ext.evaluation import TASKS

    parser.add_argument("--task", choices=TASKS, default="enhancement", help="what was produced (default: %(default)s)")
    enhancement = parser.add_argument_group("enhancement (--task enhancement)")
    enhancement.add_argument("--clean", metavar="DIR", help="folder of clean reference files (required)")
    enhancement.add_argument("--enhanced", metavar="DIR", help="folder of enhanced files (required)")
    enhancement.add_argument("--noisy", metavar="DIR", help="folder of the noisy inputs (adds the noisy row and SI-SNRi)")
    enhancement.add_argument("--plot", metavar="PNG", help="spectrograms (noisy / enhanced / clean) of a few files")
    enhancement.add_argument("--plot_files", type=int, default=3, metavar="N", help="files in the plot (default: %(default)s)")
    enhancement.add_argument(
        "--match", choices=("auto", "name", "fileid"), default="auto",
        help="pair files by name or by DNS 'fileid_N' (default: %(default)s: name if possible, else fileid)",
    )
    separation = parser.add_argument_group(
        "separation (--task separation; files are paired by name, e.g. the wsj0-2mix tt/mix, tt/s1, tt/s2)"
    )
    separation.add_argument("--mix", metavar="DIR", help="folder of the mixtures (required)")
    separation.add_argument(
        "--sources", nargs="+", metavar="DIR", help="folders of the reference sources, one per speaker (required)"
    )
    separation.add_argument(
        "--estimates", nargs="+", metavar="DIR",
        help="folders of the estimated sources, one per speaker, in any order (required)",
    )
    parser.add_argument(
        "--dnsmos", nargs="?", const=True, metavar="DIR",
        help="DNSMOS (the DNS-Challenge's non-intrusive P.835 SIG/BAK/OVRL and P.808 MOS): with a folder, score its "
        "files alone, no reference needed (--noisy DIR adds their inputs' scores); without one, add DNSMOS to an "
        "enhancement evaluation",
    )
    parser.add_argument(
        "--csv", metavar="FILE",
        help="per-file CSV to write (enhancement: the averages go to FILE_summary.csv; separation: "
        "SpeechBrain's test_results.csv layout with an avg row)",
    )
    parser.add_argument(
        "--resample", action="store_true",
        help="resample files whose rate differs from the reference's instead of stopping with an error",
    )
    return parser


# The options each task needs, and the ones only enhancement has.
_EVALUATE_REQUIRED = {"enhancement": ("clean", "enhanced"), "separation": ("mix", "sources", "estimates"),
                      "quality": ("enhanced",)}
_ENHANCEMENT_ONLY = ("clean", "enhanced", "noisy", "plot", "dnsmos")


def _evaluate_option_error(args):
    """The message for options that do not fit ``--task``, or None (``--dnsmos DIR`` becomes
    ``--task quality --enhanced DIR``)."""
    if isinstance(args.dnsmos, str):
        if args.task != "enhancement" or args.clean or args.enhanced:
            return ("--dnsmos DIR scores a folder without references; to add DNSMOS to an evaluation against "
                    "--clean files, give --dnsmos without a folder")
        args.task, args.enhanced, args.dnsmos = "quality", args.dnsmos, False
    if args.task not in _EVALUATE_REQUIRED:
        return f"--task {args.task} is not supported"
    if args.task == "quality" and (args.clean or args.plot):
        return "--task quality (DNSMOS) scores files without references: --clean and --plot are not its options"
    missing = [f"--{name}" for name in _EVALUATE_REQUIRED[args.task] if not getattr(args, name, None)]
    if missing:
        return f"--task {args.task} needs {', '.join(missing)}"
    misplaced = [f"--{name}" for name in _ENHANCEMENT_ONLY if getattr(args, name, None)]
    if args.task == "separation" and misplaced:
        return f"{', '.join(misplaced)} are options of --task enhancement"
    return None


def run_evaluate(args):
    """Run the ``evaluate`` command for parsed ``args`` (:func:`add_evaluate_arguments`): match
    the folders, score (:func:`speechbrain_ext.evaluation.evaluate`), write the CSV (and plot),
    print the table; returns the exit status (2: bad options, 1: bad input, one line on stderr).

    Example
    -------
    >>> run_evaluate(add_evaluate_arguments(argparse.ArgumentParser()).parse_args(["--task", "separation"]))
    2
    """
    import warnings

    from speechbrain_ext import evaluation

    message = _evaluate_option_error(args)
    if message:
        print(f"evaluate: error: {message}", file=sys.stderr)
        return 2
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if args.task == "separation":
                items = evaluation.match_separation_files(args.mix, args.sources, args.estimates)
            elif args.task == "quality":
                items = evaluation.match_quality_files(args.enhanced, args.noisy)
            else:
                items = evaluation.match_files(args.clean, args.enhanced, args.noisy, match=args.match)
            result = evaluation.evaluate(items, args.task, resample=args.resample, dnsmos=args.dnsmos is True)
            written = evaluation.write_csv(result, args.csv, args.task) if args.csv else ()
            if args.task == "enhancement" and args.plot:
                evaluation.plot_spectrograms(items, args.plot, max_files=args.plot_files, resample=args.resample)
    except evaluation.EvaluationError as error:
        print(f"evaluate: error: {error}", file=sys.stderr)
        return 1
    for warning in {str(w.message) for w in caught}:
        print(f"evaluate: warning: {warning}", file=sys.stderr)
    print(f"{len(result.rows)} {evaluation.task_layout(args.task).unit}")
    print(evaluation.format_summary(result.summary, args.task))
    if len(written) == 1:
        print(f"per-mixture metrics and averages: {written[0]}")
    elif written:
        print(f"per-file metrics: {written[0]}; averages: {written[1]}")
    if args.task == "enhancement" and args.plot:
        print(f"spectrograms: {args.plot}")
    return 0


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def _rate(text):
    if text == "input":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected 'input' or a whole number of Hz (e.g. 44100), got {text!r}")
    return int(text)


def _channels(text):
    if text in ("mix", "all"):
        return text
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected 'mix', 'all' or a channel index (0, 1, ...), got {text!r}")
    return int(text)


def _add_model_arguments(parser, default, device=True):
    parser.add_argument("--model", help=f"model source: a SpeechBrain-format folder or Hugging Face repo, an "
                        f"official repo id, or a folder of official weights (default: {default})")
    parser.add_argument("--revision", help="pin a Hub revision (branch, tag or commit) of --model")
    if device:
        parser.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cpu)")


def _add_backend_arguments(parser):
    parser.add_argument("--backend", choices=("torch", "onnxruntime"),
                        help="run the model in PyTorch (default) or run an exported graph (--onnx) in onnxruntime")
    parser.add_argument("--onnx", metavar="GRAPH", help="an ONNX graph written by `speechbrain-ext export` (implies "
                        "--backend onnxruntime; the graph holds its model, so no --model)")


def _add_processing_arguments(parser, task):
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="audio files or folders (searched recursively)")
    parser.add_argument("-o", "--output-dir", required=True,
                        help="folder for the results (mirrors input folders; never an input folder)")
    corpus = parser.add_argument_group("manifests (corpora; under torchrun every process takes a share)")
    corpus.add_argument("--manifest", metavar="FILE",
                        help="process the files a manifest lists instead of INPUTs: SpeechBrain CSV (a header "
                        "row; durations used when given), JSON or JSON lines (.jsonl); outputs mirror the folders "
                        "below the deepest folder holding them all")
    corpus.add_argument("--manifest-column", metavar="NAME",
                        help="the manifest's column of audio paths (default: the first of wav, path, file, audio, "
                        "noisy_wav, mix_wav, input)")
    corpus.add_argument("--data-root", metavar="DIR", help="what $data_root / $data_folder in manifest paths stand for")
    corpus.add_argument("--manifest-out", metavar="FILE",
                        help="the output manifest: one row per input (ID, duration, input, outputs, status, error, "
                        "seconds, rank) for the whole batch, done or not, readable by SpeechBrain's "
                        "DynamicItemDataset.from_csv and by --manifest")
    _add_model_arguments(parser, DEFAULT_MODELS[task])
    _add_backend_arguments(parser)
    parser.add_argument("--batch-size", type=_positive_int, default=1,
                        help="chunks of a long file, or (enhancement) short files no longer than a chunk, per forward "
                        "pass; short files are packed by length, each enhanced as it would be alone (default: 1)")
    parser.add_argument("--chunk-seconds", type=_seconds,
                        help="process long files in chunks of this length; 0 = whole file at once "
                        "(default: 10 for enhancement; separation 30 for MossFormer, 15 for MossFormer2)")
    parser.add_argument("--channels", type=_channels, default="mix",
                        help="'mix' (average channels, default), 'all' (each channel), or a channel index")
    parser.add_argument("--output-rate", type=_rate, help="'input' to write at the input's sample rate, or a rate in Hz "
                        "(default: the model's rate)")
    parser.add_argument("--subtype", default="PCM_16", choices=["PCM_16", "PCM_24", "FLOAT"],
                        help="output sample format; PCM is clipped to full scale, never wrapped (default: PCM_16)")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo files whose outputs exist, replacing only files that speechbrain-ext wrote "
                        "(default: skip them)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser():
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="speechbrain-ext",
        description="FRCRN / MossFormer2 / MossFormerGAN speech enhancement and MossFormer / MossFormer2 speech "
        "separation for SpeechBrain.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {speechbrain_ext.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser("demo", help="enhance and separate the bundled examples offline")
    demo.add_argument("-o", "--output-dir", default="demo_output", help="where to write (default: demo_output)")
    demo.set_defaults(run=_run_demo)

    enhance = commands.add_parser("enhance", help="remove noise from speech files with FRCRN (16 kHz), MossFormer2 "
                                  "(48 kHz) or MossFormerGAN (16 kHz)")
    _add_processing_arguments(enhance, "enhancement")
    enhance.add_argument("--stream", action="store_true",
                         help="process block by block as a live input would be (needs a causal model, 40 ms latency)")
    enhance.add_argument("--block-size", type=_positive_int, default=320, help="samples per block with --stream (default: 320)")
    enhance.set_defaults(run=_run_enhance)

    separate = commands.add_parser("separate", help="separate two speakers with MossFormer (8 kHz) or MossFormer2 (16 kHz)")
    _add_processing_arguments(separate, "separation")
    separate.set_defaults(run=_run_separate)

    convert = commands.add_parser("convert", help="write a model as a SpeechBrain, ModelScope or ClearerVoice-Studio folder")
    convert.add_argument("task", choices=sorted(DEFAULT_MODELS), help="which model the source holds")
    convert.add_argument("-o", "--output-dir", required=True, help="a new folder to write the model to")
    convert.add_argument("--to", choices=sorted(LAYOUT_NAMES), default="speechbrain",
                         help="the layout: speechbrain (hyperparams.yaml + *.ckpt, default), modelscope (loads in "
                         "ModelScope's pipeline; FRCRN and MossFormer), clearervoice (loads in ClearVoice; FRCRN and "
                         "the MossFormer2 and MossFormerGAN models)")
    _add_model_arguments(convert, " or ".join(f"{m} ({t})" for t, m in DEFAULT_MODELS.items()))
    convert.set_defaults(run=_run_convert)

    export = commands.add_parser("export", help="write a model as an ONNX graph that takes any input length")
    export.add_argument("task", nargs="?", choices=sorted(DEFAULT_MODELS),
                        help="which model the source holds (default: told by the source)")
    export.add_argument("--format", choices=("onnx",), default="onnx", help="the format (default: onnx)")
    export.add_argument("-o", "--output", required=True, metavar="GRAPH", help="the .onnx file to write")
    export.add_argument("--streaming", action="store_true",
                        help="the one-hop stream step of a causal FRCRN (state as explicit inputs and outputs)")
    export.add_argument("--overwrite", action="store_true", help="replace GRAPH if speechbrain-ext exported it")
    _add_model_arguments(export, " or ".join(f"{m} ({t})" for t, m in DEFAULT_MODELS.items()), device=False)
    export.set_defaults(run=_run_export)

    evaluate = commands.add_parser(
        "evaluate",
        help="score enhanced (PESQ, STOI, SI-SNR; DNSMOS) or separated (SDR, SI-SNR, PIT) files against references, "
        "or any recordings with DNSMOS alone",
        description="Enhancement: PESQ-WB/NB, STOI and SI-SNR against clean references (--dnsmos adds DNSMOS). "
        "Separation: SDR, SDRi, SI-SNR and SI-SNRi (permutation invariant) against the reference sources. Quality "
        "(--dnsmos DIR, or --task quality --enhanced DIR): DNSMOS SIG/BAK/OVRL/P.808 of any recordings, no "
        "reference needed. Also run by `python -m speechbrain_ext.evaluation`.",
    )
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
