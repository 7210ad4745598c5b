#!/usr/bin/env python3
"""Checks that each images/Containerfile.<image> runtime stage installs a Debian package
for every shared library its binary links directly (NEEDED), as resolved on this
Debian machine, so a new dependency cannot silently break the Docker/Podman build
(whose own `ldd` check only runs when someone builds it).

  images/check_containerfiles.py --bin-dir DIR [--images operator,aggregator,agent]

DIR holds (or has below it, up to 3 levels) the built fedge-<image> binaries. The
runtime stage is the last FROM; its packages are the `apt-get install` arguments.
Packages every bookworm-slim has (libc6, libgcc-s1, libstdc++6) need not be listed.
The runtime stage must also run as USER 65532 and set the OCI labels version,
revision, source, title and created.
The agent's stage must also install libopenblas0-openmp: libtorch1.13 otherwise gets
reference BLAS (libblas3), ~30x slower. Exit 0 when all match, 1 listing what is
missing (and the package to add).
"""

import argparse
import os
import re
import subprocess
import sys

IN_SLIM = {"libc6", "libgcc-s1", "libstdc++6"}
HERE = os.path.dirname(os.path.abspath(__file__))


def runtime_packages(containerfile):
    text = open(containerfile).read().replace("\\\n", " ")
    stage = re.split(r"(?m)^FROM\s", text)[-1]
    pkgs = set()
    for m in re.finditer(r"apt-get install ([^&;]*)", stage):
        pkgs |= {w for w in m.group(1).split() if not w.startswith("-")}
    return pkgs


def needed_packages(binary):
    """Debian package of each NEEDED library of `binary` -> the sonames it provides."""
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.*?)\]",
                        subprocess.run(["readelf", "-d", "-W", binary], capture_output=True, text=True,
                                       check=True).stdout)
    resolved = {}
    for line in subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout.splitlines():
        m = re.match(r"\s*(\S+) => (/\S+)", line)
        if m:
            resolved[m.group(1)] = m.group(2)
    paths = {}
    for soname in needed:
        path = resolved.get(soname)
        if path is None:
            raise SystemExit(f"{binary}: {soname} not resolved by ldd")
        paths[soname] = path
    # dpkg knows a file by the path its package shipped (merged /usr: /lib or /usr/lib):
    # ask once for every candidate path.
    candidates = {}
    for soname, path in paths.items():
        real = os.path.realpath(path)
        for c in (real, real.replace("/usr/lib/", "/lib/", 1), path):
            candidates.setdefault(c, set()).add(soname)
    p = subprocess.run(["dpkg", "-S"] + sorted(candidates), capture_output=True, text=True)
    owner = {}
    for line in p.stdout.splitlines():
        pkg, _, file = line.partition(": ")
        for soname in candidates.get(file.strip(), ()):
            owner.setdefault(soname, pkg.split(":")[0].strip())
    out = {}
    for soname in needed:
        if soname not in owner:
            raise SystemExit(f"{binary}: no Debian package owns {os.path.realpath(paths[soname])} ({soname})")
        out.setdefault(owner[soname], []).append(soname)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--images", default="operator,aggregator,agent")
    args = ap.parse_args()
    problems = []
    for image in args.images.split(","):
        exe = f"fedge-{image}"
        binary = None
        for dirpath, dirs, files in os.walk(args.bin_dir):
            if dirpath[len(args.bin_dir):].count(os.sep) >= 3:
                dirs[:] = []
            if exe in files:
                binary = os.path.join(dirpath, exe)
                break
        if binary is None:
            problems.append(f"{image}: {exe} not found under {args.bin_dir} (build it first)")
            continue
        containerfile = os.path.join(HERE, f"Containerfile.{image}")
        listed = runtime_packages(containerfile)
        stage = re.split(r"(?m)^FROM\s", open(containerfile).read())[-1]
        if not re.search(r"(?m)^USER 65532(:65532)?$", stage):
            problems.append(f"{image}: Containerfile.{image} runtime stage does not run as USER 65532")
        for label in ("version", "revision", "source", "title", "created"):
            if f"org.opencontainers.image.{label}=" not in stage:
                problems.append(f"{image}: Containerfile.{image} lacks the org.opencontainers.image.{label} label")
        need = needed_packages(binary)
        for pkg, sonames in sorted(need.items()):
            if pkg not in listed and pkg not in IN_SLIM:
                problems.append(f"{image}: Containerfile.{image} runtime stage lacks {pkg} "
                                f"(provides {', '.join(sonames)} for {exe})")
        if "libtorch1.13" in need and "libopenblas0-openmp" not in listed:
            problems.append(f"{image}: Containerfile.{image} installs libtorch1.13 without libopenblas0-openmp "
                            "(reference BLAS)")
        print(f"{image}: {len(need)} packages needed, {len(listed)} listed in Containerfile.{image}")
    for p in problems:
        print("check_containerfiles: " + p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
