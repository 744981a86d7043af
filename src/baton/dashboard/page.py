"""The dashboard's HTML, rendered on the server from ``view.build_state``'s dict.

Pure functions of the state: ``dashboard`` is the whole page, ``feed`` what one live push
carries (each app's live block and the timeline as HTML fragments, rendered by the same
functions, plus the figures the charts plot and which buttons apply). One renderer, so
the first paint and every update look the same. Every value from the state is escaped.
Elements the tests and scripts read carry ``data-*`` attributes, not styling classes.
"""

from __future__ import annotations

import json
import time
from html import escape
from typing import Any

from baton import __version__
from baton.observe.views import canary_progress

SIGN_OUT = '<form method="post" action="/logout" class="signout"><button type="submit">Sign out</button></form>'
NONE = "\u2013"  # an en dash: "no figure yet"
CONTROL_TITLES = {"promote": "Promote", "abort": "Abort", "rollback": "Roll back"}
CONTROL_WHAT = {
    "promote": "Promote the running canary of {app} now, skipping its remaining steps?",
    "abort": "Abort the running canary of {app}? Its traffic goes back to the stable release.",
    "rollback": "Roll {app} back to its previous release?",
}


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _ms(seconds: float | None) -> str:
    return NONE if seconds is None else f"{seconds * 1000:.1f} ms"


def _pct(fraction: float | None) -> str:
    return NONE if fraction is None else f"{fraction * 100:.2f}%"


def _rate(value: float | None) -> str:
    return NONE if value is None else f"{value:.1f}"


def _clock(ts: float | None) -> str:
    return NONE if not ts else time.strftime("%H:%M:%S", time.localtime(ts))


