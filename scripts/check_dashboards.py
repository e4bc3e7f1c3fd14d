#!/usr/bin/env python3
"""Checks the Grafana dashboards and the alert rules of tier (python3 standard library only).

    scripts/check_dashboards.py [--prometheus URL] [--self-test] [--wait SECONDS]

Without --prometheus: static checks only —
  * each dashboards/*.json is importable as is: "id": null, a stable "uid", "schemaVersion", the
    `datasource` (type prometheus), `cache` and `instance` variables; every panel has a unique id,
    a title, datasource ${datasource} and targets with an expression; every `$variable` used is
    defined;
  * every metric name used by a panel, a variable or an alert rule is one the code declares
    (the `pub const NAME: &str = "..."` of crates/*/src/**/metrics.rs), with `_bucket`, `_sum`,
    `_count` allowed after a histogram's name.
With --prometheus (a Prometheus that scrapes `tier demo` and loaded dashboards/alerts.yml):
  * every variable query returns values, which are substituted for `$cache`, `$instance`, `$tier`;
  * every expression of every panel is sent to /api/v1/query: it must parse and return data
    (empty results are retried until --wait seconds have passed: rates need a few scrapes);
  * every alert rule Prometheus loaded (as many as the file has) is healthy, and its expression
    parses when sent to /api/v1/query.
--self-test then changes a metric name in a copy of a dashboard and of the rules, and breaks a
copy's structure (duplicate panel id, fixed data source, missing expression), and asserts that the
checks above report each.

Prints one line per failure and a closing `N passed, M failed`; exits 1 on any failure.
"""

import argparse
import copy
import glob
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Values for Grafana's built-in interval variables. Prometheus scrapes every second in the check.
BUILTINS = {
    "__rate_interval": "15s",
    "__interval": "5s",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
    "__interval_ms": "5000",
}
REQUIRED_VARS = ("datasource", "cache", "instance")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "atan2", "inf", "nan", "start", "end",
}


class Report:
    def __init__(self, quiet=False):
        self.passed = 0
        self.failures = []
        self.quiet = quiet

    def ok(self, what):
        self.passed += 1

    def fail(self, what):
        self.failures.append(what)
        if not self.quiet:
            print(f"FAIL {what}", flush=True)

    def check(self, cond, what):
        if cond:
            self.ok(what)
        else:
            self.fail(what)
        return cond


# ------------------------------------------------------------------------------------ metric names

def declared_metric_names(source_root):
    """Metric names the code declares: `pub const X: &str = "name";` in crates/*/src/**/metrics.rs."""
    names = set()
    pattern = re.compile(r'pub\s+const\s+[A-Z0-9_]+\s*:\s*&(?:\'static\s+)?str\s*=\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"')
    for path in glob.glob(os.path.join(source_root, "*", "src", "**", "metrics.rs"), recursive=True):
        with open(path, encoding="utf-8") as f:
            names.update(pattern.findall(f.read()))
    return names


