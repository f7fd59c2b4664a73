"""sensor_msgs/Image and CompressedImage <-> numpy, as pure functions (no rclpy, no cv_bridge).

The fields of a ``sensor_msgs/msg/Image`` are passed explicitly (height, width, encoding,
is_bigendian, step, data) so the same code serves rclpy messages, rosbags' deserialised
dataclasses and tests. :func:`image_to_array` returns the pixels as they are (native byte order,
row padding removed); :func:`image_to_rgb8` converts any supported encoding to the uint8 RGB
frame the models read; :func:`array_to_image` builds the fields back. Compressed images go
through OpenCV (``cv2.imdecode`` / ``cv2.imencode``).

Encodings follow ROS ``sensor_msgs/image_encodings.hpp``: rgb8, bgr8, rgba8, bgra8, mono8,
mono16, rgb16, bgr16, rgba16, bgra16, the bayer_{rggb,bggr,gbrg,grbg}{8,16} mosaics, the
OpenCV-style ``{8,16}U C{1,3,4}``, ``32FC1``, the packed YUV 4:2:2 forms ``yuv422``
(UYVY) and ``yuv422_yuy2`` (YUYV), and the semi-planar YUV forms ``nv12`` / ``nv21`` (4:2:0: Jetson
Argus / Isaac ROS and many V4L2 and GStreamer cameras) and ``nv24`` (4:4:4). Anything else raises
:class:`UnsupportedEncoding`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from fleetloop_core.errors import InputError


class UnsupportedEncoding(InputError):
    """The image's encoding is not one we can convert (message names it and the known ones)."""


@dataclass(frozen=True)
class _Layout:
    channels: int
    dtype: str  # numpy dtype name of one channel value


_LAYOUTS: dict[str, _Layout] = {
    "mono8": _Layout(1, "uint8"),
    "mono16": _Layout(1, "uint16"),
    "rgb8": _Layout(3, "uint8"),
    "bgr8": _Layout(3, "uint8"),
    "rgba8": _Layout(4, "uint8"),
    "bgra8": _Layout(4, "uint8"),
    "rgb16": _Layout(3, "uint16"),
    "bgr16": _Layout(3, "uint16"),
    "rgba16": _Layout(4, "uint16"),
    "bgra16": _Layout(4, "uint16"),
    "8UC1": _Layout(1, "uint8"),
    "8UC3": _Layout(3, "uint8"),
    "8UC4": _Layout(4, "uint8"),
    "16UC1": _Layout(1, "uint16"),
    "16UC3": _Layout(3, "uint16"),
    "16UC4": _Layout(4, "uint16"),
    "32FC1": _Layout(1, "float32"),
    # packed 4:2:2, two bytes per pixel
    "yuv422": _Layout(2, "uint8"),
    "uyvy": _Layout(2, "uint8"),
    "yuv422_yuy2": _Layout(2, "uint8"),
    "yuyv": _Layout(2, "uint8"),
    # semi-planar: the layout of the Y plane (one byte a pixel); the chroma plane follows it (_SEMI_PLANAR)
    "nv12": _Layout(1, "uint8"),
    "nv21": _Layout(1, "uint8"),
    "nv24": _Layout(1, "uint8"),
}
# Semi-planar YUV as sensor_msgs carries it: ``height`` rows of ``step`` bytes of Y, then the interleaved
# chroma plane: for 4:2:0 (nv12: U V, nv21: V U) height / 2 rows of ``step`` bytes (as rviz reads it); for
# 4:4:4 (nv24: U V) ``height`` rows of 2 x ``step`` bytes (GStreamer's NV24 strides). ``image_to_array``
# returns the planes stacked as rows of ``width`` bytes: (3/2 height, width) for 4:2:0 (the layout OpenCV's
# NV12 / NV21 conversions read), (3 height, width) for 4:4:4.
_SEMI_PLANAR = {"nv12": 2, "nv21": 2, "nv24": 1}  # encoding -> chroma subsampling in each direction
SEMI_PLANAR_ENCODINGS: tuple[str, ...] = tuple(_SEMI_PLANAR)
# ROS names the Bayer pattern by its first row; OpenCV by the second row's 2nd and 3rd pixels
# (the same mapping cv_bridge uses).
_BAYER_TO_RGB = {
    "rggb": cv2.COLOR_BayerBG2RGB,
    "bggr": cv2.COLOR_BayerRG2RGB,
    "gbrg": cv2.COLOR_BayerGR2RGB,
    "grbg": cv2.COLOR_BayerGB2RGB,
}
for _pattern in _BAYER_TO_RGB:
    _LAYOUTS[f"bayer_{_pattern}8"] = _Layout(1, "uint8")
    _LAYOUTS[f"bayer_{_pattern}16"] = _Layout(1, "uint16")

