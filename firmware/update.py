# Firmware updates on the meter, the app's side (docs/PROTOCOL.md section 22): the journal as
# the loader (main.py, core/fwstore.py) left it at boot, chunks into the updater (core/ota.py),
# the fog's "fw" command installing them, and the trial that rolls an image back if it never
# reaches the fog.
# Functions of the App (`app`), kept apart so app.py stays a small module on a board.
from core import fwstore
from core.compat import hexlify
from core.ota import OtaError

VERSION = "0.1.0"


def running(rec):
    """The version running, from the firmware journal: an image on trial, the last one
    installed, or the flashed one (VERSION)."""
    if rec["state"] == "trial":
        return rec["new"]
    return rec["version"] or VERSION


def data_name(config):
    """The data dir's first segment in the firmware's filesystem (an image never writes
    there): "data" for the default "/data" below fw_dir "/"."""
    d = config.get("data_dir", "/data").rstrip("/")
    root = config.get("fw_dir", "/").rstrip("/") + "/"
    rel = d[len(root):] if d.startswith(root) else d.split("/")[-1]
    return rel.split("/")[0].lower() or "data"


def boot_image(app):
    """The firmware journal as main.py (the loader) left it before importing the app: it has
    already counted this boot and finished any rollback. Start the trial clock of a new
    image; say which image runs."""
    if not hasattr(app.board, "fw_fs"):
        return  # a board (or test double) without firmware files: no updates
    rec = app.fw
    if rec["state"] == "trial":
        secs = app.config.get("ota_trial_s", 3 * app.config.get("dur", 900))
        app._trial_until = app.uptime() + secs
        app.log.warn("ota", "running " + str(rec["new"]) + " on trial (boot "
                      + str(rec["boots"]) + "): rollback to " + str(rec["prev"])
                      + " unless the fog acks within " + str(secs) + " s")
    elif rec["rolled_back"]:
        app.log.warn("ota", "running " + app.version + " after rolling back "
                      + rec["rolled_back"] + ": " + rec["reason"])


def fw_chunk(app, frame):
    """One chunk of a firmware image; returns the bytes received so far. Never raises:
    a chunk that makes the image unusable is a refusal, counted and logged."""
    u = app.ota
    u.running = app.version
    sid, err = u.sid, u.error
    n = u.chunk(frame)
    if u.sid != sid:
        app.log.info("ota", "receiving image " + hexlify(u.sid or b""))
    if u.fields is not None and u.total and n - len(u.manifest) >= u.total:
        app.log.change("ota_rx", hexlify(u.sid), 20, "ota", "image " + hexlify(u.sid) + " "
                        + str(u.fields[2]) + " received (" + str(n) + " bytes)")
    if u.error is not None and (err is None or u.sid != sid):
        st = app.meter.stats
        st["ota_refused"] = st.get("ota_refused", 0) + 1
        app.log.warn("ota", "image " + hexlify(u.sid or b"") + " refused: " + str(u.error))
    return n


def install(app, digest):
    b = app.board
    if not hasattr(b, "fw_fs"):
        raise OtaError("unsupported", "this board keeps no firmware files")
    version, paths = app.ota.verify(digest, app.version, app.fw["state"] != "ok")
    try:
        app.fw = fwstore.install(b.fs(), b.fw_fs(), version, paths, app.version)
    except Exception as e:  # noqa: BLE001  the flash refused, or out of memory: put
        # back what was replaced (the journal must not stay "installing"), drop the rest
        app.fw = fwstore.rollback(b.fs(), b.fw_fs(), "failed: " + repr(e)[:120])
        app.ota.drop()
        raise OtaError("failed", "installing: " + repr(e)[:120])
    secs = app.config.get("ota_trial_s", 3 * app.config.get("dur", 900))
    app.reboot_requested = True
    return ("activating " + version + " (" + str(len(paths)) + " files), rebooting; "
            "rollback unless the fog acks within " + str(secs) + " s")


def trial(app, up):
    """An image on trial that has not reached the fog by its deadline is rolled back."""
    if app._trial_until is None or up < app._trial_until:
        return
    b = app.board
    secs = app.config.get("ota_trial_s", 3 * app.config.get("dur", 900))
    app.fw = fwstore.rollback(b.fs(), b.fw_fs(), "no_ack: no fog ack within " + str(secs)
                               + " s of the new image's boot")
    app._trial_until = None
    app.log.error("ota", "rolled back from " + app.fw["rolled_back"] + " to "
                   + running(app.fw) + ": " + app.fw["reason"])
    app.meter.prepare_reboot()
    b.reboot()
