"""Training: one function, single process or torchrun DDP, exactly resumable."""

from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler
from tqdm.auto import tqdm

from .._progress import progress_enabled
from ..config import Config, config_from_dict, validate_config
from ..constants import builtin_dataset
from ..data.registry import open_source
from ..data.source import EpochSeededDataset, Source, Split
from ..data.transforms import build_transform
from ..losses import build_loss
from ..metrics import dice
from ..models import create_model, load_official_weights
from ..reporting.curves import plot_curves, write_metrics_csv
from . import distributed
from .checkpoint import load_checkpoint, make_checkpoint, rng_state, save_checkpoint, set_rng_state
from .inference import predict_volume
from .run_folder import RunFolderLock, prepare_run_folder, remove_run_outputs

# ---------------------------------------------------------------------------------------------- data


@dataclass
class TrainingData:
    """What a run trains and validates on: the source, its split and the slice-wise training dataset."""

    source: Source
    split: Split
    train: EpochSeededDataset
    #: axis code of the training volumes (:meth:`Source.slice_orientation`), stored in checkpoints
    slice_orientation: str | None = None
    #: what model cards say about the data (:meth:`Source.dataset_record`), stored in checkpoints as ``dataset``
    dataset_record: dict[str, Any] = field(default_factory=dict)


def resolve_classes(cfg: Config, source: Source) -> None:
    """Fill ``model.num_classes`` / ``model.in_channels`` from the data when unset; refuse a disagreement."""
    m = cfg.model
    found = {"num_classes": source.num_classes, "in_channels": source.in_channels}
    wrong = {k: getattr(m, k) for k, v in found.items() if getattr(m, k) is not None and getattr(m, k) != v}
    if wrong:
        given = ", ".join(f"model.{k}={v}" for k, v in wrong.items())
        raise ValueError(
            f"{source.describe()} but the config says {given}; drop the override(s) to take them from the data, or "
            f"fix them (" + " ".join(f"--set model.{k}={found[k]}" for k in wrong) + ")"
        )
    m.num_classes, m.in_channels = found["num_classes"], found["in_channels"]


def build_training_data(cfg: Config) -> TrainingData:
    """Open ``cfg.data`` as a :class:`Source`, split it, and build the training dataset with its transform.

    ``cfg.model.num_classes`` / ``in_channels`` are filled from the data when unset (see :func:`resolve_classes`).
    """
    d = cfg.data
    source = open_source(d.root, d.kind, d.source_options())
    resolve_classes(cfg, source)
    split = source.split(
        d.validation, val_fraction=d.val_fraction, val_cases=d.val_cases, train_cases=d.train_cases, seed=cfg.train.seed
    )
    transform = build_transform(d.augment, tuple(cfg.model.img_size), source.preprocessing)
    dataset = source.training_dataset(split.train, transform, cfg.train.seed)
    # the demo trains on the phantom prepared as Synapse data: its model card must not claim the real scans
    record = builtin_dataset("synapse_phantom", source.class_names) if cfg.preset == "demo" else source.dataset_record()
    return TrainingData(source, split, dataset, source.slice_orientation(), dict(record))


# ---------------------------------------------------------------------------------------------- validation