_TO_RGB = {
    "rgb8": None,
    "bgr8": cv2.COLOR_BGR2RGB,
    "rgba8": cv2.COLOR_RGBA2RGB,
    "bgra8": cv2.COLOR_BGRA2RGB,
    "mono8": cv2.COLOR_GRAY2RGB,
    "8UC1": cv2.COLOR_GRAY2RGB,
    # OpenCV convention: 3/4-channel arrays without colour information are BGR(A)
    "8UC3": cv2.COLOR_BGR2RGB,
    "8UC4": cv2.COLOR_BGRA2RGB,
    "yuv422": cv2.COLOR_YUV2RGB_UYVY,
    "uyvy": cv2.COLOR_YUV2RGB_UYVY,
    "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUY2,
    "yuyv": cv2.COLOR_YUV2RGB_YUY2,
}
_SIXTEEN_TO_EIGHT = {
    "mono16": "mono8",
    "16UC1": "mono8",
    "rgb16": "rgb8",
    "bgr16": "bgr8",
    "rgba16": "rgba8",
    "bgra16": "bgra8",
    "16UC3": "8UC3",
    "16UC4": "8UC4",
    **{f"bayer_{p}16": f"bayer_{p}8" for p in _BAYER_TO_RGB},
}

ENCODINGS: tuple[str, ...] = tuple(sorted(_LAYOUTS))


def _layout(encoding: str) -> _Layout:
    layout = _LAYOUTS.get(encoding)
    if layout is None:
        raise UnsupportedEncoding(f"unsupported image encoding {encoding!r} (known: {', '.join(ENCODINGS)})")
    return layout


def bytes_per_pixel(encoding: str) -> int:
    """Return the bytes one pixel takes in ``encoding``."""
    layout = _layout(encoding)
    return layout.channels * np.dtype(layout.dtype).itemsize


def image_to_array(
    height: int,
    width: int,
    encoding: str,
    is_bigendian: bool | int,
    step: int,
    data: bytes | bytearray | memoryview | np.ndarray,
) -> np.ndarray:
    """Return the pixels of an Image message as (H, W) or (H, W, C) in native byte order.

    Row padding (``step`` beyond width x bytes per pixel) is dropped; multi-byte values are read
    big- or little-endian as ``is_bigendian`` says. The result does not alias ``data``.
    """
    layout = _layout(encoding)
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:
        raise InputError(f"{encoding} image has no pixels ({width}x{height})")
    if encoding in _SEMI_PLANAR:
        return _semi_planar_planes(height, width, encoding, step, data)
    itemsize = np.dtype(layout.dtype).itemsize
    row_bytes = width * layout.channels * itemsize
    if step < row_bytes:
        raise InputError(f"{encoding} image {width}x{height}: step {step} is smaller than a row ({row_bytes} bytes)")
    buffer = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    if buffer.size < step * (height - 1) + row_bytes:
        raise InputError(
            f"{encoding} image {width}x{height} step {step}: data has {buffer.size} bytes, needs {step * height}"
        )
    rows = np.lib.stride_tricks.as_strided(buffer, shape=(height, row_bytes), strides=(step, 1))
    dtype = np.dtype(layout.dtype)
    if itemsize > 1:
        dtype = dtype.newbyteorder(">" if is_bigendian else "<")
    pixels = np.ascontiguousarray(rows).view(dtype)
    if itemsize > 1 and not dtype.isnative:
        pixels = pixels.astype(dtype.newbyteorder("="))
    if layout.channels == 1:
        return pixels.reshape(height, width)
    if encoding in ("yuv422", "uyvy", "yuv422_yuy2", "yuyv"):
        return pixels.reshape(height, width, 2)
    return pixels.reshape(height, width, layout.channels)


