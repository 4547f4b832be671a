// A small JSON reader for the model sidecar: enough JSON to read what pytorch2onnx.py writes, with errors that
// name the file and line. Kept in-tree (no library) so tinydet drops into an Android or Linux app with only NCNN.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace minijson {

struct Value {
    enum class Type { Null, Bool, Number, String, Array, Object };
    Type type = Type::Null;
    bool boolean = false;
    double number = 0.0;
    std::string string;
    std::vector<Value> array;
    std::map<std::string, Value> object;
    int line = 0;  // where the value starts in the file, for error messages
};

// Parse JSON text; `source_name` (the file path) prefixes error messages. Throws std::runtime_error.
Value parse(const std::string& text, const std::string& source_name);

// Read and parse a file. Throws std::runtime_error naming the file.
Value parse_file(const std::string& path);

}  // namespace minijson