@torch.inference_mode()
def validate(
    model: nn.Module, data: TrainingData, info: distributed.DistInfo, batch_size: int, amp: str | None
) -> tuple[dict[str, float], float]:
    """Mean Dice per class over the validation cases, reduced over processes.

    A class is scored on the cases where it is in the ground truth or in the prediction: Dice when both hold it, 0
    for a miss or a hallucination. A case where it is in neither is not scored for it. (The legacy protocol of
    ``evaluate`` scores a correctly absent class 0 and a hallucinated one 1: selecting checkpoints by it on
    validation cases that lack some classes, such as a slab of one hemisphere, would reward hallucination.)

    Returns:
        (per-class Dice dict over foreground classes, NaN for a class no validation case scores; mean Dice over
        the scored classes, 1.0 when none is: nothing to segment and nothing segmented)
    """
    source = data.source
    mine = data.split.val[info.rank :: info.world_size]
    n_fg = source.num_classes - 1
    sums = torch.zeros(2 * n_fg, dtype=torch.float64)  # per-class Dice sums, then per-class counts of scored cases
    model_prep = source.preprocessing.unit_input()
    for case in source.cases(mine):
        pred = predict_volume(model, case.image, preprocessing=model_prep, batch_size=batch_size, amp=amp)
        for c in range(1, n_fg + 1):
            predicted, truth = pred == c, case.label == c
            if predicted.any() or truth.any():
                sums[c - 1] += dice(predicted, truth)
                sums[n_fg + c - 1] += 1
    sums = distributed.all_reduce_sum(sums, info)
    per_class = {
        name: float(sums[i] / sums[n_fg + i]) if sums[n_fg + i] > 0 else math.nan
        for i, name in enumerate(source.class_names[1:])
    }
    scored = [v for v in per_class.values() if not math.isnan(v)]
    return per_class, float(np.mean(scored)) if scored else 1.0


# ---------------------------------------------------------------------------------------------- training


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (third-party code may use the legacy global RNG)
    torch.manual_seed(seed)


def scaled_lr(cfg: Config, global_batch: int) -> float:
    """The authors' rule: base LR times batch/24 when the batch is a multiple of 5 (batch 20 -> 0.041667)."""
    t = cfg.train
    if t.lr_scaling == "authors" and global_batch % 5 == 0 and global_batch != 24:
        return t.lr * global_batch / 24
    return t.lr


def _optimizer(cfg: Config, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=t.momentum, weight_decay=t.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=t.weight_decay)  # "adamw"


def _scheduler(cfg: Config, optimizer: torch.optim.Optimizer, max_iterations: int):
    t = cfg.train
    if t.scheduler == "poly":
        power = t.poly_power
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: max(0.0, 1.0 - it / max_iterations) ** power)
    if t.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=t.plateau_factor, patience=t.plateau_patience
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)  # "constant"


def _amp(cfg: Config, device: torch.device) -> tuple[torch.dtype | None, bool]:
    amp = cfg.train.amp
    if amp == "none":
        return None, False
    if amp == "bf16":
        return torch.bfloat16, False
    if device.type != "cuda":  # "fp16" (the config allows it with device auto, which may find no GPU)
        raise ValueError(f"train.amp=fp16 needs CUDA (it uses a gradient scaler); this run is on {device}: use bf16")
    return torch.float16, True


