"""NCNN's text .param format: read it into layers, write layers back, and the per-layer hint the export sets.

A .param file, as NCNN's Net::load_param reads it:

    7767517                                   the magic number
    <layer count> <blob count>
    <type> <name> <bottom count> <top count> <bottoms...> <tops...> <key>=<value> ...     one line per layer

Values stay the text that was written (arrays keep their `-233xx` key and comma list), so reading a file and
writing it back changes nothing: the writer pads type and name to 24 columns, as pnnx and NCNN's own tools do,
and a pnnx-written .param comes back byte for byte.

The hint: NCNN reads a per-layer feature mask from key 31 of a layer's line; bit 5 of it turns
`use_sgemm_convolution` off for that layer alone. NCNN's x86 Convolution picks im2col + GEMM for any convolution
with over 16 input or output channels, also for the stem that reads the 3-channel image, where the im2col matrix
has only 27 rows but 176x176 columns (3.3 MB at 352x352, more than L2). With the bit set the stem runs NCNN's
direct packed kernel instead: the outputs stay bit-identical (tests/test_export.py) and the whole Yolo-FastestV2
network at 352x352 on 1 thread runs faster (bench/latency.py; docs/benchmarks.md, "CPU latency"). Other
convolutions of our models are 1x1 or depthwise, which the bit leaves alone. The direct kernel runs on one thread
only, while the GEMM path splits across threads, so the NCNN runtime clears the hint when it runs more threads;
the INT8 writer clears it on the layers it quantizes (NCNN's INT8 direct kernel is the slower one there).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from utils.errors import NcnnModelError

PARAM_MAGIC = 7767517
FEATURE_MASK_KEY = 31            # a layer's own feature mask (read by NCNN's Net::load_param)
FEATURE_MASK_NO_SGEMM = 1 << 5   # bit 5 of it: use_sgemm_convolution off for that layer (NCNN's get_masked_option)
STEM_MAX_INPUT_CHANNELS = 4      # a k x k convolution reading this few channels reads the image: the stem
COLUMN_WIDTH = 24                # type and name columns, padded as pnnx and NCNN's tools write them


@dataclass
class ParamLayer:
    type: str
    name: str
    bottoms: list
    tops: list
    params: dict            # key (int) -> value text exactly as written (arrays keep their `-233xx` key)
    line_no: int = 0        # line in the file it was read from (1-based); 0 for a layer made in code

    def int_param(self, key: int, default: int) -> int:
        return int(float(self.params.get(key, default)))


def read_param(path) -> tuple[list[ParamLayer], int]:
    """Parse the text .param at `path` into (layers, blob_count)."""
    return parse_param(Path(path).read_text(), source=path)


def parse_param(text: str, source='<text>') -> tuple[list[ParamLayer], int]:
    """Parse .param text into (layers, blob_count); errors name `source` (the file) and the line."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != str(PARAM_MAGIC):
        raise NcnnModelError(f'{source}:1: not an NCNN text .param (first line must be {PARAM_MAGIC})')
    try:
        layer_count, blob_count = (int(v) for v in lines[1].split())
    except (IndexError, ValueError):
        raise NcnnModelError(f'{source}:2: expected "layer_count blob_count"') from None
    layers = []
    for line_no, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        try:
            n_bottom, n_top = int(fields[2]), int(fields[3])
            bottoms = fields[4:4 + n_bottom]
            tops = fields[4 + n_bottom:4 + n_bottom + n_top]
            params = {}
            for item in fields[4 + n_bottom + n_top:]:
                key, value = item.split('=', 1)
                params[int(key)] = value
        except (IndexError, ValueError):
            raise NcnnModelError(f'{source}:{line_no}: cannot parse layer line "{line.strip()}"') from None
        if len(tops) != n_top:
            raise NcnnModelError(f'{source}:{line_no}: layer "{fields[1]}" lists fewer blobs than it declares')
        layers.append(ParamLayer(fields[0], fields[1], bottoms, tops, params, line_no))
    if len(layers) != layer_count:
        raise NcnnModelError(f'{source}:2: header says {layer_count} layers, file has {len(layers)}')
    return layers, blob_count


