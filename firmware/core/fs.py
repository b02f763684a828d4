# The flash filesystem the core writes to, behind a tiny interface so that tests can
# inject power loss at every single operation.
#
# Contract (every implementation, including test doubles):
#   read(path) -> bytes            raises OSError if the file does not exist
#   write(path, data)              create/truncate, write all, flush and sync; a power loss
#                                  may leave any prefix of data (a torn file)
#   append(path, data)             add data at the end (creating the file); optional: only
#                                  firmware updates (core/ota.py) need it
#   rename(src, dst)               replaces dst; atomic on LittleFS and POSIX. On FAT the
#                                  implementation removes dst first, so recovery code must
#                                  accept "dst missing, src complete".
#   remove(path)                   raises OSError if missing
#   listdir(path) -> list of names
#   mkdir(path)                    no error if it exists
#   exists(path) -> bool
#   free() -> bytes free, or None  optional: the room left (core/ota.py checks an image fits)
# Paths are relative to the filesystem's root and use "/".
import os


class VfsFS:
    """The filesystem of the running interpreter (LittleFS/FAT on a board, POSIX on a host)."""

    def __init__(self, root):
        self.root = root.rstrip("/")
        self._mkdirs(self.root)

    def _p(self, path):
        return self.root + "/" + path

    def _mkdirs(self, path):
        cur = ""
        for part in path.split("/"):
            if not part:
                cur = "/"
                continue
            cur = cur + part if cur.endswith("/") or not cur else cur + "/" + part
            try:
                os.mkdir(cur)
            except OSError:
                pass

    def read(self, path):
        with open(self._p(path), "rb") as f:
            return f.read()

    def write(self, path, data):
        with open(self._p(path), "wb") as f:
            f.write(data)
            f.flush()
            sync = getattr(os, "fsync", None)
            if sync is not None:  # CPython: make the bytes durable before any rename
                sync(f.fileno())

    def append(self, path, data):
        with open(self._p(path), "ab") as f:
            f.write(data)

    def rename(self, src, dst):
        try:
            os.rename(self._p(src), self._p(dst))
        except OSError:
            # FAT refuses to rename onto an existing file
            if not self.exists(dst):
                raise
            os.remove(self._p(dst))
            os.rename(self._p(src), self._p(dst))

    def remove(self, path):
        os.remove(self._p(path))

    def listdir(self, path=""):
        return os.listdir(self._p(path) if path else self.root)

    def mkdir(self, path):
        try:
            os.mkdir(self._p(path))
        except OSError:
            pass

    def exists(self, path):
        try:
            os.stat(self._p(path))
            return True
        except OSError:
            return False

    def free(self):
        """Bytes free for this filesystem, or None where the port has no os.statvfs."""
        statvfs = getattr(os, "statvfs", None)
        if statvfs is None:
            return None
        try:
            st = statvfs(self.root or "/")
        except OSError:
            return None
        return st[1] * st[4]  # f_frsize * f_bavail


class MemFS:
    """In-memory twin of VfsFS: same contract, no flash (tests, benchmarks)."""

    def __init__(self):
        self.files = {}
        self.dirs = {""}

    def read(self, path):
        if path not in self.files:
            raise OSError(2, "no such file: " + path)
        return self.files[path]

    def write(self, path, data):
        self.files[path] = bytes(data)

    def append(self, path, data):
        self.files[path] = self.files.get(path, b"") + bytes(data)

    def rename(self, src, dst):
        if src not in self.files:
            raise OSError(2, "no such file: " + src)
        self.files[dst] = self.files.pop(src)

    def remove(self, path):
        if path not in self.files:
            raise OSError(2, "no such file: " + path)
        del self.files[path]

    def listdir(self, path=""):
        pre = path + "/" if path else ""
        out = []
        for name in list(self.files) + list(self.dirs):
            if name and name.startswith(pre):
                rest = name[len(pre):]
                if rest and "/" not in rest:
                    out.append(rest)
        return out

    def mkdir(self, path):
        self.dirs.add(path)

    def exists(self, path):
        return path in self.files or path in self.dirs
