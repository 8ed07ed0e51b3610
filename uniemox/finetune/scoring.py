"""Scoring a labelled split inside a classification run: every rank predicts its shards, the
predictions are gathered, rank 0 writes the report (eval/NAME.json, .png, TensorBoard under TAG/)."""
import os
from typing import Dict, Optional

import torch

from uniemox.data import build_labeled_loader


class SplitScorer:
    def __init__(self, cfg, run, classes, multi_label: bool, image_size: int):
        self.cfg, self.run, self.classes, self.multi, self.image_size = cfg, run, classes, multi_label, image_size
        self.eval_dir = os.path.join(run.run_dir, "eval")

    def predict(self, forward, urls):
        """(every rank's predictions gathered, the damaged samples skipped): collective. The loader's
        worker seeding draws from the global RNG: forked, so that evaluating (once, or twice with the
        EMA) leaves the training's random draws (drop-path, mixup) as they were."""
        from uniemox.eval.evaluate import gather, predict_loader, sum_counts

        cfg, run = self.cfg, self.run
        loader = build_labeled_loader(urls, cfg.data.eval_batch_size or cfg.data.batch_size, cfg.data.num_workers,
                                      self.image_size, train=False, rank=run.rank, world_size=run.world,
                                      num_classes=len(self.classes) if self.multi else None, pin_memory=run.pinned,
                                      class_count=len(self.classes))
        with torch.random.fork_rng(devices=[]):
            pred = gather(predict_loader(forward, loader, run.device, self.multi))
        return pred, sum_counts(loader.skip_counts)  # collective, as gather: every rank calls it

    def report(self, pred, skipped, name: str, tag: str, step: int, writer, rows: bool = False) -> Dict:
        """Rank 0: the metrics of ``pred``, written as a report."""
        from uniemox.eval.report import write_report

        metrics = dict(pred.metrics(self.classes, self.multi), skipped=skipped)
        write_report(metrics, self.eval_dir, name, writer, step, tag=tag, echo=not self.cfg.log.progress,
                     predictions=pred.rows(self.classes, self.cfg.eval.top_k, self.multi) if rows else None)
        return metrics

    def score(self, forward, urls, name: str, tag: str, step: int, writer, rows: bool = False) -> Optional[Dict]:
        """predict + report: the metrics on rank 0, None elsewhere."""
        pred, skipped = self.predict(forward, urls)
        return self.report(pred, skipped, name, tag, step, writer, rows) if self.run.rank == 0 else None

    def shared(self, value: float) -> float:
        """Rank 0's number on every rank."""
        value = torch.tensor([value if self.run.rank == 0 else 0.0], dtype=torch.float64)
        if self.run.world > 1:
            torch.distributed.broadcast(value, 0)
        return float(value)
