"""The training loop: one tf.function step, the LR schedule, loss scaling, evaluation, report.

Data parallel for the dense layers (Horovod allreduce of their gradients), model parallel
for the embedding tables (their gradients reach the owning rank through the embedding's
own exchange and are applied there, never allreduced). The step minimises the mean loss
over the whole global batch: each rank differentiates sum(local losses) / global_batch and
the dense gradients are summed over ranks, so N ranks compute what one rank would with the
same global batch.
"""

import math
import time

import horovod.tensorflow as hvd
import tensorflow as tf

from dataset import PAD_LABEL
from embedding import scaled_gradient
from metrics import roc_auc_tf
import xla

REFERENCE_BATCH = 55296  # the batch the schedule's step counts are defined at
REFERENCE_WARMUP_STEPS = 2750
REFERENCE_DECAY_START_STEP = 49315
REFERENCE_DECAY_STEPS = 27772
REFERENCE_EVAL_INTERVAL = 3793


def scale_steps(reference_steps, global_batch):
    """Step count defined at batch 55296 -> the same number of samples at global_batch."""
    return max(1, int(round(reference_steps * REFERENCE_BATCH / global_batch)))


class LearningRateSchedule:
    """Linear warmup, constant, polynomial decay, then held at 0.

        step < warmup:                  base * (step + 1) / warmup
        warmup <= step < decay_start:   base
        decay_start <= step < end:      base * ((end - step) / decay_steps) ** power
        step >= end:                    0       (end = decay_start + decay_steps)
    """

    def __init__(self, base_lr, warmup_steps, decay_start_step, decay_steps, power=2.0):
        if not 0 <= warmup_steps <= decay_start_step or decay_steps <= 0:
            raise ValueError(f"lr schedule: need 0 <= warmup_steps ({warmup_steps}) <= "
                             f"decay_start_step ({decay_start_step}) and decay_steps "
                             f"({decay_steps}) > 0")
        self.base_lr = float(base_lr)
        self.warmup_steps = int(warmup_steps)
        self.decay_start_step = int(decay_start_step)
        self.decay_steps = int(decay_steps)
        self.power = float(power)

    @classmethod
    def for_global_batch(cls, base_lr, global_batch, warmup_steps=None, decay_start_step=None,
                         decay_steps=None, power=2.0):
        """The MLPerf schedule, its step counts scaled to global_batch unless given."""
        def scaled(steps, reference):
            return scale_steps(reference, global_batch) if steps is None else steps
        return cls(base_lr, scaled(warmup_steps, REFERENCE_WARMUP_STEPS),
                   scaled(decay_start_step, REFERENCE_DECAY_START_STEP),
                   scaled(decay_steps, REFERENCE_DECAY_STEPS), power)

    def describe(self):
        end = self.decay_start_step + self.decay_steps
        return (f"lr {self.base_lr:g}: warmup steps 0-{self.warmup_steps}, constant to step "
                f"{self.decay_start_step}, decay (power {self.power:g}) to 0 at step {end}")

    def __call__(self, step):
        """step: int64 scalar tensor -> float32 scalar lr."""
        step = tf.cast(step, tf.float32)
        warmup = self.base_lr * (step + 1.0) / max(self.warmup_steps, 1)
        end = float(self.decay_start_step + self.decay_steps)
        remaining = tf.clip_by_value((end - step) / self.decay_steps, 0.0, 1.0)
        decay = self.base_lr * remaining ** self.power
        return tf.where(step < self.warmup_steps, warmup,
                        tf.where(step < self.decay_start_step, self.base_lr, decay))


def schedule_warnings(schedule, run_steps, eval_interval, eval_in_last):
    """What a run of run_steps steps will not do that its schedule suggests: lines to print at
    start (empty when the schedule fits the run)."""
    warnings = []
    if schedule.warmup_steps > run_steps:
        peak = schedule.base_lr * run_steps / schedule.warmup_steps
        warnings.append(f"the run ends during the lr warmup ({run_steps} of "
                        f"{schedule.warmup_steps} steps): lr never exceeds {peak:.4g} of "
                        f"{schedule.base_lr:g} (set --warmup_steps)")
    if not eval_in_last and (not eval_interval or eval_interval > run_steps):
        warnings.append(f"no evaluation: the run has {run_steps} steps, --eval_interval is "
                        f"{eval_interval} and --eval_in_last is off")
    return warnings


