#include "tinydet.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <stdexcept>

#include "minijson.h"

namespace tinydet {
namespace {

using minijson::Value;

// ---- sidecar checks: every error names file, line and key ------------------------------------------------------

struct SidecarReader {
    const std::string& path;
    const Value& root;

    [[noreturn]] void fail(const Value& at, const std::string& what) const {
        throw std::runtime_error(path + ":" + std::to_string(at.line) + ": " + what);
    }

    const Value* find(const char* key) const {
        auto it = root.object.find(key);
        return it == root.object.end() ? nullptr : &it->second;
    }

    const Value& require(const char* key, Value::Type type, const char* type_name) const {
        const Value* value = find(key);
        if (!value) fail(root, std::string("key \"") + key + "\" is missing");
        if (value->type != type) fail(*value, std::string("key \"") + key + "\" must be " + type_name);
        return *value;
    }

    double number(const Value& value, const std::string& what) const {
        if (value.type != Value::Type::Number) fail(value, what + " must be a number");
        return value.number;
    }

    static std::string shown(double n) {
        char text[32];
        std::snprintf(text, sizeof text, "%g", n);
        return text;
    }

    int integer(const Value& value, const std::string& what, int minimum) const {
        double n = number(value, what);
        if (n != std::floor(n) || n < minimum)
            fail(value, what + " must be an integer >= " + std::to_string(minimum) + ", got " + std::to_string(n));
        // Beyond int's range the conversion below would be undefined behaviour.
        if (n > std::numeric_limits<int>::max())
            fail(value, what + " must be an integer <= " + std::to_string(std::numeric_limits<int>::max()) +
                            ", got " + shown(n));
        return static_cast<int>(n);
    }

    // minijson only holds finite numbers; one above float's range would still become inf here.
    float to_float(const Value& value, const std::string& what) const {
        double n = number(value, what);
        if (std::fabs(n) > std::numeric_limits<float>::max())
            fail(value, what + " is out of float range, got " + shown(n));
        return static_cast<float>(n);
    }

    float positive(const Value& value, const std::string& what) const {
        float n = to_float(value, what);
        if (!(n > 0.0f)) fail(value, what + " must be > 0, got " + shown(n));
        return n;
    }

    float fraction(const Value& value, const std::string& what) const {
        float n = to_float(value, what);
        if (n < 0.0f || n > 1.0f) fail(value, what + " must be in [0, 1], got " + shown(n));
        return n;
    }

    int integer(const char* key, int minimum) const {
        return integer(require(key, Value::Type::Number, "a number"), std::string("\"") + key + "\"", minimum);
    }

    std::string string(const char* key) const { return require(key, Value::Type::String, "a string").string; }