def param_text(layers: list[ParamLayer], blob_count: int) -> str:
    """The .param text of `layers`, in the layout pnnx writes."""
    out = [str(PARAM_MAGIC), f'{len(layers)} {blob_count}']
    for layer in layers:
        fields = [f'{layer.type:<{COLUMN_WIDTH}}', f'{layer.name:<{COLUMN_WIDTH}}', str(len(layer.bottoms)),
                  str(len(layer.tops)), *layer.bottoms, *layer.tops, *(f'{k}={v}' for k, v in layer.params.items())]
        out.append(' '.join(fields))
    return '\n'.join(out) + '\n'


def write_param(path, layers: list[ParamLayer], blob_count: int) -> None:
    Path(path).write_text(param_text(layers, blob_count))


def io_blobs(layers: list[ParamLayer], source='<text>') -> tuple[str, list[str]]:
    """(input blob, output blobs) of a model: the top of its one Input layer, and the blobs pnnx names out0,
    out1, ... in that order (the ONNX graph's outputs); in a .param without such names, the blobs produced and
    never consumed, in file order."""
    inputs = [layer.tops[0] for layer in layers if layer.type == 'Input' and layer.tops]
    if len(inputs) != 1:
        raise NcnnModelError(f'{source}: expected exactly one Input layer, found {len(inputs)}')
    produced = [top for layer in layers for top in layer.tops]
    named = [top for top in produced if top.startswith('out') and top[3:].isdigit()]
    if named:
        return inputs[0], sorted(named, key=lambda name: int(name[3:]))
    consumed = {bottom for layer in layers for bottom in layer.bottoms}
    outputs = [top for top in produced if top not in consumed]
    if not outputs:
        raise NcnnModelError(f'{source}: no output blob (every blob is consumed by a layer)')
    return inputs[0], outputs


def read_io_blobs(path) -> tuple[str, list[str]]:
    """(input blob, output blobs) of the .param at `path` (see io_blobs)."""
    return io_blobs(read_param(path)[0], source=path)


def feature_mask(layer: ParamLayer) -> int:
    return int(layer.params.get(FEATURE_MASK_KEY, 0))


def set_feature_mask(layer: ParamLayer, mask: int) -> None:
    """Store `mask` under key 31, in place if the key is there, else at the end; a mask of 0 drops the key."""
    if mask:
        layer.params[FEATURE_MASK_KEY] = str(mask)
    else:
        layer.params.pop(FEATURE_MASK_KEY, None)


def is_stem_convolution(layer: ParamLayer) -> bool:
    """A k x k (k > 1) Convolution with at most STEM_MAX_INPUT_CHANNELS input channels and its weights in the .bin.

    Input channels are not written in a .param: they are weight count / (outputs * kernel_w * kernel_h).
    """
    if layer.type != 'Convolution' or layer.int_param(19, 0):   # 19=1: weights come from a blob
        return False
    kernel_w = layer.int_param(1, 0)
    kernel_h = layer.int_param(11, kernel_w)
    num_output, weight_count = layer.int_param(0, 0), layer.int_param(6, 0)
    if kernel_w * kernel_h <= 1 or num_output == 0:   # 1x1: the hint changes nothing there
        return False
    return weight_count // (num_output * kernel_w * kernel_h) <= STEM_MAX_INPUT_CHANNELS


def add_stem_hint(layers: list[ParamLayer]) -> list[str]:
    """Set the no-GEMM bit on every stem convolution, keeping the other bits of a mask already there.
    Returns the names of those layers. Running it twice changes nothing more."""
    hinted = []
    for layer in layers:
        if is_stem_convolution(layer):
            set_feature_mask(layer, feature_mask(layer) | FEATURE_MASK_NO_SGEMM)
            hinted.append(layer.name)
    return hinted


def clear_hint(layer: ParamLayer) -> None:
    """Clear the no-GEMM bit of `layer`, keeping its other mask bits (a mask left at 0 is dropped)."""
    set_feature_mask(layer, feature_mask(layer) & ~FEATURE_MASK_NO_SGEMM)