class DynamicLossScale:
    """AMP loss scale: halves (and the step is skipped) on a non-finite gradient, doubles
    after `growth_interval` finite steps in a row. All decisions are taken from a flag
    summed over ranks, so every rank skips the same steps."""

    def __init__(self, initial_scale=2.0 ** 15, growth_interval=2000, min_scale=1.0):
        self.scale = tf.Variable(initial_scale, dtype=tf.float32, trainable=False)
        self.finite_steps = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.skipped_steps = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.growth_interval = growth_interval
        self.min_scale = min_scale

    def state(self):
        """-> its state as JSON values: {"scale", "finite_steps", "skipped_steps"}."""
        return {"scale": float(self.scale.numpy()),
                "finite_steps": int(self.finite_steps.numpy()),
                "skipped_steps": int(self.skipped_steps.numpy())}

    def restore_state(self, state):
        """Sets what state() returned."""
        self.scale.assign(state["scale"])
        self.finite_steps.assign(state["finite_steps"])
        self.skipped_steps.assign(state["skipped_steps"])

    def update(self, all_finite):
        """all_finite: bool scalar, identical on every rank. Runs on the device (tf.where, no
        tf.cond)."""
        grow = tf.logical_and(all_finite, self.finite_steps + 1 >= self.growth_interval)
        self.scale.assign(tf.where(all_finite,
                                   tf.where(grow, self.scale * 2.0, self.scale),
                                   tf.maximum(self.scale * 0.5, self.min_scale)))
        self.finite_steps.assign(tf.where(tf.logical_and(all_finite, tf.logical_not(grow)),
                                          self.finite_steps + 1, tf.constant(0, tf.int64)))
        self.skipped_steps.assign_add(tf.cast(tf.logical_not(all_finite), tf.int64))


class Phases:
    """The training loop's phases on the host: input (the next batch), step (launching the
    train step), log (its host sync), evaluation, checkpoint, restore. Each phase's host
    seconds add up (seconds(name)), and each is an NVTX range in domain "DLRM" for nsys
    (inside the step, TF name scopes (forward/embedding_lookup, backward, allreduce, update)
    name the ops of each phase). Without a profiler attached an NVTX call is a no-op stub: a
    range costs ~0.3 us (bench/bench_nvtx.py), plus two clock reads; without the `nvtx`
    package, no ranges.

        with phases("input"): ...
    """

    def __init__(self):
        try:
            import nvtx
        except ImportError:
            nvtx = None
        self._domain = nvtx.Domain("DLRM") if nvtx is not None else None
        self._ranges = {}  # name -> its _Range, made once

    def __call__(self, name):
        found = self._ranges.get(name)
        if found is None:
            found = self._ranges[name] = _Range(
                self._domain, self._domain.get_event_attributes(message=name)
                if self._domain is not None else None)
        return found

    def seconds(self, name):
        """-> the host seconds spent in phase `name` so far."""
        found = self._ranges.get(name)
        return found.seconds if found is not None else 0.0


class _Range:
    """One phase: its host seconds, and its NVTX range if domain (a push on enter, a pop on
    exit, its name registered once)."""
    __slots__ = ("_push", "_pop", "_attributes", "_start", "seconds")

    def __init__(self, domain, attributes):
        self._push, self._pop = ((domain.push_range, domain.pop_range) if domain is not None
                                 else (None, None))
        self._attributes, self._start, self.seconds = attributes, 0.0, 0.0

    def __enter__(self):
        if self._push is not None:
            self._push(self._attributes)
        self._start = time.perf_counter()

    def __exit__(self, *error):
        self.seconds += time.perf_counter() - self._start
        if self._pop is not None:
            self._pop()


