"""Reading finished runs and presenting them: the HTML/Markdown report, its figures and the multi-seed table.

* :mod:`bce3s.report.rundata`: :func:`~bce3s.report.rundata.load_run` reads a run directory into a
  :class:`~bce3s.report.rundata.RunData` (``final.json``, ``config.yaml``, ``metrics.jsonl``, ``eval_*.json``).
* :mod:`bce3s.report.writer`: :func:`~bce3s.report.writer.write_report` (``bce3s report``) builds the document
  from the sections in :mod:`~bce3s.report.sections`, :mod:`~bce3s.report.diagnostics` and
  :mod:`~bce3s.report.settings` and renders it with :mod:`~bce3s.report.document`.
* :mod:`bce3s.report.plots`: the figures (the only module that imports matplotlib).
* :mod:`bce3s.report.compare`: :func:`~bce3s.report.compare.compare_runs` (``bce3s compare``), mean ± std over
  seeds; it does not import matplotlib.

Importing this package imports none of its modules, so ``import bce3s.report.compare`` stays free of
matplotlib.
"""
