"""Read an fp32 NCNN model (.param text + .bin weights) and write its INT8 version, in NCNN's own file format.

NCNN's quantization tools (ncnn2table, ncnn2int8) are C++ programs we cannot install here, so this module writes
the format they write, as NCNN's loader reads it (src/modelbin.cpp and each layer's load_model):

* .param (read and written by utils/ncnn_param.py): one line per layer,
  `type name n_bottoms n_tops bottoms... tops... key=value ...`. A quantized layer
  gets key 8 (`int8_scale_term`): 2 for Convolution and InnerProduct (one weight scale per output channel),
  1 for ConvolutionDepthWise (one weight scale per group).
* .bin: every layer reads its arrays in a fixed order. An array read with "type 0" starts with a 4-byte tag
  that says how it is stored (0 = raw float32, 0x01306B47 = float16, 0x000D4B38 = int8, other non-zero =
  256-entry float table + uint8 indices); a "type 1" array is raw float32 with no tag. Every array is padded
  to a multiple of 4 bytes. A quantized convolution stores:
      [tag 0x000D4B38][int8 weights, padded][bias float32 (if bias_term)][weight scales float32][input scale float32]
  and NCNN computes `int8 = clamp(round(x * scale), -127, 127)`, `y = acc / (input_scale * weight_scale) + bias`.

Layers not quantized are copied byte for byte.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.errors import NcnnModelError
from utils.ncnn_param import ParamLayer, clear_hint, io_blobs, read_param, write_param

TAG_FLOAT16 = 0x01306B47
TAG_INT8 = 0x000D4B38
TAG_FLOAT32_EXTRA = 0x0002C056   # raw float32 ("raw data with extra scaling" in NCNN's loader)

QUANTIZABLE_TYPES = ('Convolution', 'ConvolutionDepthWise', 'InnerProduct')

# Layer types that read nothing from the .bin. A type in neither this set nor `_weight_layout` is an error:
# guessing its weight layout would shift every later layer's weights.
WEIGHTLESS_TYPES = {
    'Input', 'Split', 'Concat', 'Slice', 'Pooling', 'Pooling1D', 'Pooling3D', 'ReLU', 'Sigmoid', 'Softmax',
    'Permute', 'Reshape', 'ShuffleChannel', 'Interp', 'Eltwise', 'BinaryOp', 'UnaryOp', 'Crop', 'Flatten',
    'Padding', 'HardSigmoid', 'HardSwish', 'Swish', 'Clip', 'Noop', 'Dropout', 'Squeeze', 'ExpandDims', 'TanH',
    'ELU', 'Mish', 'Reduction', 'GELU', 'SELU', 'Threshold', 'Exp', 'Log', 'Power', 'AbsVal', 'Cast', 'Packing',
    'Flip', 'Tile', 'CopyTo', 'Erf', 'PixelShuffle', 'Reorg', 'DeepCopy', 'ArgMax', 'Yolov3DetectionOutput',
}


@dataclass
class WeightArray:
    """One array as stored in the .bin: the exact bytes (tag included) and the decoded float32 values."""
    load_type: int          # 0: tagged (may be fp16/fp32/table); 1: raw float32
    raw: bytes
    values: np.ndarray


@dataclass
class NcnnModel:
    param_path: Path
    layers: list                                   # ParamLayer, in file order
    blob_count: int
    weights: dict = field(default_factory=dict)    # layer name -> list of WeightArray, in load order

    @property
    def input_blob(self) -> str:
        return io_blobs(self.layers, self.param_path)[0]

    @property
    def output_blobs(self) -> list:
        """The model's outputs, in order (utils.ncnn_param.io_blobs)."""
        return io_blobs(self.layers, self.param_path)[1]