def train(cfg: Config, resume: str | os.PathLike | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Train a model as ``cfg`` says; under torchrun, with DistributedDataParallel.

    Writes into ``cfg.out_dir`` (rank 0 only): ``config.yaml`` (resolved), ``last.pt`` (every epoch, atomic),
    ``best.pt`` (best validation mean Dice; not written without validation: use ``last.pt``), ``metrics.csv``,
    ``curves.png`` and TensorBoard logs. The run folder is locked for the run's life (a second writer is refused,
    naming the holder); a folder that already holds files is refused unless the run resumes or ``overwrite`` is
    set; temporary files of interrupted writes are removed (see :mod:`msa2net.engine.run_folder`).

    Args:
        cfg: the resolved configuration.
        resume: a ``last.pt`` (or its run folder) to continue from exactly.
        overwrite: replace the outputs of an earlier run in ``cfg.out_dir``.

    Returns:
        A summary: best Dice and epoch (None without validation), epochs and iterations done, checkpoint paths
        (``best`` is ``last.pt`` without validation).
    """
    validate_config(cfg)  # choices and ranges, before anything is read or written
    info = distributed.setup(cfg.train.device)
    lock = RunFolderLock(cfg.out_dir) if info.is_main else None
    try:
        if lock is not None:
            lock.acquire()
            removed = prepare_run_folder(cfg.out_dir, resume=resume is not None, overwrite=overwrite)
            if removed:
                print(f"note: removed from {cfg.out_dir}: {', '.join(removed)}")
        return _train(cfg, info, resume)
    except KeyboardInterrupt:
        if info.is_main:
            _explain_interrupt(Path(cfg.out_dir))
        raise
    finally:
        if lock is not None:
            lock.release()
        distributed.cleanup()


def _explain_interrupt(out: Path) -> None:
    """Say what an interrupted run left: a ``last.pt`` to resume from, or, before the first epoch ended, nothing
    worth keeping (its partial outputs are removed so that the same command starts again)."""
    if (out / "last.pt").is_file():
        print(
            f"\ninterrupted: continue with  msa2net train --resume {out / 'last.pt'}  (the last completed epoch is "
            "kept)",
            file=sys.stderr,
        )
        return
    removed = remove_run_outputs(out)
    print(
        "\ninterrupted before the first epoch ended: no checkpoint was written"
        + (f"; removed the partial outputs ({', '.join(removed)}) from {out}" if removed else "")
        + ". Run the same command again to start over.",
        file=sys.stderr,
    )


class _NoLoneLastBatch(BatchSampler):
    """Batches of ``sampler`` with a final batch of exactly one sample dropped.

    BatchNorm cannot normalise one sample whose feature map is 1x1 (the decoder's bottleneck), so a lone last sample
    would crash training; it is skipped for that epoch (the shuffled order puts another sample last next epoch).
    """

    def __iter__(self):
        batches = super().__iter__()
        previous = next(batches, None)
        for batch in batches:
            yield previous
            previous = batch
        if previous is not None and (len(previous) > 1 or self.batch_size == 1):
            yield previous

    def __len__(self) -> int:
        full, rest = divmod(len(self.sampler), self.batch_size)  # type: ignore[arg-type]
        return full + (1 if rest > 1 else 0)


@dataclass
class _Run:
    """Everything one training run holds: what was built, and the state a checkpoint resumes."""

    cfg: Config
    info: distributed.DistInfo
    data: TrainingData
    sampler: DistributedSampler
    loader: DataLoader
    model: nn.Module  # DDP-wrapped under torchrun
    raw_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    loss_fn: nn.Module
    amp_dtype: torch.dtype | None
    use_scaler: bool
    lr: float
    #: iterations this run ends at: epochs x batches per epoch, or train.max_iterations when smaller
    max_iterations: int
    # state carried by checkpoints
    iteration: int = 0
    start_epoch: int = 0
    best: float = -1.0
    best_epoch: int = -1
    history: list[dict[str, float]] = field(default_factory=list)
    skipped_steps: int = 0
    skipped_in_row: int = 0
    writer: Any = None
    bar: Any = None

    @property
    def out(self) -> Path:
        return Path(self.cfg.out_dir)


def _load_resume(resume: str | os.PathLike) -> dict[str, Any]:
    path = Path(resume)
    path = path / "last.pt" if path.is_dir() else path
    ckpt = load_checkpoint(path)
    for key in ("epoch", "iteration", "optimizer", "scheduler", "rng"):
        if key not in ckpt:
            raise ValueError(f"{path} lacks {key!r}: it is not a training checkpoint (use last.pt)")
    return ckpt


def _build(cfg: Config, info: distributed.DistInfo, ckpt: dict[str, Any] | None) -> _Run:
    """Data, loader, model, optimiser, schedule and loss; the resumed state when ``ckpt`` is given."""
    t, m = cfg.train, cfg.model
    seed_everything(t.seed + info.rank)
    data = build_training_data(cfg)
    if t.batch_size % info.world_size:
        raise ValueError(f"train.batch_size {t.batch_size} must divide by the {info.world_size} processes")
    sampler = DistributedSampler(
        data.train, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=t.seed, drop_last=False
    )
    per_rank = t.batch_size // info.world_size
    if per_rank < 2:
        raise ValueError(
            f"train.batch_size {t.batch_size} gives {per_rank} sample per process; BatchNorm needs at least 2: use "
            f"train.batch_size >= {2 * info.world_size}"
        )
    loader = DataLoader(
        data.train,
        batch_sampler=_NoLoneLastBatch(sampler, per_rank, drop_last=False),
        num_workers=cfg.data.num_workers,
        pin_memory=info.device.type == "cuda",
        persistent_workers=cfg.data.num_workers > 0,
    )
    if len(loader) == 0:
        raise ValueError(
            f"{len(sampler)} training sample(s) per process in {cfg.data.root}: too few for one batch of 2; add data"
        )
    # the schedule (poly) anneals over the iterations that will run: train.max_iterations when it stops earlier
    max_iterations = min(t.epochs * len(loader), t.max_iterations or math.inf)

    model = create_model(
        m.name,
        num_classes=m.num_classes,
        in_channels=m.in_channels,
        img_size=tuple(m.img_size),
        pretrained_encoder=m.pretrained_encoder if ckpt is None else None,
    )
    if m.official_checkpoint and ckpt is None:
        load_official_weights(model, m.official_checkpoint)
    if t.sync_bn and info.enabled and info.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(info.device)
    if t.channels_last:
        model.to(memory_format=torch.channels_last)
    amp_dtype, use_scaler = _amp(cfg, info.device)
    lr = scaled_lr(cfg, t.batch_size)
    optimizer = _optimizer(cfg, model, lr)
    run = _Run(
        cfg=cfg,
        info=info,
        data=data,
        sampler=sampler,
        loader=loader,
        model=model,
        raw_model=model,
        optimizer=optimizer,
        scheduler=_scheduler(cfg, optimizer, max_iterations),
        scaler=torch.amp.GradScaler("cuda", enabled=use_scaler),
        loss_fn=build_loss(t.loss, m.num_classes, t.loss_weights),
        amp_dtype=amp_dtype,
        use_scaler=use_scaler,
        lr=lr,
        max_iterations=max_iterations,
    )
    if ckpt is not None:
        _restore(run, ckpt)
    if info.enabled:
        ids = [info.device.index] if info.device.type == "cuda" else None
        run.model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return run


def _restore(run: _Run, ckpt: dict[str, Any]) -> None:
    run.raw_model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    run.start_epoch, run.iteration = int(ckpt["epoch"]), int(ckpt["iteration"])
    run.best, run.best_epoch = float(ckpt.get("best_metric", -1.0)), int(ckpt.get("best_epoch", -1))
    run.history = [dict(r) for r in ckpt.get("history", [])]
    run.skipped_steps = int(ckpt.get("skipped_steps", 0))
    rng, info = ckpt["rng"], run.info
    if isinstance(rng, list) and len(rng) != info.world_size and info.is_main:
        print(
            f"note: the checkpoint was written by {len(rng)} process(es), this run has {info.world_size}: "
            "training continues, but not bit-exactly"
        )
    set_rng_state(rng[info.rank % len(rng)] if isinstance(rng, list) else rng)


def _start_logging(run: _Run, resumed: bool) -> None:
    cfg, info, data = run.cfg, run.info, run.data
    if info.is_main:
        run.out.mkdir(parents=True, exist_ok=True)
        cfg.dump(run.out / "config.yaml")
        from torch.utils.tensorboard import SummaryWriter

        run.writer = SummaryWriter(log_dir=str(run.out / "tensorboard"), purge_step=run.iteration if resumed else None)
        for note in data.split.notes:
            print(f"note: {note}")
        print(
            f"training {cfg.model.name} on {data.source.describe()}: {len(data.train)} samples "
            f"({len(run.loader)} iterations/epoch, {cfg.train.epochs} epochs, {info.world_size} process(es) on "
            f"{info.device}); validation cases: {len(data.split.val)}; lr {run.lr:g}"
        )
    run.bar = tqdm(
        total=run.max_iterations,
        initial=run.iteration,
        disable=not (info.is_main and progress_enabled(cfg.train.progress)),
        unit="it",
        dynamic_ncols=True,
    )


def _step(run: _Run, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step; returns (loss, gradient norm). Steps with non-finite gradients are skipped."""
    t, info = run.cfg.train, run.info
    image = image.to(info.device, non_blocking=True)
    label = label.to(info.device, non_blocking=True)
    if t.channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    with torch.autocast(info.device.type, dtype=run.amp_dtype or torch.float32, enabled=run.amp_dtype is not None):
        logits = run.model(image)
    loss = run.loss_fn(logits.float(), label)
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"loss became {loss.item()} at iteration {run.iteration}: lower train.lr, enable train.grad_clip, "
            "or check the data for NaN"
        )
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.optimizer)
    grad_norm = nn.utils.clip_grad_norm_(run.model.parameters(), t.grad_clip or math.inf)
    if run.use_scaler or torch.isfinite(grad_norm):
        run.scaler.step(run.optimizer)  # the fp16 scaler skips non-finite steps itself
        run.skipped_in_row = 0
    else:
        # a non-finite gradient (rare bf16 kernel glitches on CPU) must not reach the weights
        run.skipped_steps += 1
        run.skipped_in_row += 1
        if run.skipped_in_row > 10:
            raise FloatingPointError(
                f"non-finite gradients in {run.skipped_in_row} consecutive iterations (last at {run.iteration}): "
                "lower train.lr, set train.grad_clip, or train without train.amp"
            )
    run.scaler.update()
    if t.scheduler != "plateau":
        run.scheduler.step()
    return loss, grad_norm


