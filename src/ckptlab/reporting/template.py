"""The report page: a Jinja2 template rendered with autoescape (every dataset string is escaped).

Kept as a Python string so the page ships inside the package with no package-data set-up. The page
loads nothing: styles are inline, figures are base64 PNG data URIs, and there is no script.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ckptlab report: {{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.5em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.finding { border-left: 6px solid #999; padding: 0.5em 1em; margin: 1em 0; background: #fafafa; }
.finding.replicated { border-color: #2a8a3a; } .finding.not-replicated { border-color: #b8322a; }
.finding.partly-replicated { border-color: #d89b1a; } .finding.inconclusive { border-color: #888; }
.outcome { font-weight: bold; text-transform: uppercase; font-size: 0.85em; }
.test { color: #555; font-size: 0.85em; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.85em; }
.warnings { background: #fff6e0; padding: 0.5em 1em; }
</style>
</head>
<body>
{% macro table(t) %}<table><tr>{% for c in t.columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in t.rows %}<tr>{% for v in row %}
<td{% if v is number %} class="num"{% endif %}>{{ fmt(v) }}</td>{% endfor %}</tr>{% endfor %}
</table>{% endmacro %}
<h1>ckptlab report: {{ title }}</h1>
<p>Results store <code>{{ store }}</code>: {{ counts }}. Eval sets: {{ tasks | join(", ") }}.
Scores: {{ metric_note }}, {{ shots }}-shot, {{ template_note }}. Intervals: {{ level }} paired bootstrap over
examples ({{ resamples }} resamples).</p>
{% if chance_note %}<p>{{ chance_note }}</p>{% endif %}
{% for t in models %}{% if t.rows %}{{ table(t) }}{% endif %}{% endfor %}
{% if warnings %}<div class="warnings"><p>Notes on the data:</p><ul>
{% for w in warnings %}<li>{{ w }}</li>{% endfor %}</ul></div>{% endif %}

<h2 id="findings">Findings (Sun &amp; Dredze 2024) on this sweep</h2>
{% for f in findings %}
<div class="finding {{ f.outcome | replace(' ', '-') }}">
<p><b>({{ f.id }}) {{ f.claim }}</b> <span class="outcome">{{ f.outcome }}</span></p>
<p>{{ f.summary }}</p>
{% if f.statistics %}<table><tr><th>statistic</th><th>role</th><th>estimate</th><th>{{ level }} CI</th>
<th>p</th><th>p (Holm)</th><th>pairs</th></tr>
{% for s in f.statistics %}<tr><td>{{ s.name }}</td><td>{{ s.role }}</td><td class="num">{{ fmt(s.value) }}</td>
<td class="num">{{ ci(s.ci_low, s.ci_high) }}</td><td class="num">{{ fmt(s.p_value) }}</td>
<td class="num">{{ fmt(s.p_adjusted) if s.p_adjusted is defined else "" }}</td>
<td class="num">{{ s.pairs }}</td></tr>{% endfor %}
</table>{% endif %}
{% if f.notes %}<ul>{% for n in f.notes %}<li>{{ n }}</li>{% endfor %}</ul>{% endif %}
<p class="test">Test: {{ f.test }}.</p>
</div>
{% endfor %}

{% for fig in figures %}
<h2 id="{{ fig.name }}">{{ fig.title }}</h2>
{% if fig.data %}<figure><img src="data:image/png;base64,{{ fig.data }}" alt="{{ fig.title }}">
<figcaption>{{ fig.caption }} (<a href="figures/{{ fig.name }}.png">PNG</a>)</figcaption></figure>
{% else %}<p>{{ fig.caption }}</p>{% endif %}
{% for t in fig.tables %}{{ table(t) }}{% endfor %}
{% endfor %}

<h2 id="tables">Tables</h2>
<ul>{% for name in csv_files %}<li><a href="tables/{{ name }}">{{ name }}</a></li>{% endfor %}</ul>
</body>
</html>
"""
