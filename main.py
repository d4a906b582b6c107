"""Trains DLRM on Criteo Terabyte (or synthetic data) with Horovod; prints the report.

    horovodrun -np 8 ./hvd_wrapper.sh python3 main.py --data_dir=$DATA \
        --global_batch_size=65536 --xla --amp --custom_interact --eval_in_last

$DATA holds train/ and test/ in the split format (split_bin.py). Every flag of the
program is defined here; the modules take plain arguments. A usage error is one line on
rank 0 (`main.py: error: ...`, exit status 2); `-h` / `--help` lists the flags.
"""

import math
import os
import signal
import sys
import textwrap
import time

from absl import app, flags

import data_format as fmt  # numpy only: --help and flag errors stay fast

FLAGS = flags.FLAGS
_HELP_SECTIONS = []  # (title, index in list(FLAGS) of the section's first flag)


def _section(title):
    """Flags defined from here to the next _section are listed under `title` by --help."""
    _HELP_SECTIONS.append((title, len(list(FLAGS))))


_section("The seed's flags")
flags.DEFINE_string("data_dir", None, "Directory with train/ and test/ in the split format.")
flags.DEFINE_integer("global_batch_size", 65536, "Samples per step over all ranks.")
flags.DEFINE_bool("amp", False, "Mixed precision (float16 dense path, dynamic loss scaling).")
flags.DEFINE_bool("xla", False, "XLA-compile the dense part of the step (bottom MLP; "
                  "interaction + top MLP), forward and backward.")
flags.DEFINE_bool("compress", False, "Unique keys before the embedding exchange.")
flags.DEFINE_bool("custom_interact", False, "Dot interaction by the custom op (custom_interact/).")
flags.DEFINE_bool("eval_in_last", False, "Evaluate after training (and, unless --eval_interval "
                  "is given, only then).")
flags.DEFINE_bool("use_synthetic_dataset", False, "Random batches, no files (profiling); "
                  "excludes --data_dir.")
flags.DEFINE_integer("early_stop", -1, "Stop after this many training steps (-1: no limit).")
flags.DEFINE_integer("epochs", 1, "Passes over the training set.")
flags.DEFINE_float("lr", 24.0, "Base learning rate (plain SGD, dense and embeddings).")
_section("Model and embeddings")
flags.DEFINE_enum("embedding", "auto", ["auto", "sok", "tf"],
                  "Model-parallel tables: SOK 2.x, TensorFlow + hvd.alltoall, or sok if it imports.")
flags.DEFINE_bool("fused_table_ops", True, "tf backend: the table's gather (with its cast) and "
                  "SGD update by the kernels of embedding_ops/ (make -C embedding_ops); "
                  "--nofused_table_ops: TF's gather, cast, scaling and scatter_sub.")
flags.DEFINE_integer("embedding_dim", 128, "Embedding vector size.")
flags.DEFINE_list("bottom_mlp", ["512", "256", "128"], "Bottom MLP widths, integers >= 1 "
                  "(last = embedding_dim).")
flags.DEFINE_list("top_mlp", ["1024", "1024", "512", "256", "1"], "Top MLP widths, integers "
                  ">= 1 (last = 1).")
flags.DEFINE_string("vocab_sizes", None,
                    "Vocabularies for --use_synthetic_dataset: criteo_tb, criteo_tb_scaled, or a "
                    "list of 26 integers in [1, 2**31] (default criteo_tb). With --data_dir they "
                    "come from metadata.json.")
flags.DEFINE_integer("seed", 0, "Seed of the dense initialisation (broadcast from rank 0).")
_section("Schedule and evaluation (step counts default to MLPerf's at batch 55296, scaled)")
flags.DEFINE_integer("warmup_steps", None, "LR warmup steps (default 2750 * 55296 / batch).")
flags.DEFINE_integer("decay_start_step", None, "First step of the LR decay (default 49315 scaled).")
flags.DEFINE_integer("decay_steps", None, "Steps of the polynomial decay (default 27772 scaled).")
flags.DEFINE_integer("eval_interval", None,
                     "Evaluate every this many steps (0: never during training). Default: 0 "
                     "with --eval_in_last, else 3793 * 55296 / global_batch_size.")
