"""Firmware images for over-the-air updates (docs/PROTOCOL.md section 22).

    python -m tools.ota keygen --key release.key [--pub release.pub]
    python -m tools.ota build --version 0.2.0 [--src DIR] [--board esp32] --out fw.img
    python -m tools.ota sign fw.img --key release.key [--out fw.signed.img]
    python -m tools.ota inspect fw.signed.img [--release-pub HEX|FILE]
    python -m tools.ota push fw.signed.img --fog localhost:8080 --dev ID \
        --token-file fog-data/operator.token
    python -m tools.ota status --fog localhost:8080 --dev ID --token-file fog-data/operator.token

The release key signs images; its public key is pinned in every meter at provisioning
(`python -m tools.flash ... --release-pub FILE`, config.json `release_pub`). Keep the
private key off the fog node: the fog only forwards images, the meters check them.

`build` takes every .py and .mpy below --src (default: the firmware sources), except the
loader (main, boot, core/fwstore, core/fs, core/__init__; .py or .mpy), which an update
never replaces; paths are lower-case, and none under data/ or ota/ (the meter's data dir and
staging).
Build from a flash image directory (`tools.flash --target DIR`) to ship .mpy files.
A signed image goes to a meter through its fog node: `push` (POST /v1/firmware?dev=ID, the
fog's operator tier), and `status` shows how the meter answered.
Exit status: 0 done (inspect: the image is well formed, and signed by --release-pub if
given), 1 inspect found a problem, 2 bad usage.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

from fog_node.ota import Image, ImageError, build, is_loader, parse_image, sign
from hardware.firmware import FIRMWARE_DIR
from meterledger import wire as P
from meterledger.clients.chain import ChainClientError
from meterledger.clients.fog import FogClient
from meterledger.infra.args import ArgumentParser


def parser(prog: str = "python -m tools.ota") -> argparse.ArgumentParser:
    ap = ArgumentParser(prog=prog, description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    k = sub.add_parser("keygen", help="make a release key pair")
    k.add_argument("--key", type=Path, required=True,
                   help="file for the private key (64 hex, mode 0600; refused if it exists)")
    k.add_argument("--pub", type=Path,
                   help="file for the public key (130 hex; default: KEY with .pub)")
    b = sub.add_parser("build", help="an unsigned image of a firmware tree")
    b.add_argument("--version", required=True, help="the image's version, e.g. 0.2.0")
    b.add_argument("--src", type=Path, default=FIRMWARE_DIR,
                   help="the tree to ship (default: the firmware sources)")
    b.add_argument("--board", default="",
                   help="only meters on this board take it (esp32, rp2, host; default: any)")
    b.add_argument("--out", type=Path, required=True, help="the image file to write")
    s = sub.add_parser("sign", help="sign an image's manifest with the release key")
    s.add_argument("image", type=Path, help="the image (tools.ota build)")
    s.add_argument("--key", type=Path, required=True, help="the release private key file")
    s.add_argument("--out", type=Path, help="the signed image (default: overwrite IMAGE)")
    i = sub.add_parser("inspect", help="show an image's manifest and check it")
    i.add_argument("image", type=Path, help="the image file")
    i.add_argument("--release-pub", metavar="HEX|FILE",
                   help="also check the signature with this release public key")
    for name, what in (("push", "hand a signed image to a fog node for one meter"),
                       ("status", "the last push to a meter and the meter's answer")):
        q = sub.add_parser(name, help=what)
        if name == "push":
            q.add_argument("image", type=Path, help="the signed image (tools.ota sign)")
        q.add_argument("--fog", required=True,
                       help="the fog node's API, e.g. localhost:8080 (no scheme: http)")
        q.add_argument("--dev", required=True, help="the meter's id, 16 hex characters")
        q.add_argument("--token-file", type=Path, required=True,
                       help="the fog's operator token (its data dir's operator.token)")
        q.add_argument("--ca-file", type=Path,
                       help="CA certificate of the fog's HTTPS (default: the system's CAs)")
    return ap


def _fog(ap: argparse.ArgumentParser, a: argparse.Namespace) -> tuple[FogClient, bytes]:
    try:
        dev = bytes.fromhex(a.dev)
        if len(dev) != 8:
            raise ValueError
    except ValueError:
        ap.error(f"--dev {a.dev!r}: a meter id is 16 hex characters")
    try:
        token = a.token_file.read_text().strip()
    except OSError as e:
        ap.error(f"--token-file {a.token_file}: {e.strerror}")
    return FogClient(a.fog, token=token, ca_file=a.ca_file), dev


def _push(ap: argparse.ArgumentParser, a: argparse.Namespace) -> int:
    fog, dev = _fog(ap, a)
    try:
        data = a.image.read_bytes()
        img = parse_image(data)
    except OSError as e:
        ap.error(f"{a.image}: {e.strerror}")
    except ImageError as e:
        ap.error(f"{a.image}: {e}")
    if not img.signed:
        ap.error(f"{a.image}: unsigned (sign it first: tools.ota sign)")
    try:
        out = fog.push_firmware(dev, data)
    except ChainClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out))
    return 0


def _status(ap: argparse.ArgumentParser, a: argparse.Namespace) -> int:
    fog, dev = _fog(ap, a)
    try:
        print(json.dumps(fog.firmware(dev)))
    except ChainClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def verify(img: Image, release: P.PublicKey) -> None:
    """The meter's signature check, on the host (inspect): ES256 by `release`,
    low-S, over the manifest's payload (SPEC section 3's Sig_structure)."""
    if not img.signed:
        raise ImageError("the image is not signed (tools.ota sign)")
    env = P.decode(img.head, tags=(18,)).value
    protected, unprotected, payload, sig = env
    if protected != P.PROTECTED or unprotected != {4: release.id}:
        raise ImageError(f"the manifest is not signed by release key {release.id_hex}")
    if not isinstance(sig, bytes) or len(sig) != 64 or int.from_bytes(sig[32:], "big") > P.HALF_N \
            or not release.verify(sig, P.to_be_signed(payload)):
        raise ImageError(f"the manifest's signature does not verify with release key "
                         f"{release.id_hex}")


def file_errors(img: Image) -> list[str]:
    """Files whose bytes do not match their manifest sha256."""
    out, pos = [], 0
    for path, n, h in img.files:
        if hashlib.sha256(img.content[pos:pos + n]).digest() != h:
            out.append(path)
        pos += n
    return out


def read_pub(text: str) -> P.PublicKey:
    """A public key from 130 hex characters or a file holding them."""
    raw = text.strip()
    if not all(c in "0123456789abcdefABCDEF" for c in raw) or len(raw) != 130:
        raw = Path(text).read_text().strip()
    return P.PublicKey(bytes.fromhex(raw))


def tree(src: Path) -> list[tuple[str, bytes]]:
    """The image's files: every .py/.mpy below src but the loader's (in either form), in
    path order; build() refuses a path the meter would (fog_node.ota.path_error)."""
    out = []
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src).as_posix()
        if p.is_file() and p.suffix in (".py", ".mpy") and not is_loader(rel) \
                and "__pycache__" not in rel.split("/"):
            out.append((rel, p.read_bytes()))
    return out


def _keygen(ap: argparse.ArgumentParser, a: argparse.Namespace) -> int:
    pub = a.pub or a.key.with_suffix(".pub")
    key = P.SigningKey.generate()
    try:
        fd = os.open(a.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        ap.error(f"--key {a.key}: {e.strerror}")
    with os.fdopen(fd, "w") as f:
        f.write(key.private_bytes().hex() + "\n")
    pub.write_text(key.public_key.raw.hex() + "\n")
    print(f"release key {key.id_hex}: private {a.key}, public {pub}")
    return 0


def _build(ap: argparse.ArgumentParser, a: argparse.Namespace) -> int:
    if not a.src.is_dir():
        ap.error(f"--src {a.src}: not a directory")
    files = tree(a.src)
    if not files:
        ap.error(f"--src {a.src}: no .py or .mpy files")
    try:
        data = build(a.version, files, a.board)
    except ImageError as e:
        ap.error(str(e))
    a.out.write_bytes(data)
    print(f"{a.out}: unsigned image {a.version}, {len(files)} files, {len(data)} bytes")
    return 0


def _sign(ap: argparse.ArgumentParser, a: argparse.Namespace) -> int:
    try:
        key = P.SigningKey.from_bytes(bytes.fromhex(a.key.read_text().strip()))
        data = sign(a.image.read_bytes(), key)
    except OSError as e:
        ap.error(f"{e.filename}: {e.strerror}")
    except ImageError as e:
        ap.error(f"{a.image}: {e}")
    except ValueError as e:
        ap.error(f"--key {a.key}: not a private key ({e})")
    out = a.out or a.image
    out.write_bytes(data)
    print(f"{out}: signed by release key {key.id_hex}, manifest digest "
          f"{parse_image(data).digest.hex()}")
    return 0


def _inspect(ap: argparse.ArgumentParser, a: argparse.Namespace) -> int:
    try:
        img = parse_image(a.image.read_bytes())
    except OSError as e:
        ap.error(f"{a.image}: {e.strerror}")
    except ImageError as e:
        print(f"{a.image}: {e}", file=sys.stderr)
        return 1
    f = img.fields
    print(f"version {img.version}  board {f[3] or 'any'}  t {f[5]}  "
          f"{'signed by ' + f[1].hex() if img.signed else 'unsigned'}")
    print(f"manifest digest {img.digest.hex()}  ({len(img.blob)} bytes)")
    for path, n, h in img.files:
        print(f"  {n:>8}  {h.hex()[:16]}  {path}")
    bad = file_errors(img)
    for path in bad:
        print(f"{path}: its bytes do not match the manifest's sha256", file=sys.stderr)
    if a.release_pub:
        try:
            verify(img, read_pub(a.release_pub))
        except (OSError, ValueError) as e:
            if isinstance(e, OSError) or not isinstance(e, ImageError):
                ap.error(f"--release-pub: not a public key or a file holding one ({e})")
            print(f"{a.image}: {e}", file=sys.stderr)
            return 1
        print(f"signature ok (release key {read_pub(a.release_pub).id_hex})")
    return 1 if bad else 0


def main(argv: list[str] | None = None, prog: str = "python -m tools.ota") -> int:
    ap = parser(prog)
    a = ap.parse_args(argv)
    run = {"keygen": _keygen, "build": _build, "sign": _sign, "inspect": _inspect,
           "push": _push, "status": _status}[a.command]
    return run(ap, a)


if __name__ == "__main__":
    sys.exit(main())