def _train_one_epoch(run: _Run, epoch: int) -> dict[str, float]:
    """Iterate the loader once (or up to ``train.max_iterations``); returns the epoch's metrics row."""
    t, info = run.cfg.train, run.info
    run.sampler.set_epoch(epoch)
    run.data.train.set_epoch(epoch)
    run.model.train()
    loss_sum, n_batches, started = torch.zeros((), dtype=torch.float64), 0, time.perf_counter()
    for batch in run.loader:
        loss, grad_norm = _step(run, batch["image"], batch["label"])
        run.iteration += 1
        loss_sum += loss.detach().double().cpu()
        n_batches += 1
        current_lr = run.optimizer.param_groups[0]["lr"]
        run.bar.update(1)
        run.bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}", lr=f"{current_lr:.3g}")
        if run.writer is not None and run.iteration % t.log_every == 0:
            run.writer.add_scalar("train/loss", loss.item(), run.iteration)
            run.writer.add_scalar("train/grad_norm", float(grad_norm), run.iteration)
            run.writer.add_scalar("train/lr", current_lr, run.iteration)
        if run.iteration >= run.max_iterations:
            break
    totals = distributed.all_reduce_sum(torch.tensor([float(loss_sum), float(n_batches)]), info)
    return {
        "epoch": epoch + 1,
        "iteration": run.iteration,
        "train_loss": float(totals[0] / max(1.0, float(totals[1]))),
        "lr": run.optimizer.param_groups[0]["lr"],
        "epoch_time_s": time.perf_counter() - started,
        "val_mean_dice": math.nan,
    }


