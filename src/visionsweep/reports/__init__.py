"""Reports a person looks at: ``report.html`` of a run (``run_report``) and of a sweep (``sweep_report``).

Each report is one self-contained HTML file (figures embedded as PNG, no script or style from the
network) with the data of every figure as CSV in ``report_data/`` beside it. ``figures`` draws the
figures with matplotlib, ``page`` renders the jinja2 templates and writes the files.
"""