class Telemetry:
    """What a run writes to be watched (TensorBoard scalars, the profiler's trace), which must
    never end it: the first failure of a part (a full disk, a vanished directory) warns once
    through `log` and that part writes no more; training and checkpoints go on."""

    def __init__(self, log):
        self._log = log
        self._failed = set()

    def attempt(self, part, action):
        """Runs action() unless `part` failed before. -> whether it ran without error."""
        if part in self._failed:
            return False
        try:
            action()
        except (OSError, tf.errors.OpError) as error:
            self._failed.add(part)
            self._log(f"warning: {part} failed ({error}); it writes no more, training goes on")
            return False
        return True


def _write_scalars(summary_writer, step, values):
    with summary_writer.as_default():
        for name, value in values.items():
            tf.summary.scalar(name, value, step=step)


def _scalar_writer(summary_writer, telemetry):
    """-> scalars(step, **values): TensorBoard scalars through summary_writer (None: none)."""
    def scalars(step, **values):
        if summary_writer is not None:
            telemetry.attempt("TensorBoard", lambda: _write_scalars(summary_writer, step, values))
    return scalars


def _all_finite(tensors):
    """-> bool scalar: whether every value of every tensor is finite."""
    flags = [tf.reduce_all(tf.math.is_finite(t)) for t in tensors]
    return flags[0] if len(flags) == 1 else tf.reduce_all(tf.stack(flags))


def _sgd(variables, grads, rate):
    """variable -= rate * grad for each pair; rate 0 leaves them as they are."""
    for var, grad in zip(variables, grads):
        var.assign_sub(scaled_gradient(grad, rate, var.dtype))


def _values(grad):
    return grad.values if isinstance(grad, tf.IndexedSlices) else grad


