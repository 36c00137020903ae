"""Renderings of a triage document: Markdown, a terminal table (rich) and one
self-contained HTML page (inline CSS, JS and SVG: it loads nothing from the network)."""

from __future__ import annotations

import html
import json
from typing import Any


def _short(path: str, n: int = 60) -> str:
    return path if len(path) <= n else "…" + path[-(n - 1) :]


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(doc: dict[str, Any]) -> str:
    t = doc["totals"]
    out = [
        "# kvmcore triage",
        "",
        f"{t['files']} files, {t['dumps']} distinct dumps ({t['duplicates']} duplicates), "
        f"{t['buckets']} buckets, {t['errors']} errors; {t['new_dumps']} new dumps and "
        f"{t['new_buckets']} new buckets since the last run"
        + (
            f" (run {doc['previous_run']['id']}, {doc['previous_run']['finished']})"
            if doc.get("previous_run")
            else " (first run)"
        )
        + ".",
        "",
        "| # | count | kind | signature | top frames | first seen | last seen | kernels | arch "
        "| new |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, b in enumerate(doc["buckets"], 1):
        s = b["signature"]
        out.append(
            f"| {i} | {b['count']} | {s['kind']} | {_md(s['message'])} | "
            f"{_md(' < '.join(s['frames']))} | {b['first_seen'] or '-'} | "
            f"{b['last_seen'] or '-'} | {_md(', '.join(b['kernels']))} | "
            f"{', '.join(b['architectures'])} | {'new' if b['new'] else ''} |"
        )
    for i, b in enumerate(doc["buckets"], 1):
        s = b["signature"]
        rep = b["representative"]
        out += [
            "",
            f"## {i}. {s['kind']}: {_md(s['message'])} (`{s['id']}`)",
            "",
            f"Representative: `{rep['path']}`: {rep['headline']}",
            "",
            "```",
        ]
        out += rep["backtrace"] or ["(no backtrace)"]
        out += ["```", "", "| member | time | kernel | headline |", "|---|---|---|---|"]
        for m in b["members"]:
            out.append(
                f"| `{_md(m['path'])}` | {m['time'] or '-'} ({m['time_source']}) | "
                f"{m['release'] or '-'} | {_md(m['headline'])} |"
            )
    if doc["errors"]:
        out += ["", "## Errors", "", "| file | error |", "|---|---|"]
        for e in doc["errors"]:
            out.append(f"| `{_md(e['path'])}` | {_md(e['error'])} |")
    return "\n".join(out) + "\n"


def _minute(iso: str | None) -> str:
    return iso[:16].replace("T", " ") if iso else "-"


def render_rich(doc: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    t = doc["totals"]
    table = Table(
        title=f"kvmcore triage: {t['dumps']} dumps in {t['buckets']} buckets, "
        f"{t['errors']} errors, {t['new_dumps']} new"
    )
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("n", justify="right", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("signature", ratio=3, overflow="fold")
    table.add_column("top frames", ratio=2, overflow="fold")
    table.add_column("first / last seen", no_wrap=True)
    table.add_column("kernels", ratio=1, overflow="fold")
    for i, b in enumerate(doc["buckets"], 1):
        s = b["signature"]
        kind = f"[bold]{s['kind']}[/bold]" + (" [yellow]new[/yellow]" if b["new"] else "")
        table.add_row(
            str(i),
            str(b["count"]),
            kind,
            s["message"],
            " < ".join(s["frames"][:3]),
            f"{_minute(b['first_seen'])}\n{_minute(b['last_seen'])}",
            ", ".join(b["kernels"]),
        )
    console.print(table)
    for e in doc["errors"]:
        console.print(f"[red]error[/red] {e['path']}: {e['error']}", highlight=False)


def render_text(doc: dict[str, Any]) -> str:
    t = doc["totals"]
    lines = [
        f"{t['files']} files, {t['dumps']} dumps, {t['buckets']} buckets, "
        f"{t['errors']} errors, {t['new_dumps']} new dumps, {t['new_buckets']} new buckets"
    ]
    for i, b in enumerate(doc["buckets"], 1):
        s = b["signature"]
        lines.append(
            f"{i:3} {b['count']:5}  {s['kind']:11} {s['message']}  "
            f"[{' < '.join(s['frames'][:3])}]{'  NEW' if b['new'] else ''}"
        )
    for e in doc["errors"]:
        lines.append(f"  error {e['path']}: {e['error']}")
    return "\n".join(lines)


# --- HTML ---------------------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px}
.totals span{display:inline-block;margin:0 16px 8px 0;padding:6px 10px;background:#fff;
 border:1px solid #ddd;border-radius:6px}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#eee;cursor:pointer;user-select:none}
tr.new td:first-child{border-left:4px solid #e67e22}
code,pre{font:12px/1.35 ui-monospace,monospace} pre{background:#f3f3f3;padding:8px;overflow:auto}
.kind{font-weight:600} .err{color:#b00} details{margin:6px 0;background:#fff;padding:6px 10px;
 border:1px solid #ddd;border-radius:6px} summary{cursor:pointer}
svg text{font:11px system-ui,sans-serif;fill:#333} .bar:hover{opacity:.7}
"""

_JS = """
(function(){
  function sortTable(th){
    var table=th.closest('table'), idx=Array.prototype.indexOf.call(th.parentNode.children,th);
    var rows=Array.prototype.slice.call(table.tBodies[0].rows);
    var asc=th.getAttribute('data-asc')!=='1';
    rows.sort(function(a,b){
      var x=a.cells[idx].getAttribute('data-v')||a.cells[idx].textContent,
          y=b.cells[idx].getAttribute('data-v')||b.cells[idx].textContent;
      var nx=parseFloat(x), ny=parseFloat(y);
      var c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);
      return asc?c:-c;});
    rows.forEach(function(r){table.tBodies[0].appendChild(r);});
    th.setAttribute('data-asc',asc?'1':'0');
  }
  document.querySelectorAll('table.sortable th').forEach(function(th){
    th.addEventListener('click',function(){sortTable(th);});});
  document.getElementById('triage-ready').textContent='ready';
})();
"""

_KIND_COLORS = {
    "oops": "#c0392b",
    "bug": "#8e44ad",
    "warning": "#f39c12",
    "panic": "#2c3e50",
    "sysrq": "#7f8c8d",
    "soft_lockup": "#16a085",
    "hard_lockup": "#27ae60",
    "hung_task": "#2980b9",
    "oom": "#d35400",
}


def _histogram(doc: dict[str, Any], width: int = 900, height: int = 220, bins: int = 24) -> str:
    points = [
        (m["epoch"], b["signature"]["kind"])
        for b in doc["buckets"]
        for m in b["members"]
        if m.get("epoch") is not None
    ]
    if not points:
        return (
            '<svg id="histogram" width="300" height="40"><text x="4" y="20">no dated crashes'
            "</text></svg>"
        )
    lo = min(p[0] for p in points)
    hi = max(p[0] for p in points)
    span = max(hi - lo, 1.0)
    nb = bins if hi > lo else 1
    counts: list[dict[str, int]] = [{} for _ in range(nb)]
    for t, kind in points:
        i = min(nb - 1, int((t - lo) / span * nb))
        counts[i][kind] = counts[i].get(kind, 0) + 1
    top = max(sum(c.values()) for c in counts) or 1
    pad_l, pad_b, pad_t = 36, 36, 10
    plot_w, plot_h = width - pad_l - 10, height - pad_b - pad_t
    bw = plot_w / nb
    parts = [
        f'<svg id="histogram" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" role="img" aria-label="crashes over time">',
        f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{pad_l + plot_w}" '
        f'y2="{pad_t + plot_h}" stroke="#999"/>',
        f'<text x="2" y="{pad_t + 10}">{top}</text>',
        f'<text x="2" y="{pad_t + plot_h}">0</text>',
    ]
    from .engine import _iso

    for i, c in enumerate(counts):
        y: float = pad_t + plot_h
        for kind in sorted(c):
            h = c[kind] / top * plot_h
            y -= h
            color = _KIND_COLORS.get(kind, "#555")
            t0 = _iso(lo + span * i / nb)
            parts.append(
                f'<rect class="bar" x="{pad_l + i * bw + 1:.1f}" y="{y:.1f}" '
                f'width="{max(bw - 2, 1):.1f}" height="{h:.1f}" fill="{color}">'
                f"<title>{html.escape(kind)}: {c[kind]} (from {t0})</title></rect>"
            )
    parts.append(f'<text x="{pad_l}" y="{height - 8}">{html.escape(_iso(lo) or "")}</text>')
    parts.append(
        f'<text x="{pad_l + plot_w}" y="{height - 8}" text-anchor="end">'
        f"{html.escape(_iso(hi) or '')}</text>"
    )
    x = pad_l + 200
    for kind in sorted({k for _, k in points}):
        parts.append(
            f'<rect x="{x}" y="{height - 19}" width="10" height="10" '
            f'fill="{_KIND_COLORS.get(kind, "#555")}"/>'
            f'<text x="{x + 13}" y="{height - 10}">{html.escape(kind)}</text>'
        )
        x += 14 + 7 * len(kind) + 10
    parts.append("</svg>")
    return "".join(parts)


def render_html(doc: dict[str, Any]) -> str:
    e = html.escape
    t = doc["totals"]
    prev = doc.get("previous_run")
    rows = []
    for i, b in enumerate(doc["buckets"], 1):
        s = b["signature"]
        rows.append(
            f'<tr class="{"new" if b["new"] else ""}" id="row-{e(s["id"])}">'
            f'<td data-v="{i}">{i}</td><td data-v="{b["count"]}">{b["count"]}</td>'
            f'<td class="kind">{e(s["kind"])}</td><td>{e(s["message"])}</td>'
            f"<td><code>{e(' < '.join(s['frames']))}</code></td>"
            f"<td>{e(b['first_seen'] or '-')}</td><td>{e(b['last_seen'] or '-')}</td>"
            f"<td>{e(', '.join(b['kernels']))}</td><td>{e(', '.join(b['architectures']))}</td>"
            f"<td>{'new' if b['new'] else ''}</td>"
            f'<td><a href="#bucket-{e(s["id"])}"><code>{e(s["id"])}</code></a></td></tr>'
        )
    details = []
    for i, b in enumerate(doc["buckets"], 1):
        s = b["signature"]
        rep = b["representative"]
        members = "".join(
            f"<tr><td><code>{e(m['path'])}</code></td><td>{e(m['time'] or '-')} "
            f"({e(m['time_source'])})</td><td>{e(m['release'] or '-')}</td>"
            f"<td>{e(m['headline'])}</td><td>{'new' if m['new'] else ''}</td></tr>"
            for m in b["members"]
        )
        details.append(
            f'<details id="bucket-{e(s["id"])}" class="bucket"{" open" if i <= 3 else ""}>'
            f"<summary><b>{i}.</b> <span class=kind>{e(s['kind'])}</span> "
            f"{e(s['message'])} — {b['count']} dump(s)</summary>"
            f"<p>Representative <code>{e(rep['path'])}</code>: {e(rep['headline'])}</p>"
            f"<p>Title line: <code>{e(rep.get('title') or '')}</code></p>"
            f'<pre class="backtrace">{e(chr(10).join(rep["backtrace"]) or "(no backtrace)")}'
            f"</pre><table><thead><tr><th>member</th><th>time</th><th>kernel</th>"
            f"<th>headline</th><th>new</th></tr></thead><tbody>{members}</tbody></table>"
            f"</details>"
        )
    errors = "".join(
        f"<tr><td><code>{e(x['path'])}</code></td><td class=err>{e(x['error'])}</td>"
        f"<td>{e(str(x.get('exit_code')))}</td></tr>"
        for x in doc["errors"]
    )
    since = f"since run {prev['id']} ({e(prev['finished'] or '')})" if prev else "(first run)"
    data = json.dumps({"totals": t, "generated": doc.get("generated")}).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>kvmcore triage: {t["dumps"]} dumps, {t["buckets"]} buckets</title>
<style>{_CSS}</style></head>
<body>
<h1>kvmcore triage</h1>
<p>Generated {e(doc.get("generated") or "")} by kvmcore {e(doc.get("kvmcore_version") or "")};
run {doc.get("run")} on {e(str((doc.get("engine") or {}).get("kind")))}.</p>
<div class="totals" id="totals">
<span><b id="n-files">{t["files"]}</b> files</span>
<span><b id="n-dumps">{t["dumps"]}</b> distinct dumps</span>
<span><b>{t["duplicates"]}</b> duplicates</span>
<span><b id="n-buckets">{t["buckets"]}</b> buckets</span>
<span><b id="n-errors">{t["errors"]}</b> errors</span>
<span><b>{t["new_dumps"]}</b> new dumps, <b>{t["new_buckets"]}</b> new buckets {since}</span>
</div>
<h2>Crashes over time</h2>
{_histogram(doc)}
<h2>Buckets</h2>
<table id="buckets" class="sortable"><thead><tr><th>#</th><th>count</th><th>kind</th>
<th>message</th><th>top frames</th><th>first seen</th><th>last seen</th><th>kernels</th>
<th>arch</th><th>new</th><th>signature</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>
<h2>Representative backtraces</h2>
{"".join(details)}
<h2>Errors</h2>
<table id="errors"><thead><tr><th>file</th><th>error</th><th>exit</th></tr></thead>
<tbody>{errors}</tbody></table>
<p id="triage-ready" hidden>loading</p>
<script type="application/json" id="triage-data">{data}</script>
<script>{_JS}</script>
</body></html>
"""