    float optional_fraction(const char* key, float fallback) const {
        const Value* value = find(key);
        return value ? fraction(*value, std::string("\"") + key + "\"") : fallback;
    }
};

ModelInfo read_model_info(const std::string& path, const Value& root) {
    SidecarReader r{path, root};
    if (root.type != Value::Type::Object) r.fail(root, "the sidecar must be a JSON object");
    ModelInfo info;
    info.input_width = r.integer("input_width", 1);
    info.input_height = r.integer("input_height", 1);
    info.letterbox = r.require("letterbox", Value::Type::Bool, "true or false").boolean;
    info.pad_value = r.find("pad_value") ? r.integer("pad_value", 0) : 114;
    info.channel_order = r.string("channel_order");
    if (info.channel_order != "bgr" && info.channel_order != "rgb")
        r.fail(*r.find("channel_order"), "\"channel_order\" must be \"bgr\" or \"rgb\", got \"" +
                                             info.channel_order + "\"");
    info.scale = r.positive(r.require("scale", Value::Type::Number, "a number"), "\"scale\"");
    info.input_blob = r.string("input_blob");
    for (const Value& name : r.require("output_blobs", Value::Type::Array, "a list of blob names").array) {
        if (name.type != Value::Type::String) r.fail(name, "\"output_blobs\" must hold strings");
        info.output_blobs.push_back(name.string);
    }
    info.head = r.string("head");
    if (info.head != "anchor" && info.head != "leyolo")
        r.fail(*r.find("head"), "\"head\" must be \"anchor\" or \"leyolo\", got \"" + info.head + "\"");
    for (const Value& stride : r.require("strides", Value::Type::Array, "a list of integers").array)
        info.strides.push_back(r.integer(stride, "a stride", 1));
    const Value& strides = *r.find("strides");
    if (info.strides.size() != info.output_blobs.size())
        r.fail(strides, std::to_string(info.strides.size()) + " strides but " +
                            std::to_string(info.output_blobs.size()) + " output blobs");
    if (info.head == "anchor") {
        const Value& anchors = r.require("anchors_px", Value::Type::Array, "a list (per stride) of [w, h] lists");
        if (anchors.array.size() != info.strides.size())
            r.fail(anchors, "\"anchors_px\" needs one list per stride (" + std::to_string(info.strides.size()) +
                                "), got " + std::to_string(anchors.array.size()));
        for (const Value& per_scale : anchors.array) {
            if (per_scale.type != Value::Type::Array || per_scale.array.empty())
                r.fail(per_scale, "each \"anchors_px\" entry must be a non-empty list of [w, h]");
            std::vector<std::pair<float, float>> scale_anchors;
            for (const Value& wh : per_scale.array) {
                if (wh.type != Value::Type::Array || wh.array.size() != 2)
                    r.fail(wh, "an anchor must be [w, h] in input pixels");
                scale_anchors.emplace_back(r.positive(wh.array[0], "an anchor width"),
                                           r.positive(wh.array[1], "an anchor height"));
            }
            info.anchors_px.push_back(scale_anchors);
        }
    }
    info.num_classes = r.integer("num_classes", 1);
    if (const Value* names = r.find("class_names")) {
        if (names->type != Value::Type::Array) r.fail(*names, "\"class_names\" must be a list of strings");
        for (const Value& name : names->array) {
            if (name.type != Value::Type::String) r.fail(name, "\"class_names\" must hold strings");
            info.class_names.push_back(name.string);
        }
        if (static_cast<int>(info.class_names.size()) != info.num_classes)
            r.fail(*names, std::to_string(info.class_names.size()) + " class names for num_classes " +
                               std::to_string(info.num_classes));
    }
    info.conf_thresh = r.optional_fraction("conf_thresh", info.conf_thresh);
    info.nms_iou = r.optional_fraction("nms_iou", info.nms_iou);
    if (r.find("max_det")) info.max_det = r.integer("max_det", 1);
    return info;
}

// ---- pre-processing: the same mapping as utils/preprocess.py ---------------------------------------------------

struct ResizeInfo {
    float ratio_x, ratio_y, pad_x, pad_y;
    int orig_width, orig_height;
};

// Python's round(): halves go to the even neighbour. nearbyint does that in the default rounding mode.
int round_half_even(double x) { return static_cast<int>(std::nearbyint(x)); }

ncnn::Mat make_input(const ModelInfo& info, const unsigned char* pixels, int width, int height, PixelOrder order,
                     ResizeInfo& resize) {
    bool want_bgr = info.channel_order == "bgr";
    int pixel_type = 0;
    switch (order) {
        case PixelOrder::BGR: pixel_type = want_bgr ? ncnn::Mat::PIXEL_BGR : ncnn::Mat::PIXEL_BGR2RGB; break;
        case PixelOrder::RGB: pixel_type = want_bgr ? ncnn::Mat::PIXEL_RGB2BGR : ncnn::Mat::PIXEL_RGB; break;
        case PixelOrder::RGBA: pixel_type = want_bgr ? ncnn::Mat::PIXEL_RGBA2BGR : ncnn::Mat::PIXEL_RGBA2RGB; break;
        case PixelOrder::BGRA: pixel_type = want_bgr ? ncnn::Mat::PIXEL_BGRA2BGR : ncnn::Mat::PIXEL_BGRA2RGB; break;
    }
    resize.orig_width = width;
    resize.orig_height = height;
    ncnn::Mat input;
    if (!info.letterbox) {
        // NCNN's bilinear resize; it may round a pixel one grey level away from cv2.INTER_LINEAR (Python).
        input = ncnn::Mat::from_pixels_resize(pixels, pixel_type, width, height, info.input_width,
                                              info.input_height);
        resize.ratio_x = static_cast<float>(static_cast<double>(info.input_width) / width);
        resize.ratio_y = static_cast<float>(static_cast<double>(info.input_height) / height);
        resize.pad_x = resize.pad_y = 0.0f;
    } else {
        double ratio = std::min(static_cast<double>(info.input_width) / width,
                                static_cast<double>(info.input_height) / height);
        int new_w = round_half_even(width * ratio), new_h = round_half_even(height * ratio);
        ncnn::Mat scaled = ncnn::Mat::from_pixels_resize(pixels, pixel_type, width, height, new_w, new_h);
        // Odd padding splits the way Ultralytics (and utils/preprocess.py) does.
        double dw = (info.input_width - new_w) / 2.0, dh = (info.input_height - new_h) / 2.0;
        int top = round_half_even(dh - 0.1), bottom = round_half_even(dh + 0.1);
        int left = round_half_even(dw - 0.1), right = round_half_even(dw + 0.1);
        ncnn::copy_make_border(scaled, input, top, bottom, left, right, ncnn::BORDER_CONSTANT,
                               static_cast<float>(info.pad_value));
        resize.ratio_x = resize.ratio_y = static_cast<float>(ratio);
        resize.pad_x = static_cast<float>(left);
        resize.pad_y = static_cast<float>(top);
    }
    const float norm[3] = {info.scale, info.scale, info.scale};
    input.substract_mean_normalize(nullptr, norm);
    return input;
}

// ---- decode: the deployment layout of docs/architecture.md, as utils/postprocess.py reads it ---------------------

struct Candidate {
    float x1, y1, x2, y2;  // network-input pixels
    float score;
    int class_id;
};

// One output blob: an NHWC (1, H, W, C) tensor that NCNN holds as a Mat with c=H, h=W, w=C.
void decode_scale(const ModelInfo& info, size_t scale_index, const ncnn::Mat& out, float conf_thresh,
                  std::vector<Candidate>& candidates) {
    const int stride = info.strides[scale_index];
    const int C = info.num_classes;
    const bool anchor_head = info.head == "anchor";
    const int A = anchor_head ? static_cast<int>(info.anchors_px[scale_index].size()) : 0;
    const int channels = anchor_head ? 5 * A + C : 4 + C;
    const int grid_h = out.c, grid_w = out.h;
    if (out.dims != 3 || out.w != channels || grid_w * stride != info.input_width ||
        grid_h * stride != info.input_height)
        throw std::runtime_error("output blob \"" + info.output_blobs[scale_index] + "\" has shape (c=" +
                                 std::to_string(out.c) + ", h=" + std::to_string(out.h) + ", w=" +
                                 std::to_string(out.w) + "); the sidecar implies (c=" +
                                 std::to_string(info.input_height / stride) + ", h=" +
                                 std::to_string(info.input_width / stride) + ", w=" + std::to_string(channels) +
                                 ") for stride " + std::to_string(stride));
    for (int gy = 0; gy < grid_h; gy++) {
        const ncnn::Mat row_block = out.channel(gy);
        for (int gx = 0; gx < grid_w; gx++) {
            const float* v = row_block.row(gx);
            if (anchor_head) {
                // [sigmoid(reg) 4A anchor-major, sigmoid(obj) A, softmax(cls) C]
                const float* obj = v + 4 * A;
                const float* cls = v + 5 * A;
                for (int a = 0; a < A; a++) {
                    int best = 0;
                    float best_score = obj[a] * cls[0];
                    for (int c = 1; c < C; c++) {
                        float s = obj[a] * cls[c];
                        if (s > best_score) { best_score = s; best = c; }
                    }
                    if (best_score <= conf_thresh) continue;
                    const float* reg = v + 4 * a;
                    float cx = (reg[0] * 2.0f - 0.5f + gx) * stride;
                    float cy = (reg[1] * 2.0f - 0.5f + gy) * stride;
                    float bw = (reg[2] * 2.0f) * (reg[2] * 2.0f) * info.anchors_px[scale_index][a].first;
                    float bh = (reg[3] * 2.0f) * (reg[3] * 2.0f) * info.anchors_px[scale_index][a].second;
                    candidates.push_back({cx - 0.5f * bw, cy - 0.5f * bh, cx + 0.5f * bw, cy + 0.5f * bh,
                                          best_score, best});
                }
            } else {
                // [l, t, r, b in grid cells (after DFL), sigmoid(cls) C]
                const float* cls = v + 4;
                int best = 0;
                for (int c = 1; c < C; c++)
                    if (cls[c] > cls[best]) best = c;
                if (cls[best] <= conf_thresh) continue;
                float ax = gx + 0.5f, ay = gy + 0.5f;
                candidates.push_back({(ax - v[0]) * stride, (ay - v[1]) * stride, (ax + v[2]) * stride,
                                      (ay + v[3]) * stride, cls[best], best});
            }
        }
    }
}

// ---- class-aware greedy NMS --------------------------------------------------------------------------------------

float iou(const Candidate& a, const Candidate& b) {
    float iw = std::min(a.x2, b.x2) - std::max(a.x1, b.x1);
    float ih = std::min(a.y2, b.y2) - std::max(a.y1, b.y1);
    if (iw <= 0.0f || ih <= 0.0f) return 0.0f;
    float inter = iw * ih;
    float area_a = (a.x2 - a.x1) * (a.y2 - a.y1), area_b = (b.x2 - b.x1) * (b.y2 - b.y1);
    return inter / (area_a + area_b - inter);
}

// As utils/postprocess.py: at most this many boxes enter NMS, so a near-zero threshold cannot stall it.
const size_t kMaxBoxesIntoNms = 30000;

std::vector<Candidate> nms(std::vector<Candidate> candidates, float iou_thresh, int max_det) {
    std::stable_sort(candidates.begin(), candidates.end(),
                     [](const Candidate& a, const Candidate& b) { return a.score > b.score; });
    if (candidates.size() > kMaxBoxesIntoNms) candidates.resize(kMaxBoxesIntoNms);
    std::vector<Candidate> kept;
    for (const Candidate& c : candidates) {
        bool suppressed = false;
        for (const Candidate& k : kept)
            if (k.class_id == c.class_id && iou(k, c) > iou_thresh) { suppressed = true; break; }
        if (suppressed) continue;
        kept.push_back(c);
        if (static_cast<int>(kept.size()) >= max_det) break;
    }
    return kept;
}

}  // namespace

ModelInfo load_model_info(const std::string& json_path) {
    return read_model_info(json_path, minijson::parse_file(json_path));
}

Detector::Detector(const std::string& param_path, const std::string& bin_path, const std::string& json_path,
                   const Options& options)
    : info_(load_model_info(json_path)) {
    net_.opt.num_threads = options.num_threads;
    if (!options.allow_fp16) {
        net_.opt.use_fp16_packed = false;
        net_.opt.use_fp16_storage = false;
        net_.opt.use_fp16_arithmetic = false;
    }
    if (net_.load_param(param_path.c_str()) != 0)
        throw std::runtime_error(param_path + ": NCNN could not read this .param file");
    // The export marks the stem conv "no im2col+GEMM" (featmask bit 5): NCNN's direct kernel is faster on one
    // thread but runs on one thread only, so with more threads the GEMM path wins (as utils/runtimes/ncnn_runtime.py does).
    if (options.num_threads > 1)
        for (ncnn::Layer* layer : net_.mutable_layers()) layer->featmask &= ~(1 << 5);
    if (net_.load_model(bin_path.c_str()) != 0)
        throw std::runtime_error(bin_path + ": NCNN could not read the weights (do they match " + param_path + "?)");
    std::vector<std::string> wanted = info_.output_blobs;
    wanted.push_back(info_.input_blob);
    for (const std::string& name : wanted) {
        bool found = false;
        for (const ncnn::Blob& blob : net_.blobs()) found = found || blob.name == name;
        if (!found) throw std::runtime_error(json_path + ": blob \"" + name + "\" is not in " + param_path);
    }
}

std::vector<Detection> Detector::detect(const unsigned char* pixels, int width, int height, PixelOrder order,
                                        float conf_thresh, float nms_iou) {
    if (!pixels || width <= 0 || height <= 0) throw std::runtime_error("detect: empty image");
    if (conf_thresh < 0.0f) conf_thresh = info_.conf_thresh;
    if (nms_iou < 0.0f) nms_iou = info_.nms_iou;

    ResizeInfo resize;
    ncnn::Mat input = make_input(info_, pixels, width, height, order, resize);

    auto start = std::chrono::steady_clock::now();
    std::vector<ncnn::Mat> outputs(info_.output_blobs.size());
    {
        ncnn::Extractor extractor = net_.create_extractor();
        extractor.input(info_.input_blob.c_str(), input);
        for (size_t i = 0; i < outputs.size(); i++)
            if (extractor.extract(info_.output_blobs[i].c_str(), outputs[i]) != 0)
                throw std::runtime_error("NCNN failed to compute blob \"" + info_.output_blobs[i] + "\"");
    }
    last_inference_ms_ = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();

    std::vector<Candidate> candidates;
    for (size_t i = 0; i < outputs.size(); i++) decode_scale(info_, i, outputs[i], conf_thresh, candidates);

    std::vector<Detection> detections;
    for (const Candidate& c : nms(candidates, nms_iou, info_.max_det)) {
        auto back_x = [&](float x) {
            return std::min(std::max((x - resize.pad_x) / resize.ratio_x, 0.0f), static_cast<float>(width));
        };
        auto back_y = [&](float y) {
            return std::min(std::max((y - resize.pad_y) / resize.ratio_y, 0.0f), static_cast<float>(height));
        };
        detections.push_back({c.class_id, c.score, back_x(c.x1), back_y(c.y1), back_x(c.x2), back_y(c.y2)});
    }
    return detections;
}

}  // namespace tinydet
