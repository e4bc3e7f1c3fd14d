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
--self-test then changes a metric name in a copy of a dashboard and of the rules and asserts that
the checks above report it.

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


def check_structure(name, d, declared, report):
    """Static checks of one dashboard; returns [(panel title, refId, expr)]."""
    where = f"{name}:"
    report.check(isinstance(d, dict), f"{where} is a JSON object")
    report.check("id" in d and d["id"] is None, f'{where} "id" is null')
    report.check(isinstance(d.get("uid"), str) and re.fullmatch(r"[a-z0-9-]{1,40}", d.get("uid") or ""),
                 f'{where} stable "uid" (lowercase, at most 40 characters)')
    report.check(isinstance(d.get("schemaVersion"), int) and d["schemaVersion"] >= 30,
                 f'{where} "schemaVersion" set')
    report.check(bool(d.get("title")), f"{where} has a title")
    variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
    for req in REQUIRED_VARS:
        report.check(req in variables, f"{where} defines variable ${req}")
    ds = variables.get("datasource", {})
    report.check(ds.get("type") == "datasource" and ds.get("query") == "prometheus",
                 f"{where} $datasource is a data source variable of type prometheus")
    for vname, v in variables.items():
        if v.get("type") == "query":
            report.check(is_template_ds(v.get("datasource")), f"{where} variable ${vname} uses ${{datasource}}")
            q = variable_query(v)
            report.check(bool(q), f"{where} variable ${vname} has a query")
            bad = unknown_names(label_values_selector(q) or q, declared)
            report.check(not bad, f"{where} variable ${vname}: metric names the code declares {bad or ''}")
    defined = set(variables) | set(BUILTINS)
    exprs = []
    ids = {}
    panels = list(all_panels(d.get("panels", [])))
    report.check(bool(panels), f"{where} has panels")
    for p in panels:
        pid = p.get("id")
        title = p.get("title") or ""
        at = f"{where} panel {pid} {title!r}"
        report.check(isinstance(pid, int), f"{at} has an integer id")
        report.check(pid not in ids, f"{at} id is unique" + (f" (also {ids.get(pid)!r})" if pid in ids else ""))
        ids[pid] = title
        report.check(bool(title.strip()), f"{at} has a title")
        report.check(isinstance(p.get("gridPos"), dict), f"{at} has a gridPos")
        if p.get("type") == "row":
            continue
        report.check(is_template_ds(p.get("datasource")), f"{at} datasource is ${{datasource}}")
        targets = p.get("targets") or []
        report.check(bool(targets), f"{at} has targets")
        refids = set()
        for t in targets:
            ref = t.get("refId")
            tat = f"{at} target {ref}"
            report.check(ref and ref not in refids, f"{tat} has a unique refId")
            refids.add(ref)
            if "datasource" in t:
                report.check(is_template_ds(t["datasource"]), f"{tat} datasource is ${{datasource}}")
            expr = t.get("expr") or ""
            if not report.check(bool(expr.strip()), f"{tat} has an expression"):
                continue
            used = set(re.findall(r"\$\{?(\w+)", expr))
            report.check(used <= defined, f"{tat} uses only defined variables {sorted(used - defined) or ''}")
            bad = unknown_names(expr, declared)
            report.check(not bad, f"{tat} metric names the code declares {bad or ''}: {expr}")
            exprs.append((f"{at} target {ref}", expr))
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
        pick = current if isinstance(current, str) and current in got else got[0]
        values[vname] = regex_value(pick)
    return values


def check_queries(exprs, prom, report, wait):
    """Each expression must parse and return data; empty ones are retried until `wait` seconds."""
    deadline = time.monotonic() + wait
    pending = list(exprs)
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
        if not empty or time.monotonic() >= deadline:
            break
        pending = empty
        time.sleep(1)  # polling interval (one scrape), not a synchronisation
    for what, expr in empty:
        report.fail(f"{what}: no data: {expr}")


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
        at = f"alerts: {rule.get('name')}"
        report.check(rule.get("health") == "ok", f"{at} is healthy ({rule.get('health')}: {rule.get('lastError', '')})")
        bad = unknown_names(rule["query"], declared)
        report.check(not bad, f"{at} metric names the code declares {bad or ''}")
        q = prom.query(rule["query"])
        report.check(q.get("status") == "success", f"{at} parses: {q.get('error', '')}")
        if rule.get("type") == "alerting":
            report.check(rule.get("duration", 0) > 0, f"{at} has for:")
            report.check(bool(rule.get("labels", {}).get("severity")), f"{at} has a severity label")
            ann = rule.get("annotations", {})
            report.check(bool(ann.get("summary")) and bool(ann.get("description")),
                         f"{at} has summary and description annotations")
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
        report.check(not bad, f"alerts: metric names the code declares {bad or ''}: {expr[:80]}")
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
    report.check(any(renamed in f and "declares" in f for f in inner.failures),
                 "self-test: the renamed metric is reported as one the code does not declare")
    if prom:
        report.check(any(renamed in f and "no data" in f for f in inner.failures),
                     "self-test: the panel with the renamed metric is reported as returning no data")
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
    print(f"check: {len(dashboards)} dashboards, {report.passed} checks passed "
          f"in {time.monotonic() - started:.1f}s", flush=True)
    if args.self_test:
        st = self_test(dashboards, args.rules, declared, prom, args.wait)
        report.passed += st.passed
        report.failures += st.failures
    print(f"{report.passed} passed, {len(report.failures)} failed")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
