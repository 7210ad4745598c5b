// cpprestsdk adapter for the CLI: every cpprest, pplx and boost exception is
// caught here and becomes a Status (see http_client.h).
#define _TURN_OFF_PLATFORM_STRING
#include "fedge/cli/http_client.h"

#include <cpprest/http_client.h>
#include <pplx/pplxtasks.h>

#include <algorithm>
#include <system_error>

namespace fedge::cli {

StatusOr<HttpGetResponse> HttpGet(const std::string& host, int port, const std::string& path,
                                  std::chrono::milliseconds timeout, size_t max_body_bytes) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + timeout;
  const std::string base = "http://" + host + ":" + std::to_string(port);
  const std::string what = "GET " + base + path;
  const std::string timed_out = what + ": no answer within " + std::to_string(timeout.count()) + " ms";
  const std::string too_large = what + ": the response body is larger than " +
                                std::to_string(max_body_bytes) + " bytes (the client's limit)";
  // Cancelling drops the connection, so nothing keeps reading once we give up.
  pplx::cancellation_token_source cancel;
  try {
    web::http::client::http_client_config config;
    config.set_timeout(std::chrono::duration_cast<std::chrono::microseconds>(timeout));
    web::http::client::http_client client(base, config);
    web::http::http_request request(web::http::methods::GET);
    request.set_request_uri(path);
    request.headers().add(web::http::header_names::accept, "application/json");
    // Completes once the status line and the headers are in; the body streams.
    web::http::http_response response = client.request(request, cancel.get_token()).get();

    HttpGetResponse out;
    out.status = response.status_code();
    if (response.headers().content_length() > max_body_bytes) {
      cancel.cancel();
      return ResourceExhaustedError(too_large);
    }
    auto body = response.body().streambuf();
    char chunk[16384];
    for (;;) {
      // getn waits until `count` bytes are in or the body ends: ask for what has
      // arrived (at least one byte), so a slow body still returns here between
      // bytes and the overall deadline below is checked.
      const size_t count = std::clamp<size_t>(body.in_avail(), 1, sizeof(chunk));
      const size_t n = body.getn(reinterpret_cast<uint8_t*>(chunk), count).get();
      if (n == 0) break;  // end of the body
      if (out.body.size() + n > max_body_bytes) {
        cancel.cancel();
        return ResourceExhaustedError(too_large);
      }
      out.body.append(chunk, n);
      if (Clock::now() > deadline) {
        cancel.cancel();
        return DeadlineExceededError(timed_out);
      }
    }
    return out;
  } catch (const web::http::http_exception& e) {
    cancel.cancel();
    if (e.error_code() == std::errc::timed_out) return DeadlineExceededError(timed_out);
    return UnavailableError(what + ": " + e.what());
  } catch (const pplx::task_canceled&) {
    return UnavailableError(what + ": cancelled");
  } catch (const std::exception& e) {
    cancel.cancel();
    return UnavailableError(what + ": " + e.what());
  }
}

}  // namespace fedge::cli
