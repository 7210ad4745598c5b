// The one place libtorch exceptions become a Status: model code runs torch work
// inside TorchCall, so no exception crosses the model library's boundary
// (fedge's rule: recoverable failures return a status).
//
//   return TorchCall("Train", [&]() -> StatusOr<TrainResult> { ... });
//
// c10::Error (a failed TORCH_CHECK, a shape mismatch, an allocation failure)
// and any other std::exception turn into INTERNAL "<what>: libtorch: <message>";
// `on_error`, if given, runs first (e.g. to put a module back in eval mode).
// Internal header of fedge_agent_model.
#pragma once

#include <c10/util/Exception.h>

#include <exception>
#include <string>
#include <string_view>
#include <type_traits>

#include "fedge/status.h"

namespace fedge::agent {

template <typename Fn, typename OnError>
auto TorchCall(std::string_view what, Fn&& fn, OnError&& on_error) -> decltype(fn()) {
  try {
    return fn();
  } catch (const c10::Error& e) {
    on_error();
    return InternalError(std::string(what) + ": libtorch: " + e.what_without_backtrace());
  } catch (const std::exception& e) {
    on_error();
    return InternalError(std::string(what) + ": " + e.what());
  }
}

template <typename Fn>
auto TorchCall(std::string_view what, Fn&& fn) -> decltype(fn()) {
  return TorchCall(what, std::forward<Fn>(fn), [] {});
}

}  // namespace fedge::agent
