"""The demo's results as a console table and a self-contained index.html (no server, no network)."""

from __future__ import annotations

import html
from pathlib import Path

TABLE_KEYS = ["AP", "AP50", "AP75", "AR1", "AR10", "AR100"]


def format_table(rows: dict[str, dict[str, float]], keys: list[str] = TABLE_KEYS) -> str:
    """Mask metrics of each method on one line, aligned for a terminal or a README."""
    name_width = max(len("method"), *(len(name) for name in rows))
    header = "| " + "method".ljust(name_width) + " | " + " | ".join(k.rjust(6) for k in keys) + " |"
    rule = "|" + "-" * (name_width + 2) + "|" + "|".join("-" * 8 for _ in keys) + "|"
    lines = [header, rule]
    for name, metrics in rows.items():
        cells = " | ".join(f"{metrics[k]:6.2f}" for k in keys)
        lines.append("| " + name.ljust(name_width) + " | " + cells + " |")
    return "\n".join(lines)


def _html_table(
    rows: dict[str, dict[str, float]], keys: list[str], table_id: str = "metrics"
) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = []
    for name, metrics in rows.items():
        cells = "".join(f"<td>{_cell(metrics.get(k))}</td>" for k in keys)
        body.append(f"<tr><th scope='row'>{html.escape(name)}</th>{cells}</tr>")
    return (
        (f"<table id='{table_id}'>" if table_id else "<table>")
        + "<thead><tr><th>method (mask)</th>"
        + head
        + "</tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table>"
    )


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _figure(src: str, caption: str) -> str:
    return (
        f"<figure><img src='{html.escape(src)}' alt='{html.escape(caption)}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #bbb;padding:4px 10px;
text-align:right}th[scope=row]{text-align:left}figure{display:inline-block;margin:6px;
vertical-align:top}img{max-width:100%;border:1px solid #ddd}figcaption{font-size:12px;color:#555}
code,pre{background:#f4f4f4;padding:2px 4px}
"""


# Written into the page so anyone (or a headless browser) can see whether every picture loaded.
RENDER_CHECK = """<p id='render-check'>pictures: checking...</p><script>
window.addEventListener('load', () => {
  const images = [...document.images];
  const ok = images.filter((i) => i.complete && i.naturalWidth > 0).length;
  document.getElementById('render-check').textContent =
    `pictures: ${ok} of ${images.length} loaded`;
});</script>"""


def write_report(
    out_dir: Path,
    rows: dict[str, dict[str, float]],
    sections: list[tuple[str, list[Path]]],
    notes: list[str],
    *,
    keys: list[str] = TABLE_KEYS,
    heading: str = "Class-agnostic mask metrics on the validation images",
    file_name: str = "index.html",
    tables: list[tuple[str, dict[str, dict[str, float | None]], list[str]]] = (),
) -> Path:
    """Write ``out_dir/file_name``; images are linked by paths relative to ``out_dir``.
    ``tables``: more (heading, rows, keys) tables after the first."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>uis_d2 report</title>",
        f"<style>{STYLE}</style></head><body><h1>uis_d2: unsupervised instance segmentation</h1>",
        f"<h2>{html.escape(heading)}</h2>",
        _html_table(rows, keys),
    ]
    for title, extra_rows, extra_keys in tables:
        parts += [f"<h2>{html.escape(title)}</h2>", _html_table(extra_rows, extra_keys, "")]
    parts += [f"<p>{html.escape(note)}</p>" for note in notes]
    for title, images in sections:
        parts.append(f"<h2>{html.escape(title)}</h2><div>")
        for image in images:
            rel = image.relative_to(out_dir).as_posix()
            parts.append(_figure(rel, image.stem))
        parts.append("</div>")
    parts.append(RENDER_CHECK)
    parts.append("</body></html>")
    path = out_dir / file_name
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
