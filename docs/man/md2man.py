#!/usr/bin/env python3
"""Man pages from the Markdown docs, so the docs stay the one source of truth.

    md2man.py --name dduct --section 1 --summary "..." --version V [--see-also ...] \\
        -o dduct.1 SOURCE[#Heading] ...

Each SOURCE is a Markdown file: whole (its title line dropped, the text before the first
`##` under DESCRIPTION), `FILE#Heading` for one `## Heading` section of it, or `FILE#=Title`
for its intro under the section name Title. The subset of Markdown the docs use becomes man(7) roff: `##`/`###` headings (.SH/.SS),
paragraphs, `-`/`1.` lists (.IP), fenced code (.nf), tables (each row a .TP entry: the first
cell is the tag, the others follow with their column names), `code` and **bold** (\\fB),
*emphasis* (\\fI), links (their text). No date is written, so the output depends on the sources
alone.
"""
import argparse
import re
import sys


def esc(text):
    """Text for roff: backslashes and a leading dot or quote made literal."""
    text = text.replace("\\", "\\e")
    return text


def inline(text):
    text = esc(text)
    text = re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", text)  # links: their text
    out, pos = [], 0
    for m in re.finditer(r"`([^`]+)`", text):  # code spans: bold, verbatim inside
        out.append(_emph(text[pos:m.start()]))
        out.append("\\fB" + m.group(1).replace("-", "\\-") + "\\fR")
        pos = m.end()
    out.append(_emph(text[pos:]))
    return "".join(out)


def _emph(text):
    text = re.sub(r"\*\*([^*]+)\*\*", r"\\fB\1\\fR", text)
    text = re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"\\fI\1\\fR", text)
    return text


def line_out(s):
    return "\\&" + s if s.startswith((".", "'")) else s


def cells(row):
    row = row.strip()
    if row.startswith("|"):
        row = row[1:]
    if row.endswith("|"):
        row = row[:-1]
    parts, cur, tick = [], "", False
    for ch in row:  # '|' inside `code` does not split
        if ch == "`":
            tick = not tick
        if ch == "|" and not tick:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    return parts


def section(path, heading):
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    if heading is None:
        return lines
    if heading.startswith("="):  # the intro: the text before the first ## heading
        out = []
        for ln in lines:
            if ln.startswith("## "):
                break
            out.append(ln)
        return out
    out, inside = [], False
    for ln in lines:
        if re.match(r"^#{1,2} ", ln):
            if inside:
                break
            inside = ln.lstrip("#").strip() == heading
            continue
        if inside:
            out.append(ln)
    if not inside and not out:
        sys.exit("md2man: no section '## %s' in %s" % (heading, path))
    return out


def convert(lines, title=None):
    out = []
    if title:
        out.append(".SH " + esc(title.upper()))
    para = []
    i = 0

    def flush():
        if para:
            out.append(".PP")
            out.append(line_out(inline(" ".join(para))))  # code spans may cross lines
            para.clear()

    while i < len(lines):
        ln = lines[i]
        if ln.startswith("```"):
            flush()
            out += [".PP", ".RS 4", ".nf"]
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                out.append(line_out(esc(lines[i]).replace("-", "\\-")))
                i += 1
            out += [".fi", ".RE"]
        elif ln.startswith("## ") or ln.startswith("### "):
            flush()
            name = ln.lstrip("#").strip().strip("`")
            if ln.startswith("## "):
                name = name.upper()
            out.append((".SH " if ln.startswith("## ") else ".SS ") + '"' +
                       inline(name).replace('"', "") + '"')
        elif ln.startswith("|"):
            flush()
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(cells(lines[i]))
                i += 1
            i -= 1
            head, body = rows[0], [r for r in rows[1:] if not re.match(r"^[-: ]*$", "".join(r))]
            for r in body:
                out.append(".TP")
                out.append(line_out(inline(r[0])))
                rest = []
                for name, val in zip(head[1:], r[1:]):
                    if len(head) == 2 or name.lower() in ("meaning", "effect", "what"):
                        rest.append(inline(val))
                    elif val:
                        rest.append(inline(name) + ": " + inline(val) + ".")
                out.append(line_out(" ".join(rest)))
        elif re.match(r"^\s*(?:[-*]|\d+\.) ", ln):
            flush()
            item = [re.sub(r"^\s*(?:[-*]|\d+\.) ", "", ln)]
            while i + 1 < len(lines) and lines[i + 1].startswith("  ") and \
                    lines[i + 1].strip() and not re.match(r"^\s*(?:[-*]|\d+\.) ", lines[i + 1]):
                i += 1
                item.append(lines[i].strip())
            out.append(".IP \\(bu 2")
            out.append(line_out(inline(" ".join(item))))
        elif ln.startswith("[//]") or ln.startswith("<"):
            pass
        elif not ln.strip():
            flush()
        else:
            para.append(ln.strip())
        i += 1
    flush()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--section", required=True)
    ap.add_argument("--summary", required=True)
    ap.add_argument("--version", required=True)
    ap.add_argument("--see-also", default="")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("sources", nargs="+")
    a = ap.parse_args()
    out = ['.\\" Generated by docs/man/md2man.py from %s; edit those, not this file.'
           % ", ".join(s.split("/")[-1] for s in a.sources),
           '.TH "%s" "%s" "" "dduct %s" "dduct"' % (a.name.upper(), a.section, a.version),
           ".SH NAME", "%s \\- %s" % (a.name.replace("-", "\\-"), esc(a.summary))]
    for src in a.sources:
        path, _, heading = src.partition("#")
        title = heading.lstrip("=") if heading else "Description"
        out += convert(section(path, heading or None), title=title)
    if a.see_also:
        out += [".SH \"SEE ALSO\"", ", ".join(
            "\\fB%s\\fR(%s)" % tuple(x.rstrip(")").split("(")) for x in a.see_also.split(","))]
    with open(a.output, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