def _shell(title: str, body: str, *, scripts: bool) -> str:
    assets = (
        '<link rel="stylesheet" href="/static/vendor/uPlot.min.css">\n'
        '<script src="/static/vendor/uPlot.iife.min.js" defer></script>\n'
        '<script src="/static/dashboard.js" defer></script>\n'
        if scripts
        else ""
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<link rel="stylesheet" href="/static/dashboard.css">
{assets}</head>
<body>
{body}
</body>
</html>
"""


def login(error: str | None) -> str:
    message = f'<p class="error" role="alert">{_e(error)}</p>' if error else ""
    body = f"""<main class="login">
<h1>Baton</h1>
<form method="post" action="/login">
{message}
<label for="token">Dashboard token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button>
</form>
</main>"""
    return _shell("Baton — sign in", body, scripts=False)


def dashboard(state: dict[str, Any], *, signed_in: bool = False) -> str:
    apps = "\n".join(app_section(name, app) for name, app in state["apps"].items())
    if not apps:
        apps = '<p data-empty="apps">No app is deployed on this host yet.</p>'
    body = f"""<header class="top">
<h1>Baton</h1>
<p class="meta">Baton {_e(__version__)} · updated <time data-field="updated">{_clock(state["ts"])}</time>
<span class="conn" data-field="connection" role="status" aria-live="polite">connecting…</span></p>
{SIGN_OUT if signed_in else ""}
</header>
<main>
<section aria-labelledby="apps-title">
<h2 id="apps-title" class="visually-hidden">Apps</h2>
<div data-region="apps">
{apps}
</div>
</section>
<section aria-labelledby="deployments-title" class="deployments">
<h2 id="deployments-title">Deployments</h2>
<div data-region="deployments">
{deployments(state["deployments"])}
</div>
</section>
</main>
<dialog data-dialog="confirm" aria-labelledby="confirm-title">
<form method="dialog">
<h2 id="confirm-title">Are you sure?</h2>
<p data-field="confirm-text"></p>
<div class="buttons">
<button value="cancel" data-button="cancel" autofocus>Cancel</button>
<button value="confirm" data-button="confirm" class="danger">Confirm</button>
</div>
</form>
</dialog>
<script type="application/json" id="initial-state">{_json_in_html(feed(state))}</script>"""
    return _shell("Baton dashboard", body, scripts=True)


def _json_in_html(value: Any) -> str:
    # No "<", ">" or "&" at all: nothing in the data can end or confuse the script element.
    text = json.dumps(value)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def app_section(name: str, app: dict[str, Any]) -> str:
    buttons = "\n".join(
        f'<button type="button" data-action="{a}" data-app="{_e(name)}"'
        f' data-confirm="{_e(CONTROL_WHAT[a].format(app=name))}">{CONTROL_TITLES[a]}</button>'
        for a in CONTROL_TITLES
    )
    return f"""<article class="app" data-app="{_e(name)}" aria-labelledby="app-{_e(name)}-title">
<h3 id="app-{_e(name)}-title">{_e(name)}</h3>
<div data-region="live" data-app="{_e(name)}">
{app_live(name, app)}
</div>
<div class="charts" data-charts="{_e(name)}">
<figure><figcaption>Requests per second</figcaption><div data-chart="rate"></div></figure>
<figure><figcaption>Error rate (5xx, %)</figcaption><div data-chart="errors"></div></figure>
<figure><figcaption>Time to first byte, p50 / p95 / p99 (ms)</figcaption><div data-chart="latency"></div></figure>
</div>
<div class="actions" role="group" aria-label="Actions on {_e(name)}">
{buttons}
<p class="action-result" data-field="action-result" role="status" aria-live="polite"></p>
</div>
</article>"""


def app_live(name: str, app: dict[str, Any]) -> str:
    live = app.get("live") or ("traffic split" if app.get("releases") else "none")
    canary = app.get("canary")
    canary_line = ""
    if canary:
        canary_line = (
            f'<p data-field="canary">Canary {_e(canary["version"])} against'
            f" {_e(canary['stable'])}: {_e(canary_progress(canary))}</p>"
        )
    deployment = app.get("deployment")
    running = (
        f'<p data-field="running">Deployment #{_e(deployment["id"])} ({_e(deployment["kind"])},'
        f" {_e(deployment['strategy'])}) at step {_e(deployment['step'])}</p>"
        if deployment
        else ""
    )
    segments = "".join(
        f'<span class="seg seg-{n % 4}" style="width:{int(r["weight"])}%"'
        f' data-release="{_e(r["version"])}" data-weight="{int(r["weight"])}"'
        f' title="{_e(r["version"])} {int(r["weight"])}%">{_e(r["version"])} {int(r["weight"])}%</span>'
        for n, r in enumerate(app.get("releases", []))
        if r.get("weight")
    )
    rows = "\n".join(_release_row(n, r) for n, r in enumerate(app.get("releases", [])))
    return f"""<p class="meta">on {_e(app.get("listen"))} · live: <strong data-field="live">{_e(live)}</strong></p>
{canary_line}{running}
<div class="split" role="img" aria-label="Traffic split: {_e(", ".join(f"{r['version']} {r['weight']}%" for r in app.get("releases", [])))}">{segments}</div>
<div class="table-wrap">
<table>
<caption class="visually-hidden">Releases of {_e(name)}</caption>
<thead><tr><th scope="col">release</th><th scope="col">state</th><th scope="col">weight</th>
<th scope="col">instances</th><th scope="col">req/s</th><th scope="col">errors</th>
<th scope="col">p50</th><th scope="col">p95</th><th scope="col">p99</th><th scope="col">requests</th></tr></thead>
<tbody>
{rows}
</tbody>
</table>
</div>"""


def _release_row(n: int, release: dict[str, Any]) -> str:
    live = release.get("live") or {}
    totals = release.get("totals") or {}
    instances = "<br>".join(
        f"#{_e(i['index'])} {_e(i['address'])} {_e(i['health'])}"
        + (f" · {int(i['in_flight'])} in flight" if i.get("in_flight") else "")
        for i in release.get("instances", [])
    )
    return (
        f'<tr data-release="{_e(release["version"])}">'
        f'<th scope="row"><span class="dot seg-{n % 4}" aria-hidden="true"></span>{_e(release["version"])}</th>'
        f'<td data-field="state">{_e(release["state"])}</td>'
        f'<td data-field="weight">{int(release["weight"])}%</td>'
        f'<td data-field="instances">{instances or NONE}</td>'
        f'<td data-field="rate">{_rate(live.get("rate"))}</td>'
        f'<td data-field="error_rate">{_pct(live.get("error_rate"))}</td>'
        f'<td data-field="p50">{_ms(live.get("p50"))}</td>'
        f'<td data-field="p95">{_ms(live.get("p95"))}</td>'
        f'<td data-field="p99">{_ms(live.get("p99"))}</td>'
        f'<td data-field="requests">{_e(totals.get("requests", NONE))}</td>'
        "</tr>"
    )


def deployments(items: list[dict[str, Any]]) -> str:
    if not items:
        return '<p data-empty="deployments">No deployment yet.</p>'
    return "\n".join(_deployment(d) for d in items)


def _deployment(dep: dict[str, Any]) -> str:
    took = f", {dep['ended'] - dep['started']:.1f}s" if dep.get("ended") else ""
    frm = f" from {_e(dep['previous'])}" if dep.get("previous") else ""
    steps = "\n".join(_timeline_item(dep["started"], t) for t in dep.get("timeline", []))
    error = (
        f'<p class="error" data-field="error">{_e(dep["error"].splitlines()[0])}</p>'
        if dep.get("error")
        else ""
    )
    signals = _signals(dep.get("signals"))
    starter = dep.get("started_by") or {}
    by = (
        f' by <span data-field="started-by">{_e(starter.get("by"))}</span> via {_e(starter.get("via"))}'
        if starter
        else ""
    )
    return f"""<article class="deployment" data-deployment="{_e(dep["id"])}" data-status="{_e(dep["status"])}">
<h3>#{_e(dep["id"])} {_e(dep["app"])} {_e(dep["kind"])} <strong>{_e(dep.get("version") or NONE)}</strong>{frm}
<span class="badge status-{_e(dep["status"])}" data-field="status">{_e(dep["status"])}</span></h3>
<p class="meta">{_e(dep["strategy"])} · started {_clock(dep["started"])}{_e(took)}{by}</p>
{error}{signals}
<ol class="timeline" data-field="timeline">
{steps}
</ol>
</article>"""


def _timeline_item(started: float, item: dict[str, Any]) -> str:
    kind = item.get("kind", "")
    at = f"+{max(0.0, item['ts'] - started):.1f}s"
    if kind == "step":
        text = f"step {item.get('step')}"
        if item.get("weight") is not None:
            text += f" ({item['weight']}%)"
    elif kind == "verdict":
        text = (
            f"verdict for step {item.get('step')}: {item.get('verdict')} → {item.get('decision')}"
        )
        reasons = item.get("reasons") or []
        if reasons:
            text += " — " + "; ".join(str(r) for r in reasons)
    elif kind == "canary_request":
        text = f"{item.get('request') or item.get('what') or 'request'} asked"
    elif kind == "signals":
        text = "deploy signals measured"
    else:
        text = kind
        if item.get("error"):
            text += f": {str(item['error']).splitlines()[0]}"
    return (
        f'<li data-kind="{_e(kind)}" data-step="{_e(item.get("step", ""))}">'
        f'<span class="at">{_e(at)}</span> {_e(text)}</li>'
    )


def _signals(signals: dict[str, Any] | None) -> str:
    if not signals:
        return ""
    new, old = signals.get("new") or {}, signals.get("previous") or {}
    flag = " regression" if signals.get("regression") else ""
    return (
        f'<p class="signals{flag}" data-field="signals">first {_e(signals.get("window"))}s of'
        f" {_e(signals.get('version'))} vs last of {_e(signals.get('previous_version'))}:"
        f" p95 {_ms(new.get('p95'))} vs {_ms(old.get('p95'))},"
        f" errors {_pct(new.get('error_rate'))} vs {_pct(old.get('error_rate'))}"
        f"{' — ' + _e(signals.get('verdict')) if signals.get('verdict') else ''}</p>"
    )


def feed(state: dict[str, Any]) -> dict[str, Any]:
    """One live push: HTML fragments + chart points + which buttons apply."""
    apps: dict[str, Any] = {}
    for name, app in state["apps"].items():
        releases = app.get("releases", [])
        canary_running = bool(app.get("canary"))
        apps[name] = {
            "section": app_section(name, app),
            "live": app_live(name, app),
            "actions": {
                "promote": canary_running,
                "abort": canary_running,
                "rollback": not app.get("deployment") and bool(app.get("live")),
            },
            "points": {
                r["version"]: {
                    k: (r.get("live") or {}).get(k)
                    for k in ("rate", "error_rate", "p50", "p95", "p99")
                }
                for r in releases
            },
        }
    return {
        "ts": state["ts"],
        "updated": _clock(state["ts"]),
        "apps": apps,
        "deployments": deployments(state["deployments"]),
    }
