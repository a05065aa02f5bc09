"""The typed config schema: every default lives here, and nowhere else.

Each swappable part (dataset, model, loss, optimizer, scheduler) has one dataclass per
kind of option. The YAML files under ``conf/<group>/`` extend one of these schemas
(``defaults: [/schema_<group>_<kind>@_here_]``) and set only what makes that option
different, so a typo'd key or a wrong type is rejected by Hydra before anything runs.

Range checks that a type cannot express (``batch_size >= 1``, a finite learning rate,
a CNN needing image data...) live in :mod:`runner.validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from runner.text import program_name


# --------------------------------------------------------------------------- datasets
@dataclass
class DatasetConfig:
    """Fields every dataset has."""

    name: str = MISSING
    # Fit mean/std on the training part only and apply them to both parts.
    standardize: bool = True
    # Regression only: also scale the target (losses are then in units of its std).
    standardize_target: bool = False


@dataclass
class SklearnDatasetConfig(DatasetConfig):
    """A data set bundled with scikit-learn (no download): digits, iris, wine, breast_cancer, diabetes."""


@dataclass
class LinregDatasetConfig(DatasetConfig):
    """y = X @ w + b + noise with w, b drawn from ``seed``; the true w and b are recorded."""

    name: str = "linreg"
    n: int = 1000
    d: int = 5
    noise: float = 0.1
    seed: int = 0
    # Off so that the learned weights are comparable with the recorded true ones.
    standardize: bool = False


@dataclass
class MoonsDatasetConfig(DatasetConfig):
    name: str = "moons"
    n: int = 1000
    noise: float = 0.2
    seed: int = 0


@dataclass
class BlobsDatasetConfig(DatasetConfig):
    name: str = "blobs"
    n: int = 1000
    centers: int = 3
    n_features: int = 2
    cluster_std: float = 1.0
    seed: int = 0


@dataclass
class SpiralsDatasetConfig(DatasetConfig):
    name: str = "spirals"
    n: int = 1000
    classes: int = 2
    turns: float = 1.5
    noise: float = 0.1
    seed: int = 0


@dataclass
class FileDatasetConfig(DatasetConfig):
    """A user's ``.npz`` (arrays ``X`` and ``y``) or ``.csv`` (``target`` names the target column)."""

    name: str = "file"
    path: str = MISSING
    target: Optional[str] = None
    # auto: integer-valued targets are classes, anything else is a regression target.
    task: str = "auto"


@dataclass
class PythonDatasetConfig(DatasetConfig):
    """``dataset=python dataset.fn=pkg.module.function``: a function returning ``(X, y)``,
    ``(X_train, y_train, X_val, y_val)`` or a map-style torch Dataset (:mod:`runner.data.python`)."""

    name: str = "python"
    fn: str = MISSING
    task: str = "auto"


@dataclass
class MemmapDatasetConfig(DatasetConfig):
    """``X.npy`` and ``y.npy`` in the directory ``path``, read from disk one block at a time:
    data bigger than memory, with the same results as loading it."""

    name: str = "memmap"
    path: str = MISSING
    task: str = "auto"
    # Rows of the epoch's permutation read from disk at once; memory is bounded by it.
    block_size: int = 65536
    # Off by default: standardising costs one extra pass over the whole file.
    standardize: bool = False


@dataclass
class IdxDatasetConfig(DatasetConfig):
    """MNIST-format IDX files in ``root`` (plain or .gz, also ``<root>/<Name>/raw/``)."""

    root: str = "data"
    # Pixels are scaled to [0, 1]; per-pixel standardisation is opt-in.
    standardize: bool = False


@dataclass
class Cifar10DatasetConfig(DatasetConfig):
    """CIFAR-10 python pickle batches in ``root`` or ``root/cifar-10-batches-py``."""

    name: str = "cifar10"
    root: str = "data"
    standardize: bool = False


# ----------------------------------------------------------------------------- models
@dataclass
class ModelConfig:
    """A model is built as ``_target_(in_shape=..., out_features=..., **fields)``."""

    _target_: str = MISSING


@dataclass
class LinearModelConfig(ModelConfig):
    _target_: str = "runner.models.Linear"
    init: str = "default"


@dataclass
class LogisticModelConfig(ModelConfig):
    _target_: str = "runner.models.Logistic"
    init: str = "default"


@dataclass
class MLPModelConfig(ModelConfig):
    _target_: str = "runner.models.MLP"
    hidden: List[int] = field(default_factory=lambda: [128])
    activation: str = "relu"
    init: str = "default"


