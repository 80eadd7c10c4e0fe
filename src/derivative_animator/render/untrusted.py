"""Everything the sandbox sends back is hostile on the host: the budget, and the readers that
keep to it.

A job controls every byte of its reply: the movie, the last frame, report.json, its output.
The host reads them within one fixed budget per reply, checking each cap *before* the work
it bounds: a cap on the bytes that come back (the sandbox server refuses a file over its
cap; the host refuses a reply over their sum), on report.json's size and nesting depth, on
the PNG's dimensions (read from its header, before a pixel is decoded), on the movie's
declared frame count, duration and size (read from its boxes, before the demuxer builds
its sample index), and on the wall time of all of it together (`Budget`). Every reader
answers with a one-line reason when something is over a cap or does not parse; none raises.

Sized so that a reply at every cap keeps the host under HOST_MEMORY_MB: the reply buffer
(MAX_REPLY_BYTES), one copy of the movie for the demuxer, one decoded frame, the last
frame's pixels at 16 bits per channel, the parsed report.
"""

from __future__ import annotations

import io
import json
import struct
import time
from dataclasses import dataclass

# --- the budget: one place -------------------------------------------------------------
HOST_SECONDS = 10.0  # the host's wall time on one reply: report, frame and movie together
HOST_MEMORY_MB = 512  # what the caps below keep the host's work on one reply under
MAX_MOVIE_BYTES = (
    64 << 20
)  # movie.mp4 (a 480p scene at 5 fps: ~100 KB; 4K at 60 fps for a minute: ~30 MB)
MAX_FRAME_BYTES = 8 << 20  # last_frame.png (4K: ~1 MB)
MAX_REPORT_BYTES = 2 << 20  # report.json (20 curves of 200 points: ~150 KB)
MAX_REPORT_DEPTH = 8  # {"curves": [{"x": [...]}]} is 4 deep
MAX_FILE_BYTES = MAX_MOVIE_BYTES  # any other file a job sends back
MAX_HEADER_BYTES = 1 << 20  # the reply's JSON line, beside what its output caps allow (sandbox)
MAX_REPLY_FILES_BYTES = (
    MAX_MOVIE_BYTES + MAX_FRAME_BYTES + MAX_REPORT_BYTES
)  # all files of one reply
MAX_MOVIE_SECONDS = 300  # declared duration (a derivative scene: 10 to 40 s)
MAX_MOVIE_FRAMES = 20_000  # declared frames, whatever the frame rate
MAX_MOVIE_BOXES = 10_000  # MP4 boxes walked before giving up
MOVIE_CODECS = ("h264",)  # what Manim writes into an .mp4; no other decoder sees a job's bytes
MAX_PIXELS = 3840 * 2160  # a frame of unknown asked size may not be bigger than 4K


class OverBudget(Exception):
    """The host's time on one reply ran out."""


@dataclass
class Budget:
    """The host's wall time on one reply; `check` raises OverBudget once it is spent."""

    seconds: float = HOST_SECONDS

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def check(self, doing: str) -> None:
        if self.left() <= 0:
            raise OverBudget(f"{doing} took over the host's {self.seconds:g} s for one render")


def size_text(n: int) -> str:
    return f"{n / (1 << 20):.1f} MB" if n >= 1 << 20 else f"{n:,} bytes"


# --- report.json -------------------------------------------------------------------------


def json_depth(data: bytes) -> int:
    """How deep the brackets of a JSON text nest, those inside strings left out: linear, in
    numpy (a quote is a string's end unless an odd run of backslashes comes before it)."""
    import numpy as np

    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size == 0:
        return 0
    at = np.arange(raw.size, dtype=np.int32)  # read only after the size cap: it fits
    backslash = raw == ord("\\")
    last_other = np.maximum.accumulate(
        np.where(backslash, -1, at)
    )  # the last non-backslash at or before i
    run_before = np.empty(raw.size, dtype=np.int32)
    run_before[0] = 0
    run_before[1:] = at[:-1] - last_other[:-1]  # backslashes just before i
    quote = (raw == ord('"')) & (run_before % 2 == 0)
    inside = (np.cumsum(quote) - quote) % 2 == 1  # after an opening quote, before its close
    opens = ((raw == ord("[")) | (raw == ord("{"))) & ~inside
    closes = ((raw == ord("]")) | (raw == ord("}"))) & ~inside
    return int(np.cumsum(opens.astype(np.int32) - closes, dtype=np.int32).max(initial=0))


def _number(text: str) -> float:
    return float(
        text
    )  # a 400-digit integer is a float (inf when too big), never an int to overflow later


