"""Validation metrics during training and `m2f evaluate`: model outputs -> the evaluation package's accumulators."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from m2f_trainer.model.postprocess import postprocess

PRIMARY = {"panoptic": "PQ", "instance": "AP", "semantic": "mIoU"}


class Postprocessor:
    """Model outputs -> per-image predictions of the spec's mode at original size (contiguous class ids)."""

    def __init__(self, cfg: Any, label_map: Any) -> None:
        self.cfg = cfg
        self.mode = str(cfg.model.mode).lower()
        self.label_map = label_map
        self.num_classes = int(cfg.model.sem_seg_head.num_classes)
        thing = torch.zeros(self.num_classes, dtype=torch.bool)
        for class_index in label_map.thing_classes:
            if class_index < self.num_classes:
                thing[class_index] = True
        self.thing_mask = thing

    def __call__(self, outputs: dict, metas: list[dict], padded_size: tuple[int, int]) -> list[dict]:
        model = self.cfg.model
        if "pred_logits" not in outputs:  # an exported model (ONNX / TensorRT): TAO's output layout
            from m2f_trainer.export.onnx_runner import predictions_from_exported

            return predictions_from_exported(
                outputs, [m["image_size"] for m in metas], [m["orig_size"] for m in metas], self.mode,
                self.thing_mask, model.object_mask_threshold, model.overlap_threshold)
        return postprocess(
            outputs, [m["image_size"] for m in metas], [m["orig_size"] for m in metas], self.mode,
            self.num_classes, object_mask_threshold=model.object_mask_threshold,
            overlap_threshold=model.overlap_threshold, test_topk_per_image=model.test_topk_per_image,
            thing_classes=self.thing_mask, padded_size=padded_size)


class ModelEvaluator:
    """Feeds one dataset split through postprocess into the accumulator of the spec's mode. Ground truth is
    read at file resolution with the dataset's `raw_sample`, so metrics match the offline COCO tools; the
    per-rank states are gathered (all_gather_object) before computing, identical on every rank."""

    def __init__(self, cfg: Any, dataset: Any) -> None:
        self.dataset = dataset
        self.label_map = dataset.label_map
        self.predict = Postprocessor(cfg, dataset.label_map)
        self.mode = self.predict.mode
        self.num_classes = self.predict.num_classes
        self._index_of = {record.image_id: i for i, record in enumerate(dataset.records)}
        self.reset()

    # ------------------------------------------------------------------------------- state

    def reset(self) -> None:
        if self.mode == "panoptic":
            from m2f_trainer.evaluation.panoptic import PQAccumulator

            self.accumulator = PQAccumulator()
        elif self.mode == "instance":
            from m2f_trainer.evaluation.instance import InstanceAccumulator

            self.accumulator = InstanceAccumulator(self.label_map.to_coco_categories())
        else:
            from m2f_trainer.evaluation.semantic import ConfusionMatrix

            self.accumulator = ConfusionMatrix(self.num_classes)

    @torch.no_grad()
    def update(self, outputs: dict, metas: list[dict], padded_size: tuple[int, int]) -> list[dict]:
        predictions = self.predict(outputs, metas, padded_size)
        for prediction, meta in zip(predictions, metas, strict=True):
            truth = self.dataset.raw_sample(self._index_of[meta["image_id"]])
            self._add(prediction, truth, meta)
        return predictions

    def _add(self, prediction: dict, truth: dict, meta: dict) -> None:
        raw_id = self.label_map.raw_id
        if self.mode == "panoptic":
            pred_seg, pred_segments = prediction["panoptic_seg"]
            gt_seg = np.zeros(tuple(truth["masks"].shape[-2:]), dtype=np.int64)
            gt_segments = []
            for k, (mask, label, crowd) in enumerate(
                    zip(truth["masks"], truth["labels"].tolist(), truth["is_crowd"].tolist(), strict=True)):
                segment_id = k + 1
                gt_seg[mask.numpy()] = segment_id
                gt_segments.append({"id": segment_id, "category_id": raw_id(label), "iscrowd": int(crowd)})
            pred_segments = [{"id": s["id"], "category_id": raw_id(s["category_id"])} for s in pred_segments]
            self.accumulator.update(gt_seg, gt_segments, pred_seg.cpu().numpy(), pred_segments,
                                    where=f"image_id {meta['image_id']}")
        elif self.mode == "instance":
            instances = prediction["instances"]
            self.accumulator.update(
                meta["image_id"], truth,
                instances["masks"].cpu().numpy(), instances["scores"].cpu().numpy(),
                [raw_id(c) for c in instances["labels"].tolist()])
        else:
            self.accumulator.update(prediction["sem_seg"].argmax(0).cpu().numpy(), truth["sem_seg"].numpy())

    def compute(self, strategy: Any = None) -> dict[str, float]:
        """Gather every rank's state, then the flat metric dict (primary metric first)."""
        merged = self.accumulator.all_gather()
        if self.mode == "panoptic":
            result = merged.compute(self.label_map.to_coco_categories())
            flat = {"PQ": result["All"]["pq"], "SQ": result["All"]["sq"], "RQ": result["All"]["rq"]}
            for group in ("Things", "Stuff"):
                for key in ("pq", "sq", "rq"):
                    flat[f"{key.upper()}_{group.lower()}"] = result[group][key]
            flat["num_images"] = float(merged.num_images)
            self.last_result = result
            return flat
        result = merged.compute()
        self.last_result = result
        return {k: float(v) for k, v in result.items() if isinstance(v, (int, float))}

    def primary(self, metrics: dict[str, float]) -> tuple[str, float]:
        name = PRIMARY[self.mode]
        return name, float(metrics[name])