def _weight_layout(layer: ParamLayer, where: str) -> list:
    """The arrays `layer` reads from the .bin, as (load_type, element_count), in NCNN's load_model order."""
    p = layer.int_param
    if layer.type in ('Convolution', 'ConvolutionDepthWise', 'Deconvolution', 'DeconvolutionDepthWise',
                      'InnerProduct', 'Embed'):
        dynamic_key = 28 if layer.type.startswith('Deconvolution') else 19
        if layer.type not in ('InnerProduct', 'Embed') and p(dynamic_key, 0):
            return []
        if layer.int_param(8, 0) and layer.type in QUANTIZABLE_TYPES:
            raise NcnnModelError(f'{where}: layer "{layer.name}" is already INT8 (int8_scale_term set)')
        if layer.type == 'InnerProduct':
            num_output, bias_term, weight_size = p(0, 0), p(1, 0), p(2, 0)
        elif layer.type == 'Embed':
            num_output, bias_term, weight_size = p(0, 0), p(2, 0), p(3, 0)
        else:
            num_output, bias_term, weight_size = p(0, 0), p(5, 0), p(6, 0)
        return [(0, weight_size)] + ([(1, num_output)] if bias_term else [])
    if layer.type == 'BatchNorm':
        return [(1, p(0, 0))] * 4                      # slope, mean, variance, bias
    if layer.type == 'Scale':
        size = p(0, 0)
        return ([(1, size)] if size != -233 else []) + ([(1, size)] if p(1, 0) else [])
    if layer.type == 'PReLU':
        return [(1, p(0, 0))]
    if layer.type == 'MemoryData':
        dims = [d for d in (p(0, 0), p(1, 0), p(11, 0), p(2, 0)) if d]
        return [(1, int(np.prod(dims)) if dims else 1)]
    if layer.type in ('LayerNorm', 'InstanceNorm'):
        size_key, affine_key = (0, 2)
        return [(1, p(size_key, 0))] * 2 if p(affine_key, 1 if layer.type == 'InstanceNorm' else 0) else []
    if layer.type == 'GroupNorm':
        return [(1, p(1, 0))] * 2 if p(3, 1) else []
    if layer.type in WEIGHTLESS_TYPES:
        return []
    raise NcnnModelError(f'{where}: layer type "{layer.type}" (layer "{layer.name}") is not supported by the INT8 '
                         f'writer: its weight layout in the .bin is unknown to utils/int8/write.py')


def _align4(n: int) -> int:
    return (n + 3) // 4 * 4


def _read_array(buf: bytes, offset: int, load_type: int, count: int, where: str) -> tuple:
    """Decode one array at `offset`; return (WeightArray, next_offset)."""
    def need(n):
        if offset + n > len(buf):
            raise NcnnModelError(f'{where}: .bin ends early (needs {offset + n} bytes, has {len(buf)})')

    if load_type == 1:
        need(4 * count)
        values = np.frombuffer(buf, np.float32, count, offset).copy()
        return WeightArray(1, buf[offset:offset + 4 * count], values), offset + 4 * count
    need(4)
    tag = struct.unpack_from('<I', buf, offset)[0]
    start, pos = offset, offset + 4
    if tag == TAG_FLOAT16:
        need(4 + _align4(2 * count))
        values = np.frombuffer(buf, np.float16, count, pos).astype(np.float32)
        pos += _align4(2 * count)
    elif tag == TAG_INT8:
        raise NcnnModelError(f'{where}: weights are already int8')
    elif tag == TAG_FLOAT32_EXTRA or tag == 0:
        need(4 + 4 * count)
        values = np.frombuffer(buf, np.float32, count, pos).copy()
        pos += 4 * count
    else:                                              # 256-entry table + one uint8 index per weight
        need(4 + 1024 + _align4(count))
        table = np.frombuffer(buf, np.float32, 256, pos)
        values = table[np.frombuffer(buf, np.uint8, count, pos + 1024)].astype(np.float32)
        pos += 1024 + _align4(count)
    return WeightArray(0, buf[start:pos], values), pos


def read_ncnn_model(param_path, bin_path) -> NcnnModel:
    """Parse the .param and split the .bin into per-layer arrays, checking the sizes add up exactly."""
    layers, blob_count = read_param(param_path)
    model = NcnnModel(Path(param_path), layers, blob_count)
    buf = Path(bin_path).read_bytes()
    offset = 0
    for layer in layers:
        where = f'{param_path}:{layer.line_no}'
        arrays = []
        for load_type, count in _weight_layout(layer, where):
            array, offset = _read_array(buf, offset, load_type, count, f'{where} ({bin_path})')
            arrays.append(array)
        model.weights[layer.name] = arrays
    if offset != len(buf):
        raise NcnnModelError(f'{bin_path}: {len(buf) - offset} bytes left after the last layer of {param_path}: '
                             f'the .bin does not belong to this .param')
    return model