flags.DEFINE_float("auc_target", 0.8025, "Stop once the test AUC reaches this.")
_section("Communication, input and output")
flags.DEFINE_bool("allreduce_fp16", False, "Compress dense gradients to float16 for the allreduce "
                  "(needs --amp: the loss-scaled gradients stay above fp16's range floor).")
flags.DEFINE_integer("synthetic_steps", 1000, "Steps per epoch of --use_synthetic_dataset.")
flags.DEFINE_integer("synthetic_eval_steps", 10, "Eval batches of --use_synthetic_dataset.")
flags.DEFINE_integer("prefetch", 4, "Batches read ahead per rank.")
flags.DEFINE_bool("shuffle_batches", None, "Visit the global training batches in a new order "
                  "each epoch, a permutation of (--shuffle_seed, epoch), the same on every "
                  "rank and under --resume (the MLPerf reference's --mlperf-bin-shuffle). "
                  "Default: on with --data_dir, off with --use_synthetic_dataset (which it "
                  "excludes).")
flags.DEFINE_integer("shuffle_seed", 0, "Seed of --shuffle_batches' permutations.")
flags.DEFINE_integer("log_interval", 100, "Steps between log lines.")
flags.DEFINE_string("results_json", None, "Write the report (rank 0) to this JSON file (its "
                    "directory must exist; checked at start, a failure at the end warns).")
flags.DEFINE_string("tensorboard_dir", None, "Write TensorBoard scalars (rank 0) here: loss, "
                    "lr, samples_per_second, loss_scale (--amp) at each log line, auc at each "
                    "evaluation. (--log_dir is absl's own flag, for its log files.)")
flags.DEFINE_string("checkpoint_dir", None, "Save checkpoints here (every rank its table shard, "
                    "rank 0 the dense weights and the run's state): every "
                    "--checkpoint_every_steps and after the last step. Every rank must see it.")
flags.DEFINE_integer("checkpoint_every_steps", 0, "Steps between checkpoints (0: only after the "
                     "last step).")
flags.DEFINE_bool("resume", False, "Continue from the latest checkpoint in --checkpoint_dir (on "
                  "any number of ranks with --embedding=tf); start at step 0 if it has none.")
flags.DEFINE_string("profile_dir", None, "Write a TensorFlow profiler trace of --profile_steps "
                    "here (rank 0; TensorBoard's Profile tab, or tools/trace_summary.py).")
flags.DEFINE_string("profile_steps", "20:30", "--profile_dir traces the steps after START up "
                    "to STOP (their time counts in the training time).")
_HELP_END = len(list(FLAGS))

flags.register_validator("global_batch_size", lambda v: v >= 1, "--global_batch_size must be >= 1")
flags.register_validator("lr", lambda v: math.isfinite(v) and v > 0,
                         "--lr must be a finite number > 0")
flags.register_validator("early_stop", lambda v: v == -1 or v >= 1,
                         "--early_stop must be -1 (no limit) or >= 1")
flags.register_validator("epochs", lambda v: v >= 1, "--epochs must be >= 1")
flags.register_validator("embedding_dim", lambda v: v >= 1, "--embedding_dim must be >= 1")
flags.register_validator("seed", lambda v: -2**62 <= v < 2**62,
                         "--seed must be within +-2**62 (TensorFlow's seeds are int64)")


def _positive_integers(values):
    """Whether a list flag's values are one or more integers >= 1."""
    try:
        return len(values) > 0 and all(int(v) >= 1 for v in values)
    except ValueError:
        return False


for _name in ("bottom_mlp", "top_mlp"):
    flags.register_validator(_name, _positive_integers,
                             f"--{_name} must be a comma-separated list of integers >= 1")
