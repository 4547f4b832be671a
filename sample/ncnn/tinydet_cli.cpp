// tinydet_cli: detect objects in one image with an exported model, print them, draw them, optionally time them.
//
//   tinydet_cli MODEL.param IMAGE [--out drawn.jpg] [--conf F] [--iou F] [--threads T] [--bench N] [--fp32]
//
// MODEL.bin and the sidecar MODEL.json are found beside MODEL.param. Each detection prints as one line:
//   class_id score x1 y1 x2 y2 class_name        (original-image pixels)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include "stb_image.h"
#include "stb_image_write.h"

#include "tinydet.h"

namespace {

const char* kUsage =
    "usage: tinydet_cli MODEL.param IMAGE [options]\n"
    "  MODEL.bin and MODEL.json (the sidecar written by pytorch2onnx.py) must lie beside MODEL.param.\n"
    "  --out PATH     where to write the image with boxes drawn (.jpg, .png or .bmp; default <image>_det.jpg\n"
    "                 in the current folder)\n"
    "  --conf F       score threshold (default: the sidecar's conf_thresh)\n"
    "  --iou F        NMS IoU threshold (default: the sidecar's nms_iou)\n"
    "  --threads T    NCNN threads (default 1)\n"
    "  --bench N      also run N timed detections and print the median inference time\n"
    "  --fp32         keep NCNN in fp32 even where the CPU has fp16 arithmetic (for exact comparisons)\n"
    "prints one line per detection: class_id score x1 y1 x2 y2 class_name (original-image pixels)\n";

struct Args {
    std::string param, image, out;
    float conf = -1.0f, iou = -1.0f;
    int threads = 1, bench = 0;
    bool fp32 = false;
};

std::string replace_extension(const std::string& path, const std::string& new_ext) {
    size_t slash = path.find_last_of('/');
    size_t dot = path.find_last_of('.');
    if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) return path + new_ext;
    return path.substr(0, dot) + new_ext;
}

std::string base_name(const std::string& path) {
    size_t slash = path.find_last_of('/');
    return slash == std::string::npos ? path : path.substr(slash + 1);
}

float parse_float(const char* flag, const char* text) {
    char* end = nullptr;
    float value = std::strtof(text, &end);
    if (end == text || *end != '\0') throw std::runtime_error(std::string(flag) + ": not a number: " + text);
    return value;
}

int parse_int(const char* flag, const char* text, int minimum) {
    char* end = nullptr;
    long value = std::strtol(text, &end, 10);
    if (end == text || *end != '\0' || value < minimum)
        throw std::runtime_error(std::string(flag) + ": expected an integer >= " + std::to_string(minimum) +
                                 ", got " + text);
    return static_cast<int>(value);
}

Args parse_args(int argc, char** argv) {
    Args args;
    std::vector<std::string> positional;
    for (int i = 1; i < argc; i++) {
        std::string flag = argv[i];
        auto value = [&]() -> const char* {
            if (i + 1 >= argc) throw std::runtime_error(flag + " needs a value");
            return argv[++i];
        };
        if (flag == "--out") args.out = value();
        else if (flag == "--conf") args.conf = parse_float("--conf", value());
        else if (flag == "--iou") args.iou = parse_float("--iou", value());
        else if (flag == "--threads") args.threads = parse_int("--threads", value(), 1);
        else if (flag == "--bench") args.bench = parse_int("--bench", value(), 0);
        else if (flag == "--fp32") args.fp32 = true;
        else if (flag == "-h" || flag == "--help") { std::fputs(kUsage, stdout); std::exit(0); }
        else if (!flag.empty() && flag[0] == '-') throw std::runtime_error("unknown option " + flag);
        else positional.push_back(flag);
    }
    if (positional.size() != 2) throw std::runtime_error("expected MODEL.param and IMAGE");
    args.param = positional[0];
    args.image = positional[1];
    if (args.out.empty()) args.out = replace_extension(base_name(args.image), "_det.jpg");
    return args;
}

// A colour per class, spread around the hue circle so neighbours differ.
void class_colour(int class_id, unsigned char rgb[3]) {
    float hue = std::fmod(class_id * 0.618034f, 1.0f) * 6.0f;
    float x = 1.0f - std::fabs(std::fmod(hue, 2.0f) - 1.0f);
    float r = 0, g = 0, b = 0;
    switch (static_cast<int>(hue)) {
        case 0: r = 1; g = x; break;
        case 1: r = x; g = 1; break;
        case 2: g = 1; b = x; break;
        case 3: g = x; b = 1; break;
        case 4: r = x; b = 1; break;
        default: r = 1; b = x; break;
    }
    rgb[0] = static_cast<unsigned char>(55 + 200 * r);
    rgb[1] = static_cast<unsigned char>(55 + 200 * g);
    rgb[2] = static_cast<unsigned char>(55 + 200 * b);
}

