#!/usr/bin/env python3
"""Builds fedge's container images as OCI image-layout archives, without a daemon.

Each image is a built fedge binary (debug info stripped) plus exactly the shared
libraries the dynamic loader resolves for it on this machine (its ldd closure,
after Debian's alternatives, so libblas.so.3 is OpenBLAS's when OpenBLAS is the
selected alternative), a few /etc files and a writable /tmp. No shell, no
package manager, no compiler. The archives load with `ctr -n k8s.io images
import <file>` or from K3s's agent/images/ directory; `docker load` and
`podman load` read them too.

Layers, in order (each a deterministic tar: sorted entries, fixed owners and
mtimes, gzip without a timestamp, so identical inputs give identical digests and
containerd stores a shared layer once):
  1. base  - /etc files, directories, the loader and the libraries that all the
             images being built need (glibc, libstdc++, OpenSSL, gRPC, ...);
  2. libs  - the rest of this image's libraries (the agent's libtorch closure);
  3. app   - the binary: the only layer that changes from one commit to the next.

Trimming (agent): Debian's libtorch_cpu.so.1.13 has NEEDED entries for OpenCV, FFmpeg,
LMDB, LevelDB and ZeroMQ (Caffe2's image/video/DB operators) but imports not one
symbol from them; behind them hang ~220 more libraries (Qt, GDAL, codecs, ICU data).
With --trim (the default) each library on STUB_PATTERNS is replaced by an empty shared
library with the same soname, which satisfies the loader and defines nothing. Checked
on every build: no library left out (the stubbed ones and every one behind them)
defines a symbol that any shipped object references with a matching version, so no
binding changes; where one does, the stubbed library that brings it is shipped for real
(and said so). What is lost is only the left-out libraries' own initializers. --no-trim
ships the real closure.

Exit status: 0 on success; 1 with a message saying what is missing otherwise.
Python standard library only (plus readelf, ldd, strip/objcopy and, for --trim,
gcc from the build machine).
"""

import argparse
import functools
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

LIBDIR = "usr/lib/x86_64-linux-gnu"
BINDIR = "usr/local/bin"
UID = 65532  # the non-root user every image runs as ("fedge"; distroless's nonroot id)

# name -> (binary, OCI title, description, trim?)
IMAGES = {
    "operator": ("fedge-operator", "fedge operator",
                 "fedge Kubernetes operator (FederatedTrainingJob controller) and its "
                 "status reporter (`fedge-operator report-status`)", False),
    "aggregator": ("fedge-aggregator", "fedge aggregator",
                   "fedge federated-learning aggregator (gRPC rounds, strategies, checkpoints)", False),
    "agent": ("fedge-agent", "fedge agent",
              "fedge edge agent: LoRA training on node-local data and local inference (libtorch, "
              "OpenBLAS)", True),
}

# Libraries that may be replaced by stubs (see "Trimming" above). Each is linked
# only for Caffe2 operators that fedge never instantiates.
STUB_PATTERNS = [
    (re.compile(r"^libopencv_\w+\.so\.\d+$"), "OpenCV: Caffe2 image/video operators"),
    (re.compile(r"^lib(avcodec|avformat|avutil|avdevice|avfilter|swscale|swresample)\.so\.\d+$"),
     "FFmpeg: Caffe2 video decoder operator"),
    (re.compile(r"^liblmdb\.so\.\d+$"), "LMDB: Caffe2 DB reader"),
    (re.compile(r"^libleveldb\.so\.\w+$"), "LevelDB: Caffe2 DB reader"),
    (re.compile(r"^libzmq\.so\.\d+$"), "ZeroMQ: Caffe2 zmq DB reader"),
]

PASSWD = "root:x:0:0:root:/root:/usr/sbin/nologin\nfedge:x:65532:65532:fedge:/home/fedge:/usr/sbin/nologin\n"
GROUP = "root:x:0:\nfedge:x:65532:\n"
# Names resolve through /etc/hosts, then DNS (glibc 2.36 has both built in: no NSS modules).
NSSWITCH = "passwd: files\ngroup: files\nhosts: files dns\n"


def die(msg):
    print(f"images: error: {msg}", file=sys.stderr)
    sys.exit(1)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


# ----------------------------------------------------------------------------- ELF facts


@functools.lru_cache(maxsize=None)
def elf_needed(path):
    out = run(["readelf", "-d", "-W", path])
    return re.findall(r"\(NEEDED\)\s+Shared library: \[(.*?)\]", out)


