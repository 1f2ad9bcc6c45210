"""Run a proposal generator over a dataset: batched, multi-process, resumable.

Every process (rank) builds the generator, takes a deterministic slice of the images that no
shard holds yet (``todo[rank::world_size]``), decodes them in DataLoader workers, and appends one
shard line per image after each batch (shards.py). After a barrier, rank 0 merges all shards
into the output json (writer.py) and deletes the shard folder: the json then holds everything,
and keeping a second copy would double the disk use of COCO-scale runs.

Choices a user should know (also in the tool's --help):
- Images are ordered by image id; ``--limit N`` takes the first N ids.
- ``file_name`` in the output is relative to the dataset's ``image_root`` (recorded in
  ``info``) when the file lies under it, as in COCO, and absolute otherwise; both work with
  ``register_pseudo_labels(name, json, image_root)``.
- height/width are those of the decoded image (EXIF rotation applied), which the masks match.
- The date in ``info`` is that of the first (possibly interrupted) run, or $SOURCE_DATE_EPOCH
  when set, so reruns and resumptions reproduce the same bytes.
- Unreadable images follow ``INPUT.BAD_IMAGE_POLICY``: "skip" warns, records them in
  ``info["skipped"]`` and does not retry them on resume; "fail" stops the run.
- Generators get each batch's file names (as recorded in the output) besides the images, for
  per-image inputs such as ExternalMaps' saliency maps; the warnings foreground providers log
  (a missing map under "skip") are counted and listed in the summary.
- ``--vis N`` draws the first N ids processed in this run into ``<output stem>_vis/<id>.png``.
- With several machines, the output folder must be on a file system they all share: rank 0
  merges every machine's shard files.
- With ``PROPOSALS.REFINE.ENABLED``, each image's proposals pass through the dense-CRF refiner
  (refine.py) before they are written; its settings are recorded in ``info["refine"]``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import uis_d2
from uis_d2.data.image_io import BadImageError, read_image
from uis_d2.proposals.base import ProposalGenerator, build_pseudo_mask_generator
from uis_d2.proposals.refine import MaskRefiner, build_mask_refiner
from uis_d2.proposals.shards import ShardDirectory, ShardWriter, shard_dir_for
from uis_d2.proposals.visualize import save_proposal_grid
from uis_d2.proposals.writer import MergeSummary, merge_shards, proposals_to_line, skipped_line

logger = logging.getLogger(__name__)
# Parent of the foreground providers' loggers (uis_d2/foreground/): their warnings are counted.
FOREGROUND_LOGGER = "uis_d2.foreground"


@dataclass(frozen=True)
class ImageRecord:
    image_id: int
    path: str  # where the file is read from
    file_name: str  # what the json records (see the module docstring)


@dataclass(frozen=True)
class GenerationJob:
    """Everything a rank needs besides the config; built once, before processes start."""

    dataset: str
    image_root: str | None
    records: tuple[ImageRecord, ...]
    output: Path
    num_vis: int = 0

    @property
    def vis_dir(self) -> Path:
        return self.output.with_name(self.output.stem + "_vis")


@dataclass
class GenerationSummary:
    merged: MergeSummary
    processed_now: int  # images decoded and run in this invocation, all ranks together
    resumed: int  # images found in shards of an earlier run
    seconds: float
    world_size: int
    # Rank 0's wall time by stage: waiting for decoded images, the generator, json lines + vis.
    stage_seconds: dict[str, float] = field(default_factory=dict)
    # Warnings of the foreground providers in this invocation, all ranks (e.g. missing maps).
    foreground_warnings: list[str] = field(default_factory=list)


class _WarningLog(logging.Handler):
    """Keeps the messages of the warnings logged below the logger it is attached to."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def prepare_job(
    dataset: str, output: str | Path, limit: int | None = None, num_vis: int = 0
) -> GenerationJob:
    """Read the dataset's image list (file names only; images are decoded later, per rank)."""
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    image_root = MetadataCatalog.get(dataset).get("image_root", None)
    image_root = str(image_root) if isinstance(image_root, (str, Path)) else None
    records = sorted(
        (image_record(d, image_root, dataset) for d in DatasetCatalog.get(dataset)),
        key=lambda r: r.image_id,
    )
    counts = Counter(r.image_id for r in records)
    if len(counts) != len(records):
        duplicated = sorted(i for i, n in counts.items() if n > 1)[:5]
        raise ValueError(f"dataset {dataset!r} repeats image ids, e.g. {duplicated}")
    if limit is not None:
        records = records[:limit]
    return GenerationJob(dataset, image_root, tuple(records), Path(output), num_vis)