def read_report(data: bytes | None, budget: Budget | None = None) -> tuple[dict | None, str | None]:
    """(report, None), or (None, why it cannot be read) in one line."""
    if data is None:
        return None, "the render sent back no report.json"
    if len(data) > MAX_REPORT_BYTES:
        return (
            None,
            f"report.json is {size_text(len(data))}, over its {size_text(MAX_REPORT_BYTES)} cap",
        )
    try:
        depth = json_depth(data)
        if depth > MAX_REPORT_DEPTH:
            return None, f"report.json nests {depth} deep, over its {MAX_REPORT_DEPTH} cap"
        report = json.loads(data, parse_int=_number, parse_constant=_number)
        if budget is not None:
            budget.check("reading report.json")
    except OverBudget as over:
        return None, str(over)
    except Exception as err:  # noqa: BLE001 - untrusted bytes: whatever they are, a reason
        return None, f"report.json does not parse ({type(err).__name__})"
    if not isinstance(report, dict):
        return None, "report.json is not an object"
    return report, None


# --- the last frame ------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_frame(data: bytes | None, size: tuple[int, int] | None, budget: Budget | None = None):
    """(RGB pixels as a uint8 array, None), or (None, why not): a PNG whose header says
    `size` (at most MAX_PIXELS when no size is asked), decoded only after that is known."""
    if not data:
        return None, "the render sent back no last frame"
    if len(data) > MAX_FRAME_BYTES:
        return (
            None,
            f"the last frame is {size_text(len(data))}, over its {size_text(MAX_FRAME_BYTES)} cap",
        )
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR" or len(data) < 24:
        return None, "the last frame is not a PNG"
    width, height = struct.unpack_from(
        ">II", data, 16
    )  # the header, before any decoder sees the file
    if (size is not None and (width, height) != tuple(size)) or width * height > MAX_PIXELS:
        asked = f", not the {size[0]}x{size[1]} asked" if size is not None else ""
        return None, f"the last frame is {width}x{height}{asked}"
    import numpy as np
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            if image.size != (width, height) or getattr(image, "n_frames", 1) != 1:
                return None, "the last frame is not one still PNG of its header's size"
            if budget is not None:
                budget.check("reading the last frame")
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except OverBudget as over:
        return None, str(over)
    except Exception as err:  # noqa: BLE001 - untrusted bytes: not a picture
        return None, f"the last frame is not a PNG that decodes ({type(err).__name__})"
    return pixels, None


# --- the movie --------------------------------------------------------------------------

_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf", b"mvex"}


@dataclass
class MovieFacts:
    """What an MP4's boxes declare, read without a demuxer."""

    tracks: int = 0
    samples: int = 0  # the most samples any track declares (stsz or stz2; stts)
    seconds: float = 0.0  # the longest duration declared (mvhd, mdhd)
    fragments: int = 0  # moof boxes: a fragmented movie (Manim writes none)
    moovs: int = 0


def movie_facts(data: bytes) -> MovieFacts:
    """Walk the MP4 box tree (iteratively, at most MAX_MOVIE_BOXES) for what it declares;
    raises ValueError on a box that does not fit its parent."""
    facts = MovieFacts()
    stack = [(0, len(data))]
    boxes = 0
    while stack:
        start, end = stack.pop()
        at = start
        while at + 8 <= end:
            boxes += 1
            if boxes > MAX_MOVIE_BOXES:
                raise ValueError(f"over {MAX_MOVIE_BOXES:,} boxes")
            size, kind = struct.unpack_from(">I4s", data, at)
            header = 8
            if size == 1:
                if at + 16 > end:
                    raise ValueError("a box's size does not fit")
                size, header = struct.unpack_from(">Q", data, at + 8)[0], 16
            elif size == 0:
                size = end - at
            if size < header or at + size > end:
                raise ValueError(f"box {kind!r} does not fit its parent")
            body, body_end = at + header, at + size
            if kind in _CONTAINERS:
                stack.append((body, body_end))
            _read_box(kind, data, body, body_end, facts)
            at += size
    return facts


def _read_box(kind: bytes, data: bytes, body: int, end: int, facts: MovieFacts) -> None:
    def field(offset: int, fmt: str) -> tuple:
        if body + offset + struct.calcsize(fmt) > end:
            raise ValueError(f"box {kind!r} is too short")
        return struct.unpack_from(fmt, data, body + offset)

    if kind == b"moov":
        facts.moovs += 1
    elif kind == b"moof":
        facts.fragments += 1
    elif kind == b"trak":
        facts.tracks += 1
    elif kind in (b"mvhd", b"mdhd"):  # version 1: 64-bit times
        version = field(0, ">B")[0]
        timescale, duration = field(20, ">IQ") if version == 1 else field(12, ">II")
        if timescale == 0:
            raise ValueError(f"box {kind!r} has no timescale")
        facts.seconds = max(facts.seconds, duration / timescale)
    elif kind in (b"stsz", b"stz2"):
        facts.samples = max(facts.samples, field(8, ">I")[0])
    elif kind == b"stts":
        entries = field(4, ">I")[0]
        if 8 + 8 * entries > end - body:
            raise ValueError("box 'stts' is too short")
        counts = struct.unpack_from(f">{2 * entries}I", data, body + 8)[::2] if entries else ()
        facts.samples = max(facts.samples, sum(counts))


