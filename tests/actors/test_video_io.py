import numpy as np
import pytest

from actors.errors import InputError
from actors.video_io import decode_video, encode_mp4
from benchmarks.miniature_lab.world import render_clip


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return render_clip(3, "orbit", num_frames=9, size=64).frames


def test_round_trip_keeps_shape_and_content(clip, tmp_path):
    data = encode_mp4(clip, fps=8)
    assert data[4:8] == b"ftyp"  # an mp4 container
    out = decode_video(data)
    assert out.dtype == np.uint8 and out.shape == clip.shape
    mse = ((out.astype(np.float64) - clip) ** 2).mean()
    assert 10 * np.log10(255**2 / mse) > 30  # CRF 17; yuv420p halves chroma resolution
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    np.testing.assert_array_equal(decode_video(str(path)), out)


def test_odd_sizes_are_padded_to_even(clip):
    out = decode_video(encode_mp4(clip[:, :63, :61]))
    assert out.shape == (clip.shape[0], 64, 62, 3)


@pytest.mark.parametrize(
    "make_input",
    [
        lambda data: b"",
        lambda data: data[: len(data) // 2],
        lambda data: data[:64],
        lambda data: b"not a video at all" * 20,
    ],
    ids=["empty", "truncated-half", "truncated-header", "garbage"],
)
def test_bad_bytes_raise_one_line_input_error(clip, make_input):
    bad = make_input(encode_mp4(clip))
    with pytest.raises(InputError) as err:
        decode_video(bad)
    message = str(err.value)
    assert "\n" not in message and "not a decodable video" in message
    assert f"({len(bad)} bytes)" in message


def test_missing_file_and_custom_name(tmp_path):
    with pytest.raises(InputError, match="nope.mp4: not a decodable video"):
        decode_video(str(tmp_path / "nope.mp4"))
    with pytest.raises(InputError, match="^candidate 7: not a decodable video"):
        decode_video(b"\x00" * 100, name="candidate 7")


def test_encode_rejects_wrong_frames():
    with pytest.raises(InputError, match="uint8"):
        encode_mp4(np.zeros((2, 16, 16, 3), dtype=np.float32))
    with pytest.raises(InputError, match=r"\[F,H,W,3\]"):
        encode_mp4(np.zeros((16, 16, 3), dtype=np.uint8))