@functools.lru_cache(maxsize=None)
def elf_dynsyms(path):
    """(defined, undefined) dynamic symbols of an ELF object. defined maps name ->
    (type, size, versions): versions holds the version names it is defined with (None:
    unversioned). undefined is a set of (name, version or None) references."""
    defined, undefined = {}, set()
    out = run(["readelf", "--dyn-syms", "-W", path])
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 8 or not parts[0].endswith(":") or not parts[0][:-1].isdigit():
            continue
        _, _, size, typ, bind, _, ndx, full = parts[:8]
        name, _, version = full.partition("@")
        version = version.lstrip("@") or None
        if not name or bind == "LOCAL":
            continue
        if ndx == "UND":
            undefined.add((name, version))
            continue
        size = int(size, 0) if size.startswith("0x") else int(size)
        old = defined.get(name)
        defined[name] = (typ, size, (old[2] if old else frozenset()) | {version})
    return defined, undefined


def ldd_map(binary):
    """soname -> host path as the loader resolves it for `binary`, plus the interpreter."""
    out = run(["ldd", binary])
    sonames, interp = {}, None
    for line in out.splitlines():
        line = line.strip()
        if "not found" in line:
            die(f"{binary}: {line} (install the runtime library; scripts/install-deps.sh)")
        m = re.match(r"(\S+) => (/\S+) \(0x", line)
        if m:
            sonames[m.group(1)] = m.group(2)
            continue
        m = re.match(r"(/\S+) \(0x", line)
        if m:
            interp = m.group(1)
    if interp is None:
        die(f"{binary}: not a dynamically linked executable (ldd found no loader)")
    return sonames, interp


def closure(binary, stub_ok):
    """Walks NEEDED from `binary`. Returns (libs, stubs, interp): libs maps soname ->
    host path of every library to ship; stubs maps soname -> (host path, reason) of
    libraries to replace by stubs (their own dependencies are not walked)."""
    resolved, interp = ldd_map(binary)
    libs, stubs, seen = {}, {}, set()
    todo = [binary]
    while todo:
        obj = todo.pop()
        for soname in elf_needed(obj):
            if soname in seen:
                continue
            seen.add(soname)
            path = resolved.get(soname)
            if path is None:
                # The loader itself (ld-linux) appears as NEEDED of libc.
                if os.path.basename(interp) == soname:
                    continue
                die(f"{obj}: NEEDED {soname} not in ldd's resolution of {binary}")
            reason = stub_ok(soname)
            if reason:
                stubs[soname] = (path, reason)
                continue
            libs[soname] = path
            todo.append(path)
    return libs, stubs, interp


# ----------------------------------------------------------------------------- stubs


def bindable_imports(lib_path, kept_objects):
    """References of `kept_objects` that a definition in the library at `lib_path` could
    satisfy, as the loader matches them: same name, and the reference is unversioned, or
    the definition carries the reference's version, or the library is unversioned. If a
    library we leave out has none, leaving it out cannot change any binding."""
    imports = _imports_of(tuple(kept_objects))
    defs, _ = elf_dynsyms(lib_path)
    hits = []
    for name, version in imports:
        d = defs.get(name)
        if d is None or d[0] == "NOTYPE":
            continue
        if version is None or version in d[2] or d[2] == {None}:
            hits.append(name + (f"@{version}" if version else ""))
    return sorted(hits)


@functools.lru_cache(maxsize=None)
def _imports_of(objects):
    imports = set()
    for obj in objects:
        imports |= elf_dynsyms(obj)[1]
    return frozenset(imports)


def needed_below(path, resolved):
    """Sonames reachable from the object at `path` through NEEDED (resolved: soname -> path)."""
    seen, todo = set(), [path]
    while todo:
        for soname in elf_needed(todo.pop()):
            if soname not in seen and soname in resolved:
                seen.add(soname)
                todo.append(resolved[soname])
    return seen


def make_stub(soname, workdir):
    """An empty shared library named `soname`: it satisfies the loader's NEEDED entry
    and defines nothing, so nothing can call into it."""
    src = os.path.join(workdir, soname + ".c")
    out = os.path.join(workdir, soname)
    with open(src, "w") as f:
        f.write(f"/* images/build_images.py: empty stand-in for {soname} (nothing imports from it). */\n"
                "typedef int fedge_empty_translation_unit;\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-nostdlib", f"-Wl,-soname,{soname}", "-s", "-o", out, src],
                   check=True)
    return out


