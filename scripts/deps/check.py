#!/usr/bin/env python3
"""Checks that every external program the tests, benchmarks and scripts run is installed
by the script that runs them, or is on a fresh machine already.

    scripts/deps/check.py [--list] [--installed] [REPO]

It reads the shell scripts through shfmt's syntax tree (`shfmt --tojson`) and the Rust
tests and benchmarks through the shapes our test kit builds commands with
(`Command::new("X")` and its `.arg`/`.args` chain, `Netns::exec(&["X", ...])`, the etcd
kit's `.command("X")`, `ip(&[...])`), and unwraps launchers (`ip netns exec NS X`,
`nsenter ... X`, `timeout N X`, `setsid X`, `unshare ... X`, `sh -c '...'`, `busybox X`).

Each program is looked up in scripts/deps/programs.tsv (program -> Debian package). The
package must be on a fresh machine (scripts/deps/fresh-image.txt), or installed by the
scripts that run the program (their `rv_need_pkgs ...` and `need_pkgs+=(...)` lists,
with what those pull in, from `apt-cache depends`). Exit 1 names every program that is
not, with its package and where it is run.

--installed (after the installs): every program found resolves on PATH, and `dpkg -S`
names the package the table gives, so the table cannot drift from the truth.
--list: print every program with its package and how it gets onto the machine.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

# Which install lists cover which files: the entry point that runs them, and the
# libraries it sources. A Rust test is run by scripts/test.sh; tests/vm.rs runs in the
# VM, whose /usr is the host's (scripts/vm-test.sh installs qemu and busybox).
ENV_LIB = "scripts/lib/env.sh"
RUNNERS = [
    ("tests/vm.rs", ["scripts/test.sh", ENV_LIB, "scripts/vm-test.sh"]),
    ("tests/", ["scripts/test.sh", ENV_LIB]),
    ("benches/", ["scripts/bench.sh", ENV_LIB]),
]

# Launchers: how many leading words to skip before the program they run. A function of
# the argv after the launcher's name; returns the index of the program, or None.
def _skip_options(argv, with_value=()):
    i = 0
    while i < len(argv):
        word = argv[i]
        if word is None or not word.startswith("-"):
            return i
        i += 2 if word in with_value else 1
    return None


def _after_timeout(argv):
    i = _skip_options(argv, with_value=("-k", "-s", "--kill-after", "--signal"))
    return None if i is None else i + 1  # the duration


def _after_ip(argv):
    # `ip netns exec NS X ...` runs X; any other `ip` command runs nothing else.
    words = [w for w in argv[:3]]
    if words[:2] == ["netns", "exec"]:
        return 3
    return None


LAUNCHERS = {
    "nsenter": lambda a: _skip_options(a, with_value=("-t", "--target", "-S", "-G", "--setuid", "--setgid")),
    "unshare": lambda a: _skip_options(a, with_value=("--propagation",)),
    "setsid": lambda a: _skip_options(a),
    "timeout": _after_timeout,
    "chroot": lambda a: 1,
    "env": lambda a: next((i for i, w in enumerate(a) if w is None or "=" not in w), None),
    "xargs": lambda a: _skip_options(a, with_value=("-n", "-I", "-P", "-d", "-L", "-s")),
    "exec": lambda a: 0,
    "command": lambda a: None if a[:1] == ["-v"] else 0,
    "ip": _after_ip,
}
SHELLS = {"sh", "bash"}


def repo_root(argv):
    rest = [a for a in argv if not a.startswith("--")]
    return Path(rest[0] if rest else Path(__file__).resolve().parents[2]).resolve()


class Finder:
    """Collects (program, file, line) from every file, and the install lists."""

    def __init__(self, root):
        self.root = root
        self.uses = defaultdict(list)  # program -> [(file, line)]
        self.dynamic = 0  # commands whose program is not a literal
        self.functions = set()
        self.installs = defaultdict(set)  # script -> packages it installs
        self.sources = defaultdict(set)  # script -> libraries it sources

    def rel(self, path):
        return str(path.relative_to(self.root))

    # --- argv, shell or Rust alike: a list of words, None where not a literal
    def argv(self, words, where):
        while words:
            name = words[0]
            if name is None:
                self.dynamic += 1
                return
            rest = words[1:]
            base = name.rsplit("/", 1)[-1] if name.startswith("/") else name
            if base in SHELLS and rest[:1] == ["-c"] and len(rest) > 1:
                self.uses[base].append(where)
                if rest[1] is not None:
                    self.shell_text(rest[1], where)
                return
            if name == "busybox":
                self.uses["busybox"].append(where)
                return
            if base in LAUNCHERS:
                if base not in ("exec", "command"):
                    self.uses[name].append(where)
                skip = LAUNCHERS[base](rest)
                if skip is None or skip >= len(rest):
                    return
                words = rest[skip:]
                continue
            self.uses[name].append(where)
            return

    # --- shell, through shfmt's syntax tree
    def shell_file(self, path):
        text = path.read_text()
        self.shell_text(text, (self.rel(path), 1), script=self.rel(path))

    def shell_text(self, text, where, script=None):
        out = subprocess.run(["shfmt", "--tojson"], input=text, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"check-deps: shfmt cannot parse {where[0]}: {out.stderr.strip()}")
        line0 = where[1] - 1 if script is None else 0
        self.walk(json.loads(out.stdout), where[0], line0, script)

    def walk(self, node, file, line0, script):
        if isinstance(node, list):
            for n in node:
                self.walk(n, file, line0, script)
            return
        if not isinstance(node, dict):
            return
        kind = node.get("Type")
        if kind == "FuncDecl":
            self.functions.add(node["Name"]["Value"])
        if kind == "CallExpr" and node.get("Args"):
            words = [word_text(w) for w in node["Args"]]
            where = (file, line0 + node["Pos"]["Line"])
            if script and words[0] == "rv_need_pkgs":
                self.installs[script].update(w for w in words[1:] if w)
            if words[0] == "command" and words[1:2] == ["-v"] and len(words) > 2 and words[2]:
                self.uses[words[2]].append(where)
            if script and words[0] in ("source", ".") and len(words) > 1 and words[1]:
                self.sources[script].add(words[1])
            self.argv(words, where)
        # launch=(nsenter ...): an argv kept in an array, run later as "${launch[@]}".
        if "Assigns" in node:
            for a in node["Assigns"] or []:
                elems = (a.get("Array") or {}).get("Elems") or []
                words = [word_text(el["Value"]) for el in elems if "Value" in el]
                if words and words[0] in LAUNCHERS and words[0] not in ("ip", "exec", "command"):
                    self.argv(words, (file, line0 + a["Pos"]["Line"]))
        # need_pkgs+=(a b): an install list that vm-test.sh hands to apt-get.
        if script and "Assigns" in node:
            for a in node["Assigns"] or []:
                if a.get("Name", {}).get("Value") == "need_pkgs" and a.get("Array"):
                    for el in a["Array"].get("Elems", []):
                        w = word_text(el["Value"])
                        if w:
                            self.installs[script].add(w)
        for key, value in node.items():
            if key not in ("Pos", "End") and isinstance(value, (dict, list)):
                self.walk(value, file, line0, script)

    # --- Rust: the kit's shapes
    def rust_file(self, path):
        text = path.read_text()
        file = self.rel(path)
        for m in re.finditer(r"Command::new\(", text):
            words = rust_call_chain(text, m.end())
            if words is not None:
                self.argv(words, (file, line_of(text, m.start())))
        # Netns::exec(&["X", ...]): `ip netns exec NS X ...`
        for m in re.finditer(r"\.exec\(\s*&\[", text):
            words = rust_list(text, m.end())
            self.argv(words, (file, line_of(text, m.start())))
        # the etcd kit: self.command("etcd")
        for m in re.finditer(r'\.command\(\s*"([^"]+)"\s*\)', text):
            self.uses[m.group(1)].append((file, line_of(text, m.start())))
        # Netns::ip / try_ip, Cluster::etcdctl: fixed programs
        for m in re.finditer(r"\b(ip|try_ip|etcdctl)\(\s*&\[", text):
            self.uses["etcdctl" if m.group(1) == "etcdctl" else "ip"].append((file, line_of(text, m.start())))


def word_text(word):
    """A shell word's text when it is a literal (quoted or not), else None."""
    parts = word.get("Parts", [])
    out = []
    for p in parts:
        t = p.get("Type")
        if t == "Lit":
            out.append(p.get("Value", ""))
        elif t == "SglQuoted":
            out.append(p.get("Value", ""))
        elif t == "DblQuoted" and all(q.get("Type") == "Lit" for q in p.get("Parts", [])):
            out.extend(q.get("Value", "") for q in p.get("Parts", []))
        else:
            return None
    return "".join(out)