for _name in ("warmup_steps", "decay_start_step"):
    flags.register_validator(_name, lambda v: v is None or v >= 0, f"--{_name} must be >= 0")
flags.register_validator("decay_steps", lambda v: v is None or v >= 1,
                         "--decay_steps must be >= 1")
flags.register_validator("eval_interval", lambda v: v is None or v >= 0,
                         "--eval_interval must be >= 0")
flags.register_validator("auc_target", lambda v: 0.0 < v <= 1.0,
                         "--auc_target must be in (0, 1]")
flags.register_validator("log_interval", lambda v: v >= 1, "--log_interval must be >= 1")
for _name in ("synthetic_steps", "synthetic_eval_steps"):
    flags.register_validator(_name, lambda v: 1 <= v <= 2**62, f"--{_name} must be in [1, 2**62]")
flags.register_validator("prefetch", lambda v: v >= 0, "--prefetch must be >= 0")
flags.register_validator("checkpoint_every_steps", lambda v: v >= 0,
                         "--checkpoint_every_steps must be >= 0")
flags.register_multi_flags_validator(
    ["checkpoint_dir", "checkpoint_every_steps", "resume"],
    lambda f: f["checkpoint_dir"] or not (f["resume"] or f["checkpoint_every_steps"]),
    "--resume and --checkpoint_every_steps need --checkpoint_dir")
flags.register_multi_flags_validator(
    ["data_dir", "use_synthetic_dataset"],
    lambda f: not (f["data_dir"] and f["use_synthetic_dataset"]),
    "--data_dir and --use_synthetic_dataset exclude each other (synthetic batches read no "
    "files): give one")
flags.register_validator("shuffle_seed", lambda v: 0 <= v < 2**63,
                         "--shuffle_seed must be in [0, 2**63)")
flags.register_multi_flags_validator(
    ["shuffle_batches", "use_synthetic_dataset"],
    lambda f: not (f["shuffle_batches"] and f["use_synthetic_dataset"]),
    "--shuffle_batches is for --data_dir (synthetic batches are random already)")
flags.register_multi_flags_validator(
    ["vocab_sizes", "use_synthetic_dataset"],
    lambda f: f["vocab_sizes"] is None or f["use_synthetic_dataset"],
    "--vocab_sizes is for --use_synthetic_dataset; with --data_dir the vocabularies come from "
    "metadata.json")


def _step_range(text):
    """"START:STOP" -> (start, stop) with 1 <= start < stop, or None if malformed."""
    try:
        start, stop = (int(part) for part in text.split(":"))
    except ValueError:
        return None
    return (start, stop) if 1 <= start < stop else None


def _vocab_sizes_flag_ok(value):
    """--vocab_sizes' validator: None, or a list data_format.parse_vocab_sizes takes (else
    flags.ValidationError with its message, naming the entry)."""
    if value is not None:
        try:
            fmt.parse_vocab_sizes(value)
        except ValueError as err:
            raise flags.ValidationError(f"--{err}") from None
    return True


flags.register_validator("vocab_sizes", _vocab_sizes_flag_ok)
flags.register_validator("profile_steps", lambda v: _step_range(v) is not None,
                         "--profile_steps must be START:STOP with 1 <= START < STOP")
flags.register_multi_flags_validator(
    ["allreduce_fp16", "amp"], lambda f: f["amp"] or not f["allreduce_fp16"],
    "--allreduce_fp16 needs --amp: without loss scaling the fp32 gradients, already divided "
    "by the global batch, underflow in float16")

_RANK_VARIABLES = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID")


def _rank():
    """This process's rank: Horovod's once initialised, else the launcher's variable, else 0."""
    hvd = sys.modules.get("horovod.tensorflow")
    if hvd is not None and hvd.is_initialized():
        return hvd.rank()
    for name in _RANK_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def _fail(message, every_rank=False):
    """One line on stderr (rank 0 only, unless every_rank), the program's last; exit status 2."""
    if every_rank or _rank() == 0:
        sys.stdout.flush()
        print(f"main.py: error: {message}", file=sys.stderr, flush=True)
    else:  # the launcher ends the job at the first exit: let rank 0 say why and end first,
        # then end at the launcher's SIGTERM with status 2 (killed by it, this rank's shell
        # would print "Terminated" after the error), or after 10 s without a launcher's
        signal.signal(signal.SIGTERM, lambda *_: os._exit(2))
        time.sleep(10.0)
    sys.exit(2)


