"""The analysis report of a sweep (`ckptlab report`): data, statistics, findings, figures, HTML.

- `data.py`       the results store → the sweep's models, scores and per-example item values
- `taxonomy.py`   what an eval set is relative to a fine-tuning task (in-task, cross-domain, cross-task)
- `bootstrap.py`  paired bootstrap over items: point estimate and replicates of every mean
- `analysis.py`   the tables behind the figures: scores, gains, forgetting, sensitivity, cpt
- `findings.py`   the four findings of Sun & Dredze 2024, each tested on this sweep
- `figures.py`    matplotlib figures (Agg), written as PNG and embedded in the HTML
- `html.py`       one self-contained HTML file (Jinja2 with autoescape); `template.py` holds the page
"""
