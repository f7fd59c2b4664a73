"""Image message <-> numpy conversion (fleetloop_core.ros_convert): every encoding, step padding, endianness."""

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from fleetloop_core.errors import InputError
from fleetloop_core.ros_convert import (
    ENCODINGS,
    UnsupportedEncoding,
    array_to_image,
    array_to_rgb8,
    bytes_per_pixel,
    compressed_to_rgb8,
    image_to_array,
    image_to_rgb8,
    msg_to_rgb8,
    rgb8_to_compressed,
    rgb8_to_semi_planar,
)

RNG = np.random.default_rng(7)
PLAIN = {  # encoding -> (channels, dtype)
    "mono8": (1, np.uint8),
    "mono16": (1, np.uint16),
    "rgb8": (3, np.uint8),
    "bgr8": (3, np.uint8),
    "rgba8": (4, np.uint8),
    "bgra8": (4, np.uint8),
    "rgb16": (3, np.uint16),
    "bgr16": (3, np.uint16),
    "rgba16": (4, np.uint16),
    "bgra16": (4, np.uint16),
    "8UC1": (1, np.uint8),
    "8UC3": (3, np.uint8),
    "8UC4": (4, np.uint8),
    "16UC1": (1, np.uint16),
    "32FC1": (1, np.float32),
    "bayer_rggb8": (1, np.uint8),
    "bayer_gbrg16": (1, np.uint16),
}


def _pixels(encoding, height=5, width=7):
    channels, dtype = PLAIN[encoding]
    shape = (height, width) if channels == 1 else (height, width, channels)
    if dtype == np.float32:
        return RNG.random(shape, dtype=np.float32)
    return RNG.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype, endpoint=True)


@pytest.mark.parametrize("encoding", sorted(PLAIN))
@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("padding", [0, 3])
def test_round_trip_every_plain_encoding(encoding, bigendian, padding):
    pixels = _pixels(encoding)
    fields = array_to_image(pixels, encoding, is_bigendian=bigendian, row_padding=padding)
    assert fields.step == pixels.shape[1] * bytes_per_pixel(encoding) + padding
    assert len(fields.data) == fields.step * fields.height
    back = image_to_array(fields.height, fields.width, fields.encoding, fields.is_bigendian, fields.step, fields.data)
    assert back.dtype.isnative and back.dtype == pixels.dtype
    np.testing.assert_array_equal(back, pixels)


def test_padding_bytes_never_leak_into_pixels():
    pixels = np.zeros((4, 3, 3), np.uint8)
    fields = array_to_image(pixels, "rgb8", row_padding=5)
    data = bytearray(fields.data)
    for row in range(4):  # fill only the padding with 255
        start = row * fields.step + 9
        data[start : start + 5] = b"\xff" * 5
    assert image_to_rgb8(4, 3, "rgb8", 0, fields.step, bytes(data)).max() == 0


def test_big_endian_16_bit_reads_the_right_values():
    data = bytes([0x01, 0x02, 0xFF, 0x00])  # two big-endian mono16 pixels: 0x0102, 0xFF00
    assert image_to_array(1, 2, "mono16", True, 4, data).tolist() == [[0x0102, 0xFF00]]
    assert image_to_array(1, 2, "mono16", False, 4, data).tolist() == [[0x0201, 0x00FF]]


def test_colour_orders_come_out_rgb():
    rgb = RNG.integers(0, 256, size=(6, 4, 3), dtype=np.uint8)
    alpha = np.full((6, 4, 1), 200, np.uint8)
    cases = {
        "rgb8": rgb,
        "bgr8": rgb[..., ::-1],
        "rgba8": np.concatenate([rgb, alpha], 2),
        "bgra8": np.concatenate([rgb[..., ::-1], alpha], 2),
        "8UC3": rgb[..., ::-1],
    }
    for encoding, pixels in cases.items():
        fields = array_to_image(np.ascontiguousarray(pixels), encoding, row_padding=2)
        out = image_to_rgb8(fields.height, fields.width, encoding, 0, fields.step, fields.data)
        np.testing.assert_array_equal(out, rgb, err_msg=encoding)
        assert out.flags.c_contiguous and out.dtype == np.uint8


def test_grey_and_sixteen_bit_scale_to_eight_bit_rgb():
    mono = np.array([[0, 65535, 257 * 100]], np.uint16)
    out = array_to_rgb8(mono, "mono16")
    assert out.shape == (1, 3, 3)
    assert out[0, :, 0].tolist() == [0, 255, 100] and (out[..., 0] == out[..., 2]).all()
    rgb16 = np.array([[[65535, 0, 257 * 10]]], np.uint16)
    assert array_to_rgb8(rgb16, "rgb16")[0, 0].tolist() == [255, 0, 10]
    assert array_to_rgb8(rgb16, "bgr16")[0, 0].tolist() == [10, 0, 255]
    depth = np.array([[0.0, 1.0, 0.5, np.nan]], np.float32)
    assert array_to_rgb8(depth, "32FC1")[0, :, 1].tolist() == [0, 255, 128, 0]