def quantize_to_int8(values: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """NCNN's rounding: each row times its scale, rounded half away from zero, clamped to [-127, 127]."""
    rows = values.reshape(len(scales), -1) * scales.reshape(-1, 1)
    rounded = np.sign(rows) * np.floor(np.abs(rows) + 0.5)
    return np.clip(rounded, -127, 127).astype(np.int8).reshape(-1)


@dataclass
class LayerScales:
    """What quantizing one layer needs: one weight scale per output channel (per group for depthwise), and the
    scale of its input activations (127 / threshold)."""
    weight_scales: np.ndarray
    input_scale: float
    bias: np.ndarray | None = None     # a replacement bias (bias correction); None keeps the model's own


def int8_scale_term(layer_type: str) -> int:
    # ConvolutionDepthWise: 1 = one weight scale per group; Convolution/InnerProduct: 2 = per output channel.
    return 1 if layer_type == 'ConvolutionDepthWise' else 2


def fp16_array(array: WeightArray) -> bytes:
    """A tagged ("type 0") weight array stored as float16, as NCNN's loader reads it (converted back to float32
    when loaded, so the layer still computes in fp32, with its weights rounded to fp16; the conversion is
    exact, so every NCNN build reads the same fp32 weights).
    """
    half = array.values.astype(np.float16).tobytes()
    return struct.pack('<I', TAG_FLOAT16) + half + b'\0' * (_align4(len(half)) - len(half))


def write_int8_model(model: NcnnModel, scales: dict, out_param, out_bin, fp16_unquantized: bool = False) -> None:
    """Write `model` with the layers named in `scales` (name -> LayerScales) quantized; the rest unchanged, except
    that with `fp16_unquantized` the weights of the conv/fc layers left fp32 are stored as float16 (half the
    bytes; their biases, read as raw float32, stay float32)."""
    out_layers, chunks = [], []
    for layer in model.layers:
        arrays = model.weights[layer.name]
        if layer.name not in scales:
            out_layers.append(layer)
            if fp16_unquantized and layer.type in QUANTIZABLE_TYPES and arrays and arrays[0].load_type == 0:
                chunks.append(fp16_array(arrays[0]))
                chunks.extend(a.raw for a in arrays[1:])
            else:
                chunks.extend(a.raw for a in arrays)
            continue
        if layer.type not in QUANTIZABLE_TYPES:
            raise NcnnModelError(f'{model.param_path}:{layer.line_no}: cannot quantize a {layer.type} layer')
        s = scales[layer.name]
        weight_scales = np.asarray(s.weight_scales, np.float32)
        int8_weights = quantize_to_int8(arrays[0].values, weight_scales)
        chunks.append(struct.pack('<I', TAG_INT8) + int8_weights.tobytes() + b'\0' * (_align4(len(int8_weights))
                                                                                    - len(int8_weights)))
        if len(arrays) > 1:                             # bias stays float32 (type 1, no tag)
            chunks.append(arrays[1].raw if s.bias is None else np.asarray(s.bias, np.float32).tobytes())
        chunks.append(weight_scales.tobytes())
        chunks.append(np.float32(s.input_scale).tobytes())
        quantized = ParamLayer(layer.type, layer.name, layer.bottoms, layer.tops, dict(layer.params), layer.line_no)
        quantized.params[8] = str(int8_scale_term(layer.type))
        # The export's "no im2col + GEMM" hint (utils/ncnn_param.py) speeds up an fp32 stem conv; for INT8, NCNN's
        # direct kernel is the slower one, so a quantized layer drops it.
        clear_hint(quantized)
        out_layers.append(quantized)
    write_param(out_param, out_layers, model.blob_count)
    Path(out_bin).write_bytes(b''.join(chunks))