# ----------------------------------------------------------------------------- layers


class Layer:
    """A layer's entries: path in image -> (kind, source or target, mode, uid)."""

    def __init__(self, name):
        self.name = name
        self.entries = {}

    def dir(self, path, mode=0o755, uid=0):
        self.entries[path] = ("dir", None, mode, uid)

    def file(self, path, src, mode=0o644):
        self.entries[path] = ("file", src, mode, 0)

    def data(self, path, text, mode=0o644):
        self.entries[path] = ("data", text.encode(), mode, 0)

    def symlink(self, path, target):
        self.entries[path] = ("symlink", target, 0o777, 0)

    def add_parents(self):
        for path in list(self.entries):
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                p = "/".join(parts[:i])
                if p and p not in self.entries:
                    self.dir(p)

    def write(self, blobdir, mtime, level):
        """Writes the layer as a gzip blob. Returns (descriptor, diff_id, tar size)."""
        self.add_parents()
        raw = os.path.join(blobdir, f"{self.name}.tar")
        h_raw = hashlib.sha256()
        with open(raw, "wb") as f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for path in sorted(self.entries):
                    kind, src, mode, uid = self.entries[path]
                    ti = tarfile.TarInfo(path)
                    ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = mtime, mode, uid, uid, "", ""
                    if kind == "dir":
                        ti.type = tarfile.DIRTYPE
                        tar.addfile(ti)
                    elif kind == "symlink":
                        ti.type, ti.linkname = tarfile.SYMTYPE, src
                        tar.addfile(ti)
                    elif kind == "data":
                        ti.size = len(src)
                        tar.addfile(ti, io.BytesIO(src))
                    else:
                        ti.size = os.path.getsize(src)
                        with open(src, "rb") as s:
                            tar.addfile(ti, s)
        size_raw = os.path.getsize(raw)
        gz = raw + ".gz"
        h_gz = hashlib.sha256()
        with open(raw, "rb") as s, open(gz, "wb") as d:
            # mtime=0 and no file name in the gzip header: same bytes for the same tar.
            with gzip.GzipFile(filename="", mode="wb", fileobj=d, compresslevel=level, mtime=0) as z:
                while chunk := s.read(1 << 20):
                    h_raw.update(chunk)
                    z.write(chunk)
        with open(gz, "rb") as s:
            while chunk := s.read(1 << 20):
                h_gz.update(chunk)
        os.unlink(raw)
        digest = "sha256:" + h_gz.hexdigest()
        final = os.path.join(blobdir, h_gz.hexdigest())
        os.replace(gz, final)
        desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest,
                "size": os.path.getsize(final)}
        return desc, "sha256:" + h_raw.hexdigest(), size_raw


def put_blob(blobdir, data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobdir, digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest, len(data)


def canonical_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def write_archive(path, index, blobs, blobdir, mtime):
    """The OCI image layout (oci-layout, index.json, blobs/sha256/*) as one tar."""
    # A temp name of our own, then rename: a reader (or a concurrent run) sees a whole
    # archive or the previous one, never a mix.
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=os.path.dirname(path))
    with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT) as tar:

        def add(name, data=None, src=None, mode=0o644, is_dir=False):
            ti = tarfile.TarInfo(name)
            ti.mtime, ti.mode, ti.uid, ti.gid = mtime, mode, 0, 0
            if is_dir:
                ti.type = tarfile.DIRTYPE
                tar.addfile(ti)
            elif data is not None:
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
            else:
                ti.size = os.path.getsize(src)
                with open(src, "rb") as s:
                    tar.addfile(ti, s)

        add("oci-layout", data=canonical_json({"imageLayoutVersion": "1.0.0"}))
        add("index.json", data=canonical_json(index))
        add("blobs", is_dir=True, mode=0o755)
        add("blobs/sha256", is_dir=True, mode=0o755)
        for digest in sorted(set(blobs)):
            add("blobs/sha256/" + digest.split(":")[1], src=os.path.join(blobdir, digest.split(":")[1]))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- main


def strip_into(src, dst, mode):
    """Copies `src` to `dst` without debug info (`strip --strip-debug`: symbol
    names stay for backtraces) or, for libraries, without unneeded symbols."""
    flag = "--strip-debug" if mode == "debug" else "--strip-unneeded"
    subprocess.run(["strip", flag, "-o", dst, src], check=True)
    os.chmod(dst, 0o755)


