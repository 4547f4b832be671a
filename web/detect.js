// What the page does around the network, ported from utils/preprocess.py and utils/postprocess.py so the page finds
// what test.py finds: OpenCV's INTER_LINEAR resize (bit for bit), stretch or letterbox, the deployment input
// tensor, the decode of both heads, best class per box, OpenCV's class-aware NMSBoxesBatched, and the boxes mapped
// back to original pixels. Where numpy computes in float32 the port rounds to float32 too (Math.fround), so boxes and
// scores agree with Python to float32 rounding. Everything the model needs comes from its sidecar (model.json).
'use strict';

const tinydetDetect = (() => {
  const f32 = Math.fround;
  const MAX_BOXES_INTO_NMS = 30000;   // utils/postprocess.py: the highest-scoring boxes only go into NMS
  const MAX_DET = 300;
  const COEF_SCALE = 2048;            // OpenCV's fixed-point resize weights: 11 fractional bits

  /** Python's round() (and OpenCV's cvRound): a half goes to the even neighbour. */
  function roundHalfEven(x) {
    const r = Math.round(x);
    return (Math.abs(x % 1) === 0.5 && r % 2 !== 0) ? r - 1 : r;
  }

  /** Source index and fixed-point weights of each output pixel along one axis, as cv::resize computes them.
   * Horizontally a tap left of the image or on its last pixel is clamped with weight (1, 0); vertically the
   * rows are clamped when read and the weights are kept (OpenCV's two passes differ in this). */
  function linearTaps(dstSize, srcSize, vertical) {
    const scale = 1 / (dstSize / srcSize);
    const first = new Int32Array(dstSize);
    const weight0 = new Int32Array(dstSize);
    const weight1 = new Int32Array(dstSize);
    for (let d = 0; d < dstSize; d++) {
      let fraction = f32((d + 0.5) * scale - 0.5);
      let source = Math.floor(fraction);
      fraction = f32(fraction - source);
      if (!vertical && source < 0) { source = 0; fraction = 0; }
      if (!vertical && source >= srcSize - 1) { source = srcSize - 1; fraction = 0; }
      first[d] = source;
      weight0[d] = roundHalfEven(f32(1 - fraction) * COEF_SCALE);
      weight1[d] = roundHalfEven(fraction * COEF_SCALE);
    }
    return {first, weight0, weight1};
  }

  /** cv2.resize(image, (dstWidth, dstHeight), interpolation=cv2.INTER_LINEAR) of an RGBA image (ImageData's
   * layout) -> RGB Uint8Array, dstHeight x dstWidth x 3. */
  function resizeLinear(rgba, srcWidth, srcHeight, dstWidth, dstHeight) {
    const xTaps = linearTaps(dstWidth, srcWidth, false);
    const yTaps = linearTaps(dstHeight, srcHeight, true);
    const clampRow = (y) => Math.min(Math.max(y, 0), srcHeight - 1);
    const rowsNeeded = new Set();
    for (let d = 0; d < dstHeight; d++) {
      rowsNeeded.add(clampRow(yTaps.first[d]));
      rowsNeeded.add(clampRow(yTaps.first[d] + 1));
    }
    // horizontal pass: each needed source row resampled to dstWidth, in units of 1/2048
    const rows = new Map();
    for (const y of rowsNeeded) {
      const row = new Int32Array(dstWidth * 3);
      const base = y * srcWidth * 4;
      for (let d = 0; d < dstWidth; d++) {
        const x0 = base + xTaps.first[d] * 4;
        const x1 = base + Math.min(xTaps.first[d] + 1, srcWidth - 1) * 4;
        for (let c = 0; c < 3; c++) {
          row[d * 3 + c] = rgba[x0 + c] * xTaps.weight0[d] + rgba[x1 + c] * xTaps.weight1[d];
        }
      }
      rows.set(y, row);
    }
    // vertical pass, with OpenCV's rounding for 8-bit images
    const out = new Uint8Array(dstWidth * dstHeight * 3);
    for (let d = 0; d < dstHeight; d++) {
      const row0 = rows.get(clampRow(yTaps.first[d]));
      const row1 = rows.get(clampRow(yTaps.first[d] + 1));
      const beta0 = yTaps.weight0[d];
      const beta1 = yTaps.weight1[d];
      const offset = d * dstWidth * 3;
      for (let i = 0; i < dstWidth * 3; i++) {
        out[offset + i] = (((beta0 * (row0[i] >> 4)) >> 16) + ((beta1 * (row1[i] >> 4)) >> 16) + 2) >> 2;
      }
    }
    return out;
  }

  /** An RGBA image unchanged, as RGB. */
  function dropAlpha(rgba, width, height) {
    const out = new Uint8Array(width * height * 3);
    for (let i = 0, j = 0; i < width * height * 4; i += 4, j += 3) {
      out[j] = rgba[i];
      out[j + 1] = rgba[i + 1];
      out[j + 2] = rgba[i + 2];
    }
    return out;
  }

  /** utils/preprocess.py resize_image: RGBA pixels -> {rgb: the inputWidth x inputHeight RGB network input,
   * info: how input pixels map back: x_input = x_orig * ratioX + padX}. */
  function resizeImage(rgba, width, height, sidecar) {
    const inputWidth = sidecar.input_width;
    const inputHeight = sidecar.input_height;
    if (!sidecar.letterbox) {
      const same = width === inputWidth && height === inputHeight;
      const rgb = same ? dropAlpha(rgba, width, height) : resizeLinear(rgba, width, height, inputWidth, inputHeight);
      return {rgb, info: {ratioX: inputWidth / width, ratioY: inputHeight / height, padX: 0, padY: 0, width, height}};
    }
    const ratio = Math.min(inputWidth / width, inputHeight / height);
    const newWidth = roundHalfEven(width * ratio);
    const newHeight = roundHalfEven(height * ratio);
    const same = newWidth === width && newHeight === height;
    const resized = same ? dropAlpha(rgba, width, height) : resizeLinear(rgba, width, height, newWidth, newHeight);
    // pad_centred: the odd pixel of padding goes to the bottom / right, as Ultralytics does
    const left = Math.round((inputWidth - newWidth) / 2 - 0.1);
    const top = Math.round((inputHeight - newHeight) / 2 - 0.1);
    const padValue = sidecar.pad_value ?? 114;
    const rgb = new Uint8Array(inputWidth * inputHeight * 3).fill(padValue);
    for (let y = 0; y < newHeight; y++) {
      rgb.set(resized.subarray(y * newWidth * 3, (y + 1) * newWidth * 3), ((y + top) * inputWidth + left) * 3);
    }
    return {rgb, info: {ratioX: ratio, ratioY: ratio, padX: left, padY: top, width, height}};
  }

  /** utils/preprocess.py to_input_tensor: RGB pixels -> float32 NCHW data in the sidecar's channel order and
   * scale (the exporter's models take BGR scaled to 0..1). */
  function toInputData(rgb, sidecar) {
    const planeSize = sidecar.input_width * sidecar.input_height;
    const order = sidecar.channel_order === 'rgb' ? [0, 1, 2] : [2, 1, 0];
    const scale = sidecar.scale ?? 1 / 255;
    const data = new Float32Array(3 * planeSize);
    for (let plane = 0; plane < 3; plane++) {
      const channel = order[plane];
      for (let i = 0; i < planeSize; i++) {
        data[plane * planeSize + i] = rgb[i * 3 + channel] * scale;
      }
    }
    return data;
  }

  /** Every box of one output, its best class and that class's score (ties: the lowest class, as numpy's
   * argmax). Pushes onto candidates {boxes: [x1, y1, x2, y2, ...], scores, classes} in cell-major order. */
  function decodeScale(output, sidecar, scale, candidates) {
    const [, height, width, channels] = output.dims;
    const data = output.data;
    const numClasses = sidecar.num_classes;
    const strideX = f32(sidecar.input_width / width);
    const strideY = f32(sidecar.input_height / height);
    const anchors = sidecar.head === 'anchor' ? sidecar.anchors_px[scale] : [];
    const numAnchors = anchors.length;
    const expected = sidecar.head === 'anchor' ? 5 * numAnchors + numClasses : 4 + numClasses;
    if (channels !== expected) {
      throw new Error(`output ${scale} has ${channels} channels, but model.json (${sidecar.head} head, ` +
                      `${numClasses} classes) needs ${expected}: is model.json the one exported with model.onnx?`);
    }
    if (strideX !== sidecar.strides[scale] || strideY !== sidecar.strides[scale]) {
      throw new Error(`output ${scale} is ${height}x${width} (HxW), but model.json gives stride ` +
                      `${sidecar.strides[scale]} on a ${sidecar.input_width}x${sidecar.input_height} input`);
    }
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const cell = (y * width + x) * channels;
        if (sidecar.head === 'anchor') {
          for (let a = 0; a < numAnchors; a++) {
            const reg = cell + a * 4;
            const cx = f32(f32(f32(f32(data[reg] * 2) - 0.5) + x) * strideX);
            const cy = f32(f32(f32(f32(data[reg + 1] * 2) - 0.5) + y) * strideY);
            const w = f32(f32(f32(data[reg + 2] * 2) ** 2) * f32(anchors[a][0]));
            const h = f32(f32(f32(data[reg + 3] * 2) ** 2) * f32(anchors[a][1]));
            const objectness = data[cell + 4 * numAnchors + a];
            let best = -1;
            let bestClass = 0;
            for (let k = 0; k < numClasses; k++) {
              const score = f32(objectness * data[cell + 5 * numAnchors + k]);
              if (score > best) { best = score; bestClass = k; }
            }
            candidates.boxes.push(f32(cx - f32(w / 2)), f32(cy - f32(h / 2)), f32(cx + f32(w / 2)),
                                  f32(cy + f32(h / 2)));
            candidates.scores.push(best);
            candidates.classes.push(bestClass);
          }
        } else {
          const centreX = x + 0.5;
          const centreY = y + 0.5;
          candidates.boxes.push(f32(f32(centreX - data[cell]) * strideX), f32(f32(centreY - data[cell + 1]) * strideY),
                                f32(f32(centreX + data[cell + 2]) * strideX),
                                f32(f32(centreY + data[cell + 3]) * strideY));
          let best = -1;
          let bestClass = 0;
          for (let k = 0; k < numClasses; k++) {
            if (data[cell + 4 + k] > best) { best = data[cell + 4 + k]; bestClass = k; }
          }
          candidates.scores.push(best);
          candidates.classes.push(bestClass);
        }
      }
    }
  }

  /** utils/postprocess.py decode, then the best class of each box: the outputs in stride order (the sidecar's
   * output_blobs) -> {boxes: Float32Array K*4 (xyxy, input pixels), scores: Float32Array K, classes: Int32Array K}. */
  function decode(outputs, sidecar) {
    if (sidecar.head !== 'anchor' && sidecar.head !== 'leyolo') {
      throw new Error(`model.json: unknown head "${sidecar.head}" (expected "anchor" or "leyolo")`);
    }
    const candidates = {boxes: [], scores: [], classes: []};
    outputs.forEach((output, scale) => decodeScale(output, sidecar, scale, candidates));
    return {boxes: Float32Array.from(candidates.boxes), scores: Float32Array.from(candidates.scores),
            classes: Int32Array.from(candidates.classes)};
  }

  /** Indices sorted by score, highest first; equal scores keep their order (std::stable_sort, numpy's stable). */
  function byScoreDescending(indices, scores) {
    return indices.sort((i, j) => scores[j] - scores[i]);
  }

  /** cv::dnn::NMSBoxesBatched on (x, y, w, h) boxes: each class's boxes are moved apart so classes never suppress
   * each other; a box is kept when its overlap with every kept box is at most iouThresh. */
  function nmsBoxesBatched(xywh, scores, classes, confThresh, iouThresh) {
    let maxCoord = 0;
    for (let i = 0; i < scores.length; i++) {
      maxCoord = Math.max(maxCoord, xywh[i][0], xywh[i][1], xywh[i][0] + xywh[i][2], xywh[i][1] + xywh[i][3]);
    }
    const moved = xywh.map(([x, y, w, h], i) => {
      const offset = classes[i] * (maxCoord + 1);
      return [x + offset, y + offset, w, h];
    });
    const threshold = f32(confThresh);
    const order = byScoreDescending([...scores.keys()].filter((i) => scores[i] > threshold), scores);
    const kept = [];
    const limit = f32(iouThresh);
    for (const i of order) {
      if (kept.every((k) => rectOverlap(moved[i], moved[k]) <= limit)) {
        kept.push(i);
      }
    }
    return kept;
  }

  /** OpenCV's rectOverlap of two Rect2d: intersection over union, returned as float. */
  function rectOverlap(a, b) {
    const areaA = a[2] * a[3];
    const areaB = b[2] * b[3];
    if (areaA + areaB <= Number.EPSILON) {
      return 1;
    }
    const width = Math.min(a[0] + a[2], b[0] + b[2]) - Math.max(a[0], b[0]);
    const height = Math.min(a[1] + a[3], b[1] + b[3]) - Math.max(a[1], b[1]);
    const intersection = width > 0 && height > 0 ? width * height : 0;
    return f32(1 - f32(1 - intersection / (areaA + areaB - intersection)));
  }

  /** utils/postprocess.py nms + utils/preprocess.py boxes_to_original for one image: the decoded candidates ->
   * [{class_id, score, x1, y1, x2, y2}] in original pixels, best first, at most 300. */
  function selectDetections(candidates, info, confThresh, iouThresh) {
    const {boxes, scores, classes} = candidates;
    const threshold = f32(confThresh);
    let keep = [];
    for (let i = 0; i < scores.length; i++) {
      if (scores[i] > threshold) keep.push(i);
    }
    if (keep.length > MAX_BOXES_INTO_NMS) {
      keep = byScoreDescending(keep, scores).slice(0, MAX_BOXES_INTO_NMS);
    }
    const xywh = keep.map((i) => [boxes[4 * i], boxes[4 * i + 1], f32(boxes[4 * i + 2] - boxes[4 * i]),
                                  f32(boxes[4 * i + 3] - boxes[4 * i + 1])]);
    const keptScores = Float32Array.from(keep, (i) => scores[i]);
    const keptClasses = Int32Array.from(keep, (i) => classes[i]);
    const kept = nmsBoxesBatched(xywh, keptScores, keptClasses, confThresh, iouThresh).slice(0, MAX_DET);
    const ratioX = f32(info.ratioX);
    const ratioY = f32(info.ratioY);
    const toOriginal = (value, pad, ratio, size) => Math.min(Math.max(f32(f32(value - pad) / ratio), 0), size);
    return kept.map((n) => {
      const i = keep[n];
      return {class_id: classes[i], score: scores[i],
              x1: toOriginal(boxes[4 * i], info.padX, ratioX, info.width),
              y1: toOriginal(boxes[4 * i + 1], info.padY, ratioY, info.height),
              x2: toOriginal(boxes[4 * i + 2], info.padX, ratioX, info.width),
              y2: toOriginal(boxes[4 * i + 3], info.padY, ratioY, info.height)};
    });
  }

  return {resizeImage, toInputData, decode, selectDetections};
})();
