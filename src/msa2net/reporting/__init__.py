"""Reporting: every table, summary, image, curve and page msa2net writes about a model or its results.

:mod:`msa2net.metrics` computes numbers (pure functions); the modules here gather them and write them out. Each
module has one job; import from the module itself (this package imports nothing on its own, so that reading a
summary never loads Pillow, matplotlib or the hub client):

- :mod:`~msa2net.reporting.aggregate`: per-case metric rows and pooled pixel counts, accumulated over cases;
- :mod:`~msa2net.reporting.summary`: the typed evaluation summaries (per case or pooled) and their ``summary.json``;
- :mod:`~msa2net.reporting.tables`: the tables of a summary (``table.md``, and the cells ``report.html`` and the
  model card print) and the evaluation's files;
- :mod:`~msa2net.reporting.overlays`: label maps drawn over images (colours, PNG panels with a legend);
- :mod:`~msa2net.reporting.curves`: the training history (``metrics.csv``) and its curves;
- :mod:`~msa2net.reporting.demo`: the demo's ``report.md``;
- :mod:`~msa2net.reporting.html`: the self-contained ``report.html`` (with ``report_template.html``);
- :mod:`~msa2net.reporting.card`: the model card of a published model (with ``card_template.md``).

Every summary a report shows is read from one typed summary, the one written to ``summary.json``, so the tables,
the page, the card and the JSON cannot disagree. Every writer here is atomic (a temporary file renamed into place).
This package sits above :mod:`msa2net.models` and :mod:`msa2net.metrics` and never imports :mod:`msa2net.data`.
"""
