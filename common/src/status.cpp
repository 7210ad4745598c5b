#include "fedge/status.h"

#include <cstdio>
#include <cstdlib>

namespace fedge {

std::string_view StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return "OK";
    case StatusCode::kCancelled:
      return "CANCELLED";
    case StatusCode::kUnknown:
      return "UNKNOWN";
    case StatusCode::kInvalidArgument:
      return "INVALID_ARGUMENT";
    case StatusCode::kDeadlineExceeded:
      return "DEADLINE_EXCEEDED";
    case StatusCode::kNotFound:
      return "NOT_FOUND";
    case StatusCode::kAlreadyExists:
      return "ALREADY_EXISTS";
    case StatusCode::kPermissionDenied:
      return "PERMISSION_DENIED";
    case StatusCode::kResourceExhausted:
      return "RESOURCE_EXHAUSTED";
    case StatusCode::kFailedPrecondition:
      return "FAILED_PRECONDITION";
    case StatusCode::kAborted:
      return "ABORTED";
    case StatusCode::kOutOfRange:
      return "OUT_OF_RANGE";
    case StatusCode::kUnimplemented:
      return "UNIMPLEMENTED";
    case StatusCode::kInternal:
      return "INTERNAL";
    case StatusCode::kUnavailable:
      return "UNAVAILABLE";
    case StatusCode::kDataLoss:
      return "DATA_LOSS";
    case StatusCode::kUnauthenticated:
      return "UNAUTHENTICATED";
  }
  return "UNKNOWN";
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  std::string out(StatusCodeName(code_));
  out += ": ";
  out += message_;
  return out;
}

Status Status::WithContext(std::string_view context) const {
  if (ok()) return *this;
  return Status(code_, std::string(context) + ": " + message_);
}

#define FEDGE_DEFINE_ERROR_(fn, code) \
  Status fn(std::string message) { return Status(StatusCode::code, std::move(message)); }
FEDGE_DEFINE_ERROR_(CancelledError, kCancelled)
FEDGE_DEFINE_ERROR_(InvalidArgumentError, kInvalidArgument)
FEDGE_DEFINE_ERROR_(DeadlineExceededError, kDeadlineExceeded)
FEDGE_DEFINE_ERROR_(NotFoundError, kNotFound)
FEDGE_DEFINE_ERROR_(AlreadyExistsError, kAlreadyExists)
FEDGE_DEFINE_ERROR_(PermissionDeniedError, kPermissionDenied)
FEDGE_DEFINE_ERROR_(ResourceExhaustedError, kResourceExhausted)
FEDGE_DEFINE_ERROR_(FailedPreconditionError, kFailedPrecondition)
FEDGE_DEFINE_ERROR_(AbortedError, kAborted)
FEDGE_DEFINE_ERROR_(OutOfRangeError, kOutOfRange)
FEDGE_DEFINE_ERROR_(UnimplementedError, kUnimplemented)
FEDGE_DEFINE_ERROR_(InternalError, kInternal)
FEDGE_DEFINE_ERROR_(UnavailableError, kUnavailable)
FEDGE_DEFINE_ERROR_(DataLossError, kDataLoss)
FEDGE_DEFINE_ERROR_(UnauthenticatedError, kUnauthenticated)
#undef FEDGE_DEFINE_ERROR_

void DieBecause(const char* what, const Status& status) {
  std::fprintf(stderr, "fatal: %s: %s\n", what, status.ToString().c_str());
  std::abort();
}

}  // namespace fedge
