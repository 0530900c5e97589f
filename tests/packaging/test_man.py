#!/usr/bin/env python3
"""The man pages generated from the docs: man(1) renders them without a groff warning, every
option of `dduct --help` is in dduct(1), so is every command and option of `dduct cache --help`,
every key `dduct --check` prints is an entry of
dduct.toml(5), and meson install puts both under share/man."""
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "e2e"))

from dductlib.harness import check, check_eq, run  # noqa: E402

MAN_DIR = os.environ["DDUCT_MAN_DIR"]
BIN = os.environ["DDUCT_BIN"]
BUILD = os.environ["DDUCT_BUILD_ROOT"]


def render(page):
    env = dict(os.environ, LC_ALL="C.UTF-8", MANWIDTH="100", MAN_KEEP_FORMATTING="")
    p = subprocess.run(["man", "--warnings=all", "-E", "UTF-8", "-l", page],
                       capture_output=True, text=True, env=env)
    check_eq(p.returncode, 0, "man -l %s" % page)
    return p.stdout, p.stderr


def test_render_clean(rig):
    """Both pages render with no groff warning and have NAME, SYNOPSIS/DESCRIPTION, SEE ALSO."""
    for page, sections in (("dduct.1", ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS",
                                        "EXIT STATUS", "FILES", "SEE ALSO"]),
                           ("dduct.toml.5", ["NAME", "DESCRIPTION", "[MISC]", "[PROXY]",
                                             "[CERTS]", "SEE ALSO"])):
        out, err = render(os.path.join(MAN_DIR, page))
        check_eq(err.strip(), "", "groff warnings for " + page)
        heads = [ln.strip() for ln in out.splitlines() if re.match(r"^[A-Z\[]", ln)]
        for s in sections:
            check(s in heads, "section %s in %s" % (s, page), heads)


def test_options_documented(rig):
    """Every option `dduct --help` lists is an entry of dduct(1)'s OPTIONS."""
    helptext = subprocess.run([BIN, "--help"], capture_output=True, text=True).stdout
    opts = set(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", helptext))
    check(len(opts) >= 6, "options found in --help", helptext)
    with open(os.path.join(MAN_DIR, "dduct.1")) as f:
        roff = f.read().replace("\\-", "-")
    tags = " ".join(roff.split(".TP\n")[1:])
    for o in sorted(opts):
        check(o in tags, "%s documented in dduct(1)" % o)


def test_cache_commands_documented(rig):
    """Every command `dduct cache --help` lists is an entry of dduct(1)'s CACHE COMMANDS, and
    each of its options is named there."""
    p = subprocess.run([BIN, "cache", "--help"], capture_output=True, text=True)
    check_eq(p.returncode, 0, "dduct cache --help")
    cmds = set(re.findall(r"^  ([a-z]+) ", p.stdout, re.M))
    check_eq(sorted(cmds), ["du", "ls", "prune", "rm", "verify"], "commands in cache --help")
    opts = set(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", p.stdout)) - {"-h", "--help"}
    with open(os.path.join(MAN_DIR, "dduct.1")) as f:
        roff = f.read().replace("\\-", "-")
    m = re.search(r'^\.SH "?CACHE COMMANDS"?\n(.*?)^\.SH ', roff, re.M | re.S)
    check(m is not None, "a CACHE COMMANDS section in dduct(1)")
    tags = [t.split("\n", 1)[0] for t in m.group(1).split(".TP\n")[1:]]
    for c in sorted(cmds):
        check(any(re.match(r"\\fB%s\b" % c, t) for t in tags), "dduct cache %s is an entry" % c,
              tags)
    for o in sorted(opts):
        check(o in m.group(1), "%s documented under CACHE COMMANDS" % o)


def test_keys_documented(rig):
    """Every key of the effective configuration (`dduct --check`) is an entry of dduct.toml(5)
    under its own table."""
    out = subprocess.run([BIN, "--check"], capture_output=True, text=True).stdout
    with open(os.path.join(MAN_DIR, "dduct.toml.5")) as f:
        roff = f.read().replace("\\-", "-")
    table = None
    sections = {}
    cur = None
    for ln in roff.splitlines():
        m = re.match(r'^\.SH "?(\[[A-Z]+\])"?', ln)
        if m:
            cur = m.group(1).lower()
            sections[cur] = ""
        elif ln.startswith(".SH"):
            cur = None
        elif cur:
            sections[cur] += ln + "\n"
    n = 0
    for ln in out.splitlines():
        m = re.match(r"^\[(\w+)\]$", ln)
        if m:
            table = "[%s]" % m.group(1)
            continue
        m = re.match(r"^(\w+)\s*=", ln)
        if m and table:
            n += 1
            check(table in sections, "section %s in dduct.toml(5)" % table)
            check(re.search(r"^\.TP\n\\fB%s\\fR" % re.escape(m.group(1)), sections[table],
                            re.M) is not None,
                  "key %s %s is an entry of dduct.toml(5)" % (table, m.group(1)))
    check(n >= 20, "keys found in --check output", out)


def test_meson_install(rig):
    """meson install --destdir puts dduct.1 in share/man/man1 and dduct.toml.5 in
    share/man/man5."""
    dest = tempfile.mkdtemp(prefix="dduct-man-")
    p = subprocess.run(["meson", "install", "-C", BUILD, "--no-rebuild", "--destdir", dest,
                        "--quiet"], capture_output=True, text=True)
    check_eq(p.returncode, 0, "meson install (%s)" % p.stderr[-2000:])
    found = {os.path.relpath(os.path.join(r, f), dest).split("/share/man/", 1)[-1]
             for r, _, fs in os.walk(dest) for f in fs if "/share/man/" in os.path.join(r, f)}
    check_eq(sorted(found), ["man1/dduct.1", "man5/dduct.toml.5"], "installed man pages")
    subprocess.run(["rm", "-rf", dest])


if __name__ == "__main__":
    run([test_render_clean, test_options_documented, test_cache_commands_documented,
         test_keys_documented, test_meson_install])