def _semi_planar_planes(
    height: int, width: int, encoding: str, step: int, data: bytes | bytearray | memoryview | np.ndarray
) -> np.ndarray:
    """Return the Y and chroma planes of a semi-planar YUV image stacked as rows of ``width`` bytes."""
    sub = _SEMI_PLANAR[encoding]
    _check_even(encoding, width, height)
    if step < width:
        raise InputError(f"{encoding} image {width}x{height}: step {step} is smaller than a row ({width} bytes)")
    buffer = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    chroma_rows, chroma_bytes = height // sub, 2 * width // sub

    def needed(stride: int) -> int:  # Y rows of ``stride`` bytes; chroma rows of stride (4:2:0) or 2 x stride
        chroma_stride = stride * 2 // sub
        return stride * height + chroma_stride * (chroma_rows - 1) + chroma_bytes

    if buffer.size < needed(step):
        # image_encodings.hpp counts 2 channels for nv12, so some publishers set step = 2 x width over
        # tightly packed planes: take those as packed (the data is exactly that long), refuse anything else
        if buffer.size != needed(width):
            raise InputError(
                f"{encoding} image {width}x{height} step {step}: data has {buffer.size} bytes, needs {needed(step)}"
            )
        step = width
    chroma_stride = step * 2 // sub
    luma = np.lib.stride_tricks.as_strided(buffer, shape=(height, width), strides=(step, 1))
    chroma = np.lib.stride_tricks.as_strided(
        buffer[step * height :], shape=(chroma_rows, chroma_bytes), strides=(chroma_stride, 1)
    )
    return np.concatenate([luma, chroma.reshape(-1, width)], axis=0)


def _check_even(encoding: str, width: int, height: int) -> None:
    if _SEMI_PLANAR[encoding] == 2 and (height % 2 or width % 2):
        raise InputError(f"{encoding} image {width}x{height}: 4:2:0 needs an even width and height")


def _semi_planar_size(planes: np.ndarray, encoding: str) -> tuple[int, int]:
    """Return (height, width) of the image whose stacked Y and chroma rows ``planes`` are."""
    sub = _SEMI_PLANAR[encoding]
    rows = planes.shape[0] if planes.ndim == 2 else 0
    area = sub * sub  # pixels per chroma pair: rows = height x (1 + 2 / area), 3/2 height (4:2:0) or 3 height (4:4:4)
    height = rows * area // (area + 2)
    if planes.dtype != np.uint8 or height == 0 or height * (area + 2) != rows * area or (sub == 2 and height % 2):
        raise InputError(f"{encoding} planes {planes.shape} {planes.dtype} are not the Y and chroma rows of one image")
    return height, planes.shape[1]


# BT.601 limited range, the coefficients of OpenCV's YUV 4:2:0 / 4:2:2 -> RGB conversions
_YUV_TO_RGB = np.array([[1.164, 0.0, 1.596], [1.164, -0.391, -0.813], [1.164, 2.018, 0.0]], np.float32)
_YUV_OFFSET = np.array([16.0, 128.0, 128.0], np.float32)
_RGB_TO_YUV = np.linalg.inv(_YUV_TO_RGB).astype(np.float32)


