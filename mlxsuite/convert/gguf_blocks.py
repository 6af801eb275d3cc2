"""ggml's block formats decoded with numpy into MLX's affine quantization (codes, scales, biases) or float32.

Every quantized type here is affine per group of its rows: value = scale · code + bias, with unsigned codes.
- Group 32, kept exactly as an MLX quantized layer: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (scale d; bias −8d, m, −16d, m,
  −128d) and the k-quants Q4_K, Q5_K (super-blocks of 8 sub-blocks of 32: scale d·sc, bias −dmin·m).
- Group 16 (Q6_K: d·sc·(q − 32); Q3_K: d·(sc − 32)·(q − 4); Q2_K: d·sc·q − dmin·m): MLX's affine groups are 32, 64
  or 128, so these are decoded exactly to float32 and, kept quantized, requantized to 8-bit group 32 (the error
  against the exact values is measured per tensor).
- IQ4_NL / IQ4_XS: 4-bit indexes into a fixed table of 16 integers (−127…113, llama.cpp's `kvalues_iq4nl`) times a
  block scale (IQ4_XS: d·(ls − 32) per 32): value = scale · (k + 128) − 128 · scale, exactly 8-bit group 32.
Scales and biases are computed in float32 as ggml's own dequantization does (d·sc is exact there) and stored in
float16 only where that is exact. Layouts: ggml-common.h / ggml-quants.c (`dequantize_row_*`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import IQ4_NL

FLOAT_TYPES = ("F32", "F16", "BF16")
QUANTIZED_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS")
# type → (elements per block, bytes per block), from llama.cpp's own table
BLOCKS = {t: GGML_QUANT_SIZES[GGMLQuantizationType[t]] for t in FLOAT_TYPES + QUANTIZED_TYPES}
GROUP16_TYPES = ("Q2_K", "Q3_K", "Q6_K")


@dataclass
class Affine:
    """A tensor's rows as MLX affine quantization: codes (rows, cols) uint8, scales and biases (rows, cols/group)."""

    codes: np.ndarray
    scales: np.ndarray
    biases: np.ndarray
    bits: int
    group_size: int

    def dequantize(self) -> np.ndarray:
        """The exact float32 values, computed as ggml does (scale · code + bias per group)."""
        rows, cols = self.codes.shape
        g = self.group_size
        codes = self.codes.reshape(rows, cols // g, g).astype(np.float32)
        return (codes * self.scales[..., None] + self.biases[..., None]).reshape(rows, cols)


def _f16(raw: np.ndarray, at: int) -> np.ndarray:
    return np.ascontiguousarray(raw[:, at : at + 2]).view(np.float16).astype(np.float32)  # (blocks, 1)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """16 bytes → 32 codes: low nibbles are elements 0–15, high nibbles 16–31."""
    return np.concatenate([qs & 0xF, qs >> 4], axis=-1)


def _fifth_bit(raw: np.ndarray, at: int) -> np.ndarray:
    qh = np.ascontiguousarray(raw[:, at : at + 4]).view("<u4")
    return (((qh >> np.arange(32, dtype=np.uint32)) & 1) << 4).astype(np.uint8)


def _k4_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 8 six-bit scales and mins of a Q4_K/Q5_K super-block (`get_scale_min_k4`) from its 12 bytes."""
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    m = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    return sc.astype(np.float32), m.astype(np.float32)


def _q3k_scales(s: np.ndarray) -> np.ndarray:
    """The 16 six-bit scales of a Q3_K super-block (minus 32) from its 12 bytes."""
    aux = np.ascontiguousarray(s).view("<u4")
    a0, a1, tmp = aux[:, 0], aux[:, 1], aux[:, 2]
    m1, m2 = np.uint32(0x03030303), np.uint32(0x0F0F0F0F)
    out = np.stack(
        [
            (a0 & m2) | (((tmp >> 0) & m1) << 4),
            (a1 & m2) | (((tmp >> 2) & m1) << 4),
            ((a0 >> 4) & m2) | (((tmp >> 4) & m1) << 4),
            ((a1 >> 4) & m2) | (((tmp >> 6) & m1) << 4),
        ],
        axis=1,
    ).astype("<u4")
    return out.view(np.uint8).astype(np.float32) - 32


def _legacy(raw: np.ndarray, kind: str):
    d = _f16(raw, 0)
    if kind == "Q4_0":
        return _nibbles(raw[:, 2:18]), d, -8 * d, 4
    if kind == "Q4_1":
        return _nibbles(raw[:, 4:20]), d, _f16(raw, 2), 4
    if kind == "Q5_0":
        return _nibbles(raw[:, 6:22]) | _fifth_bit(raw, 2), d, -16 * d, 5
    if kind == "Q5_1":
        return _nibbles(raw[:, 8:24]) | _fifth_bit(raw, 4), d, _f16(raw, 2), 5
    codes = (raw[:, 2:34].view(np.int8).astype(np.int16) + 128).astype(np.uint8)  # Q8_0
    return codes, d, -128 * d, 8


def _k_quant(raw: np.ndarray, kind: str):
    n = len(raw)
    if kind in ("Q4_K", "Q5_K"):
        d, dmin = _f16(raw, 0), _f16(raw, 2)
        sc, m = _k4_scales(raw[:, 4:16])
        qs = raw[:, -128:].reshape(n, 4, 1, 32)
        codes = np.concatenate([qs & 0xF, qs >> 4], axis=2)  # (n, 4 chunks of 64, 2 halves, 32)
        if kind == "Q5_K":
            qh = raw[:, 16:48].reshape(n, 1, 1, 32)
            shift = np.arange(8, dtype=np.uint8).reshape(1, 4, 2, 1)
            codes = codes | (((qh >> shift) & 1) << 4)
        return codes.reshape(n, 256), d * sc, -dmin * m, 4 if kind == "Q4_K" else 5
    if kind == "Q6_K":
        ql, qh = raw[:, 0:128].reshape(n, 2, 1, 2, 32), raw[:, 128:192].reshape(n, 2, 1, 1, 32)
        low = np.concatenate([ql & 0xF, ql >> 4], axis=2)  # (n, half, nibble, ql part, 32) → element order
        shift = (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 2, 2, 1)
        codes = (low | (((qh >> shift) & 3) << 4)).reshape(n, 256)
        scale = _f16(raw, 208) * raw[:, 192:208].view(np.int8).astype(np.float32)
        return codes, scale, -32 * scale, 6
    if kind == "Q3_K":
        hmask, qs = raw[:, 0:32].reshape(n, 1, 1, 32), raw[:, 32:96].reshape(n, 2, 1, 32)
        j = np.arange(4, dtype=np.uint8).reshape(1, 1, 4, 1)
        high = (hmask >> (4 * np.arange(2, dtype=np.uint8).reshape(1, 2, 1, 1) + j)) & 1
        codes = (((qs >> (2 * j)) & 3) | (high << 2)).reshape(n, 256)
        scale = _f16(raw, 108) * _q3k_scales(raw[:, 96:108])
        return codes, scale, -4 * scale, 3
    # Q2_K
    s, qs = raw[:, 0:16], raw[:, 16:80].reshape(n, 2, 1, 32)
    j = np.arange(4, dtype=np.uint8).reshape(1, 1, 4, 1)
    codes = ((qs >> (2 * j)) & 3).reshape(n, 256)
    return codes, _f16(raw, 80) * (s & 0xF), -_f16(raw, 82) * (s >> 4), 2


def _iq4(raw: np.ndarray, kind: str):
    n = len(raw)
    table = np.asarray(IQ4_NL.kvalues, np.int16) + 128
    if kind == "IQ4_NL":
        scale = _f16(raw, 0)
        qs = raw[:, 2:18]
    else:  # IQ4_XS: d, scales_h (u16), scales_l[4], qs[128]
        high = (np.ascontiguousarray(raw[:, 2:4]).view("<u2") >> (2 * np.arange(8, dtype=np.uint16))) & 3
        low = (raw[:, 4:8, None] >> np.array([0, 4], dtype=np.uint8)).reshape(n, 8) & 0xF
        scale = _f16(raw, 0) * ((low | (high << 4)).astype(np.float32) - 32)
        qs = raw[:, 8:136].reshape(n, 8, 16)
    codes = table[_nibbles(qs)].astype(np.uint8).reshape(n, -1)
    return codes, scale, -128 * scale, 8


def decode(raw: np.ndarray, kind: str, shape: tuple[int, ...]):
    """A tensor's raw bytes (any shape, C order) → float32 array (float types) or `Affine` (rows, cols)."""
    raw = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    if kind == "F32":
        return raw.view("<f4").reshape(shape)
    if kind == "F16":
        return raw.view("<f2").astype(np.float32).reshape(shape)
    if kind == "BF16":
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
    per_block, nbytes = BLOCKS[kind]
    blocks = raw.reshape(-1, nbytes)
    decoder = _iq4 if kind.startswith("IQ4") else _legacy if per_block == 32 else _k_quant
    codes, scales, biases, bits = decoder(blocks, kind)
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    cols = shape[-1]
    group = 16 if kind in GROUP16_TYPES else 32
    return Affine(
        np.ascontiguousarray(codes, dtype=np.uint8).reshape(rows, cols),
        np.asarray(scales, np.float32).reshape(rows, cols // group),
        np.asarray(biases, np.float32).reshape(rows, cols // group),
        bits,
        group,
    )


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned codes (rows, cols) → MLX's packed uint32 (rows, cols·bits/32): a little-endian bit stream."""
    rows = codes.shape[0]
    if bits == 8:
        return np.ascontiguousarray(codes).view("<u4")
    if bits == 4:
        pairs = codes.reshape(rows, -1, 2)
        return np.ascontiguousarray(pairs[..., 0] | (pairs[..., 1] << 4)).view("<u4")
    stream = ((codes[..., None] >> np.arange(bits, dtype=np.uint8)) & 1).reshape(rows, -1)
    return np.packbits(stream, axis=-1, bitorder="little").view("<u4")


def compact(x: np.ndarray) -> np.ndarray:
    """float16 when that holds every value exactly, else float32."""
    half = x.astype(np.float16)
    return half if np.isfinite(half).all() and np.array_equal(half.astype(np.float32), x) else x
