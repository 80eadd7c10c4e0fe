"""Whatever a render sends back, the host reads it within its budget: caps before work.

The hostile files are built here (test_checks renders scenes that send them back): a PNG
declaring 13000x13000 pixels in 160 KB, a real movie whose boxes declare 16 million frames,
one whose sample table repeats one keyframe thousands of times, report.json over its size,
its depth, or holding a 400-digit integer. Each is read in a process of its own, which
reports its wall time and how far its peak memory rose."""

import io
import json
import struct
import subprocess
import sys
import zlib

import pytest

from derivative_animator.render import checks, untrusted

SIZE = (854, 480)  # Manim's low quality


# --- hostile files ----------------------------------------------------------------------


def png_bomb(width: int = 13000, height: int = 13000) -> bytes:
    """A valid greyscale PNG of width x height zeros: ~160 KB for 13000x13000."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload))
        )

    squeeze = zlib.compressobj(9)
    row = b"\0" * (1 + width)  # the filter byte, then a byte a pixel
    body = b"".join(squeeze.compress(row) for _ in range(height)) + squeeze.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", body)
        + chunk(b"IEND", b"")
    )


def _boxes(data: bytes) -> list[tuple[bytes, bytes]]:
    at, found = 0, []
    while at + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, at)
        found.append((kind, data[at + 8 : at + size]))
        at += size
    return found


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def _rewrite(data: bytes, edit) -> bytes:
    """The MP4 with each leaf box inside moov replaced by edit(kind, payload) (None drops it)."""

    def walk(payload: bytes) -> bytes:
        parts = []
        for kind, body in _boxes(payload):
            body = (
                walk(body)
                if kind in (b"moov", b"trak", b"mdia", b"minf", b"stbl")
                else edit(kind, body)
            )
            if body is not None:
                parts.append(_box(kind, body))
        return b"".join(parts)

    return b"".join(
        _box(kind, walk(body)) if kind == b"moov" else _box(kind, body)
        for kind, body in _boxes(data)
    )


def movie(frames: int = 3, size: tuple[int, int] = SIZE, fps: int = 5) -> bytes:
    """A real H.264 MP4 as Manim writes one (PyAV, libx264): a gradient, a few KB a frame."""
    import av
    import numpy as np

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            image = np.zeros((size[1], size[0], 3), dtype=np.uint8)
            image[:, :, 0] = np.arange(size[0]) % 256
            image[:, :, 1] = (np.arange(size[1])[:, None] * 3 + i) % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def _sample_size(stsz: bytes) -> int:
    return struct.unpack_from(">I", stsz, 4)[0] or struct.unpack_from(">I", stsz, 12)[0]


def movie_declaring(frames: int) -> bytes:
    """A real one-frame movie whose stts and stsz declare `frames` frames (of the one's size)."""

    def edit(kind, body):
        if kind == b"stts":
            return struct.pack(">IIII", 0, 1, frames, struct.unpack_from(">I", body, 12)[0])
        if kind == b"stsz":
            return struct.pack(">III", 0, _sample_size(body), frames)
        return None if kind in (b"stss", b"ctts") else body

    return _rewrite(movie(1), edit)


def movie_repeating_a_keyframe(repeats: int) -> bytes:
    """A real one-frame movie whose sample table plays its keyframe `repeats` times: every
    sample a chunk of its own at the same offset. A few KB, and a decode per sample."""
    data = movie(1)
    leaves = {}
    _rewrite(data, lambda kind, body: leaves.setdefault(kind, body))
    size, offset = _sample_size(leaves[b"stsz"]), struct.unpack_from(">I", leaves[b"stco"], 8)[0]
    delta = struct.unpack_from(">I", leaves[b"stts"], 12)[0]
    tables = {
        b"stsz": struct.pack(">III", 0, size, repeats),
        b"stco": struct.pack(">II", 0, repeats) + struct.pack(">I", offset) * repeats,
        b"stsc": struct.pack(">IIIII", 0, 1, 1, 1, 1),
        b"stts": struct.pack(">IIII", 0, 1, repeats, delta),
    }

    def edit(kind, body):
        if kind in (b"stss", b"ctts", b"edts"):
            return None
        return tables.get(kind, body)

    return _rewrite(data, edit)


def movie_lasting(seconds: int) -> bytes:
    """A real movie whose mvhd declares `seconds`."""

    def edit(kind, body):
        if kind == b"mvhd" and body[0] == 0:
            timescale = struct.unpack_from(">I", body, 12)[0]
            return body[:16] + struct.pack(">I", seconds * timescale) + body[20:]
        return body

    return _rewrite(movie(1), edit)


# --- reading them in a process of its own ----------------------------------------------

HOST_WORK = """
import json, resource, sys, time
import av, numpy, PIL.Image, PIL.PngImagePlugin  # what the readers import, before the measure
from derivative_animator.render import checks, untrusted
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
answer = eval(sys.argv[2])
seconds = time.perf_counter() - start
extra_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"seconds": seconds, "extra_mb": extra_mb, "answer": repr(answer)}))
"""


def host_work(tmp_path, data: bytes, call: str) -> dict:
    """`call` (on `data`) in a fresh interpreter: its answer, wall time and peak memory rise."""
    path = tmp_path / "untrusted.bin"
    path.write_bytes(data)
    done = subprocess.run(
        [sys.executable, "-c", HOST_WORK, str(path), call],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def within_budget(work: dict, seconds: float = 2.0) -> None:
    assert work["seconds"] < seconds and work["extra_mb"] < 100, work


# --- the last frame ------------------------------------------------------------------------


def test_a_png_bomb_is_refused_from_its_header_before_a_pixel_is_decoded(tmp_path):
    """13000x13000 in 160 KB: decoded it took 3.5 GB of host memory."""
    bomb = png_bomb()
    assert len(bomb) < 200_000
    work = host_work(tmp_path, bomb, "untrusted.read_frame(data, (854, 480))")
    within_budget(work)
    assert "the last frame is 13000x13000, not the 854x480 asked" in work["answer"]
    work = host_work(tmp_path, bomb, "checks.frame_has_content(data)")  # no size asked: 4K at most
    within_budget(work)
    assert work["answer"] == "False"


def test_a_frame_of_the_asked_size_is_read():
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", SIZE, (10, 20, 30)).save(buffer, "PNG")
    pixels, problem = untrusted.read_frame(buffer.getvalue(), SIZE)
    assert problem is None and pixels.shape == (480, 854, 3) and pixels.dtype.name == "uint8"
    assert (
        untrusted.read_frame(buffer.getvalue(), (1280, 720))[1]
        == "the last frame is 854x480, not the 1280x720 asked"
    )
    assert "over its" in untrusted.read_frame(b"\0" * (untrusted.MAX_FRAME_BYTES + 1), SIZE)[1]
    assert untrusted.read_frame(b"GIF89a" + b"\0" * 100, SIZE)[1].startswith(
        "the last frame is not a PNG"
    )


# --- the movie ----------------------------------------------------------------------------


def test_a_real_movie_is_read_to_its_last_frame():
    assert untrusted.read_movie(movie(3), SIZE, fps=5) == (3, None)
    assert untrusted.read_movie(movie(3), (1280, 720), fps=5) == (
        0,
        "the movie is 854x480, not the 1280x720 asked",
    )
    assert untrusted.read_movie(None, SIZE) == (0, "the scene exited without rendering a movie")
    assert untrusted.read_movie(b"\0" * 1000, SIZE)[1].startswith("the movie is not a")


def test_a_movie_declaring_16_million_frames_is_refused_before_a_demuxer_opens_it(tmp_path):
    """The demuxer builds an index entry for every declared sample when it opens a movie."""
    bomb = movie_declaring(16_000_000)
    assert len(bomb) < 100_000
    work = host_work(
        tmp_path, bomb, "untrusted.read_movie(data, (854, 480), 5, untrusted.Budget())"
    )
    within_budget(work)
    assert "declares 16,000,000 frames; at most 1,501 are read" in work["answer"], work
    assert (
        "at most 20,000" in untrusted.read_movie(bomb, SIZE)[1]
    )  # no frame rate asked: the overall cap


def test_a_movie_declaring_hours_is_refused():
    assert untrusted.read_movie(movie_lasting(100_000), SIZE, fps=5)[1] == (
        f"the movie declares 100,000 s; at most {untrusted.MAX_MOVIE_SECONDS} s are read"
    )


def test_a_movie_repeating_one_keyframe_is_refused_by_its_count_or_cut_at_the_budget(tmp_path):
    """A few KB whose sample table plays one keyframe 5,000 times took 44 s to decode on the
    host: over the frames the asked rate allows it is refused unread; under that count,
    decoding stops when the host's time for the reply is spent."""
    bomb = movie_repeating_a_keyframe(5000)
    assert len(bomb) < 100_000
    work = host_work(
        tmp_path, bomb, "untrusted.read_movie(data, (854, 480), 5, untrusted.Budget())"
    )
    within_budget(work)
    assert "declares 5,000 frames; at most 1,501 are read" in work["answer"], work
    work = host_work(
        tmp_path, bomb, "untrusted.read_movie(data, (854, 480), None, untrusted.Budget(1.0))"
    )
    within_budget(work, seconds=2.0)
    assert "took over the host's 1 s" in work["answer"], work


# --- report.json ------------------------------------------------------------------------


def test_a_report_over_its_size_is_refused_unparsed(tmp_path):
    """63 MB of report.json took 1.8 GB of host memory to parse."""
    huge = json.dumps({"curves": [{"x": [0.5] * 500_000, "y": [0.5] * 500_000}]}).encode()
    assert len(huge) > untrusted.MAX_REPORT_BYTES
    work = host_work(tmp_path, huge, "untrusted.read_report(data)")
    within_budget(work)
    assert "over its 2.0 MB cap" in work["answer"]


def test_a_report_nested_deeper_than_its_cap_is_refused_before_parsing(tmp_path):
    deep = b'{"curves": ' + b"[" * 500_000 + b"]" * 500_000 + b"}"
    assert len(deep) < untrusted.MAX_REPORT_BYTES
    work = host_work(tmp_path, deep, "untrusted.read_report(data)")
    within_budget(work)
    assert "report.json nests 500001 deep, over its 8 cap" in work["answer"]
    # brackets in strings, escaped quotes and backslashes
    text = b'{"a": "[[[\\"]]]", "c": "\\\\", "b": [[1]]}'
    assert json.loads(text)["a"] == '[[["]]]' and untrusted.json_depth(text) == 3


def test_a_400_digit_integer_in_the_report_is_a_reason_not_an_overflow():
    """It ended `derivanim check` with an OverflowError traceback."""
    import sympy as sp

    number = "9" * 400
    data = (
        f'{{"curves": [{{"x": [{number}, 1, 2], "y": [1, {number}, 4]}}], "layout": [{number}]}}'
    ).encode()
    report, problem = untrusted.read_report(data)
    assert problem is None and report["curves"][0]["x"][0] == float("inf")
    curves = checks._reported_curves(report)
    error = checks.check_drawn(curves, sp.Symbol("x") ** 2)
    assert "neither f nor f'" in error and "\n" not in error
    assert checks._reported_layout(report) == ["inf"]


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"not json", "does not parse"),
        (b"[1, 2]", "not an object"),
        (b'{"curves": NaN}', None),
        (None, "no report.json"),
    ],
)
def test_a_report_that_is_not_one_is_a_reason(data, reason):
    report, problem = untrusted.read_report(data)
    assert (problem is None) if reason is None else (reason in problem and "\n" not in problem)


def test_the_budget_is_stated_once():
    assert untrusted.HOST_SECONDS == 10 and untrusted.HOST_MEMORY_MB == 512
    caps = untrusted.MAX_MOVIE_BYTES + untrusted.MAX_FRAME_BYTES + untrusted.MAX_REPORT_BYTES
    assert untrusted.MAX_REPLY_FILES_BYTES == caps
    # a reply at every cap, once in the read buffer and once as files, and a 4K frame at 16 bits
    assert (
        2 * caps + untrusted.MAX_HEADER_BYTES + 6 * untrusted.MAX_PIXELS * 2
        < untrusted.HOST_MEMORY_MB << 20
    )
    assert checks.COLLECT == {
        "movie.mp4": untrusted.MAX_MOVIE_BYTES,
        "last_frame.png": untrusted.MAX_FRAME_BYTES,
        "report.json": untrusted.MAX_REPORT_BYTES,
    }
