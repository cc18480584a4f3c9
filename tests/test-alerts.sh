#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# The monitoring assets in contrib/: the alerting rules load (promtool check rules), the example Prometheus
# configuration loads with them (promtool check config), and the rules' unit tests in
# contrib/prometheus/alerts_test.yml pass (promtool test rules: every alert is shown firing and not firing).
# The Grafana dashboard contrib/grafana/evfdd.json is valid JSON of the expected shape, and each of its
# PromQL expressions parses (promtool check rules on them, Grafana's variables replaced).
# Every metric named in the dashboard, the rules and the tests' input series is one evfdd exports: the list
# below is evfdd's metrics (evfdd(8), METRICS), kept here so that the test needs no running evfdd. A metric
# added, renamed or removed there is added, renamed or removed here too; so are label names and the values
# of the enumerated labels (reason, direction, result, feature).
set -eu
top_srcdir=${top_srcdir:-$(dirname "$0")/..}
prom=$top_srcdir/contrib/prometheus
dashboard=$top_srcdir/contrib/grafana/evfdd.json

fail() { echo "FAIL: $*"; exit 1; }

command -v promtool >/dev/null ||
	{ echo "SKIP: promtool not found (the Debian package prometheus; tools/install-deps installs it)"; exit 77; }
command -v python3 >/dev/null || fail "python3 not found (tools/install-deps installs it)"

for f in "$prom/alerts.yml" "$prom/alerts_test.yml" "$prom/prometheus.yml" "$dashboard"; do
	[ -f "$f" ] || fail "$f is missing"
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/evfdd-test-alerts.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# run NAME CMD...: CMD must exit 0 and say SUCCESS.
run() {
	name=$1
	shift
	if ! "$@" >"$tmp/out" 2>&1; then
		cat "$tmp/out"
		fail "$name"
	fi
	cat "$tmp/out"
	grep -q SUCCESS "$tmp/out" || fail "$name: no SUCCESS in its output"
}

# ---- the rules, the configuration, the rules' unit tests -------------------------------------------------
run "promtool check rules alerts.yml" promtool check rules "$prom/alerts.yml"
# check config also loads the rule files it names (alerts.yml, beside it).
run "promtool check config prometheus.yml" promtool check config "$prom/prometheus.yml"
grep -q 'alerts\.yml' "$tmp/out" || fail "promtool check config did not check alerts.yml"
run "promtool test rules alerts_test.yml" promtool test rules "$prom/alerts_test.yml"

# ---- names, the dashboard's shape and its expressions -----------------------------------------------------
# Writes the dashboard's expressions, variables replaced, as a rule file for promtool to parse.
python3 - "$prom/alerts.yml" "$prom/alerts_test.yml" "$dashboard" "$tmp/dashboard-rules.yml" <<'PYEOF'
import json
import re
import sys

alerts_path, tests_path, dash_path, rules_out = sys.argv[1:5]

# evfdd(8) METRICS: every metric family evfdd exports.
METRICS = """
evfdd_build_info evfdd_start_time_seconds evfdd_workers evfdd_rings evfdd_io_uring_feature
evfdd_reloads_total evfdd_last_reload_success evfdd_last_reload_timestamp_seconds evfdd_ring_moves_total
evfdd_upgrades_total evfdd_last_upgrade_connections evfdd_last_upgrade_pause_seconds
evfdd_loop_rings evfdd_loop_wakeups_total evfdd_loop_completions_total
evfdd_connections_open evfdd_connections_total evfdd_connections_closed_total evfdd_connection_ends_total
evfdd_bytes_total
evfdd_backend_up evfdd_backend_drained evfdd_backend_connections_open evfdd_backend_connections_total
evfdd_backend_connect_failures_total evfdd_backend_bytes_total evfdd_backend_state_changes_total
""".split()
# Prometheus's own series about a scrape.
OTHER_METRICS = {"up"}
# Labels: evfdd's, and the target's (job, instance).
LABELS = {"version", "feature", "result", "loop", "service", "reason", "direction", "backend",
          "job", "instance", "__name__"}
LABEL_VALUES = {
    "reason": {"client_reset", "backend_reset", "client_error", "backend_error", "connect_failed",
               "no_backend", "idle_timeout", "limit", "no_resources", "shutdown"},
    "direction": {"up", "down"},
    "result": {"ok", "failed"},
    "feature": {"coop_taskrun", "recv_bundle"},
}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
            "group_right", "inf", "nan", "atan2"}

errors = []


def err(where, msg):
    errors.append(f"{where}: {msg}")


def check_label(where, name):
    if name not in LABELS:
        err(where, f"label {name!r} is not one of evfdd's metrics' labels")


