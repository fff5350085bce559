"""The timeline page's markup: Jinja2 templates with autoescape, and their CSS.

``timeline_svg.py`` works out what to draw (positions, colours, texts) as plain
data; this module turns that into HTML and SVG. Every text from the journal
(rule names, errors, labels, regions) reaches the page through ``{{ }}`` with
autoescape on, so no code path can forget to escape; only the CSS, a constant of
this module, is marked safe. Templates live apart from the code that fills them,
and undefined names fail (``StrictUndefined``) instead of printing nothing.
"""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, StrictUndefined
from markupsafe import Markup

PAGE = """\
<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{{ title }}</title>
<style>{{ css | safe }}</style></head><body>
<h1>{{ title }}</h1>
<p class="when">started {{ started }}, <span id="outcome">{{ outcome }}</span></p>
<dl id="totals">
{%- for t in totals -%}
<div><dt>{{ t.label }}</dt><dd data-total="{{ t.key }}" data-value="{{ t.value }}"
{%- if t.failed %} data-failed={{ t.failed }} class=failed{% endif %}>{{ t.text }}</dd></div>
{%- endfor -%}
</dl>
<p id="legend">
{%- for k in legend -%}
<span class="key{% if not k.seen %} unseen{% endif %}" data-state="{{ k.state }}" \
data-seconds="{{ k.seconds }}"><i style="background:{{ k.colour }}"></i>{{ k.state }}
{%- if k.seen %} <b>{{ k.spent }}</b>{% endif %}</span>
{%- endfor -%}
<span class="key"><i class="failed-key"></i>failed job</span></p>
{{ svg }}
</body></html>"""

SVG = """\
<svg xmlns="http://www.w3.org/2000/svg" id="timeline" width="100%" \
viewBox="0 0 {{ width }} {{ height }}" preserveAspectRatio="xMinYMin meet" \
font-size="{{ font_size }}">
{% for c in columns -%}
<text class="colhead" x="{{ c.x }}" y="{{ head_y }}"{% if c.end %} text-anchor="end"{% endif %}>
{{- c.name }}</text>
{%- endfor %}
<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" \
patternTransform="rotate(45)"><rect width="6" height="6" fill="#fafafa"/>\
<line x1="0" y1="0" x2="0" y2="6" stroke="#bbb" stroke-width="2"/></pattern></defs>
<g class="axis">
{%- for b in breaks -%}
<g class="break"><rect x="{{ b.x }}" y="{{ b.y }}" width="{{ b.w }}" height="{{ b.h }}" \
fill="url(#hatch)"><title>{{ b.title }}</title></rect><text x="{{ b.label_x }}" \
y="{{ b.label_y }}" text-anchor="middle">{{ b.label }}</text></g>
{%- endfor -%}
{%- for t in ticks -%}
<line x1="{{ t.x }}" x2="{{ t.x }}" y1="{{ t.y1 }}" y2="{{ t.y2 }}"/>\
<text x="{{ t.x }}" y="{{ t.label_y }}" text-anchor="middle">{{ t.label }}</text>
{%- endfor -%}
</g>
{% for r in rows -%}
<g class="{{ r.classes }}" data-key="{{ r.key }}" data-instance="{{ r.instance }}">\
<rect class="stripe" x="0" y="{{ r.y }}" width="{{ width }}" height="{{ r.h }}"/>\
<g class="labels"><title>{{ r.title }}</title>
{%- for t in r.texts -%}
<text x="{{ t.x }}" y="{{ r.baseline }}"{% if t.end %} text-anchor="end"{% endif %}
{%- if t.failed %} class="failed"{% endif %}>{{ t.text }}</text>
{%- endfor -%}
</g>
{%- if r.billed -%}
<rect class="billed" x="{{ r.billed.x }}" y="{{ r.billed.y }}" width="{{ r.billed.w }}" \
height="2"><title>{{ r.billed.title }}</title></rect>
{%- endif -%}
{%- for b in r.bars -%}
<rect class="bar{% if b.failed %} failed{% endif %}" data-state="{{ b.state }}" \
data-job="{{ b.job }}" data-start="{{ b.start }}" data-end="{{ b.end }}" x="{{ b.x }}" \
y="{{ b.y }}" width="{{ b.w }}" height="{{ b.h }}" fill="{{ b.fill }}">\
<title>{{ b.title }}</title></rect>
{%- endfor -%}
{%- for m in r.marks -%}
<text class="fail-mark" data-job="{{ m.job }}" x="{{ m.x }}" y="{{ r.baseline }}">\
&#x2716;<title>{{ m.title }}</title></text>
{%- endfor -%}
</g>
{% endfor -%}
</svg>"""

CSS = """
body { font-family: system-ui, sans-serif; margin: 16px; color: #222; background: #fff; }
svg#timeline { display: block; width: 100%; height: auto; }
#totals, #legend { flex-wrap: wrap; }
h1 { font-size: 18px; margin: 0 0 4px; }
.when { margin: 0 0 10px; color: #555; font-size: 13px; }
#totals { display: flex; gap: 28px; margin: 0 0 10px; }
#totals div { display: flex; flex-direction: column-reverse; }
#totals dt { font-size: 12px; color: #555; }
#totals dd { margin: 0; font-size: 20px; font-weight: 600; }
#totals dd.failed { color: #c62828; }
#legend { font-size: 12px; margin: 0 0 8px; }
.key { margin-right: 12px; white-space: nowrap; }
.key.unseen { opacity: 0.45; }
.key b { font-weight: 600; color: #444; }
.key i { display: inline-block; width: 12px; height: 12px; margin-right: 4px;
         vertical-align: -2px; border: 1px solid #888; }
.key i.failed-key { border: 2px solid #c62828; background: #fff; }
svg text { fill: #222; font-family: ui-monospace, monospace; }
svg .colhead { font-weight: bold; fill: #555; }
svg .axis line { stroke: #ddd; stroke-width: 1; }
svg .axis text { fill: #666; }
svg .stripe { fill: #fff; }
svg .row.odd .stripe { fill: #f7f7f7; }
svg .row.failed .stripe { fill: #fdecea; }
svg .billed { fill: #455a64; }
svg .bar { stroke: #fff; stroke-width: 0.5; }
svg .bar[data-state="idle"] { stroke: #90a4ae; stroke-dasharray: 2 2; }
svg .bar.failed { stroke: #c62828; stroke-width: 1.5; }
svg text.failed, svg .fail-mark { fill: #c62828; font-weight: bold; }
svg .break text { fill: #666; font-style: italic; }
"""

_ENV = Environment(autoescape=True, undefined=StrictUndefined, keep_trailing_newline=False)
_PAGE = _ENV.from_string(PAGE)
_SVG = _ENV.from_string(SVG)


def render_svg(view: dict[str, Any]) -> str:
    """The chart, from ``timeline_svg.svg_view``; markup-safe for the page template."""
    return _SVG.render(**view)


def render_page(view: dict[str, Any], svg_view: dict[str, Any]) -> str:
    """The whole page, from ``timeline_svg.page_view`` and the chart's view."""
    return _PAGE.render(**view, css=CSS, svg=Markup(render_svg(svg_view)))
