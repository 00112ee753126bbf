"""The admin's dashboard as server-rendered HTML: a view of the status JSON, nothing computed here.

Self-contained on purpose (inline CSS, SVG charts, no script, no CDN): it works on a machine without internet,
behind the same Basic auth as the API, and refreshes itself with a ``<meta refresh>``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from html import escape
from typing import Any

#: Label Studio's palette: its blue for links and series, its brand orange-red for warnings
BLUE, ORANGE, GREEN, RED, GREY = "#0099ff", "#ff7557", "#2da44e", "#d1242f", "#8c8c8c"

_CSS = f"""
*{{box-sizing:border-box}} body{{margin:0;font:14px/1.45 -apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;
color:#1f1f1f;background:#f6f6f7}} header{{background:#fff;border-bottom:1px solid #e5e5e5;padding:12px 24px;
display:flex;gap:16px;align-items:center}} header b{{color:{ORANGE};font-size:16px}} main{{padding:16px 24px;
display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:16px}} section{{background:#fff;
border:1px solid #e5e5e5;border-radius:8px;padding:14px 16px;overflow:auto}} section.wide{{grid-column:1/-1}}
h2{{font-size:13px;text-transform:uppercase;letter-spacing:.04em;color:#555;margin:0 0 10px}}
table{{border-collapse:collapse;width:100%}} th,td{{text-align:left;padding:4px 8px;border-bottom:1px solid #eee;
vertical-align:top}} th{{font-weight:600;color:#555;font-size:12px}} td.n{{text-align:right;
font-variant-numeric:tabular-nums}} a{{color:{BLUE};text-decoration:none}} a:hover{{text-decoration:underline}}
.tag{{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;background:#eef6ff;color:{BLUE}}}
.tag.kept{{background:#fff1ee;color:{ORANGE}}} .tag.current{{background:{BLUE};color:#fff}}
.signal{{padding:12px 14px;border-radius:8px;font-weight:600;margin-bottom:10px}}
.signal.stop{{background:#fff1ee;color:{RED};border:1px solid {ORANGE}}}
.signal.go{{background:#eefbf1;color:{GREEN};border:1px solid {GREEN}}}
.progress{{height:10px;background:#eee;border-radius:5px;overflow:hidden;min-width:120px}}
.progress>span{{display:block;height:100%;background:{BLUE}}} .progress.failed>span{{background:{RED}}}
.muted{{color:{GREY}}} .big{{font-size:22px;font-weight:600}} .kpis{{display:flex;gap:28px;flex-wrap:wrap}}
"""


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return escape(str(value))


def _when(ts: float | None) -> str:
    return "–" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _page(title: str, body: str, refresh: int) -> str:
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh > 0 else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">{meta}<title>{escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_CSS}</style></head>'
        f"<body><header><b>Active learning</b><span>{escape(title)}</span>"
        f'<a href="/dashboard">all projects</a><span class="muted">'
        f"{'refreshes every ' + str(refresh) + ' s' if refresh > 0 else 'no auto refresh'}</span></header>"
        f"<main>{body}</main></body></html>"
    )


def progress_bar(done: float | None, total: float | None, failed: bool = False, label: str = "") -> str:
    """A bar for done/total (empty while unknown), with the figures as its accessible value."""
    share = 0.0 if not total or done is None else max(0.0, min(1.0, float(done) / float(total)))
    text = f"{_fmt(done, 0)}/{_fmt(total, 0)}" if total else "–"
    return (
        f'<div class="progress{" failed" if failed else ""}" role="progressbar" aria-valuemin="0" '
        f'aria-valuemax="100" aria-valuenow="{round(100 * share)}" aria-label="{escape(label)}" title="{text}">'
        f'<span style="width:{100 * share:.1f}%"></span></div>'
    )


def learning_curve_svg(points: Sequence[dict[str, Any]], width: int = 640, height: int = 260) -> str:
    """Labels -> held-out accuracy and macro-F1 per trained version; hollow points are versions that were kept
    out (not promoted)."""
    if not points:
        return (
            '<p class="muted" id="learning-curve">No evaluated version yet: the curve starts with the first '
            "version trained on a held-out split.</p>"
        )
    left, right, top, bottom = 44, 16, 12, 34
    xs = [p["n_labels"] for p in points]
    x0, x1 = min(xs), max(xs)
    span = max(x1 - x0, 1)

    def x(n: float) -> float:
        return left + (width - left - right) * ((n - x0) / span if x1 > x0 else 0.5)

    def y(v: float) -> float:
        return top + (height - top - bottom) * (1.0 - v)

    parts = [
        f'<svg id="learning-curve" xmlns="http://www.w3.org/2000/svg" width="100%" style="max-width:{width}px" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="learning curve">'
    ]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#eee"/>'
            f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" font-size="11" text-anchor="end" fill="#777">{tick:.2f}</text>'
        )
    for n in sorted(set(xs)) if len(set(xs)) <= 8 else [x0 + span * i / 6 for i in range(7)]:
        parts.append(
            f'<text x="{x(n):.1f}" y="{height - bottom + 16}" font-size="11" text-anchor="middle" '
            f'fill="#777">{n:.0f}</text>'
        )
    parts.append(
        f'<text x="{(left + width - right) / 2}" y="{height - 4}" font-size="11" text-anchor="middle" '
        'fill="#555">labels</text>'
    )
    for key, colour in (("accuracy", BLUE), ("macro_f1", ORANGE)):
        pts = [(x(p["n_labels"]), y(p[key]), p) for p in points if p.get(key) is not None]
        if not pts:
            continue
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _ in pts)
        parts.append(
            f'<polyline class="series" data-series="{key}" fill="none" stroke="{colour}" stroke-width="2" '
            f'points="{path}"/>'
        )
        for px, py, p in pts:
            fill = colour if p.get("promoted") else "#fff"
            parts.append(
                f'<circle cx="{px:.1f}" cy="{py:.1f}" r="4" fill="{fill}" stroke="{colour}" stroke-width="2">'
                f"<title>{escape(p['version'])}: {key} {p[key]:.3f} at {p['n_labels']} labels</title></circle>"
            )
    parts.append(
        f'<g font-size="11"><rect x="{left + 8}" y="{top + 4}" width="10" height="3" fill="{BLUE}"/>'
        f'<text x="{left + 22}" y="{top + 9}">held-out accuracy</text>'
        f'<rect x="{left + 130}" y="{top + 4}" width="10" height="3" fill="{ORANGE}"/>'
        f'<text x="{left + 144}" y="{top + 9}">macro-F1</text></g></svg>'
    )
    return "".join(parts)


def class_balance_svg(counts: dict[str, int], width: int = 420) -> str:
    if not counts:
        return '<p class="muted">No labels yet.</p>'
    top = max(max(counts.values()), 1)
    row = 22
    parts = [
        f'<svg id="class-balance" xmlns="http://www.w3.org/2000/svg" width="100%" style="max-width:{width}px" '
        f'viewBox="0 0 {width} {row * len(counts)}">'
    ]
    for i, (label, n) in enumerate(counts.items()):
        bar = (width - 190) * n / top
        parts.append(
            f'<text x="0" y="{i * row + 15}" font-size="12">{escape(label[:22])}</text>'
            f'<rect x="150" y="{i * row + 5}" width="{bar:.1f}" height="12" rx="3" fill="{BLUE}"/>'
            f'<text x="{156 + bar:.1f}" y="{i * row + 15}" font-size="12" fill="#555">{n}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _link(item: dict[str, Any]) -> str:
    task = escape(str(item["task"]))
    return f'<a class="ls-link" href="{escape(item["url"])}">task {task}</a>' if item.get("url") else f"task {task}"


def _stopping(status: dict[str, Any]) -> str:
    stopping, budget = status["stopping"], status["budget"]
    if stopping["stop"]:
        head = '<div class="signal stop" id="stop-signal">Stop labelling: ' + escape("; ".join(stopping["reasons"]))
        head += " (retraining stopped)" if stopping["stops_training"] else ""
        head += "</div>"
    else:
        head = '<div class="signal go" id="stop-signal">Keep labelling: no decisive stopping rule has fired</div>'
    rows = "".join(
        f"<tr><td>{escape(c['name'])}{' <span class=tag>decisive</span>' if c['decisive'] else ''}</td>"
        f"<td>{'fired' if c['fired'] else '–'}</td><td class=n>{_fmt(c['value'])}</td>"
        f"<td class=n>{_fmt(c['threshold'])}</td><td>{escape(c['detail'])}</td></tr>"
        for c in stopping["criteria"]
    )
    spent = (
        f"<p>Label budget: <b>{budget['spent']}</b> of <b>{budget['budget']}</b> spent, {budget['left']} left</p>"
        + progress_bar(budget["spent"], budget["budget"], budget["exhausted"], "label budget")
        if budget["budget"] is not None
        else f"<p>Labels spent: <b>{budget['spent']}</b> (no budget set: LS extra params "
        '<code>{"label_budget": n}</code> or the model config\'s <code>stopping.label_budget</code>)</p>'
    )
    return (
        f'<section><h2>Stopping signal and budget</h2>{head}{spent}<table id="stopping"><tr><th>criterion</th>'
        f"<th>state</th><th>value</th><th>threshold</th><th>why</th></tr>{rows}</table></section>"
    )


def _versions(status: dict[str, Any]) -> str:
    rows = []
    for v in reversed(status["versions"]):
        tags = '<span class="tag current">current</span> ' if v["current"] else ""
        tags += '<span class="tag">promoted</span>' if v["promoted"] else '<span class="tag kept">kept out</span>'
        rows.append(
            f"<tr><td>{escape(v['version'])}<br>{tags}</td><td class=n>{v['n_labels']}</td>"
            f"<td class=n>{_fmt(v['accuracy'])}</td><td class=n>{_fmt(v['macro_f1'])}</td>"
            f"<td class=n>{_fmt(v['kappa_with_previous'])}</td><td>{escape(v['note'])}</td>"
            f"<td>{_when(v['created_at'])}</td></tr>"
        )
    return (
        '<section class="wide"><h2>Versions</h2><table id="versions"><tr><th>version</th><th>labels</th>'
        "<th>held-out acc.</th><th>macro-F1</th><th>kappa vs previous</th><th>decision</th><th>time</th></tr>"
        + "".join(rows)
        + "</table></section>"
    )


def _waiting_for_redis(status: dict[str, Any]) -> str:
    """What was kept on disk because Redis refused it (it is enqueued once Redis answers)."""
    waiting = (["a pool scoring"] if status.get("rescore_pending") else []) + (
        [f"{status['labels_deferred']} labels"] if status.get("labels_deferred") else []
    )
    return f'<p style="color:{RED}">Waiting for Redis: {" and ".join(waiting)}.</p>' if waiting else ""


def _jobs(status: dict[str, Any]) -> str:
    jobs = status.get("jobs")
    if jobs is None:
        return (
            f'<section><h2>Jobs</h2><p class="muted">{escape(status.get("jobs_error") or "")}</p>'
            f"{_waiting_for_redis(status)}</section>"
        )
    rows = []
    for job in jobs[:12]:
        meta = job.get("meta") or {}
        failed = job["status"] == "failed"
        bar = progress_bar(meta.get("done"), meta.get("total"), failed, f"{job['kind']} {job['status']}")
        error = f'<br><span style="color:{RED}">{escape(job["error"])}</span>' if job.get("error") else ""
        rows.append(
            f"<tr><td>{escape(str(job['kind']))}</td><td>{escape(job['status'])}</td>"
            f"<td>{escape(str(meta.get('stage') or ''))}{error}</td><td>{bar}</td></tr>"
        )
    last = f'<p style="color:{RED}">Last error: {escape(status["last_error"])}</p>' if status.get("last_error") else ""
    return (
        f"<section><h2>Jobs</h2>{last}{_waiting_for_redis(status)}"
        '<table id="jobs"><tr><th>job</th><th>status</th><th>stage</th><th>progress</th></tr>'
        f"{''.join(rows) or '<tr><td colspan=4 class=muted>no recent job</td></tr>'}"
        "</table></section>"
    )


def _next(status: dict[str, Any]) -> str:
    nxt = status["next_tasks"]
    rows = "".join(
        f"<tr><td class=n>{t['rank']}</td><td>{_link(t)}</td><td class=n>{t['score']:.4f}</td>"
        f"<td class=n>{_fmt(t['uncertainty'])}</td><td>{_fmt(t['predicted'])}</td><td>{escape(t['reason'])}</td></tr>"
        for t in nxt["tasks"]
    )
    when = f"scored by {escape(nxt['version'])} at {_when(nxt['scored_at'])}" if nxt["scored_at"] else "not scored yet"
    return (
        f'<section class="wide"><h2>Next {len(nxt["tasks"])} tasks Label Studio serves</h2>'
        f'<p class="muted">Lowest score first; {when}.</p><table id="next-tasks"><tr><th>#</th><th>task</th>'
        f"<th>score</th><th>uncertainty</th><th>model says</th><th>why here</th></tr>{rows}</table></section>"
    )


def _hard(status: dict[str, Any]) -> str:
    hard = status["hard_examples"]
    wrong = "".join(
        f"<tr><td>{_link(d)}</td><td>{escape(d['human'])}</td><td>{escape(d['predicted'])}</td>"
        f"<td class=n>{d['confidence']:.3f}</td></tr>"
        for d in hard["disagreements"]
    )
    flips = "".join(
        f"<tr><td>{_link(f)}</td><td class=n>{f['flips']}</td><td>{escape(' → '.join(f['labels']))}</td></tr>"
        for f in hard["flips"]
    )
    none = '<tr><td colspan=4 class="muted">none</td></tr>'
    return (
        '<section><h2>Hard examples: possible label errors</h2><p class="muted">Labelled tasks where the current '
        'model, trained on that very label, confidently predicts another.</p><table id="label-errors"><tr>'
        f"<th>task</th><th>human</th><th>model</th><th>confidence</th></tr>{wrong or none}</table></section>"
        '<section><h2>Hard examples: flipping predictions</h2><p class="muted">Unlabelled tasks whose predicted '
        'label changed most often across versions.</p><table id="flips"><tr><th>task</th><th>flips</th>'
        f"<th>labels, oldest first</th></tr>{flips or none}</table></section>"
    )


def project_page(status: dict[str, Any], refresh: int = 10) -> str:
    """The dashboard of one project from its status JSON (``GET /projects/{id}/status``)."""
    curve = status["learning_curve"]
    last = curve[-1] if curve else {}
    kpis = (
        f'<div class="kpis"><div><div class="muted">current version</div><div class="big">'
        f"{escape(status['current_version'])}</div></div><div><div class=muted>labels</div>"
        f"<div class=big>{status['budget']['spent']}</div></div><div><div class=muted>held-out accuracy</div>"
        f"<div class=big>{_fmt(last.get('accuracy'))}</div></div><div><div class=muted>macro-F1</div>"
        f"<div class=big>{_fmt(last.get('macro_f1'))}</div></div></div>"
    )
    broken = status.get("model_config_error")
    kpis += f'<p style="color:{RED}">{escape(broken)}</p>' if broken else ""
    body = (
        f'<section class="wide"><h2>Project {status["project"]}</h2>{kpis}</section>'
        f"<section><h2>Learning curve</h2>{learning_curve_svg(curve)}</section>"
        + _stopping(status)
        + _versions(status)
        + f"<section><h2>Class balance of the labels</h2>{class_balance_svg(status['class_balance'])}</section>"
        + _jobs(status)
        + _next(status)
        + _hard(status)
    )
    return _page(f"Project {status['project']}", body, refresh)


def index_page(projects: Sequence[dict[str, Any]], refresh: int = 10) -> str:
    """All projects: one row each from its status (version, labels, accuracy, stopping, budget)."""
    rows = []
    for s in projects:
        curve = s["learning_curve"]
        budget = s["budget"]
        rows.append(
            f'<tr><td><a href="/dashboard/projects/{s["project"]}">project {s["project"]}</a></td>'
            f"<td>{escape(s['current_version'])}</td><td class=n>{budget['spent']}</td>"
            f"<td class=n>{_fmt(curve[-1]['accuracy'] if curve else None)}</td>"
            f"<td>{'<b style=color:' + RED + '>stop</b>' if s['stopping']['stop'] else 'keep labelling'}</td>"
            f"<td>{'–' if budget['budget'] is None else str(budget['left']) + ' left of ' + str(budget['budget'])}</td>"
            "</tr>"
        )
    table = (
        '<section class="wide"><h2>Projects</h2><table id="projects"><tr><th>project</th><th>current version</th>'
        "<th>labels</th><th>held-out acc.</th><th>signal</th><th>budget</th></tr>"
        + ("".join(rows) or '<tr><td colspan=6 class="muted">No project connected yet.</td></tr>')
        + "</table></section>"
    )
    return _page("All projects", table, refresh)