@dataclass
class CNNModelConfig(ModelConfig):
    _target_: str = "runner.models.CNN"
    channels: List[int] = field(default_factory=lambda: [16, 32])
    hidden: int = 64
    activation: str = "relu"
    init: str = "default"


@dataclass
class CustomModelConfig(ModelConfig):
    """``model=custom model._target_=pkg.module.Class``: any ``torch.nn.Module`` subclass, built as
    ``Class(in_shape=..., out_features=..., **keys)`` with its own keys added as ``+model.<key>=...``."""

    _target_: str = MISSING


# ----------------------------------------------------------------------------- losses
@dataclass
class LossConfig:
    """A loss is built as ``_target_(**fields)``; see :mod:`runner.losses`."""

    _target_: str = MISSING


@dataclass
class LogitsLossConfig(LossConfig):
    """Losses defined on probabilities; the model emits logits unless ``from_logits`` is false."""

    from_logits: bool = True


@dataclass
class SmoothedLogitsLossConfig(LogitsLossConfig):
    label_smoothing: float = 0.0


@dataclass
class PoissonLossConfig(LossConfig):
    _target_: str = "runner.losses.Poisson"
    # The model emits log-rates; the Keras formula is applied to exp(output).
    log_input: bool = True


@dataclass
class HuberLossConfig(LossConfig):
    _target_: str = "runner.losses.Huber"
    # Errors up to delta are squared, larger ones count linearly (Keras' default 1.0).
    delta: float = 1.0


# ------------------------------------------------------------------------- optimizers
@dataclass
class OptimizerConfig:
    """An optimizer is built as ``_target_(params, **fields)``."""

    _target_: str = MISSING
    lr: float = MISSING
    weight_decay: float = 0.0


@dataclass
class SGDConfig(OptimizerConfig):
    _target_: str = "torch.optim.SGD"
    lr: float = 0.1
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False


@dataclass
class RMSpropConfig(OptimizerConfig):
    _target_: str = "torch.optim.RMSprop"
    lr: float = 0.01
    alpha: float = 0.99
    eps: float = 1e-8
    momentum: float = 0.0
    centered: bool = False


@dataclass
class AdagradConfig(OptimizerConfig):
    _target_: str = "torch.optim.Adagrad"
    lr: float = 0.01
    lr_decay: float = 0.0
    initial_accumulator_value: float = 0.0
    eps: float = 1e-10


@dataclass
class AdamConfig(OptimizerConfig):
    _target_: str = "torch.optim.Adam"
    lr: float = 0.001
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    amsgrad: bool = False


@dataclass
class LARSConfig(OptimizerConfig):
    _target_: str = "runner.optim.LARS"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0005
    trust_coefficient: float = 0.001
    eps: float = 1e-8


# ------------------------------------------------------------------------- schedulers
@dataclass
class SchedulerConfig:
    """A scheduler factory ``_target_(optimizer, total_steps=..., **fields)``; see :mod:`runner.schedulers`.

    ``interval`` says what one scheduler step is: an ``epoch`` or an ``iteration`` (one update).
    """

    _target_: str = MISSING
    interval: str = "epoch"


@dataclass
class ConstantSchedulerConfig(SchedulerConfig):
    _target_: str = "runner.schedulers.constant"


@dataclass
class StepSchedulerConfig(SchedulerConfig):
    _target_: str = "runner.schedulers.step"
    step_size: int = 10
    gamma: float = 0.1


@dataclass
class ExponentialSchedulerConfig(SchedulerConfig):
    _target_: str = "runner.schedulers.exponential"
    gamma: float = 0.95


@dataclass
class CosineSchedulerConfig(SchedulerConfig):
    _target_: str = "runner.schedulers.cosine"
    eta_min: float = 0.0


@dataclass
class WarmupCosineSchedulerConfig(SchedulerConfig):
    _target_: str = "runner.schedulers.warmup_cosine"
    warmup_steps: int = 2
    eta_min: float = 0.0


@dataclass
class PlateauSchedulerConfig(SchedulerConfig):
    """Multiplies the lr by ``factor`` when the monitored loss stops improving (epoch interval only)."""

    _target_: str = "runner.schedulers.plateau"
    factor: float = 0.1
    patience: int = 5
    threshold: float = 1e-4
    min_lr: float = 0.0


