"""Training: one function, single process or torchrun DDP, exactly resumable."""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from ..config import Config, config_from_dict
from ..data.preprocessing import CT_PREPROCESSING, SYNAPSE_PREPROCESSING, Preprocessing
from ..data.transforms import build_transform
from ..losses import build_loss
from ..metrics import legacy_case_metrics
from ..models import create_model, load_official_weights
from ..report import plot_curves
from ..report import write_metrics_csv as _write_metrics_csv
from . import distributed
from .checkpoint import load_checkpoint, make_checkpoint, rng_state, save_checkpoint, set_rng_state
from .inference import predict_volume

# ---------------------------------------------------------------------------------------------- data


@dataclass
class ValCase:
    """One validation case: raw input as ``preprocessing`` expects it, and its label map."""

    case: str
    image: np.ndarray  # (D, H, W) or (D, H, W, C)
    label: np.ndarray  # (D, H, W)


@dataclass
class TrainingData:
    train: Dataset
    val_cases: list[str]
    load_val: Any  # callable(case_ids) -> iterator of ValCase
    preprocessing: Preprocessing
    class_names: list[str]
    in_channels: int
    notes: list[str] = field(default_factory=list)
    #: the raw-input mapping stored in checkpoints, when validation data come in another form (folders)
    checkpoint_preprocessing: Preprocessing | None = None


def _check_classes(cfg: Config, num_classes: int, in_channels: int, what: str) -> None:
    if cfg.model.num_classes != num_classes or cfg.model.in_channels != in_channels:
        raise ValueError(
            f"{what} has {num_classes} classes and {in_channels} input channels but the config says "
            f"model.num_classes={cfg.model.num_classes}, model.in_channels={cfg.model.in_channels}; fix the config "
            f"(e.g. --set model.num_classes={num_classes} --set model.in_channels={in_channels})"
        )


def build_training_data(cfg: Config) -> TrainingData:
    """Datasets, validation cases, preprocessing and class names of ``cfg.data``."""
    d, size = cfg.data, tuple(cfg.model.img_size)
    root = Path(d.root)
    if not root.exists():
        raise FileNotFoundError(f"data root {str(root)!r} does not exist (data.root / --data)")
    if d.validation not in ("held_out", "test", "none"):
        raise ValueError(f"data.validation must be held_out, test or none, got {d.validation!r}")
    notes: list[str] = []
    if d.kind == "synapse":
        from ..data import synapse

        _check_classes(cfg, len(synapse.CLASS_NAMES), 1, f"Synapse ({root})")
        cases = d.train_cases or synapse.available_cases(root, "train.txt")
        val_cases: list[str] = []
        if d.validation == "held_out":
            if d.val_cases:
                val_cases = [synapse.case_name(c) for c in d.val_cases]
                cases = [c for c in cases if synapse.case_name(c) not in val_cases]
            else:
                cases, val_cases = synapse.split_train_val(cases, d.val_fraction, cfg.train.seed)
        elif d.validation == "test":
            val_cases = synapse.available_cases(root, "test_vol.txt")
            notes.append("validation on the TEST set (the authors' practice): its scores are not a clean test")
        train = synapse.SynapseSliceDataset(
            root,
            cases=cases,
            transform=build_transform(d.augment, size),
            labels=d.labels,
            intensity=d.intensity,
            seed=cfg.train.seed,
        )

        def load_val(ids: list[str]):
            if not ids:
                return
            if d.validation == "test":
                ds = synapse.SynapseVolumeDataset(root, cases=ids, labels=d.labels, intensity=d.intensity)
            else:
                ds = synapse.volume_cases_from_train(root, ids, labels=d.labels, intensity=d.intensity)
            for item in ds:
                yield ValCase(item["case"], item["image"], item["label"])

        # prepared slices are already HU-windowed to [0, 1]; raw CT files need the window, which the checkpoint records
        return TrainingData(
            train, val_cases, load_val, SYNAPSE_PREPROCESSING, list(synapse.CLASS_NAMES), 1, notes, CT_PREPROCESSING
        )

    if d.kind == "isic2018":
        from ..data.isic import ISICDataset
        from ..data.preprocessing import ISIC_PREPROCESSING

        _check_classes(cfg, 2, 3, f"ISIC 2018 ({root})")
        train = ISICDataset(root, "train", transform=build_transform(d.augment, size), seed=cfg.train.seed)
        split = "test" if d.validation == "test" else "val"
        if d.validation == "test":
            notes.append("validation on the TEST split: its scores are not a clean test")

        def load_val(ids: list[str]):
            # the whole split is one pooled "case" (ISIC metrics pool pixels over all images)
            if ids:
                ds = ISICDataset(root, split)
                yield ValCase(f"isic_{split}", ds.images, ds.masks.astype(np.int64))

        val = [] if d.validation == "none" else [f"isic_{split}"]
        return TrainingData(train, val, load_val, ISIC_PREPROCESSING, ["background", "lesion"], 3, notes)

    if d.kind == "folder":
        from ..data import folder

        report = folder.validate_folder(root)
        spec = report.spec
        prep = spec.preprocessing()
        _check_classes(cfg, spec.num_classes, spec.in_channels, f"dataset {root}")
        cases = d.train_cases or report.cases
        val_cases = []
        if d.validation == "held_out":
            if d.val_cases:
                val_cases = list(d.val_cases)
                cases = [c for c in cases if c not in val_cases]
            else:
                cases, val_cases = folder.split_cases(cases, d.val_fraction, cfg.train.seed)
        elif d.validation == "test":
            raise ValueError("data.validation=test is not available for folders (imagesTs has no labels)")
        train = folder.FolderSliceDataset(
            root,
            cases=cases,
            transform=build_transform(d.augment, size, prep.mean, prep.std),
            seed=cfg.train.seed,
            preprocessing=prep,
        )
        unit = Preprocessing(kind="unit", in_channels=prep.in_channels, mean=prep.mean, std=prep.std)

        def load_val(ids: list[str]):
            if not ids:
                return
            for item in folder.FolderVolumeDataset(root, cases=ids, preprocessing=prep):
                image, label = item["image_unit"], item["label"]
                if report.dims == 2:
                    image, label = image[None], label[None]
                yield ValCase(item["case"], image, label)

        return TrainingData(train, val_cases, load_val, unit, spec.class_names, spec.in_channels, notes, prep)
    raise ValueError(f"data.kind must be synapse, isic2018 or folder, got {d.kind!r}")