class Trainer:
    """Owns the train and eval steps of `model` (a model.DLRM) on this Horovod rank.

    lr_schedule: callable step -> lr. loss_scale: DynamicLossScale for AMP, or None.
    allreduce_fp16: compress the dense gradients to fp16 for the allreduce.
    jit_compile: XLA-compile the loss (forward and backward) and the step's bookkeeping with
      the dense update (the lr schedule, AMP's finiteness check and loss scale, the SGD of
      the dense variables, the step counter): three launches instead of ~60 small ops, each
      of which costs the host more than its work costs the GPU.
    """

    def __init__(self, model, lr_schedule, global_batch, loss_scale=None, allreduce_fp16=False,
                 jit_compile=False):
        self.model = model
        self.lr_schedule = lr_schedule
        self.global_batch = global_batch
        self.loss_scale = loss_scale
        self.compression = hvd.Compression.fp16 if allreduce_fp16 else hvd.Compression.none
        self.num_ranks = hvd.size()  # one rank: no collective at all in the step
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)  # updates applied
        self.first_nonfinite_loss_step = tf.Variable(-1, dtype=tf.int64, trainable=False)
        compiled = xla.compiled(jit_compile)
        self._objective = compiled(self.objective_and_mean_loss)
        self._dense_step = compiled(self.bookkeeping_and_dense_update)

    def state(self):
        """-> the training state beside the variables, as JSON values (what a checkpoint
        keeps): {"step": updates applied, "first_nonfinite_loss_step", "loss_scale": its
        state() or None}."""
        return {"step": int(self.step.numpy()),
                "first_nonfinite_loss_step": int(self.first_nonfinite_loss_step.numpy()),
                "loss_scale": None if self.loss_scale is None else self.loss_scale.state()}

    def restore_state(self, state):
        """Sets what state() returned (a loss scale only where both have one)."""
        self.step.assign(state["step"])
        self.first_nonfinite_loss_step.assign(state["first_nonfinite_loss_step"])
        if self.loss_scale is not None and state["loss_scale"] is not None:
            self.loss_scale.restore_state(state["loss_scale"])

    def build_and_broadcast(self, features):
        """Builds the model on one batch (a collective embedding lookup) and gives every rank
        rank 0's dense variables."""
        self.model(features, training=False)
        hvd.broadcast_variables(self.model.dense_variables, root_rank=0)

    @tf.function
    def train_step(self, features, label):
        """features: (dense float32 [B, 13], categorical int32|int64 [B, 26]);
        label float32 [B, 1]. Returns this rank's mean loss (float32 scalar)."""
        dense_vars = self.model.dense_variables
        embedding_vars = self.model.embedding_variables
        with tf.GradientTape() as tape, tf.name_scope("forward"):
            logits = self.model(features, training=True)
            objective, mean_loss = self._objective(logits, label)
        with tf.name_scope("backward"):
            grads = tape.gradient(objective, dense_vars + embedding_vars)
        dense_grads = grads[:len(dense_vars)]
        if self.num_ranks > 1:
            with tf.name_scope("allreduce"):
                dense_grads = hvd.grouped_allreduce(dense_grads, op=hvd.Sum,
                                                    compression=self.compression)
        embedding_grads = grads[len(dense_vars):]
        with tf.name_scope("update"):
            embedding_finite = tf.constant(True)
            if self.loss_scale is not None:
                # An overflow is inf or nan whether scaled or not: the scaled gradients are
                # checked. Every rank skips if any rank's embedding gradients overflowed; the
                # dense ones, allreduced, are the same on every rank.
                embedding_finite = _all_finite([_values(g) for g in embedding_grads])
                if self.num_ranks > 1:
                    local_bad = tf.cast(tf.logical_not(embedding_finite), tf.float32)
                    embedding_finite = hvd.allreduce(local_bad, op=hvd.Sum,
                                                     name="nonfinite_flag") == 0.0
            rate = self._dense_step(dense_vars, dense_grads, embedding_finite, mean_loss)
            self.model.embedding.apply_gradients(embedding_grads, rate)
        return mean_loss

    def objective_and_mean_loss(self, logits, label):
        """logits, label float32 [B, 1] -> (what the step differentiates: the sum of the losses
        over the global batch size, times the loss scale under AMP; the mean loss)."""
        losses = tf.nn.sigmoid_cross_entropy_with_logits(labels=label, logits=logits)
        objective = tf.reduce_sum(losses) / self.global_batch
        if self.loss_scale is not None:
            objective = objective * self.loss_scale.scale
        return objective, tf.reduce_mean(losses)

    def bookkeeping_and_dense_update(self, dense_vars, dense_grads, embedding_finite,
                                      mean_loss):
        """AMP's skip decision (embedding_finite: bool scalar, the same on every rank), the
        dense SGD, the loss scale, the non-finite loss record and the step counter.
        -> the rate for the embedding update (float32 scalar): the lr, with AMP's unscaling
        folded in (no extra pass over the table rows), 0 for a skipped step."""
        lr = self.lr_schedule(self.step)
        if self.loss_scale is None:
            all_finite = tf.constant(True)
            rate = lr
            record = tf.logical_and(tf.logical_not(tf.math.is_finite(mean_loss)),
                                    self.first_nonfinite_loss_step < 0)
            self.first_nonfinite_loss_step.assign(
                tf.where(record, self.step, self.first_nonfinite_loss_step))
        else:  # under AMP a non-finite loss is a skipped step instead
            all_finite = tf.logical_and(embedding_finite, _all_finite(dense_grads))
            # A skipped step is an update at rate 0 (scaled_gradient: 0 even for inf/nan), not
            # a tf.cond, whose predicate would be copied to the host and stall the GPU.
            rate = tf.where(all_finite, lr / self.loss_scale.scale, 0.0)
            self.loss_scale.update(all_finite)
        _sgd(dense_vars, dense_grads, rate)
        self.step.assign_add(tf.cast(all_finite, tf.int64))  # skipped steps do not advance lr
        return rate

    @tf.function(reduce_retracing=True)
    def predict_step(self, features):
        """-> click probability float32 [B]."""
        return tf.reshape(tf.sigmoid(self.model(features, training=False)), [-1])

    def evaluate(self, eval_dataset):
        """Exact ROC AUC over the whole test set, every rank's slice gathered, computed on the
        device (metrics.roc_auc_tf); the same on all ranks. Rows labelled PAD_LABEL (the
        padding of the last batch) are dropped. -> (auc float, number of samples)."""
        probabilities, labels = [], []
        for features, label in eval_dataset:
            probabilities.append(self.predict_step(features))
            labels.append(tf.reshape(label, [-1]))
        all_probabilities = tf.concat(probabilities, 0) if probabilities else tf.zeros([0])
        all_labels = tf.concat(labels, 0) if labels else tf.zeros([0])
        if self.num_ranks > 1:
            all_probabilities = hvd.allgather(all_probabilities)
            all_labels = hvd.allgather(all_labels)
        samples = tf.not_equal(all_labels, PAD_LABEL)
        all_probabilities = tf.boolean_mask(all_probabilities, samples)
        all_labels = tf.boolean_mask(all_labels, samples)
        return roc_auc_tf(all_labels, all_probabilities), int(tf.size(all_labels))

    def check_loss(self):
        """Raises FloatingPointError (on every rank alike) if any rank saw a non-finite loss."""
        bad_step = self.first_nonfinite_loss_step
        if self.num_ranks > 1:
            bad_step = hvd.allreduce(bad_step, op=hvd.Max, name="nonfinite_loss_step")
        bad_step = int(bad_step)
        if bad_step >= 0:
            raise FloatingPointError(f"non-finite loss at step {bad_step}; stopping "
                                     f"(lower --lr, or use --amp's loss scaling)")