void draw_box(unsigned char* pixels, int width, int height, int channels, const tinydet::Detection& d,
              int thickness) {
    unsigned char colour[3];
    class_colour(d.class_id, colour);
    int x1 = static_cast<int>(d.x1), y1 = static_cast<int>(d.y1);
    int x2 = std::min(static_cast<int>(d.x2), width - 1), y2 = std::min(static_cast<int>(d.y2), height - 1);
    auto paint = [&](int x, int y) {
        if (x < 0 || y < 0 || x >= width || y >= height) return;
        std::memcpy(pixels + (static_cast<size_t>(y) * width + x) * channels, colour, 3);
    };
    for (int t = 0; t < thickness; t++) {
        for (int x = x1; x <= x2; x++) { paint(x, y1 + t); paint(x, y2 - t); }
        for (int y = y1; y <= y2; y++) { paint(x1 + t, y); paint(x2 - t, y); }
    }
}

bool write_image(const std::string& path, int width, int height, int channels, const unsigned char* pixels) {
    std::string lower = path;
    std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
    auto ends_with = [&](const char* ext) {
        size_t n = std::strlen(ext);
        return lower.size() >= n && lower.compare(lower.size() - n, n, ext) == 0;
    };
    if (ends_with(".png")) return stbi_write_png(path.c_str(), width, height, channels, pixels, width * channels) != 0;
    if (ends_with(".bmp")) return stbi_write_bmp(path.c_str(), width, height, channels, pixels) != 0;
    if (ends_with(".jpg") || ends_with(".jpeg")) return stbi_write_jpg(path.c_str(), width, height, channels, pixels, 90) != 0;
    throw std::runtime_error(path + ": --out must end in .jpg, .jpeg, .png or .bmp");
}

double median(std::vector<double> values) {
    std::sort(values.begin(), values.end());
    size_t n = values.size();
    return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

int run(const Args& args) {
    tinydet::Options options;
    options.num_threads = args.threads;
    options.allow_fp16 = !args.fp32;
    tinydet::Detector detector(args.param, replace_extension(args.param, ".bin"),
                               replace_extension(args.param, ".json"), options);

    int width = 0, height = 0, channels = 0;
    if (!stbi_info(args.image.c_str(), &width, &height, &channels))
        throw std::runtime_error(args.image + ": cannot read image (" + stbi_failure_reason() + ")");
    // Images with alpha go in as RGBA, the layout of an Android Bitmap; the rest as RGB.
    channels = channels == 4 ? 4 : 3;
    const tinydet::PixelOrder order = channels == 4 ? tinydet::PixelOrder::RGBA : tinydet::PixelOrder::RGB;
    unsigned char* pixels = stbi_load(args.image.c_str(), &width, &height, nullptr, channels);
    if (!pixels) throw std::runtime_error(args.image + ": cannot read image (" + stbi_failure_reason() + ")");

    std::vector<tinydet::Detection> detections =
        detector.detect(pixels, width, height, order, args.conf, args.iou);
    const tinydet::ModelInfo& info = detector.info();
    for (const tinydet::Detection& d : detections) {
        std::string name = d.class_id < static_cast<int>(info.class_names.size()) ? info.class_names[d.class_id]
                                                                                  : std::to_string(d.class_id);
        std::printf("%d %.4f %.2f %.2f %.2f %.2f %s\n", d.class_id, d.score, d.x1, d.y1, d.x2, d.y2, name.c_str());
    }

    if (args.bench > 0) {
        std::vector<double> inference_ms, detect_ms;
        for (int i = 0; i < args.bench; i++) {
            auto start = std::chrono::steady_clock::now();
            detector.detect(pixels, width, height, order, args.conf, args.iou);
            detect_ms.push_back(
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
            inference_ms.push_back(detector.last_inference_ms());
        }
        std::printf("bench: %d runs, %d threads, %dx%d input: inference median %.2f ms (min %.2f), "
                    "detect incl. resize+decode+nms median %.2f ms\n",
                    args.bench, args.threads, info.input_width, info.input_height, median(inference_ms),
                    *std::min_element(inference_ms.begin(), inference_ms.end()), median(detect_ms));
    }

    int thickness = std::max(1, std::min(width, height) / 300);
    for (const tinydet::Detection& d : detections) draw_box(pixels, width, height, channels, d, thickness);
    bool written = write_image(args.out, width, height, channels, pixels);
    stbi_image_free(pixels);
    if (!written) throw std::runtime_error(args.out + ": cannot write image");
    std::fprintf(stderr, "%zu detections; drawn into %s\n", detections.size(), args.out.c_str());
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(parse_args(argc, argv));
    } catch (const std::exception& error) {
        std::fprintf(stderr, "tinydet_cli: %s\n", error.what());
        if (argc < 3) std::fputs(kUsage, stderr);
        return 1;
    }
}
