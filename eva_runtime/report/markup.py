"""HTML of the reports: escaping, numbers, tables, sections and the page."""

from __future__ import annotations

import html
import re
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import pandas as pd

TEXT_LIMIT = 280  # characters of a prompt shown in a table cell
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f3f5f8;color:#1f2328;
 font:14px/1.45 "DejaVu Sans",system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
main{max-width:1260px;margin:0 auto;padding:20px 24px 40px}
header.top{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:16px 20px}
h1{font-size:22px;margin:0 0 2px}
h2{font-size:17px;margin:0 0 10px;padding-bottom:6px;border-bottom:1px solid #e5e8eb}
h3{font-size:14px;margin:14px 0 6px}
.sub{color:#57606a;font-size:12px;word-break:break-all}
section{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:14px 20px;
 margin:14px 0}
table{border-collapse:collapse;margin:6px 0 10px;font-variant-numeric:tabular-nums}
th,td{padding:4px 10px;border-bottom:1px solid #e5e8eb;text-align:right;vertical-align:top}
th{background:#f6f8fa;font-weight:600;white-space:nowrap}
td.t,th.t{text-align:left}
td.p{text-align:left;white-space:pre-wrap;word-break:break-word;max-width:440px;
 font-size:13px}
tr:nth-child(even) td{background:#fbfcfd}
th.grp{text-align:center}
th.a{color:#1f77b4}th.b{color:#ff7f0e}
table.cmp td:nth-child(even),table.cmp th.a,table.cmp th.grp{border-left:1px solid #d0d7de}
ul.kids{margin:0;padding-left:18px;text-align:left}
ul.kids li{white-space:pre-wrap;word-break:break-word;font-size:13px;margin:0 0 3px}
.tag{display:inline-block;background:#ddf4ff;color:#0550ae;border-radius:10px;
 padding:0 7px;font-size:11px;margin-right:4px;white-space:nowrap}
.tw{overflow-x:auto}
.figs{display:grid;grid-template-columns:repeat(auto-fill,minmax(440px,1fr));gap:14px;
 margin:6px 0 10px}
.figs figure{margin:0;max-width:600px}
.figs img{display:block;width:100%;height:auto;border:1px solid #e5e8eb;border-radius:4px}
.note{color:#57606a;margin:4px 0 8px}
.missing{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:8px 12px;
 margin:8px 0}
.ok{background:#dafbe1;border:1px solid #4ac26b;border-radius:6px;padding:8px 12px;
 margin:8px 0}
.disabled{background:#f6f8fa;border:1px dashed #8c959f;border-radius:6px;padding:8px 12px;
 color:#57606a;font-style:italic}
dl.spec{display:grid;grid-template-columns:max-content 1fr max-content 1fr;gap:3px 14px;
 margin:10px 0 0}
dl.spec dt{color:#57606a}
dl.spec dd{margin:0;word-break:break-word}
.curve{font-variant-numeric:tabular-nums}
"""


def _clean(value: Any) -> str:
    """Text safe to escape: control characters (invalid in HTML) shown as U+FFFD."""
    if value is None or (not isinstance(value, str) and _isna(value)):
        return ""
    return _CONTROL.sub("\ufffd", str(value))


def _isna(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _e(value: Any, limit: int | None = None) -> str:
    """Escape untrusted text for HTML, truncating first so no entity is ever cut."""
    text = _clean(value)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return html.escape(text, quote=True)


def _prompt_cell(text: Any, cls: str = "p") -> str:
    """A prompt in a table cell; a truncated one keeps its full text in the tooltip."""
    clean = _clean(text).strip()
    title = f' title="{_e(clean, 4000)}"' if len(clean) > TEXT_LIMIT else ""
    return f'<td class="{cls}"{title}>{_e(clean, TEXT_LIMIT)}</td>'


def _num(value: Any, digits: int = 4) -> str:
    if value is None or _isna(value):
        return "–"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return f"{float(value):.{digits}f}"
    return _e(value)


def _pct(value: Any) -> str:
    if value is None or _isna(value):
        return "–"
    return f"{100 * float(value):.1f}%"


def _mpl_text(value: Any, limit: int = 40) -> str:
    """Text for a figure: short, and with ``$`` escaped so mathtext never parses it."""
    text = _clean(value).replace("\n", " ")
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def _table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    text: Collection[int] = (),
    head: str | None = None,
    cls: str = "",
) -> str:
    """Rows of already-escaped cells (a cell may be a whole ``<td>``); columns in ``text``
    are left-aligned text, the rest right-aligned numbers. ``head`` replaces the header row."""
    if head is None:
        head = (
            "<tr>"
            + "".join(
                f'<th class="t">{_e(h)}</th>' if i in text else f"<th>{_e(h)}</th>"
                for i, h in enumerate(headers)
            )
            + "</tr>"
        )
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            if cell.startswith("<td"):
                cells.append(cell)
            else:
                cells.append(f'<td class="t">{cell}</td>' if i in text else f"<td>{cell}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<div class="tw"><table class="{cls}"><thead>{head}</thead><tbody>{"".join(body)}</tbody>'
        "</table></div>"
    )


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{_e(title)}</h2>{body}</section>'


def _missing(text: str) -> str:
    return f'<p class="missing">{_e(text)}</p>'


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def _curve_text(curve: Sequence[tuple[str, float, Any, Any]]) -> str:
    return " → ".join(f"{_e(label)} {float(v):.4f}" for label, v, _s, _w in curve)