MAX_KEPT_FRAMES = 8  # frames kept as pixels for the checks that look at them (4K: 25 MB each)
THUMBNAIL = (64, 36)  # what "the frame changed" is judged on
CHANGE_LEVEL = 16  # grey levels a thumbnail's pixel must move by for the frame to count as changed


@dataclass
class MovieSeen:
    """What the host saw of a movie: its frames, how many differ from the one before, and
    the pixels (RGB uint8) of the frames it was asked to keep (-1: the last)."""

    frames: int = 0
    changes: int = 0
    kept: dict | None = None


def read_movie(
    data: bytes | None,
    size: tuple[int, int] | None,
    fps: float | None = None,
    budget: Budget | None = None,
) -> tuple[int, str | None]:
    """(frames decoded, None) for an MP4 of `size` whose every frame decodes, or (0, why not)
    in one line (`watch_movie`, keeping no pixels)."""
    seen, problem = watch_movie(data, size, fps, budget)
    return (seen.frames, None) if seen is not None else (0, problem)


def watch_movie(
    data: bytes | None,
    size: tuple[int, int] | None,
    fps: float | None = None,
    budget: Budget | None = None,
    keep=(),
) -> tuple[MovieSeen | None, str | None]:
    """(what was seen, None) for an MP4 of `size` whose every frame decodes, or (None, why
    not) in one line. What its boxes declare is checked before a demuxer opens it; decoding
    stops at the budget's end. `keep`: frame numbers whose pixels come back (at most
    MAX_KEPT_FRAMES; -1 is the last frame)."""
    if not data:
        return None, "the scene exited without rendering a movie"
    if len(data) > MAX_MOVIE_BYTES:
        return (
            None,
            f"the movie is {size_text(len(data))}, over its {size_text(MAX_MOVIE_BYTES)} cap",
        )
    most_frames = (
        MAX_MOVIE_FRAMES if fps is None else min(MAX_MOVIE_FRAMES, int(fps * MAX_MOVIE_SECONDS) + 1)
    )
    try:
        facts = movie_facts(data)
    except (ValueError, struct.error) as err:
        return None, f"the movie is not an MP4 ({err})"
    if facts.moovs != 1 or facts.fragments or facts.tracks < 1:
        return None, "the movie is not a plain MP4 (one moov box, no fragments, a track)"
    if facts.samples > most_frames:
        return (
            None,
            f"the movie declares {facts.samples:,} frames; at most {most_frames:,} are read",
        )
    if facts.seconds > MAX_MOVIE_SECONDS:
        return (
            None,
            f"the movie declares {facts.seconds:,.0f} s; at most {MAX_MOVIE_SECONDS} s are read",
        )
    import av
    import numpy as np

    wanted = set(sorted(int(k) for k in keep)[:MAX_KEPT_FRAMES])
    seen = MovieSeen(kept={})
    previous = last = None
    try:
        with av.open(io.BytesIO(data), format="mp4") as container:  # the MP4 demuxer: no probing
            if not container.streams.video:
                return None, "the movie has no video stream"
            stream = container.streams.video[0]
            codec = stream.codec_context
            if codec.name not in MOVIE_CODECS:
                return None, f"the movie's codec is {codec.name}, not {' or '.join(MOVIE_CODECS)}"
            if size is not None and (codec.width, codec.height) != tuple(size):
                return (
                    None,
                    f"the movie is {codec.width}x{codec.height}, not the {size[0]}x{size[1]} asked",
                )
            if stream.frames > most_frames:
                return (
                    None,
                    f"the movie declares {stream.frames:,} frames; "
                    f"at most {most_frames:,} are read",
                )
            for frame in container.decode(stream):
                if size is not None and (frame.width, frame.height) != tuple(size):
                    return (
                        None,
                        f"a frame of the movie is {frame.width}x{frame.height}, "
                        f"not {size[0]}x{size[1]}",
                    )
                if seen.frames in wanted:
                    seen.kept[seen.frames] = frame.to_ndarray(format="rgb24")
                thumbnail = frame.reformat(
                    width=THUMBNAIL[0], height=THUMBNAIL[1], format="gray"
                ).to_ndarray()
                if (
                    previous is not None
                    and np.abs(thumbnail.astype(np.int16) - previous).max() > CHANGE_LEVEL
                ):
                    seen.changes += 1
                previous, last = thumbnail.astype(np.int16), frame
                seen.frames += 1
                if seen.frames > most_frames:
                    return None, f"the movie holds over {most_frames:,} frames"
                if budget is not None:
                    budget.check(f"decoding the movie ({seen.frames:,} frames so far)")
            if -1 in wanted and last is not None:
                seen.kept[-1] = last.to_ndarray(format="rgb24")
    except OverBudget as over:
        return None, str(over)
    except Exception as err:  # noqa: BLE001 - untrusted bytes: not a movie
        return None, f"the movie does not decode ({type(err).__name__})"
    if seen.frames == 0:
        return None, "the movie holds no frame"
    return seen, None
