#!/usr/bin/env python3
"""Builds a minimal OCI image-layout tar (one layer, entrypoint set) that `ctr image import` accepts.

The benchmarks use it to give runc its native baselines as images, so runc goes through the same snapshot work
as our wasm images (the issue's baseline: "a static native hello in a minimal image under runc").

The end-to-end tests use it too, for critest's stand-in images (tests/critest.rs): one file at several paths,
an image user.

Usage: oci_image.py OUT.tar REF --entrypoint ARG [--entrypoint ARG]... [--user USER] [--env KEY=VALUE]...
       HOST_PATH=IMAGE_PATH...
"""

import argparse
import hashlib
import io
import json
import sys
import tarfile


def build(path, ref, files, entrypoint, cmd=None, user=None, env=None):
    """Writes the image to `path`. `files` maps a host path to its path inside the image (a dict, or pairs when
    one host file goes to several paths)."""
    layer = io.BytesIO()
    # Symlinks (the dynamic loader is one on Debian) are stored as the files they point to, as `cp` would.
    with tarfile.open(fileobj=layer, mode="w", dereference=True) as tar:
        for host, inside in (files.items() if isinstance(files, dict) else files):
            tar.add(host, arcname=inside.lstrip("/"))
    blobs = {}

    def blob(data, media):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"mediaType": media, "digest": digest, "size": len(data)}

    layer_desc = blob(layer.getvalue(), "application/vnd.oci.image.layer.v1.tar")
    image_config = {"Entrypoint": entrypoint}
    if cmd:
        image_config["Cmd"] = cmd
    if user:
        image_config["User"] = user
    if env:
        image_config["Env"] = env
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": image_config,
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": blob(config, "application/vnd.oci.image.config.v1+json"), "layers": [layer_desc],
    }).encode()
    manifest_desc = blob(manifest, "application/vnd.oci.image.manifest.v1+json")
    manifest_desc["annotations"] = {"org.opencontainers.image.ref.name": ref}
    with tarfile.open(path, "w") as out:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
        add("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        add("index.json", json.dumps({"schemaVersion": 2, "manifests": [manifest_desc]}).encode())
        for digest, data in blobs.items():
            add("blobs/sha256/" + digest.split(":")[1], data)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("ref")
    parser.add_argument("--entrypoint", action="append", required=True)
    parser.add_argument("--user")
    parser.add_argument("--env", action="append", metavar="KEY=VALUE")
    parser.add_argument("files", nargs="+", metavar="HOST_PATH=IMAGE_PATH")
    args = parser.parse_args()
    files = []
    for pair in args.files:
        host, sep, inside = pair.partition("=")
        if not sep or not inside.startswith("/"):
            sys.exit(f"oci_image.py: {pair!r} is not HOST_PATH=/IMAGE_PATH")
        files.append((host, inside))
    build(args.out, args.ref, files, args.entrypoint, user=args.user, env=args.env)


if __name__ == "__main__":
    main()