def check_checkpoints(cfg) -> None:
    """Fail before any process starts, naming the option, when a configured checkpoint is absent."""
    p = cfg.PROPOSALS
    nodes = {"PROPOSALS.EXTRACTOR": p.EXTRACTOR}
    if p.SALIENCY.ENABLED:
        nodes["PROPOSALS.SALIENCY.EXTRACTOR"] = p.SALIENCY.EXTRACTOR
    for key, node in nodes.items():
        if node.CHECKPOINT and not Path(node.CHECKPOINT).is_file():
            raise FileNotFoundError(f"{key}.CHECKPOINT = {node.CHECKPOINT!r}: file not found")


def generate_on_this_rank(cfg, job: GenerationJob) -> GenerationSummary | None:
    """The per-process entry point (launch it with uis_d2.utils.launch.launch).

    Returns the summary on rank 0, None elsewhere.
    """
    rank, world_size = comm.get_rank(), comm.get_world_size()
    device = torch.device("cuda", comm.get_local_rank()) if uses_cuda(cfg) else torch.device("cpu")
    refiner = build_mask_refiner(cfg)  # first: a missing optional package fails before any work
    # Extractors without a CHECKPOINT keep their random initial weights: seeded, every rank and
    # every resumed run builds the same model.
    torch.manual_seed(cfg.PROPOSALS.SEED)
    generator = build_pseudo_mask_generator(cfg).to(device)
    shards = ShardDirectory(shard_dir_for(job.output))
    manifest = {
        "dataset": job.dataset,
        "config": cfg.dump(),
        "generator": json.loads(json.dumps(generator.describe(), default=str)),
        "refine": refiner.describe() if refiner is not None else None,
        "created": _creation_date(),
    }
    # Barriers: rank 0 writes the manifest; every rank checks it and repairs its own file;
    # all read the same set of finished images; only then does anyone append.
    if rank == 0:
        shards.sync_manifest(manifest, create=True)
    comm.synchronize()
    manifest = shards.sync_manifest(manifest, create=False)
    shards.repair(rank)
    comm.synchronize()
    finished = shards.index()
    comm.synchronize()

    start = time.perf_counter()
    todo = [r for r in job.records if r.image_id not in finished]
    stages: Counter[str] = Counter()
    warnings = _WarningLog()
    logging.getLogger(FOREGROUND_LOGGER).addHandler(warnings)
    try:
        with shards.open_writer(rank) as writer:
            processed = _run(
                cfg, generator, refiner, todo[rank::world_size], writer, job, device, stages
            )
    finally:
        logging.getLogger(FOREGROUND_LOGGER).removeHandler(warnings)
    processed_now = sum(comm.all_gather(processed))
    foreground_warnings = [m for ms in comm.all_gather(warnings.messages) for m in ms]
    if rank != 0:
        comm.synchronize()
        return None
    info = _provenance(cfg, job, manifest)
    merged = merge_shards(shards, [r.image_id for r in job.records], info, job.output)
    shards.remove()
    summary = GenerationSummary(
        merged,
        processed_now,
        resumed=len(job.records) - len(todo),
        seconds=time.perf_counter() - start,
        world_size=world_size,
        stage_seconds=dict(stages),
        foreground_warnings=foreground_warnings,
    )
    print(format_summary(job, summary), flush=True)
    comm.synchronize()
    return summary