def _help_text():
    """main.py's own flags, in the sections they are defined in."""
    names = list(FLAGS)
    lines = [__doc__.split("\n\n")[0], "", "usage: horovodrun -np N ./hvd_wrapper.sh "
             "python3 main.py [--flag=value ...]   (or python3 main.py ... for one rank)"]
    bounds = [start for _, start in _HELP_SECTIONS[1:]] + [_HELP_END]
    for (title, start), end in zip(_HELP_SECTIONS, bounds):
        lines += ["", f"{title}:"]
        for name in names[start:end]:
            flag = FLAGS[name]
            default = "none" if flag.default is None else flag.default_as_str.strip("'")
            if isinstance(flag.default, bool):
                default = "on" if flag.default else "off"
            lines.append(f"  --{name} (default {default})")
            lines += textwrap.wrap(flag.help, 92, initial_indent=" " * 6,
                                   subsequent_indent=" " * 6)
    return "\n".join(lines)


def _parse_flags(argv):
    """app.run's flag parser: -h/--help prints main.py's flags (exit 0); a bad flag is one
    line (exit 2)."""
    arguments = argv[1:argv.index("--")] if "--" in argv else argv[1:]
    if any(a in ("-h", "--help", "-help", "--helpshort", "--helpfull") for a in arguments):
        print(_help_text())
        sys.exit(0)
    try:
        return FLAGS(argv)
    except flags.Error as err:
        _fail(str(err))


def _pin_gpu(tf, hvd):
    """One GPU per rank (by local rank, unless hvd_wrapper.sh already left one), memory
    growth. -> (description, device for the input batches: "/GPU:0" or None)."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU (no GPU visible)", None
    gpu = gpus[hvd.local_rank() % len(gpus)] if len(gpus) > 1 else gpus[0]
    tf.config.set_visible_devices(gpu, "GPU")
    tf.config.experimental.set_memory_growth(gpu, True)
    return gpu.name, "/GPU:0"


def _peak_gpu_gib(tf, input_device):
    """Peak GPU memory TF's allocator held so far, GiB (None on CPU)."""
    if input_device is None:
        return None
    return tf.config.experimental.get_memory_info(input_device)["peak"] / 2**30


def _eval_interval(training):
    """--eval_interval, else 0 with --eval_in_last (evaluate at the end only, as the seed),
    else 3793 steps scaled from batch 55296."""
    if FLAGS.eval_interval is not None:
        return FLAGS.eval_interval
    if FLAGS.eval_in_last:
        return 0
    return training.scale_steps(training.REFERENCE_EVAL_INTERVAL, FLAGS.global_batch_size)


def _open_outputs(tf):
    """Rank 0's outputs, checked before any work: --results_json's directory takes a file,
    --checkpoint_dir, --tensorboard_dir and --profile_dir are made and take one, the
    TensorBoard writer opens.
    -> (one line naming the first flag that fails, or None; the summary writer or None)."""
    checks = [("results_json", fmt.check_writable_file),
              ("checkpoint_dir", fmt.check_writable_directory),  # then every rank's, locked
              ("tensorboard_dir", fmt.check_writable_directory),
              ("profile_dir", fmt.check_writable_directory)]
    for name, check in checks:
        if FLAGS[name].value:
            try:
                check(FLAGS[name].value)
            except OSError as err:
                return f"--{name}={FLAGS[name].value}: cannot write there ({err})", None
    if not FLAGS.tensorboard_dir:
        return None, None
    try:
        return None, tf.summary.create_file_writer(FLAGS.tensorboard_dir)
    except (OSError, tf.errors.OpError) as err:
        return f"--tensorboard_dir={FLAGS.tensorboard_dir}: cannot write there ({err})", None


