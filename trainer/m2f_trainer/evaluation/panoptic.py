"""Panoptic quality (PQ/SQ/RQ) with panopticapi's exact rules, vectorised per image, streaming and mergeable.

The rules are those of cocodataset/panopticapi `evaluation.py`:

- a (ground truth, prediction) pair of the same category matches when IoU > 0.5, where the union
  leaves out the prediction's pixels on VOID (id 0); crowd ground truth never matches;
- unmatched non-crowd ground truth segments are false negatives;
- an unmatched prediction is a false positive unless more than half of its area lies on VOID plus
  the crowd region of its own category;
- categories with tp + fp + fn == 0 are left out of the averages.

Per image, one bincount over a dense (gt segment, predicted segment) index replaces panopticapi's
two `np.unique` sorts and its Python loop over pairs. IoU sums are accumulated in panopticapi's
order (sorted by gt id, then pred id), so single-process results are bit-identical to it.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from m2f_trainer.errors import DataError
from m2f_trainer.evaluation.distributed import merged_across_ranks
from m2f_trainer.evaluation.formats import read_json, read_panoptic_png

VOID = 0
_ID_SPACE = 256**3  # every id an RGB PNG can hold
_UNSET = np.iinfo(np.uint16).max
_thread_state = threading.local()


@dataclass
class ImagePQ:
    """One image's contribution: matched pairs (category, IoU) in panopticapi's order, FN and FP categories."""

    tp_category: np.ndarray
    tp_iou: np.ndarray
    fn_category: np.ndarray
    fp_category: np.ndarray


def _segments_by_id(segments: Iterable[Mapping], where: str, side: str) -> dict[int, Mapping]:
    by_id: dict[int, Mapping] = {}
    for segment in segments:
        try:
            segment_id = int(segment["id"])
            int(segment["category_id"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{where}: {side} segment {dict(segment)} needs integer 'id' and 'category_id'") from None
        if segment_id <= VOID:
            raise DataError(f"{where}: {side} segment id {segment_id} must be positive (0 is VOID)")
        if segment_id in by_id:
            raise DataError(f"{where}: {side} segment id {segment_id} appears twice in segments_info")
        by_id[segment_id] = segment
    return by_id


def _dense_index(ids: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    """Map segment ids to 0 (VOID), 1..n (rank in sorted_ids) or, for an id not listed, a value > n."""
    n = len(sorted_ids)
    in_id_space = ids.dtype.kind in "ui" and (ids.size == 0 or (ids.min() >= 0 and ids.max() < _ID_SPACE))
    if in_id_space and n + 1 < _UNSET:
        # A per-thread lookup table over the whole 24-bit id space: one gather per pixel, no sort.
        lut = getattr(_thread_state, "lut", None)
        if lut is None:
            lut = _thread_state.lut = np.full(_ID_SPACE, _UNSET, dtype=np.uint16)
            lut[VOID] = 0
        lut[sorted_ids] = np.arange(1, n + 1, dtype=np.uint16)
        try:
            dense = np.take(lut, ids)  # np.take is about twice as fast as lut[ids] here
        finally:
            lut[sorted_ids] = _UNSET
        return dense  # unlisted ids stay _UNSET: _joint_histogram folds them only when present
    flat = ids.astype(np.int64, copy=False)
    position = np.searchsorted(sorted_ids, flat).clip(0, max(n - 1, 0))
    found = (sorted_ids[position] == flat) if n else np.zeros(flat.shape, bool)
    dense = np.where(found, position + 1, n + 1)
    dense[flat == VOID] = 0
    return dense


def _joint_histogram(gt_dense: np.ndarray, pred_dense: np.ndarray, num_gt: int, num_pred: int) -> np.ndarray:
    """Pixel counts [num_gt + 2, num_pred + 2] of (gt index, pred index); index n+1 = any unlisted id."""
    width, size = num_pred + 2, (num_gt + 2) * (num_pred + 2)
    combined = np.multiply(gt_dense, width, dtype=np.intp)
    combined += pred_dense
    counts = np.bincount(combined.ravel(), minlength=size)
    # Unlisted ids (above n) land beyond `size` unless the table is large enough for aliasing:
    # only then (rare) fold them into the n+1 row / column and count again.
    if counts.size > size or size >= _UNSET:
        combined = np.multiply(np.minimum(gt_dense, num_gt + 1), width, dtype=np.intp)
        combined += np.minimum(pred_dense, num_pred + 1)
        counts = np.bincount(combined.ravel(), minlength=size)
    return counts.reshape(num_gt + 2, num_pred + 2)


def image_pq_stats(gt_ids: np.ndarray, gt_segments: Sequence[Mapping], pred_ids: np.ndarray,
                   pred_segments: Sequence[Mapping], categories: Iterable[int] | None = None,
                   where: str = "image") -> ImagePQ:
    """PQ statistics of one image from id maps [H,W] and their segments_info lists.

    Ground-truth areas come from the segments' 'area' field when present (as panopticapi does), else
    from the pixels. `categories` (raw ids), when given, rejects predictions of unknown categories.
    """
    gt_ids, pred_ids = np.asarray(gt_ids), np.asarray(pred_ids)
    if gt_ids.shape != pred_ids.shape:
        raise DataError(f"{where}: prediction size {pred_ids.shape} differs from ground truth size {gt_ids.shape}")
    gt_by_id = _segments_by_id(gt_segments, where, "ground truth")
    pred_by_id = _segments_by_id(pred_segments, where, "predicted")
    gt_sorted = np.array(sorted(gt_by_id), dtype=np.int64)
    pred_sorted = np.array(sorted(pred_by_id), dtype=np.int64)
    num_gt, num_pred = len(gt_sorted), len(pred_sorted)

    pred_dense = _dense_index(pred_ids, pred_sorted)
    # Rows: VOID, gt segments (sorted by id), ids not in the JSON. Columns: the same for predictions.
    joint = _joint_histogram(_dense_index(gt_ids, gt_sorted), pred_dense, num_gt, num_pred)

    pred_area_all = joint.sum(axis=0)
    if pred_area_all[-1]:
        stray = np.unique(pred_ids[pred_dense > num_pred])
        raise DataError(f"{where}: segment ids {stray[:10].tolist()} are in the predicted PNG but not in its "
                        "segments_info")
    pred_area = pred_area_all[1:-1]
    if num_pred and not pred_area.all():
        absent = pred_sorted[pred_area == 0]
        raise DataError(f"{where}: predicted segment ids {absent[:10].tolist()} are in segments_info but not in "
                        "the PNG")
    pred_category = np.array([int(pred_by_id[s]["category_id"]) for s in pred_sorted.tolist()], dtype=np.int64)
    if categories is not None:
        known = set(categories)
        for segment_id, category_id in zip(pred_sorted.tolist(), pred_category.tolist(), strict=True):
            if category_id not in known:
                raise DataError(f"{where}: predicted segment id {segment_id} has unknown category_id {category_id}")

    gt_info = [gt_by_id[s] for s in gt_sorted.tolist()]
    gt_category = np.array([int(s["category_id"]) for s in gt_info], dtype=np.int64)
    gt_crowd = np.array([int(s.get("iscrowd", 0)) == 1 for s in gt_info], dtype=bool)
    gt_pixels = joint[1:-1].sum(axis=1)
    gt_area = np.array([int(s["area"]) if "area" in s else int(p) for s, p in zip(gt_info, gt_pixels, strict=True)],
                       dtype=np.int64)

    intersection = joint[1:-1, 1:-1]
    pred_on_void = joint[0, 1:-1]
    candidate = (intersection > 0) & (gt_category[:, None] == pred_category[None, :]) & ~gt_crowd[:, None]
    union = pred_area[None, :] + gt_area[:, None] - intersection - pred_on_void[None, :]
    iou = np.zeros(intersection.shape, dtype=np.float64)
    np.divide(intersection, union, out=iou, where=candidate)
    matched = candidate & (iou > 0.5)
    gt_rows, pred_cols = np.nonzero(matched)  # row-major: panopticapi's (gt id, pred id) order

    gt_matched = matched.any(axis=1)
    pred_matched = matched.any(axis=0)
    # panopticapi keeps the last crowd segment of a category in segments_info order.
    rank_of = {int(s): r for r, s in enumerate(gt_sorted.tolist())}
    crowd_row_of_category = {int(s["category_id"]): rank_of[int(s["id"])]
                             for s in gt_segments if int(s.get("iscrowd", 0)) == 1}
    crowd_row = np.array([crowd_row_of_category.get(c, -1) for c in pred_category.tolist()], dtype=np.int64)
    on_crowd = np.where(crowd_row >= 0, intersection[crowd_row.clip(0), np.arange(num_pred)], 0) if num_gt else 0
    ignored = (pred_on_void + on_crowd) / np.maximum(pred_area, 1) > 0.5

    return ImagePQ(
        tp_category=gt_category[gt_rows],
        tp_iou=iou[gt_rows, pred_cols],
        fn_category=gt_category[~gt_matched & ~gt_crowd],
        fp_category=pred_category[~pred_matched & ~ignored],
    )


def panoptic_from_masks(masks, category_ids: Sequence[int], is_crowd: Sequence[bool] | None = None):
    """Non-overlapping bool masks [N,H,W] -> (id map [H,W] int32 with ids 1..N, segments_info).

    For feeding dataset targets (masks + labels, mapped to raw category ids) to PQAccumulator.update.
    Empty masks are dropped; where masks overlap, the later one wins.
    """
    masks = _to_numpy(masks).astype(bool)
    if masks.ndim != 3 or len(masks) != len(category_ids):
        raise ValueError(f"need masks [N,H,W] and N category ids, got {masks.shape} and {len(category_ids)}")
    crowd = [False] * len(masks) if is_crowd is None else [bool(c) for c in _to_numpy(is_crowd).tolist()]
    ids = np.zeros(masks.shape[1:], dtype=np.int32)
    for index, mask in enumerate(masks):
        ids[mask] = index + 1
    areas = np.bincount(ids.ravel(), minlength=len(masks) + 1)
    segments = [{"id": index + 1, "category_id": int(category_id), "iscrowd": int(crowd[index]),
                 "area": int(areas[index + 1])}
                for index, category_id in enumerate(_to_numpy(category_ids).tolist()) if areas[index + 1] > 0]
    return ids, segments


def _category_table(categories) -> dict[int, Mapping]:
    if isinstance(categories, Mapping):
        return {int(k): v for k, v in categories.items()}
    return {int(c["id"]): c for c in categories}


class PQAccumulator:
    """Streaming PQ: per-category iou/tp/fp/fn sums, updated per image and mergeable across ranks."""

    def __init__(self):
        self._slot: dict[int, int] = {}
        self.iou = np.zeros(0, dtype=np.float64)
        self.tp = np.zeros(0, dtype=np.int64)
        self.fp = np.zeros(0, dtype=np.int64)
        self.fn = np.zeros(0, dtype=np.int64)
        self.num_images = 0

    def _slots(self, category_ids: np.ndarray) -> np.ndarray:
        for category_id in dict.fromkeys(category_ids.tolist()):  # first-seen order, so merges keep order
            if category_id not in self._slot:
                self._slot[category_id] = len(self._slot)
        grow = len(self._slot) - len(self.tp)
        if grow > 0:
            self.iou = np.concatenate([self.iou, np.zeros(grow)])
            self.tp, self.fp, self.fn = (np.concatenate([a, np.zeros(grow, np.int64)]) for a in (self.tp, self.fp, self.fn))
        return np.array([self._slot[c] for c in category_ids.tolist()], dtype=np.int64)

    def update(self, gt_seg, gt_segments, pred_seg, pred_segments, categories: Iterable[int] | None = None,
               where: str = "image") -> ImagePQ:
        """Add one image: id maps [H,W] (numpy or CPU tensors) with their segments_info lists (raw category ids)."""
        stats = image_pq_stats(_to_numpy(gt_seg), gt_segments, _to_numpy(pred_seg), pred_segments,
                               categories, where)
        self.add(stats)
        return stats

    def add(self, stats: ImagePQ) -> None:
        # np.add.at adds element by element in order, i.e. exactly panopticapi's running sum.
        # Slots first: growing the arrays rebinds them.
        tp_slots, fn_slots, fp_slots = (self._slots(c) for c in (stats.tp_category, stats.fn_category,
                                                                    stats.fp_category))
        np.add.at(self.iou, tp_slots, stats.tp_iou)
        np.add.at(self.tp, tp_slots, 1)
        np.add.at(self.fn, fn_slots, 1)
        np.add.at(self.fp, fp_slots, 1)
        self.num_images += 1

    def state_dict(self) -> dict:
        ids = list(self._slot)
        return {"category_ids": ids, "iou": self.iou.tolist(), "tp": self.tp.tolist(), "fp": self.fp.tolist(),
                "fn": self.fn.tolist(), "num_images": self.num_images}

    def merge(self, state: Mapping) -> None:
        """Add another accumulator's state_dict() (e.g. gathered from another rank)."""
        slots = self._slots(np.asarray(state["category_ids"], dtype=np.int64))
        np.add.at(self.iou, slots, np.asarray(state["iou"], dtype=np.float64))
        for name in ("tp", "fp", "fn"):
            np.add.at(getattr(self, name), slots, np.asarray(state[name], dtype=np.int64))
        self.num_images += int(state["num_images"])

    def all_gather(self) -> PQAccumulator:
        """A new accumulator holding every rank's sums (merged in rank order, identical on all ranks)."""
        return merged_across_ranks(self, PQAccumulator())

    def compute(self, categories) -> dict:
        """panopticapi's result structure: {"All"|"Things"|"Stuff": {pq, sq, rq, n}, "per_class": {id: {pq, sq, rq}}}.

        `categories`: list of {id, isthing} dicts (COCO panoptic 'categories') or a dict id -> that.
        Unlike panopticapi, a group with no counted category gives zeros with n = 0 instead of ZeroDivisionError.
        """
        table = _category_table(categories)
        results: dict = {}
        for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
            totals, per_class = self._average(table, isthing)
            results[name] = totals
            if name == "All":
                results["per_class"] = per_class
        return results

    def _average(self, table: Mapping[int, Mapping], isthing: bool | None):
        pq = sq = rq = 0.0
        n = 0
        per_class = {}
        for category_id, info in table.items():
            if isthing is not None and (int(info.get("isthing", 0)) == 1) != isthing:
                continue
            slot = self._slot.get(category_id)
            iou, tp, fp, fn = (0.0, 0, 0, 0) if slot is None else (
                float(self.iou[slot]), int(self.tp[slot]), int(self.fp[slot]), int(self.fn[slot]))
            if tp + fp + fn == 0:
                per_class[category_id] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                continue
            n += 1
            pq_class = iou / (tp + 0.5 * fp + 0.5 * fn)
            sq_class = iou / tp if tp != 0 else 0.0
            rq_class = tp / (tp + 0.5 * fp + 0.5 * fn)
            per_class[category_id] = {"pq": pq_class, "sq": sq_class, "rq": rq_class}
            pq += pq_class
            sq += sq_class
            rq += rq_class
        if n == 0:
            return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}, per_class
        return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class


