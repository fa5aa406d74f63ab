"""Training engine: LightningModule, optimizer, checkpoints, signals, multi-node env contract, progress, metrics."""
