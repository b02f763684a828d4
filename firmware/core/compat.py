# Small shims so core runs unchanged on CPython and MicroPython.
try:
    from micropython import const  # noqa: F401
except ImportError:  # CPython

    def const(x):
        return x


def hexlify(b):
    # bytes.hex() exists on both, but MicroPython builds may drop it; binascii is always there
    import binascii

    return binascii.hexlify(b).decode()


def unhexlify(s):
    import binascii

    return binascii.unhexlify(s)