class _Clock:
    """Training time: the steps' wall time in segments between evaluations and checkpoints,
    this process's first step (tracing and compilation) apart; and the host's time in the
    steps' input and launch phases (phases: a Phases), after the first step."""

    HOST_PHASES = ("input", "step")

    def __init__(self, phases):
        self.train_seconds = self.first_step_seconds = 0.0
        self._phases = phases
        self._host_at_first_step = dict.fromkeys(self.HOST_PHASES, 0.0)
        self.start()

    def start(self):
        """A segment of steps begins."""
        self._start, self.segment_steps = time.perf_counter(), 0

    def stop(self):
        """The segment ends: its time counts as training."""
        self.train_seconds += time.perf_counter() - self._start

    def first_step_done(self):
        """The process's first step (its loss read back) ends: apart, then a new segment."""
        self.first_step_seconds = time.perf_counter() - self._start
        self._host_at_first_step = {name: self._phases.seconds(name)
                                    for name in self.HOST_PHASES}
        self.start()

    def samples_per_second(self, global_batch):
        """-> the current segment's rate so far."""
        return self.segment_steps * global_batch / max(time.perf_counter() - self._start, 1e-9)

    def host_ms_per_step(self, steps):
        """-> {phase: host ms per step in it} over the `steps` steps after the first."""
        return {name: 1e3 * (self._phases.seconds(name) - self._host_at_first_step[name])
                / max(steps, 1) for name in self.HOST_PHASES}


class _Evaluations:
    """The evaluations of a run: each one's AUC (exact, all ranks) logged and recorded, their
    time, and the first step that reached auc_target. Never on non-finite weights."""

    def __init__(self, trainer, eval_dataset, auc_target, phases, log, scalars, done=(),
                 target_step=None):
        self.trainer, self.dataset, self.auc_target = trainer, eval_dataset, auc_target
        self.phases, self.log, self.scalars = phases, log, scalars
        self.records, self.target_step, self.seconds = list(done), target_step, 0.0

    def run(self, step):
        """Evaluates the model of `step` -> whether auc_target has been reached."""
        self.trainer.check_loss()
        start = time.perf_counter()
        with self.phases("evaluation"):
            auc, num_samples = self.trainer.evaluate(self.dataset)
        auc = auc if math.isfinite(auc) else None  # nan: the test labels hold one class only
        self.seconds += time.perf_counter() - start
        self.records.append({"step": step, "auc": auc})
        if auc is not None:
            self.scalars(step, auc=auc)
        self.log(f"eval step {step}: AUC {'n/a (one class)' if auc is None else f'{auc:.6f}'} "
                 f"over {num_samples} samples ({time.perf_counter() - start:.1f} s)")
        if (self.auc_target is not None and auc is not None and self.target_step is None
                and auc >= self.auc_target):
            self.target_step = step
        return self.target_step is not None

    def progress(self):
        """-> what a checkpoint keeps of them (JSON values)."""
        return {"evaluations": self.records, "target_step": self.target_step}