def format_summary(job: GenerationJob, summary: GenerationSummary, max_listed: int = 10) -> str:
    merged = summary.merged
    counts = merged.masks_per_image or [0]
    lines = [
        f"proposals of {job.dataset} -> {job.output}",
        f"  images: {merged.num_images} written, {len(merged.skipped)} skipped "
        f"(of {len(job.records)})",
        *[f"    skipped {s['file_name']}: {s['reason']}" for s in merged.skipped[:max_listed]],
        f"  masks: {merged.num_masks} (per image: mean {np.mean(counts):.1f}, "
        f"min {min(counts)}, max {max(counts)})",
        f"  this run: {summary.processed_now} images in {summary.seconds:.1f} s "
        f"({summary.processed_now / max(summary.seconds, 1e-9):.2f} images/s, "
        f"{summary.world_size} process(es)); {summary.resumed} resumed from shards",
    ]
    if summary.stage_seconds:
        lines.append(
            "  time by stage (rank 0): "
            + ", ".join(f"{name} {s:.1f} s" for name, s in summary.stage_seconds.items())
        )
    if len(merged.skipped) > max_listed:
        lines.insert(3 + max_listed, f"    ... and {len(merged.skipped) - max_listed} more")
    warned = summary.foreground_warnings
    if warned:
        lines.append(f"  foreground warnings: {len(warned)} (e.g. images left without a map)")
        lines += [f"    {message}" for message in warned[:max_listed]]
        if len(warned) > max_listed:
            lines.append(f"    ... and {len(warned) - max_listed} more")
    if job.num_vis:
        lines.append(f"  visualisations: {job.vis_dir}")
    return "\n".join(lines)