def line_of(text, offset):
    return text.count("\n", 0, offset) + 1


RUST_STRING = re.compile(r'\s*(?:r#?)?"((?:[^"\\]|\\.)*)"#?\s*')


def rust_list(text, i):
    """The elements of an array literal starting at text[i] (after `[`): literals as
    strings, anything else as None."""
    words = []
    depth = 0
    start = i
    while i < len(text):
        c = text[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0:
                words.append(rust_element(text[start:i]))
                return [w for w in words if w != ""]
            depth -= 1
        elif c == "," and depth == 0:
            words.append(rust_element(text[start:i]))
            start = i + 1
        elif c == '"':
            i = skip_string(text, i)
            continue
        i += 1
    return words


def rust_element(src):
    src = src.strip()
    if not src:
        return ""
    m = RUST_STRING.fullmatch(src)
    return m.group(1) if m else None


def skip_string(text, i):
    i += 1
    while i < len(text) and text[i] != '"':
        i += 2 if text[i] == "\\" else 1
    return i + 1


def rust_call_chain(text, i):
    """argv of `Command::new(X)` followed by `.arg(Y)` / `.args([..])` calls."""
    first = rust_list(text, i)
    if len(first) != 1:
        return None
    words = list(first)
    j = text.index(")", i) + 1 if first[0] is not None else None
    if j is None:
        return words
    while True:
        m = re.compile(r"\s*\.(arg|args)\(\s*(&?\[)?").match(text, j)
        if not m:
            return words
        if m.group(1) == "arg" or not m.group(2):
            inner = rust_list(text, m.end())
            words.append(inner[0] if len(inner) == 1 and m.group(1) == "arg" else None)
            if m.group(1) == "args":
                return words  # a slice from elsewhere: the rest is unknown
        else:
            words.extend(rust_list(text, m.end()))
        j = close_paren(text, m.end())


def close_paren(text, i):
    depth = 1 if text[i - 1] == "(" else 2
    while i < len(text) and depth:
        c = text[i]
        if c == '"':
            i = skip_string(text, i)
            continue
        depth += c in "([{"
        depth -= c in ")]}"
        i += 1
    return i


def load_table(root):
    table = {}
    for n, line in enumerate((root / "scripts/deps/programs.tsv").read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            sys.exit(f"check-deps: scripts/deps/programs.tsv:{n}: want 'program<TAB>package[<TAB>note]'")
        table[fields[0]] = fields[1]
    return table


def fresh_image(root):
    lines = (root / "scripts/deps/fresh-image.txt").read_text().splitlines()
    return {p.strip() for p in lines if p.strip() and not p.startswith("#")}


def depends_closure(packages):
    """Every package the given ones pull in (Depends and PreDepends, recursively)."""
    if not packages:
        return set()
    cmd = ["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
           "--no-breaks", "--no-replaces", "--no-enhances", *sorted(packages)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0 or "Depends:" not in out.stdout:
        # No package lists yet on a fresh machine.
        subprocess.run(["apt-get", "-q", "update"], capture_output=True)
        out = subprocess.run(cmd, capture_output=True, text=True)
    closure = set()
    for line in out.stdout.splitlines():
        if not line.startswith(" "):
            closure.add(line.strip())
            continue
        key, _, value = line.strip().lstrip("|").partition(":")
        if key in ("Depends", "PreDepends"):
            closure.add(value.strip().strip("<>").split(":")[0])
    return closure


def runners_of(file, finder):
    for prefix, scripts in RUNNERS:
        if file == prefix or (prefix.endswith("/") and file.startswith(prefix)):
            return scripts
    libs = set()
    for src in finder.sources.get(file, ()):
        name = src.replace('"', "").split("/")[-1]
        libs.update(s for s in finder.installs if s.endswith("/" + name) or s.endswith("lib/" + name))
    if file.startswith("scripts/lib/"):
        return [file]
    return [file, *sorted(libs | {ENV_LIB} if any("env.sh" in s for s in finder.sources.get(file, ())) else libs)]


PROJECT = "=project"  # built from this repository
IMAGE = "=image"  # on a fresh machine, outside dpkg (the Rust toolchain)
SKIP = {PROJECT, IMAGE}


def main(argv):
    root = repo_root(argv)
    if not shutil.which("shfmt"):
        sys.exit("check-deps: shfmt is not installed (scripts/check-deps.sh installs it)")
    finder = Finder(root)
    shell_files = sorted({*root.glob("scripts/**/*.sh"), root / ".ci/run"})
    for f in shell_files:
        finder.shell_file(f)
    for f in sorted({*root.glob("tests/**/*.rs"), *root.glob("benches/**/*.rs")}):
        finder.rust_file(f)
    builtins = set(
        subprocess.run(["bash", "-c", "compgen -b; compgen -k"], capture_output=True, text=True).stdout.split()
    )
    table = load_table(root)
    image = fresh_image(root)

    programs = {}
    for prog, places in finder.uses.items():
        if prog in builtins or prog in finder.functions or prog == "rv_need_pkgs":
            continue
        if "/" in prog and not prog.startswith("/"):
            continue  # a script of this repository, run by path
        programs[prog] = places

    problems = []
    closures = {}
    rows = []
    for prog, places in sorted(programs.items()):
        package = table.get(prog)
        files = sorted({f for f, _ in places})
        first = f"{places[0][0]}:{places[0][1]}"
        if package is None:
            problems.append(
                f"{prog}: run at {first} ({len(places)} places), but scripts/deps/programs.tsv does not say "
                f"which Debian package provides it; add a line '{prog}<TAB>PACKAGE' "
                f"(dpkg -S \"$(command -v {prog})\" names it where it is installed)"
            )
            continue
        if package in SKIP:
            rows.append((prog, package, "project or toolchain", first))
            continue
        if package in image:
            rows.append((prog, package, "on a fresh machine", first))
            continue
        missing_in = []
        how = None
        for f in files:
            runners = tuple(runners_of(f, finder))
            if runners not in closures:
                listed = set().union(*(finder.installs.get(r, set()) for r in runners))
                closures[runners] = (listed, depends_closure(listed))
            listed, closure = closures[runners]
            if how is not None and package in listed | closure:
                continue
            if package in listed:
                how = f"installed by {' '.join(r for r in runners if package in finder.installs.get(r, ()))}"
            elif package in closure:
                how = f"pulled in by {' '.join(sorted(listed))}"[:90]
            else:
                missing_in.append((f, runners))
                continue
        if missing_in:
            for f, runners in missing_in:
                line = next(ln for ff, ln in places if ff == f)
                problems.append(
                    f"{prog} (Debian package {package}): run at {f}:{line}, but neither on a fresh machine nor "
                    f"installed by {', '.join(runners)}; add {package} to their rv_need_pkgs list"
                )
        else:
            rows.append((prog, package, how, first))

    if "--list" in argv or problems:
        print(f"check-deps: {len(programs)} programs run by {len(shell_files)} scripts and the Rust tests and benches "
              f"({finder.dynamic} commands run a program named by a variable, not checked here):")
        for prog, package, how, first in rows:
            print(f"  {prog:<24} {package:<28} {how:<40} e.g. {first}")
    if "--installed" in argv:
        problems += check_installed(rows)
    for p in problems:
        print(f"check-deps: MISSING {p}", file=sys.stderr)
    if problems:
        return 1
    print(f"check-deps: every program has its package: {len(rows)} checked")
    return 0


def check_installed(rows):
    """After the installs: each program is there, from the package the table names. A
    program found first on PATH outside dpkg (the image's own python3, git or docker
    client) counts when the package's copy is there too, in a standard place."""
    problems = []
    for prog, package, _, first in rows:
        if package in SKIP:
            continue
        if prog.startswith("/"):
            places = [prog]
        else:
            places = [shutil.which(prog)] + [f"{d}/{prog}" for d in ("/usr/bin", "/usr/sbin", "/bin", "/sbin")]
        places = [p for p in dict.fromkeys(places) if p and os.path.exists(p)]
        if not places:
            problems.append(f"{prog} (from {package}, run at {first}) is not on this machine after the installs")
            continue
        owners = set()
        for place in places:
            owners |= dpkg_owners(place)
        if package not in owners:
            found = ", ".join(sorted(owners)) or "no Debian package"
            problems.append(f"{prog}: the table says {package}, but {', '.join(places)} belong to {found}")
    return problems


def dpkg_owners(path):
    candidates = {path, os.path.realpath(path)}
    candidates |= {c.replace("/usr/", "/", 1) for c in candidates if c.startswith("/usr/")}
    owners = set()
    for candidate in candidates:
        out = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
        for line in out.stdout.splitlines() if out.returncode == 0 else []:
            if line.startswith("diversion by "):
                owners.add(line.split()[2])
                continue
            owners.update(o.strip().split(":")[0] for o in line.split(": ", 1)[0].split(","))
    return owners


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
