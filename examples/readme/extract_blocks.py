#!/usr/bin/env python3
"""Writes every ```cpp block of README.md into one C++ file that compiles and runs them all.

Each block becomes the body of a function, in README order, preceded by what the README hides
from readers in an HTML comment right above the block:

    <!-- test-setup
    const auto x = inputs(16, 64);      // C++ run before the block, in the same scope
    -->

A block that defines `int main(` is a complete program: it goes into a namespace of its own and
runs as its main. `#include` lines move to the top of the file. `<!-- test-setup mpi` marks a block
that needs MPI: it is compiled only with MOE_README_MPI and then runs under mpirun. `#line`
directives point compiler errors at README.md's own lines.

Usage: extract_blocks.py README.md OUTPUT.cpp
"""
import re
import sys


def blocks(lines):
    """(first line number of the code, code lines, setup lines, needs MPI) per ```cpp block."""
    i = 0
    while i < len(lines):
        if lines[i].rstrip() != "```cpp":
            i += 1
            continue
        setup, mpi = [], False
        j = i - 1
        if j >= 0 and lines[j].strip() == "-->":
            k = j - 1
            while k >= 0 and not lines[k].startswith("<!-- test-setup"):
                k -= 1
            if k < 0:
                sys.exit(f"README.md:{j + 1}: a '-->' above a cpp block without its "
                         "'<!-- test-setup'")
            mpi = lines[k].split()[2:3] == ["mpi"]
            setup = lines[k + 1:j]
        end = i + 1
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        if end == len(lines):
            sys.exit(f"README.md:{i + 1}: a cpp block that never closes")
        yield i + 2, lines[i + 1:end], setup, mpi
        i = end + 1


def main():
    readme, output = sys.argv[1], sys.argv[2]
    with open(readme, encoding="utf-8") as f:
        lines = f.read().split("\n")
    includes, mpi_includes, units, runs = [], [], [], []
    for n, (first, code, setup, mpi) in enumerate(blocks(lines), start=1):
        body = []
        for line in code:
            if line.startswith("#include"):
                include = re.sub(r"\s*//.*$", "", line)
                wanted = mpi_includes if mpi else includes
                if include not in wanted:
                    wanted.append(include)
                body.append("")  # keeps the #line numbering of the rest
            else:
                body.append(line)
        program = any(re.match(r"\s*int main\(", line) for line in body)
        unit = [f"namespace readme_block_{n} {{"]
        if program:
            unit.append("#line %d \"%s\"" % (first, readme))
            unit += [re.sub(r"^(\s*)int main\(", r"\1int program(", line) for line in body]
            unit.append("void run() { if (program() != 0) throw std::runtime_error(\"exit status\"); }")
        else:
            unit.append("void run() {")
            unit += setup
            unit.append("#line %d \"%s\"" % (first, readme))
            unit += body
            unit.append("}")
        unit.append(f"}}  // namespace readme_block_{n}")
        if mpi:
            unit = ["#ifdef MOE_README_MPI"] + unit + ["#endif"]
            runs.append(f"#ifdef MOE_README_MPI\n  failures += run_block({n}, {first}, "
                        f"readme_block_{n}::run);\n#endif")
        else:
            runs.append(f"  failures += run_block({n}, {first}, readme_block_{n}::run);")
        units.append("\n".join(unit))
    if not units:
        sys.exit(f"{readme}: no ```cpp block")

    out = [f"// Generated from {readme} by examples/readme/extract_blocks.py: do not edit.",
           "#include <cstdint>", "#include <cstdio>", "#include <exception>",
           "#include <stdexcept>", "#include <vector>"]
    out += includes
    if mpi_includes:
        out += ["#ifdef MOE_README_MPI"] + mpi_includes + ["#endif"]
    out.append('#include "readme_setup.hpp"')
    out += units
    out.append("""
namespace {
int run_block(int n, int line, void (*run)()) {
  try {
    run();
    std::printf("README block %d (line %d): ok\\n", n, line);
    return 0;
  } catch (const std::exception& e) {
    std::printf("README block %d (line %d): FAILED: %s\\n", n, line, e.what());
    return 1;
  }
}
}  // namespace

int main(int argc, char** argv) {
  readme_setup::Session session(argc, argv);
  int failures = 0;""")
    out += runs
    out.append("  return failures == 0 ? 0 : 1;\n}\n")
    with open(output, "w", encoding="utf-8") as f:
        f.write("\n".join(out))


if __name__ == "__main__":
    main()
