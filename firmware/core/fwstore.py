# The installed firmware image and its journal (docs/PROTOCOL.md section 22): install a
# verified image with a backup of every file it replaces, commit it when the new image has
# reached the fog, roll it back when it has not (deadline, crash loop, interrupted install).
#
# Part of the loader with main.py, core/fs.py and core/__init__.py: an update never replaces
# these files, in either form, .py or .mpy (core/ota.py refuses an image that names them), so
# main.py runs boot() and rollback() before it imports anything of the new image. It
# imports nothing of the project.
#
# Two filesystems (core/fs.py contract): `data` is the meter's data dir (the journal, the
# staged files, the backups), `code` is where the firmware files live (the flash root on a
# board, a directory on a host). The journal is JSON written beside and renamed, so a power
# loss leaves the old record or the new one:
#   {"version": running image's version or null (the flashed one),
#    "state": "ok" | "installing" | "trial" | "rolling_back",
#    "new", "prev": versions, "paths": [...], "had": [bool ...], "shadows": [...],
#    "boots": boots in trial, "reason": why the last image was rolled back ("" if not),
#    "rolled_back": version rolled back from ("" if none)}
# Installing (from "ok" only): the backups an earlier install left are removed first, then
# every file of the image is backed up (ota/b<i>, if it existed) before it is
# overwritten from its staged copy (ota/n<i>); a module's other form (X.mpy for X.py and
# the reverse, which MicroPython would import instead) is backed up (ota/s<j>) and removed.
# A power loss while "installing" is rolled back at the next boot. Rolling back first writes
# "rolling_back" with the reason, then restores: a power loss in the middle leaves that
# state, and the next boot finishes the rollback (every step can be done again) before
# anything of either image runs.
import json

JOURNAL = "fw.json"
DIR = "ota"
LOADER = ("main.py", "boot.py", "core/fwstore.py", "core/fs.py", "core/__init__.py")  # and .mpy


def _read(data, name):
    try:
        rec = json.loads(data.read(name))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def load(data):
    rec = _read(data, JOURNAL)
    if rec is None and not data.exists(JOURNAL):
        # FAT renames by removing the old record first (core/fs.py): a power loss there
        # leaves only the new one, complete, beside (a torn one does not decode)
        rec = _read(data, JOURNAL + ".tmp")
    if rec is None:
        rec = {}
    rec.setdefault("version", None)
    rec.setdefault("state", "ok")
    rec.setdefault("reason", "")
    rec.setdefault("rolled_back", "")
    return rec


def save(data, rec):
    data.write(JOURNAL + ".tmp", json.dumps(rec).encode())
    data.rename(JOURNAL + ".tmp", JOURNAL)


def _copy(src_fs, src, dst_fs, dst):
    """src -> dst, written beside and renamed (dst is the old file or the new, never torn)."""
    _mkparents(dst_fs, dst)
    dst_fs.write(dst + ".tmp", src_fs.read(src))
    dst_fs.rename(dst + ".tmp", dst)


def _mkparents(fs, path):
    parts = path.split("/")[:-1]
    cur = ""
    for p in parts:
        cur = cur + "/" + p if cur else p
        fs.mkdir(cur)


def _rm(fs, path):
    if fs.exists(path):
        fs.remove(path)


def shadow_of(path):
    if path.endswith(".py"):
        return path[:-3] + ".mpy"
    if path.endswith(".mpy"):
        return path[:-4] + ".py"
    return None


def clear_staging(data):
    """Remove everything under ota/ (staged files, backups, the manifest)."""
    if not data.exists(DIR):
        return
    for name in data.listdir(DIR):
        _rm(data, DIR + "/" + name)


def _clear_backups(data):
    """Remove the backups (ota/b<i>, ota/s<j>) an earlier install may have left (a power
    loss between the journal's save and clear_staging in commit or rollback)."""
    if not data.exists(DIR):
        return
    for name in data.listdir(DIR):
        if name[:1] in ("b", "s"):
            _rm(data, DIR + "/" + name)


def install(data, code, version, paths, running):
    """Put the staged files ota/n<i> in place of `paths`, keeping backups; the journal says
    "trial" afterwards (the caller reboots into the new image). Only from state "ok"."""
    shadows = []
    for p in paths:
        s = shadow_of(p)
        if s and s not in paths and code.exists(s) and s not in shadows:
            shadows.append(s)
    rec = load(data)
    _clear_backups(data)  # before "installing": a rollback restores only this install's
    rec.update(state="installing", new=version, prev=running, paths=list(paths),
               had=[code.exists(p) for p in paths], shadows=shadows, boots=0)
    save(data, rec)
    for i, p in enumerate(paths):
        if rec["had"][i]:
            _copy(code, p, data, DIR + "/b" + str(i))
        _copy(data, DIR + "/n" + str(i), code, p)
    for j, s in enumerate(shadows):
        if code.exists(s):
            _copy(code, s, data, DIR + "/s" + str(j))
            code.remove(s)
    rec["state"] = "trial"
    save(data, rec)
    return rec


def rollback(data, code, reason):
    """Restore the files an install replaced; the journal says "ok" with the old version.
    The journal says "rolling_back" (and why) while the files are restored: boot() finishes
    a rollback a power loss cut short, with its first reason."""
    rec = load(data)
    if rec["state"] not in ("installing", "trial", "rolling_back"):
        return rec
    if rec["state"] != "rolling_back":
        rec.update(state="rolling_back", reason=reason)
        save(data, rec)
    for i, p in enumerate(rec.get("paths", ())):
        b = DIR + "/b" + str(i)
        if rec["had"][i]:
            if data.exists(b):
                _copy(data, b, code, p)
        else:
            _rm(code, p)
        _rm(code, p + ".tmp")  # a copy the power loss cut short
    for j, s in enumerate(rec.get("shadows", ())):
        b = DIR + "/s" + str(j)
        if data.exists(b):
            _copy(data, b, code, s)
    rec.update(state="ok", version=rec.get("prev"), rolled_back=rec.get("new") or "", boots=0)
    save(data, rec)
    clear_staging(data)
    return rec


def commit(data):
    """The new image reached the fog: it stays; backups and staging go."""
    rec = load(data)
    if rec["state"] != "trial":
        return rec
    rec.update(state="ok", version=rec.get("new"), reason="", rolled_back="", boots=0)
    save(data, rec)
    clear_staging(data)
    return rec


def boot(data, code, max_boots=3):
    """At every boot, before anything an update replaces is imported (main.py): a rollback or
    an install a power loss cut short is rolled back (to the end); an image on trial counts
    the boot and is rolled back after `max_boots` boots without reaching the fog (a crash
    or watchdog loop); with nothing installing or on trial, whatever is left under ota/
    (staged files of an unfinished session, stale backups) goes. Returns (journal, rolled
    back now). The old image is in place when this returns: nothing needs a reset."""
    rec = load(data)
    st = rec["state"]
    if st == "ok":
        clear_staging(data)
    elif st == "rolling_back":
        return rollback(data, code, rec["reason"]), True
    elif st == "installing":
        return rollback(data, code, "interrupted: power lost while installing"), True
    elif st == "trial":
        rec["boots"] = rec.get("boots", 0) + 1
        if rec["boots"] > max_boots:
            why = "crashed: " + str(max_boots) + " boots without reaching the fog"
            return rollback(data, code, why), True
        save(data, rec)
    return rec, False
