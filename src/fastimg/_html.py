"""A self-contained HTML page of query results (``fastimg query --html FILE``).

Thumbnails are made with OpenCV (imported lazily, when the page is written) and
embedded as base64 JPEG ``data:`` URIs, so the page can be moved, mailed or opened
offline. Each query and each hit is a ``<figure>`` whose ``data-*`` attributes
carry the same fields as ``fastimg query --json`` (rank, id, score, path), so
the page is also machine-checkable.
"""
from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any, Iterable

THUMB_SIDE = 192  # longest side of a thumbnail, pixels

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; background: #fafafa; color: #222; }
section.query { margin-bottom: 2.5em; }
h2 { font-size: 1.05em; font-weight: 600; word-break: break-all; }
.meta { color: #666; font-size: .85em; margin: -.5em 0 1em 0; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
figure { margin: 0; width: %(side)dpx; background: #fff; border: 1px solid #ddd; border-radius: 6px;
         padding: 6px; box-shadow: 0 1px 2px rgba(0,0,0,.06); }
figure.q { border: 2px solid #3572d8; }
figure img { display: block; max-width: %(side)dpx; max-height: %(side)dpx; margin: 0 auto; }
figure .missing { width: %(side)dpx; height: %(half)dpx; display: flex; align-items: center;
                  justify-content: center; background: #eee; color: #999; font-size: .8em; }
figcaption { font-size: .75em; margin-top: 4px; word-break: break-all; }
figcaption b { font-size: 1.1em; }
""" % {"side": THUMB_SIDE, "half": THUMB_SIDE // 2}


def thumbnail_data_uri(path: str | os.PathLike, side: int = THUMB_SIDE) -> str | None:
    """A ``data:image/jpeg;base64,...`` thumbnail of the image at ``path``
    (longest side at most ``side`` pixels), or ``None`` if it cannot be read."""
    import cv2

    from fastimg.errors import ImageError
    from fastimg.image import load_image

    try:  # the shared loader: reduced JPEG decode, EXIF, alpha, pixel limit
        img = load_image(path, max_side=side)
    except ImageError:
        return None
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:  # pragma: no cover - encoding a decoded image does not fail
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _figure(cls: str, path: str, caption: str, attrs: dict[str, Any], side: int) -> str:
    uri = thumbnail_data_uri(path, side)
    esc = html.escape
    data = "".join(f' data-{k}="{esc(str(v), quote=True)}"' for k, v in attrs.items())
    try:
        href = Path(path).resolve().as_uri()
    except ValueError:  # pragma: no cover - relative path that cannot be resolved
        href = None
    if uri is None:
        inner = '<div class="missing">unreadable</div>'
    else:
        inner = f'<img src="{uri}" alt="{esc(os.path.basename(path), quote=True)}" loading="lazy">'
    if href:
        inner = f'<a href="{esc(href, quote=True)}">{inner}</a>'
    return (f'<figure class="{cls}"{data}>{inner}'
            f'<figcaption>{caption}<br>{esc(path)}</figcaption></figure>')


def render_results_page(docs: Iterable[dict], *, side: int = THUMB_SIDE, title: str = "fastimg results") -> str:
    """The page as a string. ``docs`` are the per-query documents of
    ``fastimg query --json`` (query, index, metric, took_ms, results)."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title>", f"<style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    for doc in docs:
        query = os.fspath(doc["query"])
        parts.append(f'<section class="query" data-query="{esc(query, quote=True)}">')
        parts.append(f"<h2>{esc(query)}</h2>")
        parts.append(f'<p class="meta">metric {esc(str(doc.get("metric")))} · '
                     f'{len(doc["results"])} results · {float(doc.get("took_ms", 0.0)):.1f} ms · '
                     f'index {esc(str(doc.get("index")))}</p>')
        parts.append('<div class="grid">')
        parts.append(_figure("q", query, "<b>query</b>", {"path": query}, side))
        for r in doc["results"]:
            caption = f"<b>#{int(r['rank'])}</b> score {float(r['score']):.6g}"
            attrs = {"rank": int(r["rank"]), "id": int(r["id"]), "score": repr(float(r["score"])),
                     "path": os.fspath(r["path"])}
            parts.append(_figure("hit", os.fspath(r["path"]), caption, attrs, side))
        parts.append("</div></section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_results_page(docs: Iterable[dict], out: str | os.PathLike, *, side: int = THUMB_SIDE) -> None:
    """Write :func:`render_results_page` to ``out`` (UTF-8), atomically."""
    text = render_results_page(list(docs), side=side)
    out = os.fspath(out)
    tmp = f"{out}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, out)
