"""`logger=csv` across resumes: Lightning's CSVLogger whose metrics.csv keeps the rows of earlier invocations."""

from __future__ import annotations

import csv

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv when it starts; this one continues it: the rows of
    every invocation, in the order they were written (the header grows when a later invocation logs new keys)."""

    def _check_log_dir_exists(self) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            header = next(csv.reader(f), [])
        self.metrics_keys = [k for k in header if k]  # the file's order: rows are appended under it


class ResumableCSVLogger(CSVLogger):
    """`logger=csv`: Lightning's CSVLogger whose `metrics.csv` keeps the rows of earlier invocations of the run
    (a resumed run appends; steps after the checkpoint it resumed from appear once per invocation that ran
    them). `hparams.yaml` holds the config of the latest invocation."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            from pytorch_lightning.utilities.rank_zero import rank_zero_only

            if rank_zero_only.rank != 0:
                return super().experiment
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
