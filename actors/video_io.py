"""Video bytes <-> uint8 frame arrays (PyAV, H.264).

Candidate videos travel through Ray Data as mp4 bytes, so encoding must be
lossless enough for scoring (CRF 17, visually lossless) and decoding must turn
any bad input into a one-line ``InputError`` instead of an FFmpeg traceback.

Odd sizes: H.264 with yuv420p needs even width and height, so ``encode_mp4``
pads an odd height/width by one replicated edge row/column. ``decode_video``
then returns the padded (even) size; diffusion models always produce even
sizes, so in practice the round trip keeps the shape.
"""

from __future__ import annotations

import io
import os
from fractions import Fraction

import av
import numpy as np

from actors.errors import InputError

_CRF = "17"


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise InputError(f"video frames: expected uint8 [F,H,W,3] with F >= 1, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise InputError(f"video frames: expected dtype uint8, got {frames.dtype}")
    return frames


def _pad_even(frames: np.ndarray) -> np.ndarray:
    _, h, w, _ = frames.shape
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frames


def encode_mp4(frames: np.ndarray, fps: int = 8) -> bytes:
    """Encode uint8 ``[F,H,W,3]`` RGB frames as H.264 (yuv420p) mp4 bytes.

    Odd heights/widths are padded by one replicated row/column (see module doc).
    """
    frames = _pad_even(_check_frames(frames))
    if fps <= 0:
        raise InputError(f"fps: must be positive, got {fps}")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(int(fps), 1))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": _CRF, "preset": "medium"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush delayed frames
            container.mux(packet)
    return buf.getvalue()


def _describe(data: bytes | str | os.PathLike) -> str:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return f"video bytes ({len(data)} bytes)"
    return str(data)


def decode_video(data: bytes | str | os.PathLike, name: str | None = None) -> np.ndarray:
    """Decode mp4 (or any FFmpeg-readable) bytes or a local path to uint8 ``[F,H,W,3]`` RGB.

    Raises ``InputError("<name>: not a decodable video (...)")`` for a missing
    file and for empty, corrupt or truncated data.
    """
    label = name or _describe(data)
    if isinstance(data, (bytes, bytearray, memoryview)):
        if len(data) == 0:
            raise InputError(f"{label}: not a decodable video (empty)")
        source: io.BytesIO | str = io.BytesIO(bytes(data))
    else:
        source = os.fspath(data)
        if not os.path.isfile(source):
            raise InputError(f"{label}: not a decodable video (no such file)")
    try:
        with av.open(source, mode="r") as container:
            if not container.streams.video:
                raise InputError(f"{label}: not a decodable video (no video stream)")
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except InputError:
        raise
    except (av.FFmpegError, UnicodeDecodeError, ValueError, EOFError) as err:
        reason = " ".join(str(getattr(err, "strerror", None) or err).split()) or type(err).__name__
        raise InputError(f"{label}: not a decodable video ({reason})") from None
    if not frames:
        raise InputError(f"{label}: not a decodable video (no frames)")
    return np.stack(frames)
