#!/usr/bin/env python3
"""docs/saga.md against the code, for what a machine can see.

- Events: every event type of the codec's table (common/event_codec.c,
  event_types[]) has exactly one row in the events table of docs/saga.md
  (section "## Events", the table whose header starts "| event | subject"),
  and that row's subject is events.<type>.<order_id>, or, for the types
  the code keys by a SKU or a customer (true in the table's third field),
  events.<type>.<sku> or events.<type>.<customer_id>. A row for a type the
  code does not have fails too.
- Tests: every citation `tests/<path>.c: name, name` names a file that
  exists and, for each name, a `static void name(void)` registered in the
  file's test table ({"...", name}); `tests/<path>.py: name` a `def name(`.
  A bare `test_xxx` in backticks must be defined somewhere under tests/.
- Guarantees: the section lists guarantees 1 to 9, in order.

A self-test first breaks the document in memory in each of those ways and
expects every break to be reported, so the check cannot pass by reading
nothing. Exit 0 when all holds, 1 otherwise (the problems are printed)."""

import argparse
import os
import re
import sys

EVENT_ROW_HEADER = re.compile(r"^\|\s*event\s*\|\s*subject\s*\|")
CITATION = re.compile(r"^(tests/[\w./-]+\.(?:c|py)):\s*(.+)$")
IDENT = re.compile(r"^[A-Za-z_]\w*$")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


# ------------------------------------------------------------ the code


def code_event_types(repo):
    """The type names of event_types[] in event_codec.c, mapped to whether
    the code keys them by something other than an order (the entry's third
    field is true), checked against the number of entries of the event_type
    enum so a parse miss cannot hide."""
    src = read(os.path.join(repo, "common", "event_codec.c"))
    entries = re.findall(r"\[EVENT_[A-Z_]+\]\s*=\s*\{\s*\"([a-z_]+\.[a-z_]+)\"\s*,\s*[\w]+\s*(,\s*true)?\s*\}", src)
    names = {name: bool(keyed) for name, keyed in entries}
    hdr = read(os.path.join(repo, "common", "event_codec.h"))
    enum = re.search(r"typedef enum event_type \{(.*?)EVENT_TYPE_COUNT", hdr, re.S)
    count = len(re.findall(r"\bEVENT_[A-Z_]+\b", enum.group(1))) if enum else -1
    if not names or len(names) != count:
        raise SystemExit("cannot read the event table of common/event_codec.c: %d names, %d enum entries"
                         % (len(names), count))
    return names


# ------------------------------------------------------------ the document


def section(doc, title):
    """Text of the "## <title>..." section, up to the next "## " heading."""
    m = re.search(r"^## " + re.escape(title) + r".*?$(.*?)(?=^## |\Z)", doc, re.M | re.S)
    return m.group(1) if m else None


def cells(line):
    return [c.strip().strip("`").strip() for c in line.strip().strip("|").split("|")]


def check_events(doc, types):
    out = []
    events = section(doc, "Events")
    if events is None:
        return ["no \"## Events\" section"]
    lines = events.splitlines()
    start = next((i for i, l in enumerate(lines) if EVENT_ROW_HEADER.match(l)), None)
    if start is None:
        return ["the Events section has no table with the header \"| event | subject | ...\""]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        c = cells(line)
        if len(c) < 2:
            out.append("events table: malformed row: %s" % line)
            continue
        if c[0] in rows:
            out.append("events table: %s has two rows" % c[0])
        rows[c[0]] = c[1]
    for t, keyed in types.items():
        wants = ["events.%s.<sku>" % t, "events.%s.<customer_id>" % t] if keyed else ["events.%s.<order_id>" % t]
        if t not in rows:
            out.append("events table: no row for %s (common/event_codec.c has it)" % t)
        elif rows[t] not in wants:
            out.append("events table: %s has subject %r, the code publishes %r" % (t, rows[t], " or ".join(wants)))
    for t in rows:
        if t not in types:
            out.append("events table: row %s is not an event type of common/event_codec.c" % t)
    return out


def c_test_problem(src, name):
    if not re.search(r"\bvoid\s+%s\s*\(\s*void\s*\)\s*\{" % re.escape(name), src):
        return "not defined"
    if not re.search(r"\{\s*\"[^\"]*\"\s*,\s*%s\s*\}" % re.escape(name), src):
        return "defined but not registered in the file's test table"
    return None


def py_test_problem(src, name):
    if not re.search(r"^\s*def\s+%s\s*\(" % re.escape(name), src, re.M):
        return "not defined"
    return None