class _Checkpointing:
    """Saves checkpoints (a checkpoint.Checkpoints, or None: never), every `every` steps
    (0: none during training), and their time. Never non-finite weights."""

    def __init__(self, checkpoints, every, trainer, phases, log, saved_step):
        self.checkpoints, self.every, self.trainer = checkpoints, every, trainer
        self.phases, self.log, self.saved_step, self.seconds = phases, log, saved_step, 0.0

    def due(self, step):
        return self.checkpoints is not None and self.every and step % self.every == 0

    def save(self, position, batches_per_epoch, progress):
        """position: (step, epoch, epoch_step) after the step."""
        self.trainer.check_loss()
        start = time.perf_counter()
        with self.phases("checkpoint"):
            path = self.checkpoints.save(*position, batches_per_epoch, progress)
        self.seconds += time.perf_counter() - start
        self.saved_step = position[0]
        self.log(f"checkpoint of step {position[0]}: {path} "
                 f"({time.perf_counter() - start:.1f} s)")


class _ProfilerWindow:
    """A TensorFlow profiler trace of this process's steps start+1 .. stop (profile: (start,
    stop, logdir), or None); a failure warns (Telemetry) and never ends the run."""

    def __init__(self, profile, telemetry, log):
        self.profile, self.telemetry, self.log = profile, telemetry, log
        self.tracing = False

    def before_step(self, done):
        """done: this process's steps so far."""
        if self.profile and done == self.profile[0]:
            self.tracing = self.telemetry.attempt(
                "the profiler", lambda: tf.profiler.experimental.start(self.profile[2]))

    def after_step(self, done, loss, first_step, ended=False):
        """done: this process's steps, this one included; ended: the run stops here."""
        if self.tracing and (done == self.profile[1] or ended):
            float(loss)  # the traced steps' kernels have run
            self.tracing = False
            if self.telemetry.attempt("the profiler", tf.profiler.experimental.stop):
                cut = "" if done == self.profile[1] else (
                    f" (the run ended before step {first_step + self.profile[1]})")
                self.log(f"profiler trace of steps {first_step + self.profile[0] + 1}-"
                         f"{first_step + done}{cut} in {self.profile[2]}")


def _log_step(trainer, clock, epoch, step, loss, log, scalars):
    """The log line of `step` and its TensorBoard scalars; the segment's samples/s is taken
    after check_loss's host sync (the steps launched so far have run)."""
    trainer.check_loss()
    samples_per_second = clock.samples_per_second(trainer.global_batch)
    with tf.device("/CPU:0"):  # no GPU kernel's first launch (JIT) here
        lr = float(trainer.lr_schedule(tf.constant(int(trainer.step) - 1)))
    log(f"epoch {epoch} step {step}: loss {float(loss):.5f} lr {lr:.4f} "
        f"{samples_per_second:,.0f} samples/s")
    scalars(step, loss=float(loss), lr=lr, samples_per_second=samples_per_second,
            **({"loss_scale": float(trainer.loss_scale.scale)} if trainer.loss_scale else {}))


def _evaluate_and_save(clock, evaluations, saving, evaluate, position, batches_per_epoch):
    """Between steps (position: (step, epoch, epoch_step)), outside training time: the
    evaluation if `evaluate`, the checkpoint if due. -> whether auc_target has been reached."""
    step = position[0]
    if not (evaluate or saving.due(step)):
        return False
    clock.stop()
    reached = bool(evaluate) and evaluations.run(step)
    if saving.due(step):
        saving.save(position, batches_per_epoch, evaluations.progress())
    clock.start()
    return reached


