"""A filesystem wrapper that cuts the power at a chosen mutating operation.

FaultFS counts the mutating operations (write, rename, remove, mkdir) it forwards to the
wrapped MemFS/VfsFS. Operation number `fail_at` (0-based) is the power cut:

* write: leaves a torn file chosen by `torn`, then raises PowerLoss
    False      -> nothing reaches flash (the file is not even created/truncated)
    True       -> the first half of the data
    int n >= 0 -> the first n bytes (capped at the full length; a huge n = complete
                  write, power lost before write() returned)
    int n < 0  -> all but the last -n bytes (-1 = all but one)
* rename: `done` False -> not performed, True -> performed, "fat" -> dst removed but
  src not renamed yet (FAT's remove-then-rename), then raises PowerLoss
* remove / mkdir: performed if `done` is truthy, then raises PowerLoss

Every later operation, reads included, raises PowerLoss too: the device is dead.
"Reboot" = build fresh objects on the *inner* fs and run their recovery.
With fail_at=None nothing fails and `ops` records what happened (to count fault points).
"""

from typing import Any


class PowerLoss(Exception):
    pass


def torn_length(n: int, torn: bool | int) -> int | None:
    """How many bytes of an n-byte write survive; None = the write never started."""
    if torn is False:
        return None
    if torn is True:
        return n // 2
    if torn >= 0:
        return min(torn, n)
    return max(n + torn, 0)


class FaultFS:
    def __init__(
        self,
        inner: Any,
        fail_at: int | None = None,
        torn: bool | int = True,
        done: bool | str = False,
    ) -> None:
        self.inner = inner
        self.fail_at = fail_at
        self.torn = torn
        self.done = done
        self.count = 0
        self.dead = False
        self.ops: list[tuple[str, str]] = []

    def _check(self) -> None:
        if self.dead:
            raise PowerLoss("device is off")

    def _mutating(self, kind: str, path: str) -> bool:
        """Count an operation; True if this one is the power cut."""
        self._check()
        i = self.count
        self.count += 1
        self.ops.append((kind, path))
        if self.fail_at is not None and i == self.fail_at:
            self.dead = True
            return True
        return False

    # -- mutating ------------------------------------------------------------------------

    def write(self, path: str, data: bytes) -> None:
        if self._mutating("write", path):
            keep = torn_length(len(data), self.torn)
            if keep is not None:
                self.inner.write(path, bytes(data[:keep]))
            raise PowerLoss("write " + path)
        self.inner.write(path, data)

    def rename(self, src: str, dst: str) -> None:
        if self._mutating("rename", src):
            if self.done == "fat":
                if self.inner.exists(dst):
                    self.inner.remove(dst)
            elif self.done:
                self.inner.rename(src, dst)
            raise PowerLoss("rename " + src)
        self.inner.rename(src, dst)

    def remove(self, path: str) -> None:
        if self._mutating("remove", path):
            if self.done:
                self.inner.remove(path)
            raise PowerLoss("remove " + path)
        self.inner.remove(path)

    def mkdir(self, path: str) -> None:
        if self._mutating("mkdir", path):
            if self.done:
                self.inner.mkdir(path)
            raise PowerLoss("mkdir " + path)
        self.inner.mkdir(path)

    # -- read-only -----------------------------------------------------------------------

    def read(self, path: str) -> bytes:
        self._check()
        data: bytes = self.inner.read(path)
        return data

    def listdir(self, path: str = "") -> list[str]:
        self._check()
        names: list[str] = self.inner.listdir(path)
        return names

    def exists(self, path: str) -> bool:
        self._check()
        return bool(self.inner.exists(path))


# The variants exercised at each kind of fault point.
WRITE_VARIANTS: list[bool | int] = [False, 0, 1, True, -1, 1 << 30]
RENAME_VARIANTS: list[bool | str] = [False, True, "fat"]
BOOL_VARIANTS: list[bool | str] = [False, True]


def variants(kind: str) -> list[dict[str, Any]]:
    """FaultFS keyword arguments for every way a power cut can hit an operation."""
    if kind == "write":
        return [{"torn": t} for t in WRITE_VARIANTS]
    if kind == "rename":
        return [{"done": d} for d in RENAME_VARIANTS]
    return [{"done": d} for d in BOOL_VARIANTS]