def _validate_if_due(run: _Run, epoch: int, row: dict[str, float]) -> bool:
    """Validate when due; record it in ``row`` and TensorBoard. Returns whether the best Dice improved."""
    t = run.cfg.train
    due = (epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs or run.iteration >= run.max_iterations
    if not (run.data.split.val and due):
        return False
    val_amp = "bf16" if run.amp_dtype == torch.bfloat16 else None
    per_class, mean_dice = validate(run.raw_model, run.data, run.info, t.eval_batch_size, val_amp)
    row["val_mean_dice"] = mean_dice
    row.update({f"val_dice_{k}": v for k, v in per_class.items()})
    if t.scheduler == "plateau":
        run.scheduler.step(mean_dice)
    if run.writer is not None:
        run.writer.add_scalar("val/mean_dice", mean_dice, run.iteration)
        for k, v in per_class.items():
            run.writer.add_scalar(f"val/dice_{k}", v, run.iteration)
    improved = mean_dice > run.best
    if improved:
        run.best, run.best_epoch = mean_dice, epoch + 1
    run.bar.write(
        f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}, validation mean Dice {mean_dice:.4f}"
        + (" (best)" if improved else f" (best {run.best:.4f} at epoch {run.best_epoch})")
    )
    return improved


def _end_of_epoch(run: _Run, epoch: int, row: dict[str, float]) -> None:
    """Validate when due, then write checkpoints (every process's RNG state), metrics.csv and curves (rank 0)."""
    info = run.info
    improved = _validate_if_due(run, epoch, row)
    run.history.append(row)
    rng: Any = rng_state()
    if info.enabled:
        gathered: list[Any] = [None] * info.world_size
        torch.distributed.all_gather_object(gathered, rng)
        rng = gathered
    if info.is_main:
        source = run.data.source
        state = make_checkpoint(
            run.raw_model,
            run.cfg.model.name,
            source.preprocessing.to_dict(),
            source.class_names,
            run.cfg.to_dict(),
            epoch=epoch + 1,
            iteration=run.iteration,
            optimizer=run.optimizer.state_dict(),
            scheduler=run.scheduler.state_dict(),
            scaler=run.scaler.state_dict() if run.use_scaler else None,
            rng=rng,
            best_metric=run.best,
            best_epoch=run.best_epoch,
            history=run.history,
            world_size=info.world_size,
            skipped_steps=run.skipped_steps,
            slice_orientation=run.data.slice_orientation,
            dataset=run.data.dataset_record,
        )
        if improved:
            save_checkpoint(state, run.out / "best.pt")
        save_checkpoint(state, run.out / "last.pt")
        write_metrics_csv(run.out / "metrics.csv", run.history)
        plot_curves(run.history, run.out / "curves.png")
    distributed.barrier(info)


