"""``vaebench report``: a study's MLflow record rendered as figures and ablation tables.

- ``figures``: one pure function per figure (DataFrame in, matplotlib Figure out);
- ``tables``: the ablation table as a DataFrame and its Markdown, LaTeX and CSV renderers;
- ``render``: the report folder (index.html, report.md, PNGs, tables);
- ``command``: the Typer command ``report``.

The data come from ``vaebench.record.results`` (``trials_frame``, ``histories_frame``), which
reads the tracking store only.
"""