# -------------------------------------------------------------------------- instruments
@dataclass
class NoiseConfig:
    """Gradient noise scale (McCandlish et al. 2018), measured on the whole training set."""

    # Measure every this many iterations, at iterations 0, every, 2*every, ... (0 = off).
    every: int = 0
    # Samples whose per-sample gradients are held at once (memory: this x parameters floats).
    micro_batch_size: int = 256


@dataclass
class TrajectoryConfig:
    """Record the weights' path and draw it over the loss surface (runner.instruments.trajectory)."""

    record: bool = False
    # Keep the weights every this many iterations (and the final ones).
    every: int = 1
    # Grid points per axis of the loss surface drawn under the path.
    resolution: int = 41
    # How far the grid reaches beyond the path's box, as a fraction of its size.
    margin: float = 0.2
    # The plane for models with more than 2 parameters: pca (of the path) or random
    # (filter-normalised, Li et al. 2018).
    directions: str = "pca"


@dataclass
class ScalingConfig:
    """Batch-size scaling study (runner.scaling): stop each run at a training-loss target."""

    # Stop the run once the whole-training-set loss is <= this (null = no target: the study is off).
    target: Optional[float] = None
    # The loss is evaluated after update s on a geometric grid s_{k+1} = max(s_k + 1, floor(s_k * ratio))
    # (plus every epoch end), so the updates to the target are known within this factor.
    ratio: float = 1.189207115002721  # 2^(1/4)
    # Also measure B_simple (runner.instruments.noise) at every power-of-two update and where the
    # target is reached (0 = never; else the chunk of per-sample gradients held at once).
    noise_micro_batch_size: int = 256
    # At the sweep's end, a batch size whose best lr is the smallest or largest of its grid gets
    # one more lr a grid step beyond that edge (all its seeds), at most this many (0 = only flag it).
    lr_extensions: int = 2


# ------------------------------------------------------------------------------- run
@dataclass
class RunConfig:
    """The whole run. Group options fill the first five fields."""

    dataset: Any = MISSING
    model: Any = MISSING
    loss: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING

    seed: int = 0
    epochs: int = 20
    # What a run's length is measured in: epochs (train `epochs` epochs), or samples,
    # updates or seconds (train until `budget_amount` of them are spent; `epochs` is then
    # ignored), so that a sweep can give every batch size the same budget.
    budget: str = "epochs"
    budget_amount: Optional[float] = None
    # An integer >= 1, or "full" for the whole training set (batch gradient descent).
    batch_size: Any = 32
    # Process each update's batch in chunks of this many samples, accumulating gradients:
    # the same update in bounded memory (null = the whole batch at once).
    micro_batch_size: Optional[int] = None
    # Clip the gradient's global L2 norm to this before each step (null = no clipping).
    grad_clip: Optional[float] = None
    # Stop when the validation loss (else the full training loss) has not improved for
    # this many epochs; the summary and report keep the best epoch (null = never).
    early_stopping_patience: Optional[int] = None
    # An epoch counts as an improvement only when the monitored loss falls below the best so
    # far minus this (Keras' min_delta; 0 = any decrease).
    early_stopping_min_delta: float = 0.0
    # Save the best epoch's weights as model.pt instead of the last epoch's (the summary
    # says restored_best and best_epoch). Works with or without a patience.
    early_stopping_restore_best: bool = False
    # Scale optimizer.lr with the batch size: lr * (B / base) (linear) or lr * sqrt(B / base).
    lr_scaling: str = "none"
    lr_scaling_base_batch: int = 32
    # auto picks cuda, then mps, then cpu.
    device: str = "auto"
    # CUDA only: capture the update as a CUDA graph and replay it (exact; constant lr).
    cuda_graph: bool = False
    shuffle: bool = True
    drop_last: bool = False
    # Fraction of the data held out for validation; 0 turns validation off.
    val_fraction: float = 0.2
    # Train on only this many samples of the training part, drawn with `seed` after the
    # validation split (which keeps its size): a small training set to overfit (null = all).
    train_size: Optional[int] = None
    # Write the per-iteration scalars every this many iterations (1 = every iteration).
    log_every: int = 1
    # Batch size for the loss/accuracy evaluations at epoch end (memory only: results are exact).
    eval_batch_size: int = 8192
    # Save a checkpoint every this many updates (0 = at epoch ends only).
    checkpoint_every: int = 0
    # Epoch-end checkpoints at least this many seconds apart (0 = at every epoch end): a kill
    # loses at most this much training, and epochs shorter than it do not each pay for one.
    # The last epoch, a stop signal and checkpoint_every's boundaries always save.
    checkpoint_interval_s: float = 1.0
    # auto: continue an interrupted run found in output_dir (and keep a finished one);
    # must: fail if there is nothing to continue; never: refuse a directory with a result.
    resume: str = "auto"
    # auto: a progress bar when stderr is a terminal, plain log lines otherwise.
    progress: str = "auto"
    # Draw the report's figures at the end of a single run too (a sweep's report always has
    # them): about 2 s, longer than a short run trains, so off; `python -m runner.report DIR`
    # draws them for any run.
    single_run_plots: bool = False
    # Where the run writes its TensorBoard event file, summary.json and model.pt.
    output_dir: str = "${hydra:runtime.output_dir}"
    # Instruments (off by default): gradient noise, loss-surface trajectory.
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    trajectory: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    # Batch-size scaling study (off by default): a training-loss target that stops the run.
    scaling: ScalingConfig = field(default_factory=ScalingConfig)


