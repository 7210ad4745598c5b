// LoadExamples: the JSONL reader for labelled text (torch-free).
#include <nlohmann/json.hpp>

#include "fedge/agent/text_classifier.h"
#include "fedge/file_util.h"

namespace fedge::agent {

StatusOr<std::vector<Example>> LoadExamples(const std::string& path, const std::vector<std::string>& labels) {
  FEDGE_ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
  std::vector<Example> examples;
  size_t pos = 0;
  int line_no = 0;
  while (pos < bytes.size()) {
    size_t nl = bytes.find('\n', pos);
    if (nl == std::string::npos) nl = bytes.size();
    std::string_view line(bytes.data() + pos, nl - pos);
    pos = nl + 1;
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;  // blank line
    auto where = [&] { return path + ":" + std::to_string(line_no) + ": "; };
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      return InvalidArgumentError(where() + "not a JSON object");
    }
    auto text = j.find("text");
    if (text == j.end() || !text->is_string()) {
      return InvalidArgumentError(where() + "missing string field \"text\"");
    }
    Example ex;
    ex.text = text->get<std::string>();
    auto label = j.find("label");
    if (label == j.end() || label->is_null()) {
      ex.label = -1;
    } else if (label->is_string()) {
      const std::string name = label->get<std::string>();
      auto it = std::find(labels.begin(), labels.end(), name);
      if (it == labels.end()) {
        return InvalidArgumentError(where() + "unknown label '" + name + "' (not among the " +
                                    std::to_string(labels.size()) + " configured labels)");
      }
      ex.label = static_cast<int>(it - labels.begin());
    } else if (label->is_number_integer()) {
      const int64_t id = label->get<int64_t>();
      if (id < 0 || id >= static_cast<int64_t>(labels.size())) {
        return InvalidArgumentError(where() + "label id " + std::to_string(id) + " out of range [0, " +
                                    std::to_string(labels.size()) + ")");
      }
      ex.label = static_cast<int>(id);
    } else {
      return InvalidArgumentError(where() + "\"label\" must be a string or an integer id");
    }
    examples.push_back(std::move(ex));
  }
  return examples;
}

}  // namespace fedge::agent
