#!/usr/bin/env python3
"""Compiles each kernel source for one architecture with `ptxas -v` and prints a Markdown table
of registers, spills, stack and static shared memory per kernel (docs/cuda.md).

Usage: ptxas-report.py NVCC ARCH OUTPUT INCLUDE_DIRS SOURCE.cu... (INCLUDE_DIRS: colon-separated)"""
import re
import subprocess
import sys

nvcc, arch, output, include = sys.argv[1:5]
sources = sys.argv[5:]
rows = []
for src in sources:
    includes = [f"-I{d}" for d in include.split(":") if d]
    p = subprocess.run([nvcc, "-std=c++17", f"-arch=sm_{arch}", *includes, "-Xptxas", "-v",
                        "-c", src, "-o", "/dev/null"], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(p.stderr)
    entry = None
    for line in p.stderr.splitlines():
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            demangled = subprocess.run(["c++filt", m.group(1)], capture_output=True,
                                       text=True).stdout.strip()
            name = re.sub(r"\(anonymous namespace\)::", "", demangled)
            name = re.sub(r"^void ", "", name)
            name = re.sub(r"\(.*\)$", "", name)
            entry = {"file": src.split("/")[-1], "name": name, "stack": 0, "spill_st": 0,
                     "spill_ld": 0, "regs": 0, "smem": 0}
            rows.append(entry)
            continue
        if entry is None:
            continue
        m = re.search(r"Function properties for (\S+)", line)
        if m and "kernel" not in m.group(1):
            entry = None        # properties of a device function, not of the entry
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                      line)
        if m:
            entry["stack"], entry["spill_st"], entry["spill_ld"] = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            entry["regs"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            entry["smem"] = int(s.group(1)) if s else 0

with open(output, "w") as f:
    f.write(f"| source | kernel | registers | spill stores / loads (B) | stack (B) | "
            f"static shared (B) |\n|---|---|---|---|---|---|\n")
    for r in rows:
        f.write(f"| {r['file']} | `{r['name']}` | {r['regs']} | {r['spill_st']} / "
                f"{r['spill_ld']} | {r['stack']} | {r['smem']} |\n")
print(open(output).read(), end="")