def _to_numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):  # torch.Tensor, without importing torch here
        return array.detach().cpu().numpy()
    return np.asarray(array)


def _default_folder(json_file) -> Path:
    text = str(json_file)
    return Path(text[: -len(".json")] if text.endswith(".json") else text)


def _score_image(job) -> ImagePQ:
    gt_ann, pred_ann, gt_folder, pred_folder, category_ids = job
    pred_file = pred_folder / pred_ann["file_name"]
    where = f"image_id {gt_ann['image_id']} ({pred_file})"
    gt_ids = read_panoptic_png(gt_folder / gt_ann["file_name"])
    pred_ids = read_panoptic_png(pred_file)
    return image_pq_stats(gt_ids, gt_ann["segments_info"], pred_ids, pred_ann["segments_info"], category_ids, where)


def available_cores() -> int:
    """CPUs this process may use: affinity, capped by a cgroup v2 CPU quota (a pod's CPU limit)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def default_num_workers(num_images: int) -> int:
    cores = available_cores()
    # Below a few dozen images starting worker processes costs more than it saves.
    return 1 if num_images < 32 else max(1, min(cores, 16, num_images // 16))


def _start_method() -> str:
    """fork (workers start in milliseconds, sharing imports) unless this process runs other Python
    threads, where forking could copy a held lock: then forkserver, or spawn where that is missing."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def pq_compute(gt_json_file, pred_json_file, gt_folder=None, pred_folder=None, num_workers: int | None = None) -> dict:
    """panopticapi's `pq_compute`: same inputs (COCO panoptic JSON + PNG folders), same result, same numbers.

    Folders default to the JSON path without '.json', as in panopticapi. `num_workers` processes
    decode and score images in parallel (default: one per core from 32 images on, else in-process);
    their per-image statistics are still added in image order, so the result does not depend on it.
    Errors are DataError naming the file and id.
    """
    gt_json, pred_json = read_json(gt_json_file), read_json(pred_json_file)
    gt_folder = Path(gt_folder) if gt_folder is not None else _default_folder(gt_json_file)
    pred_folder = Path(pred_folder) if pred_folder is not None else _default_folder(pred_json_file)
    for folder, side in ((gt_folder, "ground truth"), (pred_folder, "prediction")):
        if not folder.is_dir():
            raise DataError(f"{folder}: folder with {side} segmentations does not exist")
    for payload, path, keys in ((gt_json, gt_json_file, ("annotations", "categories")),
                                (pred_json, pred_json_file, ("annotations",))):
        if not isinstance(payload, dict) or any(k not in payload for k in keys):
            raise DataError(f"{path}: a COCO panoptic JSON needs the keys {', '.join(keys)}")

    categories = _category_table(gt_json["categories"])
    category_ids = frozenset(categories)
    pred_by_image = {ann["image_id"]: ann for ann in pred_json["annotations"]}
    jobs = []
    for gt_ann in gt_json["annotations"]:
        pred_ann = pred_by_image.get(gt_ann["image_id"])
        if pred_ann is None:
            raise DataError(f"{pred_json_file}: no prediction for the image with image_id {gt_ann['image_id']}")
        jobs.append((gt_ann, pred_ann, gt_folder, pred_folder, category_ids))

    accumulator = PQAccumulator()
    workers = default_num_workers(len(jobs)) if num_workers is None else max(1, int(num_workers))
    if workers == 1:
        for job in jobs:
            accumulator.add(_score_image(job))
    else:
        context = multiprocessing.get_context(_start_method())
        chunksize = max(1, len(jobs) // (workers * 4))
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            for stats in pool.map(_score_image, jobs, chunksize=chunksize):  # in job order: deterministic sums
                accumulator.add(stats)
    return accumulator.compute(categories)