def _end_of_run(saving, evaluations, eval_in_last, position, batches_per_epoch):
    """After the last step (position: (step, epoch, epoch_step)): its checkpoint unless just
    saved, and with eval_in_last its evaluation unless done at that step."""
    step = position[0]
    if saving.checkpoints is not None and saving.saved_step != step:
        saving.save(position, batches_per_epoch, evaluations.progress())
    if eval_in_last and evaluations.dataset is not None and (
            not evaluations.records or evaluations.records[-1]["step"] != step):
        evaluations.run(step)


def fit(trainer, train_dataset, eval_dataset, epochs=1, max_steps=None, eval_interval=None,
        eval_in_last=False, auc_target=None, log_interval=100, profile=None, log=print,
        summary_writer=None, checkpoints=None, checkpoint_every=0, resume_from=None):
    """Trains for `epochs` over train_dataset (or up to step max_steps), evaluating every
    eval_interval steps and/or at the end; stops when AUC >= auc_target. Returns the report.
    profile: (start, stop, logdir): a TensorFlow profiler trace of this run's steps start+1 ..
      stop.
    summary_writer: a tf.summary writer (rank 0's) or None: TensorBoard scalars at each log
      line (loss, lr, samples_per_second, loss_scale under AMP) and each evaluation (auc).
      The profiler and the writer are Telemetry: their failures warn, never end the run.
    checkpoints: a checkpoint.Checkpoints or None: saved every checkpoint_every steps (0: not
      during training) and after the last step. resume_from: the path of one of them: the run
      goes on from its step as if never interrupted (its batches skipped unread, its variables,
      state and evaluations loaded; a run that had met auc_target stops at once); step numbers,
      max_steps and the schedule count from the start of the whole run.

    Training time, ms/iteration, samples/s and the host's input and launch ms/iteration (in
    next(batch), in train_step's call) leave out this process's first step (tracing and
    compilation: first_step_seconds), the evaluations and the checkpoints."""
    run_start = time.perf_counter()
    batches_per_epoch = len(train_dataset)
    phases, telemetry = Phases(), Telemetry(log)
    scalars = _scalar_writer(summary_writer, telemetry)
    trainer.build_and_broadcast(next(iter(train_dataset.batches()))[0])
    step, epoch, epoch_step, progress = 0, 0, 0, {"evaluations": [], "target_step": None}
    if resume_from is not None:
        step, epoch, epoch_step, progress = _resume(trainer, checkpoints, resume_from,
                                                    batches_per_epoch, phases, log)
    evaluations = _Evaluations(trainer, eval_dataset, auc_target, phases, log, scalars,
                               progress["evaluations"], progress["target_step"])
    saving = _Checkpointing(checkpoints, checkpoint_every, trainer, phases, log, step)
    profiler, clock, first_step = _ProfilerWindow(profile, telemetry, log), _Clock(phases), step
    stop = (max_steps is not None and step >= max_steps) or evaluations.target_step is not None
    if epoch_step == batches_per_epoch:  # saved after an epoch's last batch
        epoch, epoch_step = epoch + 1, 0
    while epoch < epochs and not stop:
        clock.start()
        batches = iter(train_dataset.batches(epoch_step, epoch))
        while not stop:
            with phases("input"):
                batch = next(batches, None)
            if batch is None:
                break
            profiler.before_step(step - first_step)
            with phases("step"):
                loss = trainer.train_step(*batch)
            step, epoch_step = step + 1, epoch_step + 1
            clock.segment_steps += 1
            last = max_steps is not None and step >= max_steps
            profiler.after_step(step - first_step, loss, first_step)
            if step - first_step == 1:  # tracing and compilation: timed apart
                float(loss)
                clock.first_step_done()
            if step % log_interval == 0 or last:
                with phases("log"):
                    _log_step(trainer, clock, epoch, step, loss, log, scalars)
            evaluate = eval_interval and step % eval_interval == 0 and eval_dataset is not None
            stop = _evaluate_and_save(clock, evaluations, saving, evaluate,
                                      (step, epoch, epoch_step), batches_per_epoch) or last
        trainer.check_loss()
        clock.stop()
        if not stop:
            epoch, epoch_step = epoch + 1, 0
    if profiler.tracing:  # the run ended inside the traced steps
        profiler.after_step(step - first_step, loss, first_step, ended=True)
    _end_of_run(saving, evaluations, eval_in_last, (step, epoch, epoch_step), batches_per_epoch)
    if summary_writer is not None:
        telemetry.attempt("TensorBoard", summary_writer.flush)
    return _report(trainer, step, first_step, resume_from, clock, evaluations, saving,
                   time.perf_counter() - run_start, auc_target)