def metric_names_in(expr):
    """The metric names an expression selects (a small PromQL scanner, enough for our dashboards)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # strings
    s = re.sub(r"#[^\n]*", "", s)  # comments
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges, subqueries
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = []
    for m in re.finditer(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?", s):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_KEYWORDS:
            continue
        names.append(word)
    return names


def unknown_names(expr, declared):
    out = []
    for name in metric_names_in(expr):
        base = name
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name[: -len(suffix)] in declared:
                base = name[: -len(suffix)]
        if base not in declared and name not in out:
            out.append(name)
    return out


# ------------------------------------------------------------------------------------ dashboards

def is_template_ds(ds):
    if isinstance(ds, str):
        return ds in ("${datasource}", "$datasource")
    return (isinstance(ds, dict) and ds.get("type") == "prometheus"
            and ds.get("uid") in ("${datasource}", "$datasource"))


def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))  # collapsed rows


def variable_query(var):
    q = var.get("query")
    if isinstance(q, dict):
        q = q.get("query")
    return q or var.get("definition") or ""


class Problems(list):
    """Problems of one item (a dashboard, a panel, a rule): reported as one check."""

    def need(self, cond, what):
        if not cond:
            self.append(what)
        return cond


def check_structure(name, d, declared, report):
    """Static checks of one dashboard; returns its variables and [(where, expr)]."""
    where = f"{name}:"
    top = Problems()
    top.need("id" in d and d["id"] is None, '"id" is not null')
    top.need(isinstance(d.get("uid"), str) and re.fullmatch(r"[a-z0-9-]{1,40}", d.get("uid") or ""),
             'no stable "uid" (lowercase, at most 40 characters)')
    top.need(isinstance(d.get("schemaVersion"), int) and d["schemaVersion"] >= 30, 'no "schemaVersion"')
    top.need(bool(d.get("title")), "no title")
    variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
    for req in REQUIRED_VARS:
        top.need(req in variables, f"no variable ${req}")
    ds = variables.get("datasource", {})
    top.need(ds.get("type") == "datasource" and ds.get("query") == "prometheus",
             "$datasource is not a data source variable of type prometheus")
    for vname, v in variables.items():
        if v.get("type") == "query":
            top.need(is_template_ds(v.get("datasource")), f"variable ${vname} does not use ${{datasource}}")
            q = variable_query(v)
            top.need(bool(q), f"variable ${vname} has no query")
            bad = unknown_names(label_values_selector(q) or q, declared)
            top.need(not bad, f"variable ${vname}: metric names not declared by the code {bad}")
    panels = list(all_panels(d.get("panels", [])))
    top.need(bool(panels), "no panels")
    report.check(not top, f"{where} importable dashboard with $datasource, $cache, $instance {top or ''}")
    defined = set(variables) | set(BUILTINS)
    exprs = []
    ids = {}
    for p in panels:
        pid = p.get("id")
        title = p.get("title") or ""
        at = f"{where} panel {pid} {title!r}"
        pp = Problems()
        pp.need(isinstance(pid, int), "id is not an integer")
        pp.need(pid not in ids, f"id also used by panel {ids.get(pid)!r}")
        ids[pid] = title
        pp.need(bool(title.strip()), "no title")
        pp.need(isinstance(p.get("gridPos"), dict), "no gridPos")
        if p.get("type") != "row":
            pp.need(is_template_ds(p.get("datasource")), "datasource is not ${datasource}")
            targets = p.get("targets") or []
            pp.need(bool(targets), "no targets")
            refids = set()
            for t in targets:
                ref = t.get("refId")
                pp.need(ref and ref not in refids, f"target refId {ref!r} missing or not unique")
                refids.add(ref)
                if "datasource" in t:
                    pp.need(is_template_ds(t["datasource"]), f"target {ref}: datasource is not ${{datasource}}")
                expr = t.get("expr") or ""
                if not pp.need(bool(expr.strip()), f"target {ref}: no expression"):
                    continue
                used = set(re.findall(r"\$\{?(\w+)", expr))
                pp.need(used <= defined, f"target {ref}: undefined variables {sorted(used - defined)}")
                bad = unknown_names(expr, declared)
                report.check(not bad, f"{at} target {ref}: metric names not declared by the code {bad}: {expr}")
                exprs.append((f"{at} target {ref}", expr))
        report.check(not pp, f"{at}: structure {pp or ''}")
    return variables, exprs


def label_values_selector(q):
    m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", q, re.S)
    return m.group(1) if m else None


# ------------------------------------------------------------------------------------ prometheus

class Prometheus:
    def __init__(self, url):
        self.url = url.rstrip("/")

    def get(self, path, params=None, post=False):
        data = urllib.parse.urlencode(params or {}, doseq=True)
        if post:
            req = urllib.request.Request(self.url + path, data=data.encode(), method="POST",
                                         headers={"Content-Type": "application/x-www-form-urlencoded"})
        else:
            req = urllib.request.Request(self.url + path + ("?" + data if data else ""))
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read().decode())
        except urllib.error.HTTPError as e:  # 400 / 422 carry the error in the body
            try:
                return json.loads(e.read().decode())
            except ValueError:
                return {"status": "error", "error": f"HTTP {e.code}"}

    def query(self, expr):
        return self.get("/api/v1/query", {"query": expr}, post=True)

    def label_values(self, selector, label):
        r = self.get("/api/v1/series", {"match[]": selector}, post=True)
        if r.get("status") != "success":
            return None, r.get("error")
        return sorted({s[label] for s in r["data"] if label in s}), None


def substitute(expr, values):
    def repl(m):
        name = m.group(1) or m.group(2)
        return values.get(name, m.group(0))
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", repl, expr)


def regex_value(v):
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\\\1", v)  # escaped inside a PromQL string


def resolve_variables(name, variables, prom, report):
    """Runs the query variables in order; each takes its first value (or its current one)."""
    values = dict(BUILTINS)
    for vname, v in variables.items():
        if v.get("type") != "query":
            continue
        q = variable_query(v)
        sel = label_values_selector(q)
        if sel is None:
            report.fail(f"{name}: variable ${vname}: only label_values(selector, label) is checked: {q}")
            continue
        label = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", q, re.S).group(2)
        got, err = prom.label_values(substitute(sel, {k: val for k, val in values.items()}), label)
        if not report.check(bool(got), f"{name}: variable ${vname} query returns values ({err or got}): {q}"):
            continue
        current = (v.get("current") or {}).get("value")
        if isinstance(current, str) and current not in ("", "$__all"):
            # The default the dashboard opens with must exist.
            if not report.check(current in got, f"{name}: variable ${vname}: default {current!r} among {got}"):
                continue
            pick = current
        else:
            pick = got[0]
        values[vname] = regex_value(pick)
    return values


def check_queries(exprs, prom, report, wait):
    """Each expression must parse and return data; empty ones are retried until `wait` seconds."""
    deadline = time.monotonic() + wait
    pending = list(exprs)
    flat = []
    while True:
        empty = []
        for what, expr in pending:
            r = prom.query(expr)
            if r.get("status") != "success":
                report.fail(f"{what}: does not parse/evaluate: {r.get('error')}: {expr}")
            elif not r["data"]["result"]:
                empty.append((what, expr))
            else:
                report.ok(what)
                values = [float(x["value"][1]) for x in r["data"]["result"]]
                if all(v == 0 or v != v for v in values):
                    flat.append(what)
        if not empty or time.monotonic() >= deadline:
            break
        pending = empty
        time.sleep(1)  # polling interval (one scrape), not a synchronisation
    for what, expr in empty:
        report.fail(f"{what}: no data: {expr}")
    if flat and not report.quiet:
        print(f"note: {len(flat)} panel expressions return only 0 or NaN in this run (events the workload "
              f"did not cause): " + "; ".join(flat), flush=True)


def expected_alert_count(rules_file):
    with open(rules_file, encoding="utf-8") as f:
        return len(re.findall(r"^\s*-\s*(?:alert|record)\s*:", f.read(), re.M))


def check_rules(rules_file, prom, declared, report, wait):
    want = expected_alert_count(rules_file)
    deadline = time.monotonic() + wait
    while True:  # rules are evaluated every evaluation_interval: wait for one round
        r = prom.get("/api/v1/rules")
        rules = [rule for g in r.get("data", {}).get("groups", []) for rule in g["rules"]]
        if rules and all(rule.get("health") != "unknown" for rule in rules) or time.monotonic() >= deadline:
            break
        time.sleep(1)
    report.check(len(rules) == want, f"alerts: Prometheus loaded {len(rules)} of {want} rules of {rules_file}")
    for rule in rules:
        pr = Problems()
        pr.need(rule.get("health") == "ok", f"health {rule.get('health')}: {rule.get('lastError', '')}")
        bad = unknown_names(rule["query"], declared)
        pr.need(not bad, f"metric names not declared by the code {bad}")
        q = prom.query(rule["query"])
        pr.need(q.get("status") == "success", f"does not parse: {q.get('error', '')}")
        if rule.get("type") == "alerting":
            pr.need(rule.get("duration", 0) > 0, "no for:")
            pr.need(bool(rule.get("labels", {}).get("severity")), "no severity label")
            ann = rule.get("annotations", {})
            pr.need(bool(ann.get("summary")) and bool(ann.get("description")), "no summary/description")
        report.check(not pr, f"alerts: {rule.get('name')} loaded, healthy, parses {pr or ''}")
    return [(f"alerts: {rule.get('name')}", rule["query"]) for rule in rules]


def static_rule_exprs(rules_file):
    """The expressions of a rules file without a YAML parser: `expr: one line` or `expr: |` blocks."""
    with open(rules_file, encoding="utf-8") as f:
        lines = f.read().splitlines()
    out = []
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)expr:\s*(.*)$", lines[i])
        if not m:
            i += 1
            continue
        indent, rest = len(m.group(1)), m.group(2).strip()
        if rest in ("|", ">", "|-", ">-"):
            block = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i].strip())
                i += 1
            out.append(" ".join(block))
        else:
            out.append(rest.strip("'\""))
            i += 1
    return out


# ------------------------------------------------------------------------------------ main

def load_dashboards(directory):
    out = []
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        name = os.path.relpath(path, ROOT)
        with open(path, encoding="utf-8") as f:
            try:
                out.append((name, json.load(f)))
            except ValueError as e:
                out.append((name, {"__error__": str(e)}))
    return out


def run(dashboards, rules_file, declared, prom, wait, report, rule_exprs=None):
    uids = {}
    all_exprs = []
    if rule_exprs is None:
        report.check(bool(dashboards), "dashboards found")
    for name, d in dashboards:
        if "__error__" in d:
            report.fail(f"{name}: not valid JSON: {d['__error__']}")
            continue
        variables, exprs = check_structure(name, d, declared, report)
        uid = d.get("uid")
        report.check(uid not in uids, f"{name}: uid {uid!r} unique among dashboards")
        uids[uid] = name
        if prom:
            values = resolve_variables(name, variables, prom, report)
            all_exprs += [(what, substitute(expr, values)) for what, expr in exprs]
    for expr in rule_exprs if rule_exprs is not None else static_rule_exprs(rules_file):
        bad = unknown_names(expr, declared)
        report.check(not bad, f"alerts: metric names not declared by the code {bad}: {' '.join(expr.split())[:100]}")
    if prom:
        check_queries(all_exprs, prom, report, wait)
        if rule_exprs is None:
            check_rules(rules_file, prom, declared, report, wait)
    return report


def self_test(dashboards, rules_file, declared, prom, wait):
    """Rename a metric in a copy of a dashboard and of the rules: the checks must report both."""
    report = Report()
    victim = "tier_requests_total"
    renamed = "tier_request_total"
    for name, d in dashboards:
        if victim in json.dumps(d):
            break
    else:
        report.fail(f"self-test: no dashboard uses {victim}")
        return report
    mutated = copy.deepcopy(d)
    target = None
    for p in all_panels(mutated.get("panels", [])):
        for t in p.get("targets", []):
            if victim in t.get("expr", ""):
                t["expr"] = t["expr"].replace(victim, renamed)
                target = f"panel {p['id']} {p['title']!r} target {t['refId']}"
                break
        if target:
            break
    print(f"self-test: renamed {victim} -> {renamed} in {name} {target}", flush=True)
    inner = Report(quiet=True)
    run([(name, mutated)], rules_file, declared, prom, min(wait, 5), inner, rule_exprs=[])
    for f in inner.failures:
        print(f"self-test: the check reports: {f}", flush=True)
    report.check(any(renamed in f and "not declared" in f for f in inner.failures),
                 "self-test: the renamed metric is reported as one the code does not declare")
    if prom:
        report.check(any(renamed in f and "no data" in f for f in inner.failures),
                     "self-test: the panel with the renamed metric is reported as returning no data")
    broken = copy.deepcopy(d)
    ps = [p for p in all_panels(broken.get("panels", [])) if p.get("type") != "row"]
    ps[1]["id"] = ps[0]["id"]
    ps[1]["datasource"] = {"type": "prometheus", "uid": "P1809F7CD0C75ACF3"}
    del ps[0]["targets"][0]["expr"]
    inner = Report(quiet=True)
    check_structure(name, broken, declared, inner)
    for f in inner.failures:
        print(f"self-test: the check reports: {f}", flush=True)
    report.check(any("id also used" in f for f in inner.failures)
                 and any("not ${datasource}" in f for f in inner.failures)
                 and any("no expression" in f for f in inner.failures),
                 "self-test: a duplicate panel id, a fixed data source and a missing expression are reported")
    rules = static_rule_exprs(rules_file)
    bad_rules = [e.replace(victim, renamed) for e in rules if victim in e][:1]
    inner = Report(quiet=True)
    run([], rules_file, declared, None, 0, inner, rule_exprs=bad_rules)
    for f in inner.failures:
        print(f"self-test: the check reports: {f}", flush=True)
    report.check(bool(bad_rules) and any(renamed in f for f in inner.failures),
                 "self-test: the renamed metric in an alert rule is reported")
    return report


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prometheus", help="base URL of a Prometheus scraping `tier demo`")
    ap.add_argument("--dashboards", default=os.path.join(ROOT, "dashboards"))
    ap.add_argument("--rules", default=os.path.join(ROOT, "dashboards", "alerts.yml"))
    ap.add_argument("--source", default=os.path.join(ROOT, "crates"))
    ap.add_argument("--wait", type=float, default=60, help="seconds to wait for data (default 60)")
    ap.add_argument("--self-test", action="store_true", help="also show that a renamed metric is caught")
    args = ap.parse_args()

    declared = declared_metric_names(args.source)
    report = Report()
    report.check(len(declared) >= 15, f"metric names declared by the code: {len(declared)}")
    prom = Prometheus(args.prometheus) if args.prometheus else None
    dashboards = load_dashboards(args.dashboards)
    started = time.monotonic()
    run(dashboards, args.rules, declared, prom, args.wait, report)
    exprs = sum(1 for _, d in dashboards for p in all_panels(d.get("panels", [])) for _ in p.get("targets", []))
    print(f"check: {len(dashboards)} dashboards with {exprs} panel expressions"
          f"{' sent to ' + args.prometheus if prom else ' (static checks only)'}; "
          f"{report.passed} checks passed, {len(report.failures)} failed in {time.monotonic() - started:.1f}s",
          flush=True)
    used = {n for _, d in dashboards for p in all_panels(d.get("panels", []))
            for t in p.get("targets", []) for n in metric_names_in(t.get("expr") or "")}
    used |= {n[: -len(sfx)] for n in used for sfx in HISTOGRAM_SUFFIXES if n.endswith(sfx)}
    unused = sorted(declared - used)
    if unused:
        print(f"note: declared by the code but on no dashboard: {', '.join(unused)}", flush=True)
    if args.self_test:
        st = self_test(dashboards, args.rules, declared, prom, args.wait)
        report.passed += st.passed
        report.failures += st.failures
    print(f"{report.passed} passed, {len(report.failures)} failed")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