def _claim_outputs(tf, hvd, say):
    """Before any work: rank 0's outputs checked (_open_outputs; every rank learns the verdict)
    and --checkpoint_dir locked for this run (checkpoint.lock_directory, every rank's view).
    -> rank 0's summary writer or None. Raises app.UsageError."""
    import checkpoint
    problem, writer = _open_outputs(tf) if hvd.rank() == 0 else (None, None)
    problem = hvd.broadcast_object(problem, root_rank=0, name="output_check")
    if problem:
        raise app.UsageError(problem)
    if FLAGS.checkpoint_dir:
        try:
            checkpoint.lock_directory(FLAGS.checkpoint_dir, log=say)
        except checkpoint.CheckpointError as err:  # it names the directory
            raise app.UsageError(str(err)) from None
    return writer


def _write_results(path, report, say):
    """--results_json (rank 0) at the end: a failure warns; the run and its checkpoint stand."""
    try:
        fmt.write_json_atomic(path, report)
    except OSError as err:
        say(f"main.py: warning: --results_json={path} not written ({err}); the report is above",
            file=sys.stderr)


def _open_datasets(batch, rank, world, input_device):
    """The rank's training and evaluation data: synthetic, or --data_dir's train/ and test/.
    -> (train_data, eval_data, vocab_sizes, shuffle_seed: the batch order's seed or None for
    file order). Raises app.UsageError."""
    import dataset
    if FLAGS.use_synthetic_dataset:
        vocab_sizes = fmt.parse_vocab_sizes(FLAGS.vocab_sizes or "criteo_tb")
        return (dataset.SyntheticDataset(batch, vocab_sizes, FLAGS.synthetic_steps, seed=rank,
                                         device=input_device),
                dataset.SyntheticDataset(batch, vocab_sizes, FLAGS.synthetic_eval_steps,
                                         seed=world + rank, device=input_device),
                vocab_sizes, None)
    shuffle_seed = FLAGS.shuffle_seed if FLAGS.shuffle_batches is not False else None
    try:  # shuffled by default for real data
        train_data = dataset.SplitDataset(os.path.join(FLAGS.data_dir, "train"), batch, rank,
                                          world, training=True, prefetch=FLAGS.prefetch,
                                          device=input_device, shuffle_seed=shuffle_seed)
        eval_data = dataset.SplitDataset(os.path.join(FLAGS.data_dir, "test"), batch, rank,
                                         world, training=False, prefetch=FLAGS.prefetch,
                                         device=input_device)
    except (OSError, ValueError) as err:
        raise app.UsageError(str(err)) from None
    vocab_sizes = train_data.vocab_sizes
    if eval_data.vocab_sizes != vocab_sizes:
        feature = next(f for f, (a, b) in enumerate(zip(vocab_sizes, eval_data.vocab_sizes))
                       if a != b)
        raise app.UsageError(
            f"{FLAGS.data_dir}: train/ and test/ metadata.json disagree on vocab_sizes"
            f"[{feature}]: {vocab_sizes[feature]} in train, {eval_data.vocab_sizes[feature]} "
            f"in test")
    return train_data, eval_data, vocab_sizes, shuffle_seed