# ---------------------------------------------------------------------------------------------- validation


@torch.inference_mode()
def validate(model: nn.Module, data: TrainingData, info: distributed.DistInfo, batch_size: int, amp: str | None):
    """Mean Dice per class over the validation cases (legacy rules), reduced over processes.

    Returns:
        (per-class Dice dict over foreground classes, mean Dice)
    """
    mine = data.val_cases[info.rank :: info.world_size]
    n_fg = len(data.class_names) - 1
    sums = torch.zeros(n_fg + 1, dtype=torch.float64)  # per-class Dice sums, then the case count
    for case in data.load_val(mine):
        pred = predict_volume(model, case.image, preprocessing=data.preprocessing, batch_size=batch_size, amp=amp)
        for c in range(1, n_fg + 1):
            sums[c - 1] += legacy_case_metrics(pred == c, case.label == c)[0]
        sums[n_fg] += 1
    sums = distributed.all_reduce_sum(sums, info)
    count = max(1.0, float(sums[n_fg]))
    per_class = {name: float(sums[i]) / count for i, name in enumerate(data.class_names[1:])}
    return per_class, float(np.mean(list(per_class.values())))


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
    if t.lr_scaling not in ("authors", "none"):
        raise ValueError(f"train.lr_scaling must be authors or none, got {t.lr_scaling!r}")
    return t.lr


def _optimizer(cfg: Config, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=t.momentum, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=t.weight_decay)
    raise ValueError(f"train.optimizer must be sgd or adamw, got {t.optimizer!r}")


def _scheduler(cfg: Config, optimizer: torch.optim.Optimizer, max_iterations: int):
    t = cfg.train
    if t.scheduler == "poly":
        power = t.poly_power
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: max(0.0, 1.0 - it / max_iterations) ** power)
    if t.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=t.plateau_factor, patience=t.plateau_patience
        )
    if t.scheduler == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)
    raise ValueError(f"train.scheduler must be poly, plateau or constant, got {t.scheduler!r}")


def _amp(cfg: Config, device: torch.device) -> tuple[torch.dtype | None, bool]:
    amp = cfg.train.amp
    if amp == "none":
        return None, False
    if amp == "bf16":
        return torch.bfloat16, False
    if amp == "fp16":
        if device.type != "cuda":
            raise ValueError("train.amp=fp16 needs CUDA (it uses a gradient scaler); on CPU use bf16")
        return torch.float16, True
    raise ValueError(f"train.amp must be none, bf16 or fp16, got {amp!r}")


