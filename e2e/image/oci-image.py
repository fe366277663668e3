#!/usr/bin/env python3
"""Builds a reproducible one-layer OCI image from files, with the Python standard library only.

No Docker engine and no registry is needed: the image is written as an OCI image layout directory
(--oci-dir) and/or a tarball (--docker-tar) that is at once an OCI layout archive and a `docker save`
archive (a manifest.json beside oci-layout and index.json, as Docker 25+ writes it). `docker load`,
`ctr images import` (which keeps the OCI manifest, hence its digest), `crane push <dir>` and skopeo
all read one of the two.

Reproducible: entries are sorted, owned by a numeric uid/gid (65532 by default, "nonroot") with no user
or group names, every mtime is --mtime (default: $SOURCE_DATE_EPOCH, else 0), modes are normalised to
0755/0644 (kept: the executable bit), the layer is an uncompressed tar (gzip would make the digest depend
on the zlib version unless --gzip is asked for), and JSON is written with sorted keys. Two runs over the
same input give the same manifest digest, which is printed on stdout.

    oci-image.py --dir ROOTFS --entrypoint /app --tag example.com/app:v1 --oci-dir out/ --docker-tar app.tar
    oci-image.py --file /usr/bin/busybox:/bin/busybox --link /bin/sh:busybox --entrypoint "/bin/sleep 3600" ...
    oci-image.py --file target/release/app:/app --ldd --entrypoint /app ...   # a dynamically linked binary
"""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def canonical_json(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def normalize_reference(ref):
    """docker.io/library/NAME:latest from NAME, as containerd and Docker normalise short names."""
    name, sep, digest = ref.partition("@")
    last = name.rsplit("/", 1)[-1]
    if ":" not in last and not sep:
        name += ":latest"
    first = name.split("/", 1)[0]
    if "/" not in name or not ("." in first or ":" in first or first == "localhost"):
        if "/" not in name:
            name = "library/" + name
        name = "docker.io/" + name
    return name + sep + digest


class Layer:
    """The files of the layer, keyed by their path in the image (no leading slash)."""

    def __init__(self, uid, gid, mtime):
        self.uid, self.gid, self.mtime = uid, gid, mtime
        self.entries = {}  # path -> ("dir",) | ("file", host_path, executable) | ("symlink", target)

    def _parents(self, path):
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            kind = self.entries.get(parent, ("dir",))[0]
            if kind != "dir":
                sys.exit(f"oci-image: {parent} is a {kind}, it cannot hold {path}")
            self.entries[parent] = ("dir",)

    def add(self, path, entry):
        path = os.path.normpath("/" + path).lstrip("/")
        if not path:
            return  # the root itself is implicit
        self._parents(path)
        self.entries[path] = entry

    def add_host_path(self, source, dest):
        """A file, symlink or directory of the host at DEST (a directory: recursively)."""
        st = os.lstat(source)
        if stat.S_ISLNK(st.st_mode):
            self.add(dest, ("symlink", os.readlink(source)))
        elif stat.S_ISDIR(st.st_mode):
            self.add(dest, ("dir",))
            for name in sorted(os.listdir(source)):
                self.add_host_path(os.path.join(source, name), dest.rstrip("/") + "/" + name)
        elif stat.S_ISREG(st.st_mode):
            self.add(dest, ("file", source, bool(st.st_mode & 0o111)))
        else:
            sys.exit(f"oci-image: {source}: only regular files, directories and symlinks are supported")

    def tar(self):
        out = io.BytesIO()
        # PAX only where a field needs it (long names); otherwise plain ustar headers, so the bytes
        # depend on nothing but the entries.
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(self.entries):
                entry = self.entries[path]
                info = tarfile.TarInfo(path)
                info.uid, info.gid, info.uname, info.gname = self.uid, self.gid, "", ""
                info.mtime = self.mtime
                if entry[0] == "dir":
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                elif entry[0] == "symlink":
                    info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, entry[1]
                    tar.addfile(info)
                else:
                    info.mode = 0o755 if entry[2] else 0o644
                    info.size = os.path.getsize(entry[1])
                    with open(entry[1], "rb") as f:
                        tar.addfile(info, f)
        return out.getvalue()


def shared_libraries(binary):
    """The absolute paths of the shared libraries a dynamic ELF binary loads (ldd), interpreter included."""
    with open(binary, "rb") as f:
        if f.read(4) != b"\x7fELF":
            return []
    result = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if result.returncode != 0:  # "not a dynamic executable": a static binary needs nothing
        return []
    libs = []
    for line in result.stdout.splitlines():
        words = line.split()
        if "=>" in words:
            i = words.index("=>")
            if i + 1 < len(words) and words[i + 1].startswith("/"):
                libs.append(words[i + 1])
        elif words and words[0].startswith("/"):
            libs.append(words[0])
    return libs


def command_line(text):
    """A JSON array of strings, or a command line split like a POSIX shell would."""
    if text.lstrip().startswith("["):
        words = json.loads(text)
        if not all(isinstance(w, str) for w in words):
            raise argparse.ArgumentTypeError("a JSON array of strings was expected")
        return words
    return shlex.split(text)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", action="append", default=[], metavar="SRC[:DEST]",
                   help="a directory tree to copy to DEST (default /)")
    p.add_argument("--file", action="append", default=[], metavar="SRC:DEST",
                   help="a file (or a directory, recursively) to copy to DEST")
    p.add_argument("--link", action="append", default=[], metavar="PATH:TARGET",
                   help="a symlink at PATH pointing at TARGET")
    p.add_argument("--mkdir", action="append", default=[], metavar="PATH", help="an empty directory")
    p.add_argument("--ldd", action="store_true",
                   help="also copy the shared libraries of the dynamic ELF files given, at their host paths")
    p.add_argument("--entrypoint", required=True, type=command_line, metavar="COMMAND",
                   help='the entrypoint, a shell-quoted command line or a JSON array: "/app serve"')
    p.add_argument("--cmd", type=command_line, default=None, metavar="COMMAND",
                   help="the default arguments, likewise (write --cmd='-x ...' when it starts with a dash)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="an environment variable (PATH has a default)")
    p.add_argument("--workdir", default="/")
    p.add_argument("--uid", type=int, default=65532, help="owner of every entry, and the image's user")
    p.add_argument("--gid", type=int, default=65532)
    p.add_argument("--mtime", type=int, default=int(os.environ.get("SOURCE_DATE_EPOCH", "0")))
    p.add_argument("--arch", default="amd64")
    p.add_argument("--label", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--gzip", action="store_true", help="compress the layer (gzip -n, level 9)")
    p.add_argument("--tag", action="append", default=[], metavar="REF",
                   help="name of the image, e.g. registry.example/app:v1 (repeatable)")
    p.add_argument("--oci-dir", help="write an OCI image layout directory here (replaced)")
    p.add_argument("--docker-tar", help="write an OCI layout + docker save archive here")
    args = p.parse_args(argv)
    if not (args.oci_dir or args.docker_tar):
        p.error("give --oci-dir and/or --docker-tar")
    return args


def build(args):
    layer = Layer(args.uid, args.gid, args.mtime)
    for spec in args.dir:
        src, _, dest = spec.partition(":")
        if not os.path.isdir(src):
            sys.exit(f"oci-image: {src} is not a directory")
        for name in sorted(os.listdir(src)):
            layer.add_host_path(os.path.join(src, name), (dest or "/").rstrip("/") + "/" + name)
    for spec in args.file:
        src, sep, dest = spec.partition(":")
        if not sep:
            sys.exit(f"oci-image: --file {spec}: expected SRC:DEST")
        # A --file that is a symlink stands for the file it names (a tool linked into a bin folder);
        # symlinks inside a copied directory stay symlinks.
        layer.add_host_path(os.path.realpath(src), dest)
        if args.ldd:
            for lib in shared_libraries(src):
                # The loader finds libraries by their path, so they keep it; a symlinked one is copied
                # as the file it resolves to.
                layer.add(lib, ("file", os.path.realpath(lib), True))
    for spec in args.link:
        path, sep, target = spec.partition(":")
        if not sep:
            sys.exit(f"oci-image: --link {spec}: expected PATH:TARGET")
        layer.add(path, ("symlink", target))
    for path in args.mkdir:
        layer.add(path, ("dir",))

    layer_tar = layer.tar()
    diff_id = sha256(layer_tar)
    if args.gzip:
        # mtime=0 and no file name in the header (gzip -n): the compressed bytes depend on the data only
        # (and on zlib's version, hence not the default).
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
            gz.write(layer_tar)
        layer_blob, layer_media = buf.getvalue(), MEDIA_LAYER_GZIP
    else:
        layer_blob, layer_media = layer_tar, MEDIA_LAYER

    env = list(args.env)
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, DEFAULT_PATH)
    created = datetime.datetime.fromtimestamp(args.mtime, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    container_config = {
        "User": f"{args.uid}:{args.gid}",
        "Entrypoint": args.entrypoint,
        "Env": env,
        "WorkingDir": args.workdir,
    }
    if args.cmd is not None:
        container_config["Cmd"] = args.cmd
    if args.label:
        container_config["Labels"] = dict(label.split("=", 1) for label in args.label)
    config = {
        "architecture": args.arch,
        "os": "linux",
        "created": created,
        "config": container_config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": "e2e/image/oci-image.py"}],
    }
    config_blob = canonical_json(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": sha256(config_blob), "size": len(config_blob)},
        "layers": [{"mediaType": layer_media, "digest": sha256(layer_blob), "size": len(layer_blob)}],
    }
    manifest_blob = canonical_json(manifest)
    manifest_desc = {
        "mediaType": MEDIA_MANIFEST,
        "digest": sha256(manifest_blob),
        "size": len(manifest_blob),
        "platform": {"architecture": args.arch, "os": "linux"},
    }
    # One index entry per tag: io.containerd.image.name is the name `ctr images import` gives the image,
    # org.opencontainers.image.ref.name the tag (as Docker 25+ writes them); untagged: one plain entry.
    tags = [normalize_reference(t) for t in args.tag]
    manifests = []
    for ref in tags:
        entry = dict(manifest_desc)
        entry["annotations"] = {
            "io.containerd.image.name": ref,
            "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[-1] if "@" not in ref else ref,
        }
        manifests.append(entry)
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": manifests or [manifest_desc]}

    blobs = {sha256(b).split(":")[1]: b for b in (layer_blob, config_blob, manifest_blob)}
    files = {
        "oci-layout": canonical_json({"imageLayoutVersion": "1.0.0"}),
        "index.json": canonical_json(index),
    }
    files.update({f"blobs/sha256/{h}": b for h, b in blobs.items()})
    docker_manifest = [{
        "Config": "blobs/sha256/" + sha256(config_blob).split(":")[1],
        "RepoTags": tags,
        "Layers": ["blobs/sha256/" + sha256(layer_blob).split(":")[1]],
    }]

    if args.oci_dir:
        if os.path.isdir(args.oci_dir):
            shutil.rmtree(args.oci_dir)
        for name, data in files.items():
            path = os.path.join(args.oci_dir, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
    if args.docker_tar:
        archive = dict(files)
        archive["manifest.json"] = canonical_json(docker_manifest)
        tmp = args.docker_tar + ".tmp"
        with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for directory in ("blobs", "blobs/sha256"):
                info = tarfile.TarInfo(directory)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, args.mtime
                tar.addfile(info)
            for name in sorted(archive):
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(archive[name]), 0o644, args.mtime
                tar.addfile(info, io.BytesIO(archive[name]))
        os.replace(tmp, args.docker_tar)
    return manifest_desc["digest"]


def main(argv):
    print(build(parse_args(argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
