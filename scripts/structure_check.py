#!/usr/bin/env python3
"""Structure limits of the code base (issue 25): no import circle between the files of one crate nor
between its top-level modules, no function over 100 lines and no file over 600 lines outside tests.

Usage: scripts/structure_check.py [--max-fn 100] [--max-file 600]
Exits 1 and lists each violation when there is one. Pure text analysis (no rustc): a file's module path
comes from its place under the crate's src/, an import is any `crate::a::b`, `super::x` or `self::x` path in
its code (not in comments or strings), resolved to the deepest module that is a file. Test code (files
under tests/ and benches/, `#[cfg(test)] mod` blocks) is skipped.
"""
import argparse
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRATE_SRCS = [
    "src", "macros/src", "policy/src", "tokenizer/src", "rollout/src", "learner/src", "envs/src",
    "vllm/src", "support/src", "support/oracle/src", "examples/unit-convert/src",
]


def strip_comments_and_strings(text):
    """Replaces comments and string/char literal contents by spaces, keeping line breaks."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 20]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            j = n if j < 0 else j + len(end)
            out.append('""' + re.sub(r"[^\n]", " ", text[i + 2:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('"' + re.sub(r"[^\n]", " ", text[i + 1:j]) + '"')
            i = j + 1
        elif c == "'":
            # A char literal ('a', '\n', '\u{1F600}') or a lifetime ('a): only literals are blanked.
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'", text[i:])
            if m:
                out.append("' '")
                i += len(m.group(0))
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def matching_brace(code, open_idx):
    depth = 0
    for j in range(open_idx, len(code)):
        if code[j] == "{":
            depth += 1
        elif code[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return len(code) - 1


def test_spans(code):
    """Character spans of `#[cfg(test)]` items (modules or functions), to skip."""
    spans = []
    for m in re.finditer(r"#\[cfg\(test\)\]", code):
        brace = code.find("{", m.end())
        semi = code.find(";", m.end())
        if brace < 0 or (0 <= semi < brace):
            continue
        spans.append((m.start(), matching_brace(code, brace)))
    return spans


def functions(code):
    """(name, first line, line count) of every fn with a body."""
    found = []
    for m in re.finditer(r"\bfn\s+([A-Za-z_][A-Za-z0-9_]*)", code):
        # The body opens at the first `{` after the signature at paren/angle depth 0; a `;` first means a
        # declaration without body (trait method).
        j, paren = m.end(), 0
        while j < len(code):
            ch = code[j]
            if ch in "(<[":
                paren += 1
            elif ch in ")>]":
                paren -= 1 if not (ch == ">" and code[j - 1] == "-") else 0
            elif ch == ";" and paren <= 0:
                j = -1
                break
            elif ch == "{" and paren <= 0:
                break
            j += 1
        if j < 0 or j >= len(code):
            continue
        end = matching_brace(code, j)
        first = code.count("\n", 0, m.start()) + 1
        last = code.count("\n", 0, end) + 1
        found.append((m.group(1), first, last - first + 1, m.start()))
    return found


def module_path(src, path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ("lib", "main", "mod"):
        rel = rel[:-1]
    return tuple(rel)


def crate_files(src):
    for dirpath, _, names in os.walk(src):
        for name in names:
            if name.endswith(".rs"):
                yield os.path.join(dirpath, name)


def is_dir_module(path):
    return os.path.basename(path) in ("lib.rs", "main.rs", "mod.rs")


def resolve(mods, base, segments):
    """Deepest file module named by `base + segments` (segments may end in an item name)."""
    full = list(base) + segments
    for k in range(len(full), -1, -1):
        if tuple(full[:k]) in mods:
            return tuple(full[:k])
    return None


def imports(code, mod, dir_module, mods):
    """File modules that `code` (of module `mod`) names through crate::, super:: or self:: paths."""
    found = set()
    for m in re.finditer(r"\b(crate|super|self)((?:\s*::\s*(?:super|[A-Za-z_][A-Za-z0-9_]*))+)(\s*::\s*\{)?", code):
        head = m.group(1)
        segs = [s.strip() for s in m.group(2).split("::") if s.strip()]
        if head == "crate":
            base = []
        else:
            # `self` is the module itself; `super` its parent. A non-dir file's module is its own path.
            base = list(mod)
            if head == "super":
                base = base[:-1]
            while segs and segs[0] == "super":
                base = base[:-1]
                segs = segs[1:]
        targets = []
        if m.group(3):
            # `use a::b::{c, d::e}`: every first segment of the group.
            close = matching_brace(code, m.end() - 1)
            group = code[m.end():close]
            depth, cur, items = 0, "", []
            for ch in group:
                if ch == "{":
                    depth += 1
                elif ch == "}":
                    depth -= 1
                if ch == "," and depth == 0:
                    items.append(cur)
                    cur = ""
                else:
                    cur += ch
            items.append(cur)
            for item in items:
                words = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", item.split("{")[0])
                targets.append(segs + [w for w in words if w not in ("as",)][:1])
        else:
            targets.append(segs)
        for t in targets:
            r = resolve(mods, base, t)
            if r is not None and r != mod:
                found.add(r)
    return found


def sccs(graph):
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-fn", type=int, default=100)
    ap.add_argument("--max-file", type=int, default=600)
    args = ap.parse_args()
    problems = []
    for rel_src in CRATE_SRCS:
        src = os.path.join(ROOT, rel_src)
        if not os.path.isdir(src):
            continue
        files = sorted(crate_files(src))
        # Binaries under src/bin are crates of their own; skip their edges but check their sizes.
        mods = {module_path(src, f): f for f in files if os.sep + "bin" + os.sep not in f}
        graph = {}
        for f in files:
            text = open(f, encoding="utf-8").read()
            code = strip_comments_and_strings(text)
            spans = test_spans(code)
            in_test = lambda pos: any(a <= pos <= b for a, b in spans)
            non_test_lines = text.count("\n") + 1 - sum(code.count("\n", a, b) + 1 for a, b in spans)
            relf = os.path.relpath(f, ROOT)
            if non_test_lines > args.max_file:
                problems.append(f"file {relf}: {non_test_lines} lines outside tests (limit {args.max_file})")
            for name, first, count, pos in functions(code):
                if count > args.max_fn and not in_test(pos):
                    problems.append(f"fn {relf}:{first} {name}: {count} lines (limit {args.max_fn})")
            if os.sep + "bin" + os.sep in f:
                continue
            kept = "".join(ch if not in_test(i) else (ch if ch == "\n" else " ") for i, ch in enumerate(code)) if spans else code
            mod = module_path(src, f)
            graph[mod] = imports(kept, mod, is_dir_module(f), mods)
        # The same between a crate's top-level modules (a folder counts as one): `train` using
        # `commands` while `commands` uses `train` is a circle even when no two files close it.
        top = {}
        for a, targets in graph.items():
            for b in targets:
                if a and b and a[0] != b[0]:
                    top.setdefault((a[0],), set()).add((b[0],))
        for comp in sccs(top):
            names = ", ".join(m[0] for m in comp)
            edges = "; ".join(
                f"{x[0]} -> {y[0]} ({', '.join(sorted(os.path.relpath(mods[a], ROOT) for a in graph if a and a[0] == x[0] and any(b and b[0] == y[0] for b in graph[a])))})"
                for x in comp for y in sorted(top.get(x, ())) if y in comp
            )
            problems.append(f"import circle between the modules of {rel_src}: {names} (edges: {edges})")
        for comp in sccs(graph):
            names = ", ".join(os.path.relpath(mods[m], ROOT) for m in comp)
            edges = "; ".join(
                f"{os.path.relpath(mods[a], ROOT)} -> {os.path.relpath(mods[b], ROOT)}"
                for a in comp for b in sorted(graph[a]) if b in comp
            )
            problems.append(f"import circle in {rel_src}: {names} (edges: {edges})")
    for p in problems:
        print(p)
    print(f"structure check: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