def check_expr(where, expr, allow_vars=False):
    """Check the metrics and labels one PromQL expression names; return the metric names."""
    s = expr
    # Label matchers: {name op "value", ...}.
    def matchers(m):
        for name, op, value in re.findall(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"',
                                          m.group(1)):
            check_label(where, name)
            if name in LABEL_VALUES and re.fullmatch(r"[a-z0-9_|]+", value):
                for v in value.split("|"):
                    if v not in LABEL_VALUES[name]:
                        err(where, f"{name}={v!r} is not a value of {name}")
        return " "
    s = re.sub(r"\{([^{}]*)\}", matchers, s)
    # Grouping and matching clauses.
    def grouping(m):
        for name in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", m.group(2)):
            check_label(where, name)
        return " "                                      # sum by (x) (...): sum is then followed by (
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)", grouping, s)
    s = re.sub(r"\[[^\[\]]*\]", " ", s)                    # ranges, subqueries
    s = re.sub(r'"(?:[^"\\]|\\.)*"', " ", s)                # other strings
    if allow_vars:
        s = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", " ", s)
    s = re.sub(r"(?<![A-Za-z0-9_:])[0-9][0-9A-Za-z_.]*", " ", s)   # numbers, durations
    found = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        word = m.group(0)
        if re.match(r"\s*\(", s[m.end():]) or word in KEYWORDS:
            continue                                        # a function or an aggregation, a keyword
        found.add(word)
        if word not in METRICS and word not in OTHER_METRICS:
            err(where, f"metric {word!r} is not one evfdd exports (expression: {expr.strip()})")
    if not found:
        err(where, f"names no metric: {expr.strip()}")
    return found


def yaml_values(path, key):
    """(line, value) of every `key:` of a YAML file: plain or quoted on the line, or a block scalar. Enough
    for the files here, whose scalars are written so; any other form fails the test."""
    lines = open(path, encoding="utf-8").read().split("\n")
    out = []
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(- )?" + key + r":\s*(.*)$", lines[i])
        if m:
            indent = len(m.group(1)) + (2 if m.group(2) else 0)
            rest = m.group(3)
            if rest in ("|", "|-", ">", ">-"):
                block = []
                j = i + 1
                while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
                    block.append(lines[j].strip())
                    j += 1
                out.append((i + 1, "\n".join(block).strip()))
                i = j
                continue
            if rest.startswith("'") and rest.endswith("'") and len(rest) > 1:
                rest = rest[1:-1].replace("''", "'")
            elif rest.startswith('"') and rest.endswith('"') and len(rest) > 1:
                rest = json.loads(rest)
            elif rest[:1] in ("'", '"', "[", "{", "&", "*", "!"):
                err(f"{path}:{i + 1}", f"{key}: written in a form this test does not read")
            out.append((i + 1, rest))
        i += 1
    return out


# ---- alerts.yml: every expression, and one per rule --------------------------------------------------
used = set()
exprs = yaml_values(alerts_path, "expr")
alerts = [v for _, v in yaml_values(alerts_path, "alert")]
records = yaml_values(alerts_path, "record")
if len(exprs) != len(alerts) + len(records):
    err(alerts_path, f"{len(exprs)} expressions read for {len(alerts) + len(records)} rules")
for line, e in exprs:
    used |= check_expr(f"{alerts_path}:{line}", e)
if len(set(alerts)) != len(alerts):
    err(alerts_path, "an alert name is used twice")
for want in ("EvfddDown", "EvfddReloadFailed", "EvfddBackendDown", "EvfddAllBackendsDown", "EvfddNoBackend",
             "EvfddHighErrorRate"):
    if want not in alerts:
        err(alerts_path, f"no alert {want}")

# ---- alerts_test.yml: input series name evfdd's metrics; every alert is tested firing and quiet -----------
for line, series in yaml_values(tests_path, "series"):
    check_expr(f"{tests_path}:{line}", series)
fired, quiet = set(), set()
name = None
for raw in open(tests_path, encoding="utf-8"):
    m = re.match(r"^\s*(- )?(eval_time|alertname|exp_alerts):\s*(.*?)\s*$", raw)
    if not m:
        continue
    if m.group(2) == "eval_time":
        name = None
    elif m.group(2) == "alertname":
        name = m.group(3)
    elif name is None:
        err(tests_path, "an exp_alerts before its alertname")
    else:
        (quiet if m.group(3) == "[]" else fired).add(name)
for a in alerts:
    if a not in fired:
        err(tests_path, f"no test shows {a} firing")
    if a not in quiet:
        err(tests_path, f"no test shows {a} not firing (exp_alerts: [])")

# ---- the dashboard ---------------------------------------------------------------------------------------
try:
    dash = json.load(open(dash_path, encoding="utf-8"))