def _mosaic(colour, pattern, height=8, width=8):
    """Return a Bayer mosaic of a flat RGB colour; ``pattern`` names the first 2x2 block, e.g. rggb."""
    index = {"r": 0, "g": 1, "b": 2}
    mosaic = np.zeros((height, width), np.uint8)
    for dy in range(2):
        for dx in range(2):
            mosaic[dy::2, dx::2] = colour[index[pattern[2 * dy + dx]]]
    return mosaic


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_patterns_demosaic_to_the_right_colour(pattern):
    colour = (200, 90, 30)
    out = image_to_rgb8(8, 8, f"bayer_{pattern}8", 0, 8, _mosaic(colour, pattern).tobytes())
    centre = out[2:6, 2:6].reshape(-1, 3)
    assert np.abs(centre.astype(int) - np.array(colour)).max() <= 2, (pattern, centre[0])
    sixteen = _mosaic(colour, pattern).astype(np.uint16) * 257
    fields = array_to_image(sixteen, f"bayer_{pattern}16", is_bigendian=True)
    out16 = image_to_rgb8(8, 8, fields.encoding, 1, fields.step, fields.data)
    assert np.abs(out16[2:6, 2:6].reshape(-1, 3).astype(int) - np.array(colour)).max() <= 2


def test_packed_yuv422_grey():
    # mid grey in both byte orders: Y = 128 everywhere, U = V = 128
    uyvy = np.full((2, 4, 2), 128, np.uint8)
    for encoding in ("yuv422", "yuv422_yuy2"):
        fields = array_to_image(uyvy, encoding)
        out = image_to_rgb8(2, 4, encoding, 0, fields.step, fields.data)
        assert out.shape == (2, 4, 3) and np.abs(out.astype(int) - 128).max() <= 2


def _smooth_rgb(height=48, width=64):
    rows, cols = np.mgrid[0:height, 0:width]
    rgb = np.dstack([cols * 4 % 256, rows * 5 % 256, (cols + rows) * 2 % 256]).astype(np.uint8)
    return cv2.GaussianBlur(rgb, (7, 7), 2)


@pytest.mark.parametrize("encoding", ["nv12", "nv21", "nv24"])
@pytest.mark.parametrize("padding", [0, 4])
def test_semi_planar_yuv_round_trip_with_row_padding(encoding, padding):
    rgb = _smooth_rgb()
    planes = rgb8_to_semi_planar(rgb, encoding)
    fields = array_to_image(planes, encoding, row_padding=padding)
    chroma_rows, chroma_step = (24, fields.step) if encoding != "nv24" else (48, 2 * fields.step)
    assert (fields.height, fields.width, fields.step) == (48, 64, 64 + padding)
    assert len(fields.data) == fields.step * 48 + chroma_rows * chroma_step
    back = image_to_array(fields.height, fields.width, encoding, 0, fields.step, fields.data)
    np.testing.assert_array_equal(back, planes)
    out = image_to_rgb8(fields.height, fields.width, encoding, 0, fields.step, fields.data)
    error = np.abs(out.astype(int) - rgb)
    assert out.shape == rgb.shape and error.mean() < 1.5 and error.max() <= 6, (error.mean(), error.max())


def test_semi_planar_reads_bt601_limited_range_and_its_chroma_order():
    # Y 16 is black and 235 white in BT.601's video range (chroma neutral at 128); a red frame written as
    # nv21 (V before U) reads red as nv21 and blue-ish when its bytes are taken for nv12
    grey = np.concatenate([np.array([[16, 16], [235, 235]], np.uint8), np.full((1, 2), 128, np.uint8)])
    assert image_to_rgb8(2, 2, "nv12", 0, 2, grey.tobytes())[:, 0].tolist() == [[0, 0, 0], [255, 255, 255]]
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 200
    data = array_to_image(rgb8_to_semi_planar(red, "nv21"), "nv21").data
    as_nv21, as_nv12 = (image_to_rgb8(4, 4, encoding, 0, 4, data)[1, 1].astype(int) for encoding in ("nv21", "nv12"))
    assert np.abs(as_nv21 - [200, 0, 0]).max() <= 3 and as_nv12[2] > as_nv12[0]


def test_semi_planar_geometry_errors_name_the_sizes():
    planes = rgb8_to_semi_planar(_smooth_rgb(8, 6), "nv12")
    data = array_to_image(planes, "nv12").data
    # image_encodings.hpp counts nv12 as 2 channels: step 2 x width over tightly packed planes reads as packed
    np.testing.assert_array_equal(image_to_array(8, 6, "nv12", 0, 12, data), planes)
    with pytest.raises(InputError, match=r"data has 71 bytes, needs 72"):
        image_to_array(8, 6, "nv12", 0, 6, data[:-1])
    with pytest.raises(InputError, match="even width and height"):
        image_to_array(7, 6, "nv12", 0, 6, data)
    with pytest.raises(InputError, match="step 5 is smaller than a row"):
        image_to_array(8, 6, "nv24", 0, 5, data)
    with pytest.raises(InputError, match="not the Y and chroma rows"):
        array_to_image(np.zeros((5, 6), np.uint8), "nv12")


