#include "minijson.h"

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace minijson {
namespace {

class Parser {
public:
    Parser(const std::string& text, const std::string& source) : text_(text), source_(source) {}

    Value parse_document() {
        Value value = parse_value();
        skip_space();
        if (pos_ != text_.size()) fail("unexpected text after the JSON value");
        return value;
    }

private:
    const std::string& text_;
    const std::string& source_;
    size_t pos_ = 0;
    int line_ = 1;

    [[noreturn]] void fail(const std::string& what) const {
        throw std::runtime_error(source_ + ":" + std::to_string(line_) + ": " + what);
    }

    void skip_space() {
        while (pos_ < text_.size()) {
            char c = text_[pos_];
            if (c == '\n') line_++;
            else if (c != ' ' && c != '\t' && c != '\r') break;
            pos_++;
        }
    }

    char peek() {
        skip_space();
        if (pos_ >= text_.size()) fail("unexpected end of file");
        return text_[pos_];
    }

    void expect(char c) {
        if (peek() != c) fail(std::string("expected '") + c + "', found '" + text_[pos_] + "'");
        pos_++;
    }

    bool consume_word(const char* word) {
        size_t n = std::char_traits<char>::length(word);
        if (text_.compare(pos_, n, word) != 0) return false;
        pos_ += n;
        return true;
    }

    Value parse_value() {
        char c = peek();
        Value value;
        value.line = line_;
        if (c == '{') {
            value.type = Value::Type::Object;
            pos_++;
            if (peek() == '}') { pos_++; return value; }
            while (true) {
                if (peek() != '"') fail("expected a quoted key");
                std::string key = parse_string();
                expect(':');
                value.object[key] = parse_value();
                char next = peek();
                pos_++;
                if (next == ',') continue;
                if (next == '}') return value;
                fail(std::string("expected ',' or '}' after a value, found '") + next + "'");
            }
        }
        if (c == '[') {
            value.type = Value::Type::Array;
            pos_++;
            if (peek() == ']') { pos_++; return value; }
            while (true) {
                value.array.push_back(parse_value());
                char next = peek();
                pos_++;
                if (next == ',') continue;
                if (next == ']') return value;
                fail(std::string("expected ',' or ']' after a value, found '") + next + "'");
            }
        }
        if (c == '"') {
            value.type = Value::Type::String;
            value.string = parse_string();
            return value;
        }
        if (consume_word("true")) { value.type = Value::Type::Bool; value.boolean = true; return value; }
        if (consume_word("false")) { value.type = Value::Type::Bool; return value; }
        if (consume_word("null")) return value;
        if (c == '-' || (c >= '0' && c <= '9')) {
            const char* start = text_.c_str() + pos_;
            char* end = nullptr;
            value.type = Value::Type::Number;
            value.number = std::strtod(start, &end);
            pos_ += static_cast<size_t>(end - start);
            return value;
        }
        fail(std::string("unexpected character '") + c + "'");
    }

    static void append_utf8(std::string& out, unsigned code) {
        if (code < 0x80) {
            out += static_cast<char>(code);
        } else if (code < 0x800) {
            out += static_cast<char>(0xC0 | (code >> 6));
            out += static_cast<char>(0x80 | (code & 0x3F));
        } else if (code < 0x10000) {
            out += static_cast<char>(0xE0 | (code >> 12));
            out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (code & 0x3F));
        } else {
            out += static_cast<char>(0xF0 | (code >> 18));
            out += static_cast<char>(0x80 | ((code >> 12) & 0x3F));
            out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (code & 0x3F));
        }
    }

    unsigned parse_hex4() {
        if (pos_ + 4 > text_.size()) fail("truncated \\u escape");
        unsigned code = 0;
        for (int i = 0; i < 4; i++) {
            char h = text_[pos_++];
            code <<= 4;
            if (h >= '0' && h <= '9') code |= static_cast<unsigned>(h - '0');
            else if (h >= 'a' && h <= 'f') code |= static_cast<unsigned>(h - 'a' + 10);
            else if (h >= 'A' && h <= 'F') code |= static_cast<unsigned>(h - 'A' + 10);
            else fail("bad hex digit in \\u escape");
        }
        return code;
    }

    std::string parse_string() {
        pos_++;  // opening quote
        std::string out;
        while (true) {
            if (pos_ >= text_.size()) fail("unterminated string");
            char c = text_[pos_++];
            if (c == '"') return out;
            if (c == '\n') fail("newline inside a string");
            if (c != '\\') { out += c; continue; }
            if (pos_ >= text_.size()) fail("unterminated string");
            char e = text_[pos_++];
            switch (e) {
                case '"': out += '"'; break;
                case '\\': out += '\\'; break;
                case '/': out += '/'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'u': {
                    unsigned code = parse_hex4();
                    // A surrogate pair encodes one code point above U+FFFF (json.dumps writes them by default).
                    if (code >= 0xD800 && code < 0xDC00 && text_.compare(pos_, 2, "\\u") == 0) {
                        pos_ += 2;
                        unsigned low = parse_hex4();
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                    }
                    append_utf8(out, code);
                    break;
                }
                default: fail(std::string("unknown escape '\\") + e + "'");
            }
        }
    }
};

}  // namespace

Value parse(const std::string& text, const std::string& source_name) {
    return Parser(text, source_name).parse_document();
}

Value parse_file(const std::string& path) {
    std::ifstream file(path, std::ios::binary);
    if (!file) throw std::runtime_error(path + ": cannot open file");
    std::stringstream buffer;
    buffer << file.rdbuf();
    return parse(buffer.str(), path);
}

}  // namespace minijson
