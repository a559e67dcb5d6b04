"""Executed instructions and stall samples per source line, from ncu's per-SASS-instruction CSV.

    python3 gpu/ncu_lines.py f32fwd_sass.csv kernels_f32.cubin KERNEL_SYMBOL [NVDISASM]

ncu (gpu/probe_src.sh) writes, for one launch, every SASS instruction with its executed count
and stall samples, but without line numbers when the source is not at hand. This script
disassembles the same kernel from a cubin built here with the extension's flags
(``nvcc -O3 -gencode=arch=compute_90,code=sm_90 -lineinfo -cubin``; the instruction count and
opcodes must match, which it checks) with ``nvdisasm --print-line-info`` and sums by line.
"""
import collections
import csv
import re
import shutil
import subprocess
import sys


def line_map(cubin, kernel, nvdisasm):
    """SASS offset -> ((file, line), opcode) for ``kernel`` in ``cubin``."""
    text = subprocess.run([nvdisasm, "--print-line-info", cubin], capture_output=True, text=True, check=True).stdout
    lines = text.split("\n")
    start = next(i for i, ln in enumerate(lines) if ln.startswith(".text." + kernel + ":"))
    cur, out = None, {}
    for ln in lines[start + 1:]:
        if ln.startswith("//---------------------"):
            break
        m = re.search(r'//## File "([^"]+)", line (\d+)', ln)
        if m:
            cur = (m.group(1).split("/")[-1], int(m.group(2)))
            continue
        m = re.match(r"\s*/\*([0-9a-f]+)\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)", ln)
        if m:
            out[int(m.group(1), 16)] = (cur, m.group(3).split(".")[0])
    return out


def main():
    rows = list(csv.reader(open(sys.argv[1])))
    hdr, data = rows[1], rows[2:]
    ia, isrc = hdr.index("Address"), hdr.index("Source")
    iex, ist = hdr.index("Instructions Executed"), hdr.index("Warp Stall Sampling (All Samples)")
    where = line_map(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else shutil.which("nvdisasm"))
    base = int(data[0][ia], 16)
    ex, st, ops = collections.Counter(), collections.Counter(), collections.Counter()
    bad = 0
    for r in data:
        words = r[isrc].split()
        op = words[1] if words and words[0].startswith("@") else (words[0] if words else "")
        cur, want = where.get(int(r[ia], 16) - base, (None, None))
        bad += bool(want) and not op.startswith(want)
        e, s = int(r[iex] or 0), int(r[ist] or 0)
        ex[cur] += e
        st[cur] += s
        ops[op.split(".")[0]] += e
    tot, tst = sum(ex.values()), max(1, sum(st.values()))
    print(f"{tot} instructions executed, {tst} stall samples, {bad} opcode mismatches against the cubin")
    for k, v in ex.most_common(30):
        print(f"{100 * v / tot:5.1f}% instructions {100 * st[k] / tst:5.1f}% stalls  {k[0]}:{k[1]}" if k else "?")
    print("by opcode:", ", ".join(f"{o} {100 * v / tot:.1f}%" for o, v in ops.most_common(15)))


if __name__ == "__main__":
    main()