def train(cfg: Config, resume: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train a model as ``cfg`` says; under torchrun, with DistributedDataParallel.

    Writes into ``cfg.out_dir`` (rank 0 only): ``config.yaml`` (resolved), ``last.pt`` (every epoch, atomic),
    ``best.pt`` (best validation mean Dice), ``metrics.csv``, ``curves.png`` and TensorBoard logs.

    Args:
        cfg: the resolved configuration.
        resume: a ``last.pt`` (or its run folder) to continue from exactly.

    Returns:
        A summary: best Dice and epoch, epochs and iterations done, checkpoint paths.
    """
    info = distributed.setup(cfg.train.device)
    try:
        return _train(cfg, info, resume)
    finally:
        distributed.cleanup()


def _train(cfg: Config, info: distributed.DistInfo, resume: str | os.PathLike | None) -> dict[str, Any]:
    t = cfg.train
    out = Path(cfg.out_dir)
    ckpt = None
    if resume is not None:
        path = Path(resume)
        path = path / "last.pt" if path.is_dir() else path
        ckpt = load_checkpoint(path)
        for key in ("epoch", "iteration", "optimizer", "scheduler", "rng"):
            if key not in ckpt:
                raise ValueError(f"{path} lacks {key!r}: it is not a training checkpoint (use last.pt)")
    seed_everything(t.seed + info.rank)
    data = build_training_data(cfg)
    if t.batch_size % info.world_size:
        raise ValueError(f"train.batch_size {t.batch_size} must divide by the {info.world_size} processes")
    per_rank = t.batch_size // info.world_size
    sampler = DistributedSampler(
        data.train, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=t.seed, drop_last=False
    )
    loader = DataLoader(
        data.train,
        batch_size=per_rank,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        pin_memory=info.device.type == "cuda",
        persistent_workers=cfg.data.num_workers > 0,
    )
    if len(loader) == 0:
        raise ValueError(f"no training samples in {cfg.data.root}")
    iters_per_epoch = len(loader)
    max_iterations = t.epochs * iters_per_epoch

    m = cfg.model
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
    raw_model = model
    amp_dtype, use_scaler = _amp(cfg, info.device)
    lr = scaled_lr(cfg, t.batch_size)
    optimizer = _optimizer(cfg, model, lr)
    scheduler = _scheduler(cfg, optimizer, max_iterations)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    loss_fn = build_loss(t.loss, m.num_classes, t.loss_weights)

    start_epoch, iteration, best, best_epoch, history = 0, 0, -1.0, -1, []
    if ckpt is not None:
        raw_model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, iteration = int(ckpt["epoch"]), int(ckpt["iteration"])
        best, best_epoch = float(ckpt.get("best_metric", -1.0)), int(ckpt.get("best_epoch", -1))
        history = [dict(r) for r in ckpt.get("history", [])]
        rng = ckpt["rng"]
        if isinstance(rng, list) and len(rng) != info.world_size and info.is_main:
            print(
                f"note: the checkpoint was written by {len(rng)} process(es), this run has {info.world_size}: "
                "training continues, but not bit-exactly"
            )
        set_rng_state(rng[info.rank % len(rng)] if isinstance(rng, list) else rng)
    if info.enabled:
        ids = [info.device.index] if info.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)

    writer = None
    prep_ckpt = data.checkpoint_preprocessing or data.preprocessing
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.dump(out / "config.yaml")
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=iteration if ckpt else None)
        for note in data.notes:
            print(f"note: {note}")
        print(
            f"training {m.name} on {len(data.train)} samples ({iters_per_epoch} iterations/epoch, {t.epochs} "
            f"epochs, {info.world_size} process(es) on {info.device}); validation cases: {len(data.val_cases)}; "
            f"lr {lr:g}"
        )

    bar = tqdm(
        total=max_iterations,
        initial=iteration,
        disable=not (info.is_main and t.progress),
        unit="it",
        dynamic_ncols=True,
    )
    stop_at = t.max_iterations if t.max_iterations is not None else max_iterations
    epoch = start_epoch
    skipped_steps, skipped_in_row = int(ckpt.get("skipped_steps", 0)) if ckpt else 0, 0
    val_amp = "bf16" if amp_dtype == torch.bfloat16 else None
    for epoch in range(start_epoch, t.epochs):
        if iteration >= stop_at:
            break
        sampler.set_epoch(epoch)
        if hasattr(data.train, "set_epoch"):
            data.train.set_epoch(epoch)
        model.train()
        loss_sum, n_batches, started = torch.zeros((), dtype=torch.float64), 0, time.perf_counter()
        for image, label in ((b["image"], b["label"]) for b in loader):
            image = image.to(info.device, non_blocking=True)
            label = label.to(info.device, non_blocking=True)
            if t.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            with torch.autocast(info.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = model(image)
            loss = loss_fn(logits.float(), label)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss.item()} at iteration {iteration}: lower train.lr, enable train.grad_clip, "
                    "or check the data for NaN"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip or math.inf)
            if use_scaler or torch.isfinite(grad_norm):
                scaler.step(optimizer)  # the fp16 scaler skips non-finite steps itself
                skipped_in_row = 0
            else:
                # a non-finite gradient (rare bf16 kernel glitches on CPU) must not reach the weights
                skipped_steps += 1
                skipped_in_row += 1
                if skipped_in_row > 10:
                    raise FloatingPointError(
                        f"non-finite gradients in {skipped_in_row} consecutive iterations (last at {iteration}): "
                        "lower train.lr, set train.grad_clip, or train without train.amp"
                    )
            scaler.update()
            if t.scheduler != "plateau":
                scheduler.step()
            iteration += 1
            loss_sum += loss.detach().double().cpu()
            n_batches += 1
            current_lr = optimizer.param_groups[0]["lr"]
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}", lr=f"{current_lr:.3g}")
            if writer is not None and iteration % t.log_every == 0:
                writer.add_scalar("train/loss", loss.item(), iteration)
                writer.add_scalar("train/grad_norm", float(grad_norm), iteration)
                writer.add_scalar("train/lr", current_lr, iteration)
            if iteration >= stop_at:
                break
        totals = distributed.all_reduce_sum(torch.tensor([float(loss_sum), float(n_batches)]), info)
        row: dict[str, float] = {
            "epoch": epoch + 1,
            "iteration": iteration,
            "train_loss": float(totals[0] / max(1.0, float(totals[1]))),
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_time_s": time.perf_counter() - started,
            "val_mean_dice": math.nan,
        }
        due = (epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs or iteration >= stop_at
        if data.val_cases and due:
            per_class, mean_dice = validate(raw_model, data, info, t.eval_batch_size, val_amp)
            row["val_mean_dice"] = mean_dice
            row.update({f"val_dice_{k}": v for k, v in per_class.items()})
            if t.scheduler == "plateau":
                scheduler.step(mean_dice)
            if writer is not None:
                writer.add_scalar("val/mean_dice", mean_dice, iteration)
                for k, v in per_class.items():
                    writer.add_scalar(f"val/dice_{k}", v, iteration)
            improved = mean_dice > best
            if improved:
                best, best_epoch = mean_dice, epoch + 1
            bar.write(
                f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}, validation mean Dice {mean_dice:.4f}"
                + (" (best)" if improved else f" (best {best:.4f} at epoch {best_epoch})")
            )
        else:
            improved = False
        history.append(row)
        # every process's RNG state, so each resumes its own stream
        states = [rng_state()]
        if info.enabled:
            gathered: list[Any] = [None] * info.world_size
            torch.distributed.all_gather_object(gathered, states[0])
            states = gathered
        if info.is_main:
            state = make_checkpoint(
                raw_model,
                m.name,
                prep_ckpt.to_dict(),
                data.class_names,
                cfg.to_dict(),
                epoch=epoch + 1,
                iteration=iteration,
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                scaler=scaler.state_dict() if use_scaler else None,
                rng=states if info.enabled else states[0],
                best_metric=best,
                best_epoch=best_epoch,
                history=history,
                world_size=info.world_size,
                skipped_steps=skipped_steps,
            )
            if improved or not data.val_cases:
                save_checkpoint(state, out / "best.pt")
            save_checkpoint(state, out / "last.pt")
            _write_metrics_csv(out / "metrics.csv", history)
            plot_curves(history, out / "curves.png")
        distributed.barrier(info)
    bar.close()
    if writer is not None:
        writer.close()
    return {
        "out_dir": str(out),
        "best_mean_dice": best,
        "best_epoch": best_epoch,
        "epochs_done": history[-1]["epoch"] if history else start_epoch,
        "iterations": iteration,
        "skipped_steps": skipped_steps,
        "last": str(out / "last.pt"),
        "best": str(out / "best.pt"),
    }


def config_from_checkpoint(path: str | os.PathLike) -> Config:
    """The resolved config a training checkpoint was written with."""
    path = Path(path)
    ckpt = load_checkpoint(path / "last.pt" if path.is_dir() else path)
    return config_from_dict(ckpt["config"], where=str(path))
