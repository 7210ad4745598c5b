// Status and StatusOr: how fedge reports recoverable failures.
//
// Codes mirror gRPC's numerically so a Status crosses the wire unchanged.
// Exceptions from libraries (cpprestsdk, libtorch, nlohmann::json, yaml-cpp)
// are caught at the adapter that calls them and converted to a Status; they
// never cross a module boundary.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace fedge {

enum class StatusCode : int {
  kOk = 0,
  kCancelled = 1,
  kUnknown = 2,
  kInvalidArgument = 3,
  kDeadlineExceeded = 4,
  kNotFound = 5,
  kAlreadyExists = 6,
  kPermissionDenied = 7,
  kResourceExhausted = 8,
  kFailedPrecondition = 9,
  kAborted = 10,
  kOutOfRange = 11,
  kUnimplemented = 12,
  kInternal = 13,
  kUnavailable = 14,
  kDataLoss = 15,
  kUnauthenticated = 16,
};

std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // "INVALID_ARGUMENT: message", or "OK".
  std::string ToString() const;

  // Returns a copy whose message is "context: message" (no-op on OK).
  Status WithContext(std::string_view context) const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status OkStatus() { return Status(); }
Status CancelledError(std::string message);
Status InvalidArgumentError(std::string message);
Status DeadlineExceededError(std::string message);
Status NotFoundError(std::string message);
Status AlreadyExistsError(std::string message);
Status PermissionDeniedError(std::string message);
Status ResourceExhaustedError(std::string message);
Status FailedPreconditionError(std::string message);
Status AbortedError(std::string message);
Status OutOfRangeError(std::string message);
Status UnimplementedError(std::string message);
Status InternalError(std::string message);
Status UnavailableError(std::string message);
Status DataLossError(std::string message);
Status UnauthenticatedError(std::string message);

// Holds either a value or a non-OK Status. Accessing the value of an error
// StatusOr is a bug and aborts.
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(const Status& status) : v_(status) { CheckNotOk(); }        // NOLINT(implicit)
  StatusOr(Status&& status) : v_(std::move(status)) { CheckNotOk(); }  // NOLINT(implicit)
  StatusOr(const T& value) : v_(value) {}                              // NOLINT(implicit)
  StatusOr(T&& value) : v_(std::move(value)) {}                        // NOLINT(implicit)

  bool ok() const { return std::holds_alternative<T>(v_); }
  Status status() const { return ok() ? Status() : std::get<Status>(v_); }

  const T& value() const& {
    CheckOk();
    return std::get<T>(v_);
  }
  T& value() & {
    CheckOk();
    return std::get<T>(v_);
  }
  T&& value() && {
    CheckOk();
    return std::get<T>(std::move(v_));
  }
  const T& operator*() const& { return value(); }
  T& operator*() & { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  const T* operator->() const { return &value(); }
  T* operator->() { return &value(); }

 private:
  void CheckNotOk() const;
  void CheckOk() const;
  std::variant<Status, T> v_;
};

[[noreturn]] void DieBecause(const char* what, const Status& status);

template <typename T>
void StatusOr<T>::CheckNotOk() const {
  if (std::get<Status>(v_).ok()) DieBecause("StatusOr constructed from OK status", Status());
}
template <typename T>
void StatusOr<T>::CheckOk() const {
  if (!ok()) DieBecause("value() on an error StatusOr", std::get<Status>(v_));
}

}  // namespace fedge

#define FEDGE_CONCAT_INNER_(a, b) a##b
#define FEDGE_CONCAT_(a, b) FEDGE_CONCAT_INNER_(a, b)

// Returns the Status of `expr` from the enclosing function if it is not OK.
#define FEDGE_RETURN_IF_ERROR(expr)                \
  do {                                             \
    ::fedge::Status fedge_status_ = (expr);        \
    if (!fedge_status_.ok()) return fedge_status_; \
  } while (0)

// `FEDGE_ASSIGN_OR_RETURN(auto x, F());` declares x from F()'s value or returns its error.
#define FEDGE_ASSIGN_OR_RETURN(lhs, expr) \
  FEDGE_ASSIGN_OR_RETURN_IMPL_(FEDGE_CONCAT_(fedge_statusor_, __LINE__), lhs, expr)
#define FEDGE_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(tmp).value()
