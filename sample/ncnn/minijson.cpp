#include "minijson.h"

#include <algorithm>
#include <clocale>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace minijson {
namespace {

// Arrays and objects nest at most this deep. The sidecar needs 4 levels (the object, "anchors_px", one list per
// stride, [w, h]); the limit keeps a hostile or corrupt file from exhausting the stack of this recursive parser.
const int kMaxDepth = 32;

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
    int depth_ = 0;  // arrays and objects open around the value being parsed

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

    // Counts one level of nesting for the lifetime of an array or object being parsed.
    class DepthGuard {
    public:
        explicit DepthGuard(Parser& parser) : parser_(parser) {
            if (++parser_.depth_ > kMaxDepth)
                parser_.fail("arrays and objects nested more than " + std::to_string(kMaxDepth) + " deep");
        }
        ~DepthGuard() { parser_.depth_--; }
        DepthGuard(const DepthGuard&) = delete;
        DepthGuard& operator=(const DepthGuard&) = delete;

    private:
        Parser& parser_;
    };

    bool at_digit() const { return pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9'; }

    void skip_digits() {
        while (at_digit()) pos_++;
    }

    // JSON's number grammar, -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?, checked before strtod sees the text:
    // strtod alone would also take "-Infinity", "-nan" and hex. A value that overflows a double (1e999) is refused
    // too, so every Number holds a finite value.
    double parse_number() {
        const size_t start = pos_;
        if (text_[pos_] == '-') pos_++;
        if (!at_digit()) fail("expected a digit after '-'");
        if (text_[pos_] == '0') pos_++;
        else skip_digits();
        if (pos_ < text_.size() && text_[pos_] == '.') {
            pos_++;
            if (!at_digit()) fail("expected a digit after the decimal point");
            skip_digits();
        }
        if (pos_ < text_.size() && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
            pos_++;
            if (pos_ < text_.size() && (text_[pos_] == '+' || text_[pos_] == '-')) pos_++;
            if (!at_digit()) fail("expected a digit in the exponent");
            skip_digits();
        }
        const std::string literal = text_.substr(start, pos_ - start);
        // strtod reads the C locale's decimal point; an app that set another (a ',') must still read "0.5".
        std::string local = literal;
        const char point = *std::localeconv()->decimal_point;
        if (point != '.' && point != '\0') std::replace(local.begin(), local.end(), '.', point);
        const double number = std::strtod(local.c_str(), nullptr);
        if (!std::isfinite(number)) fail("number " + literal + " is out of range");
        return number;
    }

    Value parse_value() {
        char c = peek();
        Value value;
        value.line = line_;
        if (c == '{') {
            DepthGuard guard(*this);
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
            DepthGuard guard(*this);
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
            value.type = Value::Type::Number;
            value.number = parse_number();
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
                        if (low < 0xDC00 || low > 0xDFFF) fail("a high surrogate \\u escape without its low half");
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