def self_check(root, binary_in_image):
    """Runs the image's binary with the image's own loader and libraries on the host
    (LD_BIND_NOW: every symbol bound at load, as libtorch's BIND_NOW does anyway) and
    fails if the loader resolves any library outside the image root. Returns the
    binary's --version line."""
    ld = os.path.join(root, LIBDIR, "ld-linux-x86-64.so.2")
    exe = os.path.join(root, binary_in_image)
    base = [ld, "--inhibit-cache", "--library-path", os.path.join(root, LIBDIR)]
    env = {"PATH": "/usr/bin:/bin"}
    listing = subprocess.run(base + ["--list", exe], capture_output=True, text=True, env=env)
    outside = [l.strip() for l in listing.stdout.splitlines()
               if "=>" in l and not l.split("=>")[1].strip().startswith(root)]
    if listing.returncode != 0 or outside:
        die(f"self-check: {binary_in_image} resolves libraries outside the image: {outside}"
            f"{listing.stderr[-2000:]}")
    p = subprocess.run(base + [exe, "--version"], capture_output=True, text=True, env=dict(env, LD_BIND_NOW="1"))
    if p.returncode != 0:
        die(f"self-check: {binary_in_image} --version failed with the image's libraries "
            f"(exit {p.returncode}):\n{p.stderr[-3000:]}")
    return p.stdout.strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin-dir", required=True, help="directory holding the built fedge-* binaries")
    ap.add_argument("--out", required=True, help="output directory for the .oci.tar archives")
    ap.add_argument("--version", required=True)
    ap.add_argument("--revision", required=True)
    ap.add_argument("--source", default="")
    ap.add_argument("--created", type=int, required=True, help="Unix time of the created label and of every mtime")
    ap.add_argument("--images", default="operator,aggregator,agent")
    ap.add_argument("--repo-prefix", default="fedge", help="image names are <prefix>/<image>:<version>")
    ap.add_argument("--trim", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--gzip-level", type=int, default=6)
    ap.add_argument("--top", type=int, default=10, help="largest files listed for the agent")
    args = ap.parse_args()

    names = [n for n in args.images.split(",") if n]
    for n in names:
        if n not in IMAGES:
            die(f"unknown image {n!r}; expected some of {','.join(IMAGES)}")
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="fedge-images-", dir=os.environ.get("TMPDIR", "/tmp"))
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(args.created))
    mtime = args.created
    try:
        # 1. closures. The base layer holds the libraries every fedge image needs, computed
        # over all three binaries when they are built (not only the selected images), so
        # the base layer, and its digest, is the same whichever images are built.
        plans = {}
        for n, (exe, _, _, trim) in IMAGES.items():
            binary = os.path.join(args.bin_dir, exe)
            if not os.access(binary, os.X_OK):
                if n in names:
                    die(f"{binary} not found or not executable: build it first "
                        f"(flock /tmp/fedge-ninja.lock ninja -C build {exe})")
                continue

            # Stub a library only if it matches STUB_PATTERNS and nothing that stays
            # imports a symbol from it; otherwise ship it (and walk its dependencies).
            keep_real = set()

            def stub_ok(soname, trim=trim and args.trim):
                if not trim or soname in keep_real:
                    return None
                for pat, reason in STUB_PATTERNS:
                    if pat.match(soname):
                        return reason
                return None

            untrimmed, _, _ = closure(binary, lambda soname: None)
            while True:
                libs, stubs, interp = closure(binary, stub_ok)
                kept = [binary] + [os.path.realpath(p) for p in libs.values()]
                # Every library left out (the stubbed ones and all behind them) must be
                # unable to bind any reference of what stays.
                risky = {}
                for s, p in untrimmed.items():
                    if s not in libs:
                        hits = bindable_imports(os.path.realpath(p), kept)
                        if hits:
                            risky[s] = hits
                if not risky:
                    break
                before = len(keep_real)
                for r, hits in sorted(risky.items()):
                    for s, (p, _) in stubs.items():
                        if r == s or r in needed_below(p, untrimmed):
                            print(f"images: {n}: shipping {s}: {r} (behind it) could bind "
                                  f"{len(hits)} references, e.g. {hits[0]}")
                            keep_real.add(s)
                if len(keep_real) == before:
                    die(f"{n}: cannot decide which stubbed library brings {sorted(risky)}")
            full = sum(os.path.getsize(os.path.realpath(p)) for p in untrimmed.values()) if stubs else None
            plans[n] = (binary, libs, stubs, interp, full)
        common = set.intersection(*(set(p[1]) for p in plans.values()))
        for s in common:
            if len({os.path.realpath(p[1][s]) for p in plans.values()}) != 1:
                die(f"{s} resolves to different files for different images")
        blas = {n: os.path.realpath(p[1]["libblas.so.3"]) for n, p in plans.items() if "libblas.so.3" in p[1]}
        for n, path in blas.items():
            if "openblas" not in path:
                die(f"{n}: libblas.so.3 resolves to {path}, not OpenBLAS: install libopenblas0-openmp "
                    "(reference BLAS is ~30x slower for libtorch)")

        # 2. the shared base layer
        strip_dir = os.path.join(work, "stripped")
        os.makedirs(strip_dir)
        stripped_cache = {}

        def lib_file(host_path, soname):
            real = os.path.realpath(host_path)
            if real not in stripped_cache:
                dst = os.path.join(strip_dir, soname)
                strip_into(real, dst, "unneeded")
                stripped_cache[real] = dst
            return stripped_cache[real]

        any_plan = next(iter(plans.values()))
        interp = any_plan[3]
        base = Layer("base")
        for d in ("etc", "usr", "usr/local/bin", "usr/lib64", LIBDIR):
            base.dir(d)
        base.dir("tmp", 0o1777)
        base.dir("home/fedge", 0o755, UID)
        base.dir("root", 0o700)
        base.symlink("lib", "usr/lib")
        base.symlink("lib64", "usr/lib64")
        base.symlink("usr/lib64/ld-linux-x86-64.so.2", "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
        base.file(f"{LIBDIR}/ld-linux-x86-64.so.2", lib_file(interp, "ld-linux-x86-64.so.2"), 0o755)
        base.data("etc/passwd", PASSWD)
        base.data("etc/group", GROUP)
        base.data("etc/nsswitch.conf", NSSWITCH)
        for s in sorted(common):
            base.file(f"{LIBDIR}/{s}", lib_file(any_plan[1][s], s))
        blobdir = os.path.join(work, "blobs")
        os.makedirs(blobdir)
        t0 = time.time()
        base_desc, base_diff, base_raw = base.write(blobdir, mtime, args.gzip_level)

        results = []
        for n in names:
            binary, libs, stubs, _, untrimmed_bytes = plans[n]
            exe, title, description, _ = IMAGES[n]
            libs_layer = Layer(f"libs-{n}")
            sizes = {}  # path in image -> bytes, for the report
            for s, p in sorted(libs.items()):
                if s not in common:
                    libs_layer.file(f"{LIBDIR}/{s}", lib_file(p, s))
            stub_dir = os.path.join(work, "stubs-" + n)
            os.makedirs(stub_dir)
            stub_report = []
            for s, (p, reason) in sorted(stubs.items()):
                libs_layer.file(f"{LIBDIR}/{s}", make_stub(s, stub_dir))
                stub_report.append((s, reason))
            app = Layer(f"app-{n}")
            app_bin = os.path.join(work, exe)
            strip_into(binary, app_bin, "debug")
            app.file(f"{BINDIR}/{exe}", app_bin, 0o755)

            # Self-check on the host before packing: the binary runs with only these files.
            root = os.path.join(work, "root-" + n)
            for layer in (base, libs_layer, app):
                for path, (kind, src, mode, uid) in layer.entries.items():
                    dst = os.path.join(root, path)
                    if kind == "file":
                        os.makedirs(os.path.dirname(dst), exist_ok=True)
                        os.symlink(os.path.abspath(src), dst)
                        sizes[path] = os.path.getsize(src)
            version_line = self_check(root, f"{BINDIR}/{exe}")
            if args.version not in version_line:
                die(f"{exe} --version says {version_line!r}, expected version {args.version}")

            # An image whose libraries all sit in the base layer has no libs layer.
            packed = [("base", base_desc, base_diff, base_raw,
                       "images/build_images.py: base (etc, loader, libraries all fedge images share)")]
            for lname, layer, what in (("libs", libs_layer, f"{n} libraries"),
                                       ("app", app, f"{exe} (strip --strip-debug)")):
                if layer.entries:
                    desc, diff, raw = layer.write(blobdir, mtime, args.gzip_level)
                    packed.append((lname, desc, diff, raw, f"images/build_images.py: {what}"))
            layers = [p[1] for p in packed]
            labels = {
                "org.opencontainers.image.title": title,
                "org.opencontainers.image.description": description,
                "org.opencontainers.image.version": args.version,
                "org.opencontainers.image.revision": args.revision,
                "org.opencontainers.image.created": created,
                "org.opencontainers.image.source": args.source,
                "io.fedge.binary-version": version_line,
            }
            if stub_report:
                labels["io.fedge.trimmed-libraries"] = ",".join(s for s, _ in stub_report)
            config = {
                "architecture": "amd64",
                "os": "linux",
                "created": created,
                "author": "fedge images/build_images.py",
                "config": {
                    "User": f"{UID}:{UID}",
                    "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/home/fedge", "TMPDIR=/tmp"],
                    "Entrypoint": [f"/{BINDIR}/{exe}"],
                    "WorkingDir": "/",
                    # The root filesystem can be read-only; /tmp is the one writable place.
                    "Volumes": {"/tmp": {}},
                    "Labels": labels,
                },
                "rootfs": {"type": "layers", "diff_ids": [p[2] for p in packed]},
                "history": [{"created": created, "created_by": p[4]} for p in packed],
            }
            cfg_digest, cfg_size = put_blob(blobdir, canonical_json(config))
            manifest = {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_digest,
                           "size": cfg_size},
                "layers": layers,
                "annotations": {k: v for k, v in labels.items() if k.startswith("org.opencontainers.")},
            }
            man_digest, man_size = put_blob(blobdir, canonical_json(manifest))
            ref = f"{args.repo_prefix}/{n}:{args.version}"
            index = {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [{
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": man_digest,
                    "size": man_size,
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        # containerd (ctr import, K3s) names the image from this one...
                        "io.containerd.image.name": "docker.io/" + ref,
                        # ...and the OCI layout's own name for it.
                        "org.opencontainers.image.ref.name": ref,
                    },
                }],
            }
            archive = os.path.join(args.out, f"fedge-{n}-{args.version}.oci.tar")
            write_archive(archive, index, [cfg_digest, man_digest] + [l["digest"] for l in layers], blobdir,
                          mtime)
            results.append({
                "image": n, "ref": ref, "archive": archive, "manifest": man_digest,
                "compressed": sum(l["size"] for l in layers) + cfg_size + man_size,
                "uncompressed": sum(p[3] for p in packed),
                "archive_bytes": os.path.getsize(archive),
                "layers": {p[0]: (p[1]["size"], p[3]) for p in packed},
                "files": sizes, "stubs": stub_report, "version_line": version_line,
                "nlibs": len(libs), "untrimmed_lib_bytes": untrimmed_bytes,
                "lib_bytes": sum(os.path.getsize(os.path.realpath(p)) for p in libs.values()),
            })
        elapsed = time.time() - t0

        # 3. report
        mb = lambda b: f"{b / 1e6:.1f} MB"
        print(f"images: {len(results)} images in {args.out} (layers packed in {elapsed:.1f} s)")
        for r in results:
            print(f"  {r['ref']:<28} compressed {mb(r['compressed']):>9}  uncompressed {mb(r['uncompressed']):>9}"
                  f"  {r['nlibs']:>3} libraries  {os.path.basename(r['archive'])}")
            for lname, (c, u) in r["layers"].items():
                print(f"      layer {lname:<5} compressed {mb(c):>9}  uncompressed {mb(u):>9}")
        for r in results:
            if r["image"] != "agent":
                continue
            total = sum(r["files"].values())
            print(f"  agent: largest files (of {mb(total)} in files):")
            for path, b in sorted(r["files"].items(), key=lambda kv: -kv[1])[:args.top]:
                print(f"    {mb(b):>9}  {100 * b / total:4.1f}%  /{path}")
            if r["stubs"]:
                print(f"  agent: {len(r['stubs'])} libraries it links but never calls are empty stand-ins "
                      f"(libraries {mb(r['lib_bytes'])} instead of {mb(r['untrimmed_lib_bytes'])}; --no-trim ships them):")
                by_reason = {}
                for s, reason in r["stubs"]:
                    by_reason.setdefault(reason, []).append(s)
                for reason, sonames in by_reason.items():
                    print(f"    {reason}: {' '.join(sonames)}")
        fd, tmp = tempfile.mkstemp(prefix="images.json.", dir=args.out)
        with os.fdopen(fd, "w") as f:
            json.dump([{k: v for k, v in r.items() if k != "files"} for r in results], f, indent=2)
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(args.out, "images.json"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
