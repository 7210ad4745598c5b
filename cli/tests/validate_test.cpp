#include "fedge/cli/validate.h"

#include <gtest/gtest.h>

#include <sstream>
#include <string>

namespace fedge::cli {
namespace {

const char* kValid = R"({"apiVersion": "fedge.io/v1alpha1", "kind": "FederatedTrainingJob",
  "metadata": {"name": "demo"},
  "spec": {"model": {"path": "/m", "labels": ["a", "b"]}, "data": {"path": "/d"}}})";

TEST(ValidateManifestTest, ValidManifestExitsZeroAndNamesTheJob) {
  std::istringstream in(kValid);
  std::ostringstream out, err;
  EXPECT_EQ(ValidateManifest("-", in, out, err), kValidateOk);
  EXPECT_EQ(out.str(), "<stdin>: valid FederatedTrainingJob default/demo\n");
  EXPECT_EQ(err.str(), "");
}

TEST(ValidateManifestTest, InvalidManifestExitsOneWithEveryProblemOnStderr) {
  std::string text = kValid;
  text.replace(text.find(R"("labels": ["a", "b"])"), 20, R"("labels": ["a"], "maxSeqLen": 1)");
  std::istringstream in(text);
  std::ostringstream out, err;
  EXPECT_EQ(ValidateManifest("-", in, out, err), kValidateInvalid);
  EXPECT_EQ(out.str(), "");
  EXPECT_NE(err.str().find("spec.model.labels: task sequence-classification needs at least 2"),
            std::string::npos)
      << err.str();
  EXPECT_NE(err.str().find("spec.model.maxSeqLen: must be >= 2, got 1"), std::string::npos) << err.str();
}

TEST(ValidateManifestTest, UnreadableFileExitsTwo) {
  std::istringstream in;
  std::ostringstream out, err;
  EXPECT_EQ(ValidateManifest("/nonexistent/job.yaml", in, out, err), kValidateUnreadable);
  EXPECT_NE(err.str().find("/nonexistent/job.yaml"), std::string::npos) << err.str();
}

}  // namespace
}  // namespace fedge::cli