def _build_model(tf, vocab_sizes, input_device, say):
    """The embedding tables (--embedding's backend) and the DLRM around them; says which.
    -> (model, tables, table_seconds, startup_peak_gib). Raises app.UsageError."""
    import embedding
    import model as dlrm
    if FLAGS.amp:
        tf.keras.mixed_precision.set_global_policy("mixed_float16")
    interaction = dlrm.dot_interaction
    try:
        if FLAGS.custom_interact:
            import custom_interact
            custom_interact.load_ops()  # a missing build fails here, with the build command
            interaction = custom_interact.dot_interact
        backend, why = embedding.resolve_backend(FLAGS.embedding)
        start = time.perf_counter()
        tables = embedding.create_embedding(
            backend, vocab_sizes, FLAGS.embedding_dim, compress=FLAGS.compress, seed=FLAGS.seed,
            vector_dtype=tf.float16 if FLAGS.amp else tf.float32,
            fused_table_ops=FLAGS.fused_table_ops, jit_compile=FLAGS.xla)
        table_seconds = time.perf_counter() - start
        model = dlrm.DLRM(tables, vocab_sizes, bottom_mlp=tuple(map(int, FLAGS.bottom_mlp)),
                          top_mlp=tuple(map(int, FLAGS.top_mlp)), interaction=interaction,
                          seed=FLAGS.seed, jit_compile=FLAGS.xla)
    except (ValueError, ImportError, OSError, RuntimeError) as err:  # op or SOK missing
        raise app.UsageError(str(err)) from None
    peak = _peak_gpu_gib(tf, input_device)
    say(f"embedding backend {tables.name} ({why}), {sum(vocab_sizes):,} rows x "
        f"{FLAGS.embedding_dim} in {table_seconds:.1f} s"
        f"{'' if peak is None else f' (GPU peak {peak:.1f} GiB)'}, "
        f"compress {FLAGS.compress}, amp {FLAGS.amp}, xla {FLAGS.xla}, "
        f"interaction {'custom op' if FLAGS.custom_interact else 'tf'}"
        + (f", table ops {'fused' if FLAGS.fused_table_ops else 'tf'}"
           if tables.name == "tf" else ""))
    if tables.name == "sok":
        warning = embedding.unpatched_sok_warning(tables.sok, on_gpu=input_device is not None)
        if warning:
            say(warning)
    return model, tables, table_seconds, peak


def _build_trainer(model, steps_per_epoch, say):
    """The learning-rate schedule (said, with its warnings for this run) and the Trainer.
    -> (trainer, eval_interval). Raises app.UsageError."""
    import trainer as training
    try:
        schedule = training.LearningRateSchedule.for_global_batch(
            FLAGS.lr, FLAGS.global_batch_size, FLAGS.warmup_steps, FLAGS.decay_start_step,
            FLAGS.decay_steps)
    except ValueError as err:
        raise app.UsageError(str(err)) from None
    run_steps = steps_per_epoch * FLAGS.epochs
    if FLAGS.early_stop > 0:
        run_steps = min(run_steps, FLAGS.early_stop)
    eval_interval = _eval_interval(training)
    say(f"{schedule.describe()}; this run: {run_steps} steps ({steps_per_epoch} per epoch), "
        f"evaluation {f'every {eval_interval} steps' if eval_interval else 'never during training'}"
        f"{' and at the end' if FLAGS.eval_in_last else ''}")
    for line in training.schedule_warnings(schedule, run_steps, eval_interval, FLAGS.eval_in_last):
        say(f"warning: {line}")
    trainer = training.Trainer(model, schedule, FLAGS.global_batch_size,
                               loss_scale=training.DynamicLossScale() if FLAGS.amp else None,
                               allreduce_fp16=FLAGS.allreduce_fp16, jit_compile=FLAGS.xla)
    return trainer, eval_interval


def _checkpoints_and_resume(hvd, trainer, shuffle_seed, say):
    """--checkpoint_dir's Checkpoints (the directory is locked already) and the checkpoint to
    resume from (rank 0's choice), or (None, None). Raises app.UsageError."""
    import checkpoint
    if not FLAGS.checkpoint_dir:
        return None, None
    checkpoints = checkpoint.Checkpoints(FLAGS.checkpoint_dir, trainer,
                                         batch_shuffle_seed=shuffle_seed)
    resume_from = hvd.broadcast_object(checkpoints.latest(), root_rank=0, name="resume_from")
    if resume_from and not FLAGS.resume:
        raise app.UsageError(f"--checkpoint_dir={FLAGS.checkpoint_dir} holds a checkpoint "
                             f"({os.path.basename(resume_from)}), which this run would "
                             f"replace: pass --resume to continue it, or another directory")
    if FLAGS.resume and not resume_from:
        say(f"--resume: no checkpoint in {FLAGS.checkpoint_dir} yet: starting at step 0")
    return checkpoints, resume_from


