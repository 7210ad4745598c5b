// Tensor shapes in error messages ("[2, 384]"). Torch-free.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fedge::agent {

inline std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

}  // namespace fedge::agent
