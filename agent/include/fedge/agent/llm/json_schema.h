// Structured outputs (OpenAI's response_format {"type": "json_schema", ...}):
// generation constrained so that the reply is a JSON object that a JSON Schema
// accepts. CompileJsonSchema turns the schema into a graph of nodes once per
// request; JsonSchemaPrefix is a byte-level pushdown automaton over that graph that
// accepts exactly the prefixes of the JSON texts the compiled schema accepts, with
// whitespace bounded as JsonPrefix bounds it (json_grammar.h). JsonConstraint masks
// tokens with it. Torch-free.
//
// What a schema may say (the subset pydantic and OpenAI's strict mode write):
//   type (a name or a list of names), properties, required, additionalProperties
//   (false, true or a schema), items, minItems, maxItems, minLength, maxLength,
//   format (date, time, date-time, uuid, ipv4), pattern (an ASCII regular
//   expression: classes, groups, alternation, quantifiers), enum, const, anyOf,
//   allOf of one schema, $ref to "#", "#/$defs/..." or "#/definitions/..."
//   (recursion allowed), and annotations (title, description, default, examples,
//   $schema, $id, $comment, deprecated, readOnly, writeOnly).
// Any other keyword (minimum, multipleOf, oneOf, uniqueItems, ...) is refused by name and
// place: it would be a constraint the reply is not held to. The root must be an
// object, as OpenAI's structured outputs require.
//
// Where the automaton is narrower than JSON Schema (every text it accepts is valid,
// not every valid text is accepted):
//   - An object's listed properties come in the schema's order (OpenAI's strict
//     mode writes them so); an optional one may be left out. Keys are written as
//     json.dumps writes them (no needless \u escapes).
//   - An object that lists properties takes no others, whatever
//     additionalProperties says; one that lists none takes any key with values of
//     the additionalProperties schema (any JSON value if absent or true).
//   - enum and const values are written as json.dumps writes them ("1.0" is not 1).
//   - "integer" is written without a fraction or exponent.
//   - A string with a format or pattern is written in printable ASCII without
//     escapes.
//   - Objects and arrays nest at most JsonPrefix::kMaxDepth deep; where anyOf
//     leaves more than kMaxAlternatives readings of the bytes so far open at once,
//     the rest are dropped.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "fedge/status.h"

namespace fedge::agent::llm {

class JsonSchema;  // compiled; immutable once built, shared across threads

// Limits on what a request's schema may cost.
struct JsonSchemaLimits {
  size_t max_nodes = 4096;        // compiled nodes (each type, property value, enum)
  size_t max_enum_values = 1024;  // per enum
  size_t max_properties = 1024;   // per object
};

// `schema` is JSON text. INVALID_ARGUMENT for a schema that is malformed or accepts
// no object; UNIMPLEMENTED for a keyword outside the subset above. Messages name the
// place as a JSON pointer ("#/properties/zip").
StatusOr<std::shared_ptr<const JsonSchema>> CompileJsonSchema(std::string_view schema,
                                                              const JsonSchemaLimits& limits = {});

// A tool call for tool_choice "required" or a named function: the object
// {"name": <a tool's name>, <arguments_key>: <its arguments>} between `before` and
// `after` (Hermes: "<tool_call>\n" and "\n</tool_call>"; Llama 3's JSON: nothing).
// The arguments are held to the tool's `parameters` schema; where it is empty, or
// cannot be compiled and the tool is not strict, to any object. A strict tool's
// schema that cannot be compiled is an error naming the tool.
struct ToolSchema {
  std::string name;
  std::string parameters;  // JSON text; empty: none given
  bool strict = false;
};
StatusOr<std::shared_ptr<const JsonSchema>> CompileToolCallSchema(const std::vector<ToolSchema>& tools,
                                                                  std::string_view arguments_key,
                                                                  std::string before, std::string after,
                                                                  const JsonSchemaLimits& limits = {});

class JsonSchemaPrefix {
 public:
  static constexpr size_t kMaxAlternatives = 16;

  explicit JsonSchemaPrefix(std::shared_ptr<const JsonSchema> schema);

  // Takes one byte; false if the bytes so far are no longer a prefix of a text the
  // schema accepts (then do not use it further).
  bool Feed(unsigned char c);
  bool FeedAll(std::string_view bytes);
  // The bytes so far are a whole text the schema accepts (nothing may follow).
  bool Complete() const;
  // This state copied into *out, reusing out's storage (the mask does this once per
  // token).
  void CopyTo(JsonSchemaPrefix* out) const;

  // One open value, an element of a stack (public for the implementation's helpers).
  struct Frame {
    uint32_t node = 0;
    uint8_t state = 0;
    uint8_t hex_left = 0;
    uint16_t a = 0;  // object: next property; array: items so far; literal: candidate
    uint16_t b = 0;  // object: property being keyed; literal: bytes matched; string: chars
    uint16_t c = 0;  // object: key bytes matched; string: Utf8Next's state
  };
  // One reading of the bytes so far: frames_[begin, begin + size).
  struct Alternative {
    uint32_t begin = 0;
    uint16_t size = 0;
    uint8_t depth = 0;      // open objects and arrays
    uint8_t space_run = 0;  // JsonWhitespace's state
  };

 private:
  std::shared_ptr<const JsonSchema> schema_;
  std::vector<Frame> frames_;
  std::vector<Alternative> alternatives_;
  std::vector<Frame> next_frames_;
  std::vector<Alternative> next_alternatives_;
};

}  // namespace fedge::agent::llm
