"""Datasets (COCO panoptic, COCO instance, semantic/ADE), transforms, collate, datamodule, synth, check."""