def _resume(trainer, checkpoints, path, batches_per_epoch, phases, log):
    """Loads the checkpoint at path -> (step, epoch, epoch_step, progress)."""
    meta = checkpoints.load_meta(path, batches_per_epoch)
    with phases("restore"):
        checkpoints.restore(path, meta)
    step, epoch, epoch_step = (meta["position"][k] for k in ("step", "epoch", "epoch_step"))
    log(f"resumed from {path}: step {step} (epoch {epoch}, batch {epoch_step}), "
        f"{int(trainer.step)} updates applied")
    return step, epoch, epoch_step, meta["progress"]


def _report(trainer, step, first_step, resume_from, clock, evaluations, saving,
            total_seconds, auc_target):
    """-> the run's report (JSON values; format_report prints it)."""
    run_steps, global_batch = step - first_step, trainer.global_batch
    skipped = int(trainer.loss_scale.skipped_steps.numpy()) if trainer.loss_scale else 0
    host_ms = clock.host_ms_per_step(run_steps - 1)
    return {
        "num_ranks": hvd.size(),
        "global_batch_size": global_batch,
        "steps": step,
        "resumed_from_step": first_step if resume_from is not None else None,
        "training_minutes": clock.train_seconds / 60,
        "evaluating_minutes": evaluations.seconds / 60,
        "checkpoint_minutes": saving.seconds / 60,
        "total_minutes": total_seconds / 60,
        "first_step_seconds": clock.first_step_seconds,
        "ms_per_iteration": 1e3 * clock.train_seconds / max(run_steps - 1, 1),
        "samples_per_second": ((run_steps - 1) * global_batch / clock.train_seconds
                               if clock.train_seconds else 0.0),
        "input_ms_per_iteration": host_ms["input"],  # the host's, waiting for the next batch
        "launch_ms_per_iteration": host_ms["step"],  # the host's, in the train step's call
        "auc": evaluations.records[-1]["auc"] if evaluations.records else None,
        "auc_target": auc_target,
        "target_reached_at_step": evaluations.target_step,
        "evaluations": evaluations.records,
        "skipped_steps": skipped,
    }


def format_report(report):
    """The seed's table columns, plus AUC, the step the target was met and skipped steps."""
    auc = "n/a" if report["auc"] is None else f"{report['auc']:.6f}"
    lines = [
        f"ranks {report['num_ranks']}, global batch {report['global_batch_size']}, "
        f"steps {report['steps']}",
        "training min | evaluating min | total min | ms/iter | samples/s",
        f"{report['training_minutes']:.3f} | {report['evaluating_minutes']:.3f} | "
        f"{report['total_minutes']:.3f} | {report['ms_per_iteration']:.2f} | "
        f"{report['samples_per_second']:,.0f}   (first step, tracing: "
        f"{report['first_step_seconds']:.1f} s, not in training time)",
        f"AUC {auc} (target {report['auc_target']}, reached at step "
        f"{report['target_reached_at_step']}), skipped steps {report['skipped_steps']}",
        f"host per step: {report['input_ms_per_iteration']:.2f} ms waiting for input, "
        f"{report['launch_ms_per_iteration']:.2f} ms launching the step",
    ]
    if report["resumed_from_step"] is not None:
        lines.append(f"resumed from step {report['resumed_from_step']}")
    if report["checkpoint_minutes"]:
        lines.append(f"checkpoints: {report['checkpoint_minutes']:.3f} min (not in training "
                     f"time)")
    return "\n".join(lines)

