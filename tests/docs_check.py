"""The commands of README.md and docs/*.md, read and run as a newcomer would.

Two uses:

- `tests/test_docs_commands.py` (every `make test`) checks, cheaply, that every
  `taesar ...` command written anywhere in the docs names a subcommand and options
  that exist, every `make` target exists, every benchmark script exists, and every
  shell block parses.
- `python3 -m tests.docs_check run` runs, in a fresh clone, every ```bash and
  ```python block of README.md, then of docs/*.md, in order, exactly as written:
  README's first block is `make demo` + `make test`, so this is the whole newcomer
  path (about 7 minutes on 2 idle cores). Each file runs in one bash session with the
  project's venv active (the docs' stated premise), so exports carry over between
  its blocks, and whatever a file started in the background is stopped when it ends.
  Python blocks run with the venv's python in that session.

A block can be marked on the line before its fence:
  <!-- docs-check: long (why) -->   run only with `run --long`
  <!-- docs-check: skip (why) -->   never run here; the reason says what covers it
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNNABLE = ("bash", "python")
_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")  # blocks inside list items are indented
_MARK = re.compile(r"^<!-- docs-check: (long|skip) \((.+)\) -->$")
_INLINE = re.compile(r"`(taesar [^`]+)`")
_SEPARATORS = {"|", "||", "&&", ";", "&"}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    mark: str | None = None  # "long" | "skip"
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def doc_files(root: Path = ROOT) -> list[Path]:
    """README.md, then docs/*.md in name order: the order a reader runs them in."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def blocks(path: Path) -> list[Block]:
    out: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent, lang = fence.groups()
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```"))
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        mark = _MARK.match(before.strip())
        text = "\n".join(line.removeprefix(indent) for line in lines[i + 1 : end]) + "\n"
        out.append(Block(path, i + 1, lang, text, *(mark.groups() if mark else ())))
        i = end + 1
    return out


# -- static checks -----------------------------------------------------------------------


def shell_commands(text: str) -> list[list[str]]:
    """The simple commands of a shell (or synopsis) text, as token lists."""
    joined = re.sub(r"\\\n", " ", text)
    commands: list[list[str]] = []
    for line in joined.splitlines():
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:  # a quote that spans lines (a curl -d body): not a taesar call
            continue
        current: list[str] = []
        for tok in tokens:
            if tok in _SEPARATORS:
                commands.append(current)
                current = []
            else:
                current.append(tok)
        commands.append(current)
    return [c for c in commands if c]


def taesar_calls(root: Path = ROOT) -> list[tuple[str, list[str]]]:
    """(where, tokens) of every `taesar ...` in the docs: blocks, synopses and inline code."""
    files = [*doc_files(root), *sorted((root / "docs").glob("*/*.md"))]
    calls: list[tuple[str, list[str]]] = []
    for path in files:
        for b in blocks(path):
            calls += [(b.where, c) for c in shell_commands(b.text) if c[0] == "taesar"]
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for span in _INLINE.findall(line):
                calls += [(f"{path.relative_to(root)}:{n}", c) for c in shell_commands(span) if c[0] == "taesar"]
    return calls


def unknown_options(tokens: list[str]) -> list[str]:
    """What in one `taesar ...` call the CLI does not know: a subcommand or an option."""
    import typer.main

    from cli import app

    cmd = typer.main.get_command(app)
    rest = tokens[1:]
    while hasattr(cmd, "commands") and rest:
        group_opts = {o: p for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
        if rest[0] in group_opts:  # an option of the group itself, e.g. taesar --threads 1 pretrain
            rest = rest[1 if group_opts[rest[0]].is_flag else 2 :]
        elif rest[0] in cmd.commands:
            cmd, rest = cmd.commands[rest[0]], rest[1:]
        else:
            break
    if hasattr(cmd, "commands"):
        return [f"no subcommand {rest[0] if rest else '(none)'} of {' '.join(tokens[:1])}"]
    known = {"--help"} | {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    written = {t.strip("[]").split("=")[0] for t in rest if t.strip("[]").startswith("--")}
    return sorted(written - known)


def make_targets(root: Path = ROOT) -> set[str]:
    text = (root / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z0-9_.-]+):", text, flags=re.MULTILINE))


# -- running -------------------------------------------------------------------------------


def _session_script(path: Path, chosen: list[Block], scratch: Path) -> str:
    lines = [
        "set -eo pipefail",
        # stop what this file started in the background (API, worker) when it ends
        "trap 'set +e; kill $(jobs -p) 2>/dev/null; wait 2>/dev/null' EXIT",
        f"cd {shlex.quote(str(ROOT))}",
        "[ -f .venv/bin/activate ] && . .venv/bin/activate",
    ]
    for k, b in enumerate(chosen):
        body = scratch / f"block{k}.{'sh' if b.lang == 'bash' else 'py'}"
        body.write_text(b.text, encoding="utf-8")
        run = f"source {shlex.quote(str(body))}" if b.lang == "bash" else f"python {shlex.quote(str(body))}"
        lines += [
            f"echo '>>> {b.where} ({b.lang})'",
            "started=$SECONDS",
            run,
            f'echo "<<< {b.where} ok $((SECONDS - started)) s"',
        ]
    return "\n".join(lines) + "\n"


def run(files: list[Path], long: bool) -> int:
    failed = 0
    for path in files:
        chosen = [b for b in blocks(path) if b.lang in RUNNABLE and b.mark != "skip" and (long or b.mark != "long")]
        for b in blocks(path):
            if b.lang in RUNNABLE and b not in chosen:
                print(f"--- {b.where}: not run ({b.mark}: {b.reason})", flush=True)
        if not chosen:
            continue
        with tempfile.TemporaryDirectory(prefix="docs-check-") as scratch:
            script = _session_script(path, chosen, Path(scratch))
            started = time.perf_counter()
            code = subprocess.run(["bash", "-c", script], env=os.environ.copy(), check=False).returncode
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"=== {path.relative_to(ROOT)}: {status} in {time.perf_counter() - started:.0f} s", flush=True)
        failed += code != 0
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the blocks of README.md and docs/*.md in order")
    r.add_argument("--long", action="store_true", help="also the blocks marked long")
    r.add_argument("--only", nargs="*", type=Path, help="these doc files only (paths relative to the repo)")
    sub.add_parser("list", help="list every block with what `run` does with it")
    args = parser.parse_args(argv)
    files = doc_files() if not getattr(args, "only", None) else [ROOT / p for p in args.only]
    if args.cmd == "list":
        for path in files:
            for b in blocks(path):
                todo = "run" if b.lang in RUNNABLE and not b.mark else (b.mark or "text")
                print(f"{b.where:28} {b.lang or '-':8} {todo}{f' ({b.reason})' if b.reason else ''}")
        return 0
    return run(files, args.long)


if __name__ == "__main__":
    sys.exit(main())