def test_unsupported_encoding_names_it_and_the_known_ones():
    with pytest.raises(UnsupportedEncoding) as info:
        image_to_rgb8(2, 2, "64FC1", 0, 16, b"\0" * 32)
    assert "'64FC1'" in str(info.value) and "rgb8" in str(info.value) and "bayer_rggb8" in str(info.value)
    assert isinstance(info.value, InputError)
    assert set(PLAIN) <= set(ENCODINGS)


def test_bad_geometry_is_an_input_error_naming_sizes():
    with pytest.raises(InputError, match="step 5 is smaller than a row"):
        image_to_array(2, 2, "rgb8", 0, 5, b"\0" * 12)
    with pytest.raises(InputError, match="data has 11 bytes"):
        image_to_array(2, 2, "rgb8", 0, 6, b"\0" * 11)
    with pytest.raises(InputError, match="no pixels"):
        image_to_array(0, 2, "rgb8", 0, 6, b"")
    with pytest.raises(InputError, match="does not fit rgb8"):
        array_to_image(np.zeros((2, 2), np.uint8), "rgb8")


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_compressed_round_trip(fmt):
    frame = np.zeros((16, 24, 3), np.uint8)
    frame[:, :12] = (250, 20, 20)
    frame[:, 12:] = (20, 20, 250)
    name, data = rgb8_to_compressed(frame, fmt, jpeg_quality=95)
    assert name == fmt
    out = compressed_to_rgb8(f"rgb8; {fmt} compressed bgr8", data)
    tolerance = 0 if fmt == "png" else 12
    assert np.abs(out.astype(int)[:, 2:10] - frame.astype(int)[:, 2:10]).max() <= tolerance
    assert out[8, 4, 0] > out[8, 4, 2] and out[8, 20, 2] > out[8, 20, 0]  # red stays left, blue right


@pytest.mark.parametrize(
    "fmt, order",
    [
        ("rgb8; png compressed bgr8", "bgr"),  # image_transport's publisher: colours converted to BGR first
        ("bgr8; png compressed bgr8", "bgr"),
        ("png", "bgr"),  # a bare codec name (older publishers): OpenCV's order
        ("rgb8; png compressed rgb8", "rgb"),  # compressed as it came: image_transport's decoder keeps RGB
        ("bgra8; png compressed rgba8", "rgb"),
        ("mono8; png compressed mono8", "bgr"),  # not a colour encoding: the order rule does not apply
    ],
)
def test_compressed_channel_order_is_read_from_the_format_as_image_transport_does(fmt, order):
    frame = np.zeros((4, 6, 3), np.uint8)
    frame[..., 0], frame[..., 2] = 200, 30  # red
    ok, png = cv2.imencode(".png", frame[..., ::-1] if order == "bgr" else frame)
    np.testing.assert_array_equal(compressed_to_rgb8(fmt, png.tobytes()), frame)
    with_alpha = np.dstack([frame, np.full(frame.shape[:2], 255, np.uint8)])
    ok, png = cv2.imencode(".png", with_alpha[..., [2, 1, 0, 3]] if order == "bgr" else with_alpha)
    np.testing.assert_array_equal(compressed_to_rgb8(fmt, png.tobytes()), frame)


def test_compressed_grey_and_garbage():
    ok, png = cv2.imencode(".png", np.full((4, 4), 77, np.uint8))
    assert compressed_to_rgb8("png", png.tobytes()).tolist() == np.full((4, 4, 3), 77).tolist()
    with pytest.raises(InputError, match="cannot be decoded"):
        compressed_to_rgb8("jpeg", b"not an image at all")
    with pytest.raises(InputError, match="no data"):
        compressed_to_rgb8("jpeg", b"")
    with pytest.raises(UnsupportedEncoding):
        rgb8_to_compressed(np.zeros((2, 2, 3), np.uint8), "webp-ish")


def test_msg_to_rgb8_takes_either_message_kind():
    rgb = RNG.integers(0, 256, size=(3, 5, 3), dtype=np.uint8)
    fields = array_to_image(np.ascontiguousarray(rgb[..., ::-1]), "bgr8", row_padding=1)
    image_msg = SimpleNamespace(**fields.__dict__)
    image_msg.data = np.frombuffer(fields.data, np.uint8)  # rosbags / rclpy hand out arrays
    np.testing.assert_array_equal(msg_to_rgb8(image_msg), rgb)
    _, png = rgb8_to_compressed(rgb, "png")
    np.testing.assert_array_equal(msg_to_rgb8(SimpleNamespace(format="png", data=png)), rgb)
