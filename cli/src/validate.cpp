#include "fedge/cli/validate.h"

#include <iostream>
#include <iterator>

#include "fedge/cli/io.h"
#include "fedge/job_spec.h"

namespace fedge::cli {

int ValidateManifest(const std::string& path, std::istream& stdin_stream, std::ostream& out,
                     std::ostream& err) {
  std::string text;
  if (path == "-") {
    text.assign(std::istreambuf_iterator<char>(stdin_stream), std::istreambuf_iterator<char>());
  } else {
    auto read = ReadWholeFile(path);
    if (!read.ok()) {
      err << "error: " << read.status().message() << "\n";
      return kValidateUnreadable;
    }
    text = std::move(*read);
  }
  auto spec = ParseJobSpec(text);
  if (!spec.ok()) {
    err << "error: " << (path == "-" ? "<stdin>" : path) << ": " << spec.status().message() << "\n";
    return kValidateInvalid;
  }
  out << (path == "-" ? "<stdin>" : path) << ": valid FederatedTrainingJob " << spec->Key() << "\n";
  return kValidateOk;
}

}  // namespace fedge::cli