_SCHEMAS = {
    "run": RunConfig,
    "dataset_sklearn": SklearnDatasetConfig,
    "dataset_linreg": LinregDatasetConfig,
    "dataset_moons": MoonsDatasetConfig,
    "dataset_blobs": BlobsDatasetConfig,
    "dataset_spirals": SpiralsDatasetConfig,
    "dataset_file": FileDatasetConfig,
    "dataset_idx": IdxDatasetConfig,
    "dataset_memmap": MemmapDatasetConfig,
    "dataset_python": PythonDatasetConfig,
    "dataset_cifar10": Cifar10DatasetConfig,
    "model_linear": LinearModelConfig,
    "model_logistic": LogisticModelConfig,
    "model_mlp": MLPModelConfig,
    "model_cnn": CNNModelConfig,
    "model_custom": CustomModelConfig,
    "loss_plain": LossConfig,
    "loss_logits": LogitsLossConfig,
    "loss_smoothed_logits": SmoothedLogitsLossConfig,
    "loss_poisson": PoissonLossConfig,
    "loss_huber": HuberLossConfig,
    "optimizer_sgd": SGDConfig,
    "optimizer_rmsprop": RMSpropConfig,
    "optimizer_adagrad": AdagradConfig,
    "optimizer_adam": AdamConfig,
    "optimizer_lars": LARSConfig,
    "scheduler_constant": ConstantSchedulerConfig,
    "scheduler_step": StepSchedulerConfig,
    "scheduler_exponential": ExponentialSchedulerConfig,
    "scheduler_cosine": CosineSchedulerConfig,
    "scheduler_warmup_cosine": WarmupCosineSchedulerConfig,
    "scheduler_plateau": PlateauSchedulerConfig,
}


def split_items(dirname: str, sep: str = ",") -> list[str]:
    """``a=1,b=[2,3]`` → ``["a=1", "b=[2,3]"]``: separators inside brackets or quotes stay."""
    items, depth, quote, current = [], 0, "", ""
    for char in dirname:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth = max(depth - 1, 0)
        elif char == sep and depth == 0:
            items.append(current)
            current = ""
            continue
        current += char
    return [*items, current] if current else items


def sweep_subdir(override_dirname: str, seed: int) -> str:
    """A sweep job's directory: its overrides, with a ``seed=<k>`` override as a subdirectory.

    ``override_dirname`` holds only the swept keys (:class:`runner.sweep.SweepCallback`
    excludes the overrides every job shares), so ``batch_size=8,seed=1`` becomes
    ``batch_size=8/seed=1``: the seeds of one configuration sit in one folder (a seed
    group), and TensorBoard's run names start with what tells runs apart. A ``/`` inside an
    override value (a file path) is replaced so the name cannot escape the sweep
    directory or nest unexpectedly. A job with no overrides at all is ``seed=<seed>``.
    """
    items = split_items(override_dirname)
    seeds = [item for item in items if item.split("=", 1)[0] == "seed"]
    name = ",".join(item for item in items if item not in seeds).replace("/", "_").replace("\\", "_")
    parts = [part for part in (name, *seeds) if part]
    return "/".join(parts) if parts else f"seed={seed}"


def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore as ``schema_<name>``, and the resolvers (idempotent)."""
    cs = ConfigStore.instance()
    for name, node in _SCHEMAS.items():
        cs.store(name=f"schema_{name}", node=node)
    OmegaConf.register_new_resolver("runner.sweep_subdir", sweep_subdir, replace=True)
    # The usage lines of --help (conf/hydra/help/runner.yaml) name the command as typed.
    OmegaConf.register_new_resolver("runner.program", program_name, replace=True)


register_configs()