def _semi_planar_to_rgb8(planes: np.ndarray, encoding: str) -> np.ndarray:
    height, width = _semi_planar_size(planes, encoding)
    sub = _SEMI_PLANAR[encoding]
    if sub == 2:
        code = cv2.COLOR_YUV2RGB_NV12 if encoding == "nv12" else cv2.COLOR_YUV2RGB_NV21
        return cv2.cvtColor(np.ascontiguousarray(planes), code)
    yuv = np.dstack([planes[:height], planes[height:].reshape(height, width, 2)]).astype(np.float32)
    rgb = cv2.transform(yuv - _YUV_OFFSET, _YUV_TO_RGB)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def array_to_rgb8(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """Return a contiguous uint8 RGB (H, W, 3) frame from pixels in ``encoding``.

    16-bit values are scaled to 8 bits (x 255/65535); Bayer mosaics are demosaiced; 32FC1 is
    taken as intensity in [0, 1]; semi-planar YUV (``image_to_array``'s stacked planes) is read as
    BT.601 limited range, as OpenCV reads YUV 4:2:0.
    """
    _layout(encoding)
    if encoding in _SEMI_PLANAR:
        return _semi_planar_to_rgb8(pixels, encoding)
    if encoding in _SIXTEEN_TO_EIGHT:
        pixels = cv2.convertScaleAbs(pixels, alpha=255.0 / 65535.0)
        encoding = _SIXTEEN_TO_EIGHT[encoding]
    if encoding == "32FC1":
        pixels = np.clip(np.nan_to_num(pixels) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        encoding = "mono8"
    if encoding.startswith("bayer_"):
        return cv2.cvtColor(np.ascontiguousarray(pixels), _BAYER_TO_RGB[encoding[6:10]])
    code = _TO_RGB[encoding]
    if code is None:
        return np.ascontiguousarray(pixels)
    return cv2.cvtColor(np.ascontiguousarray(pixels), code)


def image_to_rgb8(
    height: int,
    width: int,
    encoding: str,
    is_bigendian: bool | int,
    step: int,
    data: bytes | bytearray | memoryview | np.ndarray,
) -> np.ndarray:
    """Return the uint8 RGB (H, W, 3) frame of an Image message in any supported encoding."""
    return array_to_rgb8(image_to_array(height, width, encoding, is_bigendian, step, data), encoding)


@dataclass(frozen=True)
class ImageFields:
    """The payload fields of a sensor_msgs/Image (header left to the caller)."""

    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: bytes


def array_to_image(pixels: np.ndarray, encoding: str, is_bigendian: bool = False, row_padding: int = 0) -> ImageFields:
    """Return Image fields holding ``pixels`` (H, W[, C]) in ``encoding``.

    ``row_padding`` extra zero bytes per row exercise readers that must honour ``step``.
    """
    layout = _layout(encoding)
    pixels = np.asarray(pixels)
    if encoding in _SEMI_PLANAR:
        return _semi_planar_image(pixels, encoding, row_padding)
    expected_channels = 2 if encoding in ("yuv422", "uyvy", "yuv422_yuy2", "yuyv") else layout.channels
    channels = 1 if pixels.ndim == 2 else pixels.shape[2] if pixels.ndim == 3 else -1
    if channels != expected_channels or pixels.dtype != np.dtype(layout.dtype):
        raise InputError(
            f"array {pixels.shape} {pixels.dtype} does not fit {encoding} "
            f"({expected_channels} channel(s) of {layout.dtype})"
        )
    height, width = pixels.shape[:2]
    dtype = pixels.dtype.newbyteorder(">" if is_bigendian else "<") if pixels.dtype.itemsize > 1 else pixels.dtype
    rows = np.ascontiguousarray(pixels.astype(dtype, copy=False)).view(np.uint8).reshape(height, -1)
    if row_padding:
        rows = np.concatenate([rows, np.zeros((height, int(row_padding)), np.uint8)], axis=1)
    return ImageFields(
        height=int(height),
        width=int(width),
        encoding=encoding,
        is_bigendian=int(bool(is_bigendian)),
        step=int(rows.shape[1]),
        data=rows.tobytes(),
    )


def _semi_planar_image(planes: np.ndarray, encoding: str, row_padding: int) -> ImageFields:
    height, width = _semi_planar_size(planes, encoding)
    sub = _SEMI_PLANAR[encoding]
    luma, chroma = planes[:height], planes[height:].reshape(height // sub, 2 * width // sub)
    step = width + int(row_padding)
    rows = [
        np.pad(luma, ((0, 0), (0, step - width))),
        np.pad(chroma, ((0, 0), (0, step * 2 // sub - chroma.shape[1]))),
    ]
    data = b"".join(np.ascontiguousarray(r).tobytes() for r in rows)
    return ImageFields(height=height, width=width, encoding=encoding, is_bigendian=0, step=step, data=data)


def rgb8_to_semi_planar(frame: np.ndarray, encoding: str) -> np.ndarray:
    """Return the stacked Y and chroma planes (``image_to_array``'s form) of a uint8 RGB ``frame``.

    The inverse of the BT.601 limited-range reading; 4:2:0 chroma is the mean of each 2 x 2 block (an
    even width and height are needed). What a camera driver does; here for the bring-up camera and tests.
    """
    if encoding not in _SEMI_PLANAR:
        raise UnsupportedEncoding(f"{encoding!r} is not semi-planar YUV (known: {', '.join(sorted(_SEMI_PLANAR))})")
    height, width = frame.shape[:2]
    _check_even(encoding, width, height)
    yuv = cv2.transform(frame.astype(np.float32), _RGB_TO_YUV) + _YUV_OFFSET
    chroma: np.ndarray = yuv[..., 1:]
    if _SEMI_PLANAR[encoding] == 2:  # the mean of each 2 x 2 block
        chroma = cv2.resize(chroma, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
    if encoding == "nv21":
        chroma = chroma[..., ::-1]

    def as_bytes(values: np.ndarray) -> np.ndarray:
        return np.clip(values + 0.5, 0, 255).astype(np.uint8)

    return np.concatenate([as_bytes(yuv[..., 0]), as_bytes(chroma).reshape(-1, width)], axis=0)


def msg_to_rgb8(msg: Any) -> np.ndarray:
    """Return the uint8 RGB frame of an Image or CompressedImage message (any object with its fields)."""
    if hasattr(msg, "format") and not hasattr(msg, "encoding"):
        return compressed_to_rgb8(msg.format, msg.data)
    return image_to_rgb8(msg.height, msg.width, msg.encoding, msg.is_bigendian, msg.step, msg.data)


# --------------------------------------------------------------------------- compressed

_COMPRESSED_EXTENSIONS = {"jpeg": ".jpg", "jpg": ".jpg", "png": ".png"}
_COLOUR = frozenset(e for e in _LAYOUTS if e[:3] in ("rgb", "bgr"))  # image_encodings' isColor()


def _codec_holds_rgb(format: str) -> bool:
    """Return whether the codec holds RGB, as image_transport's decoder reads ``format``: a colour encoding
    (isColor) before ``;`` and no ``compressed bgr`` after it (``rgb8; jpeg compressed rgb8``); else BGR."""
    encoding, separator, rest = format.partition(";")
    return bool(separator) and encoding.strip().lower() in _COLOUR and "compressed bgr" not in rest


def compressed_to_rgb8(format: str, data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Return the uint8 RGB frame of a CompressedImage (``format`` as image_transport writes it: ``jpeg``, ``png``,
    ``bgr8; jpeg compressed bgr8``): the codec from the bytes, the channel order from the format; grey as RGB."""
    buffer = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    if buffer.size == 0:
        raise InputError(f"compressed image ({format!r}) has no data")
    image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(f"compressed image ({format!r}, {buffer.size} bytes) cannot be decoded")
    if image.dtype == np.uint16:
        image = cv2.convertScaleAbs(image, alpha=255.0 / 65535.0)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    rgb = _codec_holds_rgb(format)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2RGB if rgb else cv2.COLOR_BGRA2RGB)
    return np.ascontiguousarray(image) if rgb else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def rgb8_to_compressed(frame: np.ndarray, format: str = "jpeg", jpeg_quality: int = 90) -> tuple[str, bytes]:
    """Return (format, bytes) of a CompressedImage holding the uint8 RGB ``frame`` (jpeg or png)."""
    extension = _COMPRESSED_EXTENSIONS.get(format.lower())
    if extension is None:
        raise UnsupportedEncoding(f"unsupported compressed format {format!r} (known: jpeg, png)")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if extension == ".jpg" else []
    ok, encoded = cv2.imencode(extension, cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise InputError(f"OpenCV could not encode a {frame.shape} frame as {format}")
    return ("jpeg" if extension == ".jpg" else "png"), encoded.tobytes()