except ValueError as e:
    print(f"FAIL: {dash_path} is not valid JSON: {e}")
    sys.exit(1)
if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 37:
    err(dash_path, "schemaVersion is not 37 or later")
for k in ("title", "uid"):
    if not dash.get(k):
        err(dash_path, f"no {k}")
variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
ds = variables.get("DS_PROMETHEUS")
if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
    err(dash_path, "no data source variable DS_PROMETHEUS of type prometheus")
DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
to_parse = []                                   # (where, expression) for promtool
for vname in ("instance", "service"):
    v = variables.get(vname)
    q = v and v.get("query")
    q = q.get("query") if isinstance(q, dict) else q
    m = re.fullmatch(r"\s*label_values\((.*),\s*" + vname + r"\s*\)\s*", q or "")
    if not v or v.get("type") != "query" or not m:
        err(dash_path, f"no variable {vname} from label_values(..., {vname})")
        continue
    if v.get("datasource") != DS:
        err(dash_path, f"variable {vname}: data source is not ${{DS_PROMETHEUS}}")
    used |= check_expr(f"{dash_path}: variable {vname}", m.group(1), allow_vars=True)
    to_parse.append((f"variable {vname}", m.group(1)))
for a in dash.get("annotations", {}).get("list", []):
    if "expr" in a:
        if a.get("datasource") != DS:
            err(dash_path, f"annotation {a.get('name')}: data source is not ${{DS_PROMETHEUS}}")
        used |= check_expr(f"{dash_path}: annotation {a.get('name')}", a["expr"], allow_vars=True)
        to_parse.append((f"annotation {a.get('name')}", a["expr"]))


def walk(panels):
    for p in panels:
        yield p
        yield from walk(p.get("panels", []))


ids = set()
titles = []
for p in walk(dash.get("panels", [])):
    where = f"{dash_path}: panel {p.get('title')!r}"
    if p.get("id") in ids:
        err(where, f"id {p.get('id')} used twice")
    ids.add(p.get("id"))
    g = p.get("gridPos", {})
    if not all(isinstance(g.get(k), int) for k in ("h", "w", "x", "y")) or g["x"] + g["w"] > 24:
        err(where, "no gridPos, or one wider than the grid")
    if p.get("type") == "row":
        continue
    titles.append(p.get("title"))
    if p.get("datasource") != DS:
        err(where, "data source is not ${DS_PROMETHEUS}")
    if not p.get("targets"):
        err(where, "no query")
    for t in p.get("targets", []):
        e = t.get("expr", "")
        if t.get("datasource", DS) != DS:
            err(where, "a query's data source is not ${DS_PROMETHEUS}")
        if not e:
            err(where, f"query {t.get('refId')} has no expression")
            continue
        # Every selector of an evfdd metric follows the instance variable.
        for sel in re.finditer(r"\bevfdd_[a-z_]+(\{[^}]*\})?", e):
            if 'instance=~"$instance"' not in (sel.group(1) or ""):
                err(where, f"{sel.group(0)} does not select instance=~\"$instance\"")
        used |= check_expr(where, e, allow_vars=True)
        to_parse.append((f"panel {p.get('title')!r} {t.get('refId')}", e))
        for lbl in re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", t.get("legendFormat", "")):
            check_label(where + " legend", lbl)
if len(set(titles)) != len(titles):
    err(dash_path, "two panels have the same title")

# The dashboard's expressions as rules, Grafana's variables replaced, for promtool check rules to parse.
subst = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$instance": ".*", "$service": ".*"}
with open(rules_out, "w", encoding="utf-8") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, (where, e) in enumerate(to_parse):
        for k, v in subst.items():
            e = e.replace(k, v)
        if "$" in e:
            err(dash_path, f"{where}: a variable this test does not know: {e}")
        f.write(f"      # {where}\n      - record: evfdd:dashboard_{i}\n        expr: {json.dumps(e)}\n")

unused = set(METRICS) - used
if unused:
    print("note: metrics neither the dashboard nor the rules use: " + " ".join(sorted(unused)))
if errors:
    for e in errors:
        print("FAIL: " + e)
    sys.exit(1)
print(f"ok: {len(alerts)} alerts, {len(to_parse)} dashboard expressions, {len(used)} metrics, all evfdd's")
PYEOF
# promtool names a rule by its line: show which panel each line is.
if ! promtool check rules "$tmp/dashboard-rules.yml" >"$tmp/out" 2>&1 || ! grep -q SUCCESS "$tmp/out"; then
	cat "$tmp/out"
	grep -n '' "$tmp/dashboard-rules.yml"
	fail "a PromQL expression of $dashboard does not parse (the lines above)"
fi
cat "$tmp/out"
echo "PASS"