def _train(cfg: Config, info: distributed.DistInfo, resume: str | os.PathLike | None) -> dict[str, Any]:
    ckpt = _load_resume(resume) if resume is not None else None
    run = _build(cfg, info, ckpt)
    if ckpt is not None and info.is_main:
        print(
            f"resuming {resume} after epoch {run.start_epoch} of {cfg.train.epochs} (iteration {run.iteration} of "
            f"{run.max_iterations})"
        )
    _start_logging(run, resumed=ckpt is not None)
    for epoch in range(run.start_epoch, cfg.train.epochs):
        if run.iteration >= run.max_iterations:
            break
        row = _train_one_epoch(run, epoch)
        _end_of_epoch(run, epoch, row)
    run.bar.close()
    if run.writer is not None:
        run.writer.close()
    validated = bool(run.data.split.val)
    if not validated and info.is_main:
        print("note: no validation (data.validation=none): there is no best.pt; use last.pt")
    return {
        "out_dir": str(run.out),
        "best_mean_dice": run.best if validated else None,
        "best_epoch": run.best_epoch if validated else None,
        "epochs_done": run.history[-1]["epoch"] if run.history else run.start_epoch,
        "iterations": run.iteration,
        "skipped_steps": run.skipped_steps,
        "last": str(run.out / "last.pt"),
        "best": str(run.out / ("best.pt" if validated else "last.pt")),
    }


def config_from_checkpoint(path: str | os.PathLike) -> Config:
    """The resolved config a training checkpoint was written with."""
    path = Path(path)
    ckpt = load_checkpoint(path / "last.pt" if path.is_dir() else path)
    return config_from_dict(ckpt["config"], where=str(path))
