"""Damage a file the way a bad disk, a bad copy or a stray write does, for the integrity tests."""

WHERE = ["first KiB", "middle", "end"]


def flip(path, where: str, count: int = 200) -> None:
    """Invert `count` bytes of the file: just past its first KiB, in its middle, or in its last
    bytes (a zip's central directory)."""
    with open(path, "rb") as f:
        data = bytearray(f.read())
    start = {"first KiB": 1024, "middle": len(data) // 2, "end": len(data) - count}[where]
    assert start >= 1024 and start + count <= len(data), (where, len(data))
    for i in range(start, start + count):
        data[i] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bytes(data))
