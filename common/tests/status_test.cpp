#include "fedge/status.h"

#include <gtest/gtest.h>

#include <memory>

namespace fedge {
namespace {

StatusOr<int> ParsePositive(int v) {
  if (v <= 0) return InvalidArgumentError("must be > 0, got " + std::to_string(v));
  return v;
}

StatusOr<int> Doubled(int v) {
  FEDGE_ASSIGN_OR_RETURN(int x, ParsePositive(v));
  return 2 * x;
}

Status CheckBoth(int a, int b) {
  FEDGE_RETURN_IF_ERROR(ParsePositive(a).status().WithContext("a"));
  FEDGE_RETURN_IF_ERROR(ParsePositive(b).status().WithContext("b"));
  return OkStatus();
}

TEST(StatusTest, ToStringNamesCodeAndMessage) {
  EXPECT_EQ(OkStatus().ToString(), "OK");
  EXPECT_EQ(DataLossError("checksum mismatch").ToString(), "DATA_LOSS: checksum mismatch");
  EXPECT_EQ(static_cast<int>(StatusCode::kUnauthenticated), 16);  // same numbering as gRPC
}

TEST(StatusTest, MacrosPropagateErrorsWithContext) {
  EXPECT_EQ(*Doubled(4), 8);
  StatusOr<int> bad = Doubled(-1);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  Status s = CheckBoth(1, 0);
  EXPECT_EQ(s.message(), "b: must be > 0, got 0");
  EXPECT_TRUE(CheckBoth(1, 2).ok());
}

TEST(StatusTest, StatusOrHoldsMoveOnlyValues) {
  StatusOr<std::unique_ptr<int>> p = std::make_unique<int>(7);
  ASSERT_TRUE(p.ok());
  std::unique_ptr<int> taken = std::move(p).value();
  EXPECT_EQ(*taken, 7);
}

TEST(StatusDeathTest, ValueOfErrorAborts) {
  StatusOr<int> bad = NotFoundError("nope");
  EXPECT_DEATH((void)bad.value(), "NOT_FOUND: nope");
}

}  // namespace
}  // namespace fedge
