"""The report's blocks rendered as Markdown and as one self-contained HTML page.

A block is (kind, payload):

- ("h1", title); ("section", (anchor, heading)) opens a section that the contents link to; ("h2", text)
  and ("h3", text) are headings without an anchor
- ("p", text) with `code` spans; ("list", items); ("table", (header, rows))
- ("details", (summary, table)): a long table, collapsed
- ("summary", (sentences, warnings)): the boxed summary; ("figure", (png, pdf, caption[, hero]))
- ("figures", [figure payloads]): a grid of figures

The HTML page carries its own style (a viewport meta, tables that scroll sideways inside their wrapper,
a print stylesheet) and refers to the figures by relative path, like the Markdown; nothing is fetched.
"""

from __future__ import annotations

import html

from analysis.markdown import render as plain_markdown
from analysis.markdown import table as markdown_table

Table = tuple[list[str], list[list[str]]]


def contents(blocks: list[tuple]) -> list[tuple[str, str]]:
    """(anchor, heading) of every section, in order."""
    return [payload for kind, payload in blocks if kind == "section"]


# -- Markdown ------------------------------------------------------------------------------------
def _md_table(table: Table) -> str:
    return markdown_table(*table)


def _md_figure(payload) -> str:
    png, pdf, caption = payload[:3]
    return f"[![{caption}]({png})]({png})\n\n*{caption}* ([PNG]({png}), [PDF]({pdf}))"


def markdown(blocks: list[tuple]) -> str:
    out = []
    for kind, payload in blocks:
        if kind == "h1":
            out.append(f"# {payload}")
            if contents(blocks):
                out.append("Contents: " + " · ".join(f"[{t}](#{a})" for a, t in contents(blocks)))
        elif kind == "section":
            anchor, heading = payload
            out.append(f'<a id="{anchor}"></a>\n\n## {heading}')
        elif kind in ("h2", "h3", "p", "list", "table"):  # the plain blocks: analysis.markdown's own
            out.append(plain_markdown([(kind, payload)]).rstrip("\n"))
        elif kind == "details":
            summary, table = payload
            out.append(
                f"<details><summary>{html.escape(summary)}</summary>\n\n{_md_table(table)}\n\n</details>"
            )
        elif kind == "summary":
            sentences, warnings = payload
            out.append("\n".join(f"- {s}" for s in sentences))
            if warnings:
                out.append("> **Warnings**\n>\n" + "\n".join(f"> - {w}" for w in warnings))
        elif kind == "figure":
            out.append(_md_figure(payload))
        elif kind == "figures":
            out += [_md_figure(p) for p in payload]
    return "\n\n".join(out) + "\n"


# -- HTML ----------------------------------------------------------------------------------------
STYLE = """
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,sans-serif;max-width:76rem;margin:0 auto;padding:1rem;color:#1a1a1a}
h1{font-size:1.5rem;margin:0.3rem 0}h2{font-size:1.2rem;margin:1.4rem 0 0.4rem}
h3{font-size:1rem;margin:0.8rem 0 0.3rem}p,li{margin:0.4rem 0;overflow-wrap:anywhere}
nav{font-size:0.85rem;margin:0.3rem 0 0.6rem;display:flex;flex-wrap:wrap;gap:0.1rem 1rem}
nav a{overflow-wrap:anywhere}
.summary{border:2px solid #333;border-radius:6px;padding:0.5rem 1rem;background:#f7f7f4}
.summary h2{margin-top:0.3rem}.summary ul{margin:0.3rem 0;padding-left:1.2rem}
.warnings{border-left:5px solid #b00;background:#fff3f0;padding:0.3rem 0.8rem;margin:0.5rem 0}
.warnings ul{font-size:0.9rem}
.scroll{overflow-x:auto;max-width:100%;margin:0.3rem 0 0.8rem}
table{border-collapse:collapse;font-size:0.85rem;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ccc;padding:0.15rem 0.45rem;text-align:right;white-space:nowrap}
th{background:#eee}td:first-child,th:first-child{text-align:left}
details{margin:0.3rem 0 0.8rem}summary{cursor:pointer;color:#024}
figure{margin:0.5rem 0}figure img{width:100%;height:auto;display:block;border:1px solid #ddd}
figcaption{font-size:0.85rem;color:#333}
.hero{max-width:44rem}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(22rem,1fr));gap:0.8rem}
code{background:#f0f0f0;padding:0 0.2rem;overflow-wrap:anywhere}
@media print{
 body{max-width:none;font-size:10pt;padding:0}nav,.nolink{display:none}
 a{color:inherit;text-decoration:none}.scroll{overflow:visible}
 figure,table,.summary{break-inside:avoid}h2{break-after:avoid}
 details>*{display:block}.grid{grid-template-columns:1fr 1fr}
}
"""


def _inline(text: str) -> str:
    """Escape text for HTML, turning `code` spans into <code>."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _table(table: Table) -> str:
    header, rows = table
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _figure(payload) -> str:
    png, pdf, caption, *hero = payload  # (png, pdf, caption) or (..., hero)
    png, pdf, text = html.escape(png), html.escape(pdf), _inline(caption)
    return (
        f"<figure{' class=hero' if any(hero) else ''}><a href='{png}'>"
        f"<img src='{png}' alt='{html.escape(caption)}'>"
        f"</a><figcaption>{text} (<a href='{png}'>PNG</a>, <a href='{pdf}'>PDF</a>)</figcaption></figure>"
    )


def _list(items) -> str:
    return "<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>"


def page(blocks: list[tuple]) -> str:
    title = next(p for k, p in blocks if k == "h1")
    out = [
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body><main>",
    ]
    open_section = False
    for kind, payload in blocks:
        if kind == "h1":
            links = "".join(f"<a href='#{a}'>{html.escape(t)}</a>" for a, t in contents(blocks))
            out.append(f"<h1>{_inline(payload)}</h1>")
            out.append(f"<nav aria-label='Contents'>{links}</nav>" if links else "")
        elif kind == "section":
            anchor, heading = payload
            out.append("</section>" if open_section else "")
            boxed = " class='summary'" if anchor == "summary" else ""
            out.append(f"<section id='{anchor}'{boxed}><h2>{_inline(heading)}</h2>")
            open_section = True
        elif kind in ("h2", "h3"):
            out.append(f"<{kind}>{_inline(payload)}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_inline(payload)}</p>")
        elif kind == "list":
            out.append(_list(payload))
        elif kind == "table":
            out.append(_table(payload))
        elif kind == "details":
            summary, table = payload
            out.append(f"<details><summary>{html.escape(summary)}</summary>{_table(table)}</details>")
        elif kind == "summary":
            sentences, warnings = payload
            out.append(_list(sentences))
            if warnings:
                out.append(
                    f"<div class='warnings' id='warnings'><strong>Warnings</strong>{_list(warnings)}</div>"
                )
        elif kind == "figure":
            out.append(_figure(payload))
        elif kind == "figures":
            out.append("<div class='grid'>" + "".join(_figure(p) for p in payload) + "</div>")
    out.append("</section>" if open_section else "")
    out.append("</main></body></html>")
    return "\n".join(o for o in out if o) + "\n"
