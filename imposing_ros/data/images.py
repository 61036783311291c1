"""``sensor_msgs/Image`` and ``CompressedImage`` -> ``[H, W, 3]`` uint8 RGB, checked first.

The one image decoder of the package: the localizer node (live messages) and the rosbag2 reader
(recorded ones, so ``evaluate`` and training) both use it, so a recorded image gives the node and
the tools the same pixels. Messages are duck-typed: rclpy messages and ``rosbags`` ones both work.

The conversion goes through ``rosbags.image`` (PyPI, with OpenCV), on a ROS install too: no ROS
import here (the method library knows no ROS), and one decoder everywhere. (The PyPI package
``cv-bridge`` is an old ROS 1 port that fails on ROS 2 messages.)

Every message is checked before a backend sees it (size, step, data length, encoding), so a
malformed image raises :class:`ImageConversionError` with a reason instead of crashing a
decoder or reading past a buffer.
"""

from __future__ import annotations

import numpy as np

# Raw encodings accepted: name -> (channels, numpy dtype). Bayer and YUV go to the backend,
# which knows them; the size check uses the channel count and depth given here.
RAW_ENCODINGS = {
    'rgb8': (3, np.uint8), 'bgr8': (3, np.uint8), 'rgba8': (4, np.uint8),
    'bgra8': (4, np.uint8), 'mono8': (1, np.uint8), 'mono16': (1, np.uint16),
    'rgb16': (3, np.uint16), 'bgr16': (3, np.uint16), '8UC1': (1, np.uint8),
    '8UC3': (3, np.uint8), 'bayer_rggb8': (1, np.uint8), 'bayer_bggr8': (1, np.uint8),
    'bayer_gbrg8': (1, np.uint8), 'bayer_grbg8': (1, np.uint8),
}
COMPRESSED_FORMATS = ('jpeg', 'jpg', 'png')
MAX_PIXELS = 8192 * 8192


class ImageConversionError(ValueError):
    """An image message cannot be converted (the message says why)."""


def _load_backend():
    """(name, raw converter, compressed converter), or Nones without rosbags.image."""
    try:
        from rosbags.image import compressed_image_to_cvimage, image_to_cvimage
    except ImportError:
        return None, None, None
    return ('rosbags.image',
            lambda msg: image_to_cvimage(msg, 'rgb8'),
            lambda msg: compressed_image_to_cvimage(msg, None))


BACKEND, _RAW, _COMPRESSED = _load_backend()


def _to_rgb(array: np.ndarray, bgr: bool = False) -> np.ndarray:
    """Any decoded array (gray, 16-bit, alpha, BGR) -> contiguous ``[H, W, 3]`` uint8 RGB."""
    array = np.asarray(array)
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    if array.dtype != np.uint8:
        raise ImageConversionError(f'decoded image has unsupported dtype {array.dtype}')
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ImageConversionError(f'decoded image has unsupported shape {array.shape}')
    array = array[:, :, :3]
    if bgr:
        array = array[:, :, ::-1]
    return np.ascontiguousarray(array)


class _CompactImage:
    """A raw image with row padding removed (``rosbags.image`` ignores ``step``)."""

    def __init__(self, msg, data: bytes, step: int):
        self.header, self.height, self.width = msg.header, msg.height, msg.width
        self.encoding, self.is_bigendian, self.step, self.data = (
            msg.encoding, msg.is_bigendian, step, data)


def check_raw(msg) -> None:
    """Raise :class:`ImageConversionError` unless a raw image message is well formed."""
    if msg.encoding not in RAW_ENCODINGS:
        raise ImageConversionError(f'unsupported encoding {msg.encoding!r} '
                                   f'(supported: {", ".join(sorted(RAW_ENCODINGS))})')
    if msg.width == 0 or msg.height == 0:
        raise ImageConversionError(f'empty image ({msg.width}x{msg.height})')
    if msg.width * msg.height > MAX_PIXELS:
        raise ImageConversionError(f'image too large ({msg.width}x{msg.height})')
    channels, dtype = RAW_ENCODINGS[msg.encoding]
    row = msg.width * channels * np.dtype(dtype).itemsize
    if msg.step < row:
        raise ImageConversionError(f'step {msg.step} is smaller than a row ({row} bytes)')
    if len(msg.data) < msg.step * msg.height:
        raise ImageConversionError(f'truncated data: {len(msg.data)} bytes, expected '
                                   f'{msg.step * msg.height} ({msg.height} rows of {msg.step})')


def image_to_rgb(msg) -> np.ndarray:
    """``sensor_msgs/Image`` -> ``[H, W, 3]`` uint8 RGB (raises ImageConversionError)."""
    check_raw(msg)
    if _RAW is None:
        raise ImageConversionError("no image conversion backend: install "
                                   "'rosbags-image[opencv-headless]'")
    channels, dtype = RAW_ENCODINGS[msg.encoding]
    row = msg.width * channels * np.dtype(dtype).itemsize
    if msg.step != row or len(msg.data) != msg.step * msg.height:
        buffer = np.frombuffer(msg.data, np.uint8)[:msg.step * msg.height]
        data = buffer.reshape(msg.height, msg.step)[:, :row].tobytes()
        msg = _CompactImage(msg, data, row)
    try:
        return _to_rgb(_RAW(msg))
    except ImageConversionError:
        raise
    except Exception as exc:  # backends raise many types on bad data
        raise ImageConversionError(f'cannot convert {msg.encoding} image: '
                                   f'{type(exc).__name__}: {exc}') from exc


def compressed_to_rgb(msg) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (jpeg/png) -> ``[H, W, 3]`` uint8 RGB."""
    fmt = msg.format.lower()
    if not any(name in fmt for name in COMPRESSED_FORMATS):
        raise ImageConversionError(f'unsupported compressed format {msg.format!r} '
                                   f'(supported: jpeg, png)')
    if len(msg.data) == 0:
        raise ImageConversionError('empty compressed image')
    if _COMPRESSED is None:
        raise ImageConversionError("no image conversion backend: install "
                                   "'rosbags-image[opencv-headless]'")
    try:
        decoded = _COMPRESSED(msg)
    except Exception as exc:  # decoders raise many types on corrupt data
        # OpenCV says nothing useful (an empty AssertionError) on a corrupt stream.
        reason = str(exc).strip() or 'corrupt or truncated data'
        raise ImageConversionError(f'cannot decode {msg.format} image of {len(msg.data)} '
                                   f'bytes: {type(exc).__name__}: {reason}') from exc
    if decoded is None or np.asarray(decoded).size == 0:
        raise ImageConversionError(f'cannot decode {msg.format} image of {len(msg.data)} '
                                   'bytes: corrupt or truncated data')
    # rosbags.image returns OpenCV's BGR order for colour images.
    return _to_rgb(decoded, bgr=np.asarray(decoded).ndim == 3)


def message_to_rgb(msg) -> np.ndarray:
    """Either image message -> ``[H, W, 3]`` uint8 RGB (raises ImageConversionError)."""
    if hasattr(msg, 'format'):
        return compressed_to_rgb(msg)
    return image_to_rgb(msg)
