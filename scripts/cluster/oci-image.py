#!/usr/bin/env python3
"""Writes a single-layer OCI image archive (an OCI image layout in a tar) without a
container daemon or registry, for `ctr -n k8s.io images import` on the test cluster's
nodes (the K3s air-gap way).

  oci-image.py --name fedge.local/pause:3.10 --out pause.tar --entrypoint /pause \
      --add /path/to/pause:/pause:0755 [--symlink /bin/sh:busybox] [--dir /tmp:1777] \
      [--user 65535:65535] [--env K=V] [--label K=V] [--workdir /] [--cmd arg ...]

The archive's index names the image with the `io.containerd.image.name` annotation (the
full reference containerd imports it as) and `org.opencontainers.image.ref.name` (its tag).
The layer is deterministic: entries sorted, owned by root, mtime 0, so the same inputs give
the same digest. Exit status 2 with a message on bad arguments or a missing input file.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile


def fail(msg):
    print(f"oci-image: {msg}", file=sys.stderr)
    sys.exit(2)


def parse_mode(text, default):
    if text is None or text == "":
        return default
    try:
        return int(text, 8)
    except ValueError:
        fail(f"bad mode {text!r}: give octal digits such as 0755")


def add_parents(tar, path, seen):
    parts = path.strip("/").split("/")[:-1]
    for i in range(1, len(parts) + 1):
        d = "/".join(parts[:i])
        if d in seen:
            continue
        seen.add(d)
        info = tarfile.TarInfo(d)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)


def build_layer(args):
    """Returns the uncompressed layer tar as bytes."""
    entries = []  # (path, kind, payload, mode)
    for spec in args.add:
        parts = spec.split(":")
        if len(parts) not in (2, 3):
            fail(f"--add {spec!r}: expected SRC:DEST[:MODE]")
        src, dest = parts[0], parts[1]
        if not os.path.isfile(src):
            fail(f"--add {spec!r}: {src} is not a file")
        if not dest.startswith("/"):
            fail(f"--add {spec!r}: DEST must be absolute")
        mode = parse_mode(parts[2] if len(parts) == 3 else None, os.stat(src).st_mode & 0o7777)
        entries.append((dest, "file", src, mode))
    for spec in args.symlink:
        link, _, target = spec.partition(":")
        if not link.startswith("/") or not target:
            fail(f"--symlink {spec!r}: expected /LINK:TARGET")
        entries.append((link, "symlink", target, 0o777))
    for spec in args.dir:
        path, _, mode = spec.partition(":")
        if not path.startswith("/"):
            fail(f"--dir {spec!r}: path must be absolute")
        entries.append((path, "dir", None, parse_mode(mode, 0o755)))
    for spec in args.text:
        dest, _, content = spec.partition("=")
        if not dest.startswith("/"):
            fail(f"--text {spec!r}: expected /PATH=CONTENT")
        entries.append((dest, "text", content.replace("\\n", "\n"), 0o644))

    buf = io.BytesIO()
    seen = set()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, kind, payload, mode in sorted(entries, key=lambda e: e[0]):
            add_parents(tar, path, seen)
            info = tarfile.TarInfo(path.lstrip("/"))
            info.mode = mode
            if kind == "file":
                info.size = os.path.getsize(payload)
                with open(payload, "rb") as f:
                    tar.addfile(info, f)
            elif kind == "text":
                data = payload.encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            elif kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = payload
                tar.addfile(info)
            else:
                info.type = tarfile.DIRTYPE
                seen.add(path.strip("/"))
                tar.addfile(info)
    return buf.getvalue()


def blob(tar, data):
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))
    return f"sha256:{digest}", len(data)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True, help="full reference, e.g. fedge.local/pause:3.10")
    p.add_argument("--out", required=True)
    p.add_argument("--add", action="append", default=[], help="SRC:DEST[:MODE]")
    p.add_argument("--symlink", action="append", default=[], help="/LINK:TARGET")
    p.add_argument("--dir", action="append", default=[], help="/PATH[:MODE]")
    p.add_argument("--text", action="append", default=[], help="/PATH=CONTENT (\\n for newlines)")
    p.add_argument("--entrypoint", nargs="+", default=None)
    p.add_argument("--cmd", nargs="+", default=None)
    p.add_argument("--user", default="")
    p.add_argument("--workdir", default="/")
    p.add_argument("--env", action="append", default=[])
    p.add_argument("--label", action="append", default=[])
    args = p.parse_args()

    name = args.name
    last = name.rsplit("/", 1)[-1]
    if ":" not in last or "@" in name:
        fail(f"--name {name!r}: give a tagged reference such as fedge.local/pause:3.10")
    tag = last.split(":", 1)[1]
    for kv in args.env + args.label:
        if "=" not in kv:
            fail(f"{kv!r}: expected KEY=VALUE")

    layer = build_layer(args)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    layer_gz = gzip.compress(layer, compresslevel=9, mtime=0)

    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] + args.env,
            "WorkingDir": args.workdir,
            "Labels": dict(kv.split("=", 1) for kv in args.label),
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "scripts/cluster/oci-image.py", "created": "1970-01-01T00:00:00Z"}],
        "created": "1970-01-01T00:00:00Z",
    }
    if args.entrypoint:
        config["config"]["Entrypoint"] = args.entrypoint
    if args.cmd:
        config["config"]["Cmd"] = args.cmd
    if args.user:
        config["config"]["User"] = args.user

    tmp = args.out + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        layer_digest, layer_size = blob(tar, layer_gz)
        config_data = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        config_digest, config_size = blob(tar, config_data)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": layer_digest, "size": layer_size}],
        }
        manifest_data = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        manifest_digest, manifest_size = blob(tar, manifest_data)
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest, "size": manifest_size,
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {"io.containerd.image.name": name,
                                "org.opencontainers.image.ref.name": tag},
            }],
        }
        for fname, data in (("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                            ("index.json", json.dumps(index, sort_keys=True).encode())):
            info = tarfile.TarInfo(fname)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, args.out)
    print(f"{args.out}: {name} ({os.path.getsize(args.out)} bytes, manifest {manifest_digest})")


if __name__ == "__main__":
    main()
