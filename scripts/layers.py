#!/usr/bin/env python3
"""The layer rule of src/: every file imports only downwards, and no files import
each other in a circle.

    python3 scripts/layers.py [--tree DIR]

Layers, lowest first (README "Where things are"):
  core     pure types and decisions: model, state, error, util, keys, drift, the allocator
  adapter  speaks to the outside: kernel, store, etcd, dhcp, metrics
  ledger   the state behind its lock, the journal, commit and its hooks: ledger
  service  driver, ipam (each never imports the other)
  engine   the ledger and the two services put together: plugin
  edge     Docker's wire format and router, the dump, status
  app      server, cli, client, main, lib

A file may import a lower layer, or its own component (driver from driver); core, edge
and app files may use others of their layer; adapters may also use metrics, and the
two services never import each other. An import is every `crate::a::b` path and every `super::` path
in code (comments stripped), resolved to the longest file module it names.
"""

import argparse
import os
import re
import sys

LAYERS = ["core", "adapter", "ledger", "service", "engine", "edge", "app"]

# Module (as in `crate::a::b`) -> layer; a module not listed takes its parent's layer.
MODULE_LAYER = {
    "model": "core",
    "state": "core",
    "error": "core",
    "util": "core",
    "keys": "core",
    "drift": "core",
    "ipam::allocator": "core",
    "ipam::addrset": "core",
    "ipam::blocks": "core",
    "kernel": "adapter",
    "store": "adapter",
    "etcd": "adapter",
    "dhcp": "adapter",
    "metrics": "adapter",
    "ledger": "ledger",
    "plugin": "engine",
    "driver": "service",
    "ipam": "service",
    "api": "edge",
    "dump": "edge",
    "status": "edge",
    "server": "app",
    "cli": "app",
    "client": "app",
    "main": "app",
    "lib": "app",
}

# Adapters share these with each other.
ADAPTER_COMMONS = {"metrics"}


def module_of(path, src):
    rel = os.path.relpath(path, src)[: -len(".rs")]
    parts = rel.split(os.sep)
    if parts[-1] == "mod":
        parts = parts[:-1]
    return "::".join(parts)


def layer_of(module):
    parts = module.split("::")
    while parts:
        m = "::".join(parts)
        if m in MODULE_LAYER:
            return MODULE_LAYER[m]
        parts = parts[:-1]
    raise SystemExit(f"layers: no layer for module {module}; add it to MODULE_LAYER in scripts/layers.py")


def component(module):
    """The unit a file may import freely within: its top-level module, or the
    allocator files as one."""
    if layer_of(module) == "core" and module.startswith("ipam::"):
        return "ipam-core"
    return module.split("::")[0]


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    out = []
    for line in text.splitlines():
        # Enough for this tree: `//` inside a string literal is rare in import lines.
        out.append(re.sub(r"//.*", "", line))
    return "\n".join(out)


def test_code_removed(text):
    """Drops `#[cfg(test)] mod … { … }` blocks: tests may reach anywhere."""
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub(\(crate\))?\s+)?mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i : m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def use_paths(text):
    """Every path a file names: `crate::…` and `super::…`, with `use` groups expanded."""
    paths = []
    for m in re.finditer(r"\buse\s+((?:crate|super)(?:::\w+)*)::\{", text):
        depth, j = 1, m.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        for item in re.split(r"[,\s]+", re.sub(r"\{[^{}]*\}", "", text[m.end() : j - 1])):
            if item and item != "self":
                paths.append(m.group(1) + "::" + item.split("::")[0])
        # Nested groups name their own prefixes.
        for inner in re.finditer(r"(\w+)::\{", text[m.end() : j - 1]):
            paths.append(m.group(1) + "::" + inner.group(1))
    for m in re.finditer(r"\b((?:crate|super)(?:::\w+)+)", text):
        paths.append(m.group(1))
    return paths


def defined_items(text):
    return set(m.group(1) for m in re.finditer(
        r"\bpub(?:\([\w:]+\))?\s+(?:async\s+)?(?:fn|struct|enum|const|static|type|trait|mod)\s+(\w+)", text))


def reexports(text):
    """A mod.rs's `pub use child::{A, B}` / `pub use child::*`: item -> child, and the
    children re-exported whole."""
    named, globbed = {}, []
    for m in re.finditer(r"\bpub\s+use\s+(\w+)::(\{[^}]*\}|\*|\w+)", text):
        child, what = m.group(1), m.group(2)
        if what == "*":
            globbed.append(child)
        else:
            for item in re.split(r"[{},\s]+", what):
                if item:
                    named[item.split(" as ")[-1]] = child
    return named, globbed


def resolve(path, own, modules, items=None):
    parts = path.split("::")
    if parts[0] == "crate":
        parts = parts[1:]
    elif parts[0] == "self":
        parts = own.split("::") + parts[1:]
    else:
        base = own.split("::")
        # A file's `super` is its parent module; mod.rs files are their module already.
        while parts and parts[0] == "super":
            base = base[:-1]
            parts = parts[1:]
        parts = base + parts
    full = parts
    while parts:
        m = "::".join(parts)
        if m in modules:
            rest = full[len(parts):]
            # An item the module re-exports from a child is the child's.
            if items and rest and m in items:
                own_items, named, globbed = items[m]
                if rest[0] not in own_items:
                    child = named.get(rest[0])
                    for c in globbed:
                        if child is None and rest[0] in items.get(f"{m}::{c}", (set(),))[0]:
                            child = c
                    if child and f"{m}::{child}" in modules:
                        return f"{m}::{child}"
            return m
        parts = parts[:-1]
    return None


def allowed(own, target):
    lo, lt = LAYERS.index(layer_of(own)), LAYERS.index(layer_of(target))
    if lt < lo or component(own) == component(target):
        return True
    if lt > lo:
        return False
    # The same layer: adapters keep to themselves (and metrics), the two services never
    # meet; core, edge and app files use each other (the circle check still applies).
    if layer_of(own) == "adapter":
        return target in ADAPTER_COMMONS
    return layer_of(own) not in ("service", "ledger")


def graph(src):
    files = {}
    for root, _, names in os.walk(src):
        for name in names:
            if name.endswith(".rs"):
                path = os.path.join(root, name)
                files[module_of(path, src)] = path
    texts = {m: test_code_removed(strip_comments(open(p, encoding="utf-8").read())) for m, p in files.items()}
    items = {m: (defined_items(t),) + reexports(t) for m, t in texts.items()}
    edges = {}
    for module, text in texts.items():
        if module in ("driver::tests", "kernel::fake"):
            continue  # test-only files
        targets = {resolve(p, module, files, items) for p in use_paths(text)}
        edges[module] = sorted(t for t in targets if t and t != module)
    return files, edges


def circles(edges):
    """Strongly connected components of more than one file (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, []):
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

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", default=os.path.dirname(here))
    args = ap.parse_args()
    src = os.path.join(args.tree, "src")
    files, edges = graph(src)

    found = set()
    for own, targets in sorted(edges.items()):
        for t in targets:
            if not allowed(own, t):
                found.add(f"{own} -> {t}  ({layer_of(own)} imports {layer_of(t)})")
    # A circle is listed once, as its files.
    for comp in circles(edges):
        found.add("circle: " + " ".join(comp))

    print(f"layers: {len(files)} files, {sum(map(len, edges.values()))} imports, {len(found)} against the rule")
    for line in sorted(found):
        print(f"layers: AGAINST THE RULE: {line}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