def tests_tree_defines(repo, name):
    for root, _, files in os.walk(os.path.join(repo, "tests")):
        for f in files:
            if f.endswith(".c") and re.search(r"\bvoid\s+%s\s*\(" % name, read(os.path.join(root, f))):
                return True
            if f.endswith(".py") and re.search(r"^\s*def\s+%s\s*\(" % name, read(os.path.join(root, f)), re.M):
                return True
    return False


def check_citations(doc, repo):
    """Problems, and the number of test functions cited with their file."""
    out = []
    cited = 0
    for span in re.findall(r"`([^`\n]+)`", doc):
        m = CITATION.match(span)
        if m:
            path, names = m.group(1), [n.strip() for n in m.group(2).split(",")]
            full = os.path.join(repo, path)
            if not os.path.isfile(full):
                out.append("cited file %s does not exist" % path)
                continue
            src = read(full)
            for name in names:
                if not IDENT.match(name):
                    out.append("%s: %r is not a function name" % (path, name))
                    continue
                problem = (c_test_problem if path.endswith(".c") else py_test_problem)(src, name)
                if problem:
                    out.append("%s: %s %s" % (path, name, problem))
                cited += 1
        elif re.match(r"^test_\w+$", span) and not tests_tree_defines(repo, span):
            out.append("%s is cited but no file under tests/ defines it" % span)
    return out, cited


def check_guarantees(doc):
    g = section(doc, "Guarantees")
    if g is None:
        return ["no \"## Guarantees\" section"]
    numbers = [int(n) for n in re.findall(r"^(\d+)\. \*\*", g, re.M)]
    if numbers != list(range(1, 10)):
        return ["guarantees listed as %s, want 1 to 9 in order" % numbers]
    return []


MIN_CITED = 40  # far fewer means the citations stopped being recognised


def check(doc, repo, types):
    problems = check_events(doc, types) + check_guarantees(doc)
    more, cited = check_citations(doc, repo)
    problems += more
    if cited < MIN_CITED:
        problems.append("only %d test functions cited as `tests/<file>: name` (expected at least %d)"
                        % (cited, MIN_CITED))
    return problems


# ------------------------------------------------------------ self-test


def self_test(doc, repo, types):
    """Each way the document can drift, made in memory, must be reported."""
    t = sorted(n for n, keyed in types.items() if not keyed)[1]
    row = re.search(r"^\| `%s` \|.*$" % re.escape(t), doc, re.M)
    cite = re.search(r"`tests/integration/test_saga\.c: (test_saga_\w+)", doc)
    assert row and cite, "self-test: the document lost the rows it breaks"
    breaks = {
        "a missing event row": doc.replace(row.group(0) + "\n", ""),
        "a wrong subject": doc.replace("`events.%s.<order_id>`" % t, "`events.%s.<id>`" % t),
        "an event the code lacks": doc.replace(row.group(0), row.group(0) + "\n"
                                               + row.group(0).replace(t, "order.exploded")),
        "a test that does not exist": doc.replace(cite.group(1), cite.group(1) + "_gone", 1),
        "a cited file that does not exist": doc.replace("tests/integration/test_saga.c:",
                                                        "tests/integration/test_sagas.c:", 1),
        "a bare test name nobody defines": doc + "\n`test_nobody_defines_this`\n",
        "a guarantee missing": re.sub(r"^8\. \*\*", "* **", doc, count=1, flags=re.M),
    }
    missed = [what for what, broken in breaks.items() if not check(broken, repo, types)]
    assert not missed, "self-test: not reported: " + ", ".join(missed)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", default=os.path.dirname(os.path.dirname(here)), help="repository root")
    p.add_argument("--doc", default=None, help="the document (default: <repo>/docs/saga.md)")
    args = p.parse_args()
    doc_path = args.doc or os.path.join(args.repo, "docs", "saga.md")
    if not os.path.isfile(doc_path):
        print("FAIL: %s does not exist" % doc_path)
        return 1
    doc = read(doc_path)
    types = code_event_types(args.repo)
    try:
        self_test(doc, args.repo, types)
    except AssertionError as e:
        print("FAIL: %s" % e)
        return 1
    problems = check(doc, args.repo, types)
    cited = check_citations(doc, args.repo)[1]
    if problems:
        print("FAIL: %s has drifted from the code:" % os.path.relpath(doc_path, args.repo))
        for pr in problems:
            print("  " + pr)
        return 1
    print("ok: %d event types with their subjects; %d cited test functions exist" % (len(types), cited))
    return 0


if __name__ == "__main__":
    sys.exit(main())