class _ImageFiles(Dataset):
    """Decodes in DataLoader workers; a bad file becomes a reason string, not a dead worker."""

    def __init__(self, records: list[ImageRecord]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[ImageRecord, torch.Tensor | None, str | None]:
        record = self.records[index]
        try:
            image = read_image(record.path, fmt="RGB")
        except BadImageError as err:
            return record, None, err.reason
        # One copy into (3, H, W) order, which also makes the decoder's read-only array writable.
        return record, torch.from_numpy(np.array(image.transpose(2, 0, 1), order="C")), None


def _run(
    cfg,
    generator: ProposalGenerator,
    refiner: MaskRefiner | None,
    records: list[ImageRecord],
    writer: ShardWriter,
    job: GenerationJob,
    device: torch.device,
    stages: Counter[str],
) -> int:
    """Process this rank's images batch by batch; returns how many were handled.

    Adds the wall time of each stage to ``stages``, which tells what bounds a run: decoding
    (waiting for the loader), the generator, the refiner, or writing the json lines.
    """
    num_workers = cfg.PROPOSALS.NUM_WORKERS
    # Fork workers (the Linux default) also inside spawned rank processes, where Python would
    # otherwise spawn them, re-importing torch and detectron2 in each (seen: 10-30 s per run).
    fork = num_workers > 0 and "fork" in multiprocessing.get_all_start_methods()
    loader = DataLoader(
        _ImageFiles(records),
        batch_size=cfg.PROPOSALS.BATCH_SIZE,
        num_workers=num_workers,
        collate_fn=list,
        pin_memory=device.type == "cuda",
        multiprocessing_context="fork" if fork else None,
    )
    vis_ids = {r.image_id for r in job.records[: job.num_vis]}
    progress = tqdm(
        total=len(records),
        unit="img",
        desc=f"proposals (rank 0 of {comm.get_world_size()})",
        disable=not comm.is_main_process(),
        dynamic_ncols=True,
    )
    clock = time.perf_counter()
    with progress:
        for batch in loader:
            clock = _lap(stages, "decode wait", clock)
            decoded = [(record, image) for record, image, _ in batch if image is not None]
            on_device = [image.to(device, non_blocking=True) for _, image in decoded]
            outputs = generator(on_device, names=[record.file_name for record, _ in decoded])
            clock = _lap(stages, "generator", clock)
            if len(outputs) != len(decoded):
                raise ValueError(
                    f"{type(generator).__name__} returned {len(outputs)} proposals for "
                    f"{len(decoded)} images"
                )
            if refiner is not None:
                outputs = [refiner(image, p) for image, p in zip(on_device, outputs)]
                clock = _lap(stages, "refine", clock)
            by_id = {record.image_id: (image, p) for (record, image), p in zip(decoded, outputs)}
            lines = []
            for record, _, reason in batch:
                if reason is not None:
                    lines.append(_bad_image_line(cfg, record, reason))
                    continue
                image, proposals = by_id[record.image_id]
                height, width = image.shape[1:]
                lines.append(
                    proposals_to_line(record.image_id, record.file_name, height, width, proposals)
                )
                if record.image_id in vis_ids:
                    save_proposal_grid(
                        job.vis_dir / f"{record.image_id}.png",
                        image.permute(1, 2, 0).numpy(),
                        proposals,
                        title=f"{record.file_name} (id {record.image_id})",
                    )
            writer.write_batch(lines)
            progress.update(len(batch))
            clock = _lap(stages, "writing", clock)
    return len(records)


def _lap(stages: Counter[str], name: str, since: float) -> float:
    now = time.perf_counter()
    stages[name] += now - since
    return now


def _bad_image_line(cfg, record: ImageRecord, reason: str) -> dict[str, Any]:
    if cfg.INPUT.BAD_IMAGE_POLICY == "fail":
        raise BadImageError(record.path, f"{reason} (INPUT.BAD_IMAGE_POLICY is 'fail')")
    logger.warning("skipping unreadable image %s: %s", record.path, reason)
    return skipped_line(record.image_id, record.file_name, reason)


def image_record(d: dict[str, Any], image_root: str | None, dataset: str) -> ImageRecord:
    """The record of a dataset dict: its id, where to read it, and its file name relative to
    ``image_root`` when it lies below it (absolute otherwise)."""
    if "file_name" not in d or "image_id" not in d:
        raise KeyError(f"dataset {dataset!r}: a dataset dict lacks file_name or image_id: {d}")
    try:
        image_id = int(d["image_id"])
    except (TypeError, ValueError):
        raise ValueError(
            f"dataset {dataset!r}: image_id {d['image_id']!r} of {d['file_name']} is not an "
            f"integer, which COCO json needs"
        ) from None
    path = os.path.abspath(d["file_name"])
    file_name = path
    if image_root:
        root = os.path.abspath(image_root)
        if os.path.commonpath([root, path]) == root:
            file_name = os.path.relpath(path, root)
    return ImageRecord(image_id, path, file_name)


def uses_cuda(cfg) -> bool:
    """MODEL.DEVICE "cuda" (detectron2's default) runs on the GPUs when there are any."""
    if not str(cfg.MODEL.DEVICE).startswith("cuda"):
        return False
    if torch.cuda.is_available():
        return True
    logger.info("MODEL.DEVICE is %s but CUDA is unavailable: running on the CPU", cfg.MODEL.DEVICE)
    return False


def _creation_date() -> str:
    """Now, or $SOURCE_DATE_EPOCH (the reproducible-builds convention) when set."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = (
        datetime.fromtimestamp(int(epoch), timezone.utc) if epoch else datetime.now(timezone.utc)
    )
    return moment.replace(microsecond=0).isoformat()


def _provenance(cfg, job: GenerationJob, manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": f"uis_d2 pseudo-labels: {cfg.PROPOSALS.GENERATOR} proposals of "
        f"{job.dataset}",
        "dataset": job.dataset,
        "image_root": job.image_root,
        "num_images_requested": len(job.records),
        "date_created": manifest["created"],
        "uis_d2_version": uis_d2.__version__,
        "generator": manifest["generator"],
        "refine": manifest["refine"],
        "config": manifest["config"],
    }
