// tinydet: run a detector exported by pytorch2onnx.py (X.param + X.bin + the sidecar X.json) with NCNN.
//
// Everything about the model (input size, resize mode, blob names, head kind, strides, anchors, classes,
// thresholds) comes from the sidecar, so the same code runs Yolo-FastestV2 and LeYOLO exports. Decode and NMS
// follow utils/postprocess.py in the Python trainer, so the app and `test.py --backend ncnn` agree.
//
// Only NCNN is needed: drop tinydet.{h,cpp} and minijson.{h,cpp} into an Android (NDK) or Linux project.
#pragma once

#include <string>
#include <vector>

#include "net.h"  // ncnn

namespace tinydet {

// The sidecar JSON, checked (its keys: docs/deployment.md).
struct ModelInfo {
    int input_width = 0;
    int input_height = 0;
    bool letterbox = false;         // false: stretch to input size; true: keep aspect, centre, pad
    int pad_value = 114;            // letterbox border, in 0..255 pixel units
    std::string channel_order;      // "bgr" or "rgb": what the network's first conv expects
    float scale = 1.0f / 255.0f;    // pixel value multiplier
    std::string input_blob;
    std::vector<std::string> output_blobs;  // one per stride, strides ascending
    std::string head;               // "anchor" or "leyolo"
    std::vector<int> strides;
    std::vector<std::vector<std::pair<float, float>>> anchors_px;  // per stride: (w, h) in input pixels
    int num_classes = 0;
    std::vector<std::string> class_names;
    float conf_thresh = 0.25f;
    float nms_iou = 0.45f;
    int max_det = 300;              // optional key in the sidecar
};

// Read and check a sidecar. Throws std::runtime_error("path:line: what is wrong").
ModelInfo load_model_info(const std::string& json_path);

struct Detection {
    int class_id;
    float score;
    float x1, y1, x2, y2;  // original-image pixels
};

// Packed 8-bit pixels. RGBA is what Android's Bitmap (ARGB_8888) holds; alpha is ignored.
enum class PixelOrder { BGR, RGB, RGBA, BGRA };

struct Options {
    int num_threads = 1;
    bool allow_fp16 = true;  // NCNN's default: fp16 storage/arithmetic where the CPU has it. false: fp32 throughout
};

class Detector {
public:
    // Throws std::runtime_error when a file is missing or does not fit the sidecar.
    Detector(const std::string& param_path, const std::string& bin_path, const std::string& json_path,
             const Options& options = Options());

    // Detect on a packed 8-bit image (row stride = width * 3, or width * 4 for RGBA/BGRA).
    // Thresholds < 0 use the sidecar's.
    std::vector<Detection> detect(const unsigned char* pixels, int width, int height, PixelOrder order,
                                  float conf_thresh = -1.0f, float nms_iou = -1.0f);

    // Milliseconds the network forward took during the last detect() (pre- and post-processing excluded).
    double last_inference_ms() const { return last_inference_ms_; }

    const ModelInfo& info() const { return info_; }

private:
    ModelInfo info_;
    ncnn::Net net_;
    double last_inference_ms_ = 0.0;
};

}  // namespace tinydet