def train():
    """The job: data, model, trainer, fit, report. -> exit status; raises app.UsageError for
    bad input."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TF's C++ INFO lines off, warnings on
    if FLAGS.data_dir is None and not FLAGS.use_synthetic_dataset:
        raise app.UsageError("give --data_dir (train/ and test/ made by split_bin.py) or "
                             "--use_synthetic_dataset")
    import horovod.tensorflow as hvd
    import tensorflow as tf

    import checkpoint
    import dataset
    import trainer as training

    hvd.init()
    device, input_device = _pin_gpu(tf, hvd)
    world = hvd.size()
    if FLAGS.global_batch_size % world:
        raise app.UsageError(f"--global_batch_size={FLAGS.global_batch_size} does not divide "
                             f"by the number of ranks ({world})")
    batch = FLAGS.global_batch_size // world
    say = print if hvd.rank() == 0 else (lambda *a, **k: None)
    summary_writer = _claim_outputs(tf, hvd, say)
    train_data, eval_data, vocab_sizes, shuffle_seed = _open_datasets(batch, hvd.rank(), world,
                                                                      input_device)
    # Only now, after the checks of the outputs and the data: a start line printed before
    # them could reach the user after their error (horovodrun relays stdout and stderr apart).
    say(f"{world} ranks, {batch} samples per rank, device {device}", flush=True)
    model, tables, table_seconds, startup_peak_gib = _build_model(tf, vocab_sizes, input_device,
                                                                  say)
    trainer, eval_interval = _build_trainer(model, len(train_data), say)
    checkpoints, resume_from = _checkpoints_and_resume(hvd, trainer, shuffle_seed, say)
    try:
        report = training.fit(
            trainer, train_data, eval_data, epochs=FLAGS.epochs,
            max_steps=FLAGS.early_stop if FLAGS.early_stop > 0 else None,
            eval_interval=eval_interval, eval_in_last=FLAGS.eval_in_last,
            auc_target=FLAGS.auc_target, log_interval=FLAGS.log_interval,
            profile=((*_step_range(FLAGS.profile_steps), FLAGS.profile_dir)
                     if FLAGS.profile_dir and hvd.rank() == 0 else None),
            log=lambda line: say(line, flush=True), summary_writer=summary_writer,
            checkpoints=checkpoints, checkpoint_every=FLAGS.checkpoint_every_steps,
            resume_from=resume_from)
    except checkpoint.CheckpointError as err:  # the same files, the same error on every rank
        raise app.UsageError(str(err)) from None
    except FloatingPointError as err:
        say(f"main.py: error: {err}", file=sys.stderr)
        return 3
    except dataset.DataError as err:  # only the rank that read it may know: every rank says it
        _fail(str(err), every_rank=True)
    report.update(embedding=tables.name, compress=FLAGS.compress, amp=FLAGS.amp, xla=FLAGS.xla,
                  custom_interact=FLAGS.custom_interact, device=device,
                  table_seconds=table_seconds, startup_peak_gpu_gib=startup_peak_gib,
                  peak_gpu_gib=_peak_gpu_gib(tf, input_device))
    say(training.format_report(report), flush=True)
    if FLAGS.results_json and hvd.rank() == 0:
        _write_results(FLAGS.results_json, report, say)
    return 0


# Horovod's error in a collective once another rank has ended (horovod/common/operations.cc).
_ANOTHER_RANK_ENDED = "Horovod has been shut down"


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]} (flags are --name=value)")
    try:
        return train()
    except app.UsageError as err:
        _fail(str(err))
    except Exception as err:
        if _ANOTHER_RANK_ENDED in str(err):  # that rank said why: no traceback of ours after it
            sys.exit(1)
        raise


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
