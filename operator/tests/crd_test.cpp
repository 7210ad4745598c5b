// The CRD is the user's documentation (`kubectl explain`) and the chart ships a copy:
// every field must be described, and the copies (CRD, Grafana dashboard) must not drift.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include <yaml-cpp/yaml.h>

namespace {

std::string Source() {
  const char* s = std::getenv("FEDGE_SOURCE_DIR");
  return s ? s : FEDGE_TEST_SOURCE_DIR;
}

std::string Read(const std::string& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void Walk(const YAML::Node& schema, const std::string& path, std::vector<std::string>* missing) {
  if (schema["properties"]) {
    for (const auto& kv : schema["properties"]) {
      std::string name = kv.first.as<std::string>();
      std::string p = path + "." + name;
      if (name != "metadata" && !kv.second["description"]) missing->push_back(p);
      Walk(kv.second, p, missing);
    }
  }
  if (schema["items"]) Walk(schema["items"], path + "[]", missing);
}

TEST(CrdTest, EveryFieldHasADescription) {
  YAML::Node crd = YAML::LoadFile(Source() + "/crds/fedge.io_federatedtrainingjobs.yaml");
  YAML::Node schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
  ASSERT_TRUE(schema);
  std::vector<std::string> missing;
  Walk(schema, "", &missing);
  EXPECT_TRUE(missing.empty()) << "fields without description: " << missing.front();
  EXPECT_EQ(crd["spec"]["names"]["shortNames"][0].as<std::string>(), "ftj");
  EXPECT_TRUE(crd["spec"]["versions"][0]["subresources"]["status"]);
}

TEST(CrdTest, HelmChartShipsTheSameCrd) {
  EXPECT_EQ(Read(Source() + "/crds/fedge.io_federatedtrainingjobs.yaml"),
            Read(Source() + "/helm/fedge/crds/fedge.io_federatedtrainingjobs.yaml"))
      << "copy crds/fedge.io_federatedtrainingjobs.yaml to helm/fedge/crds/";
}

// The chart's Grafana dashboard ConfigMap reads helm/fedge/files/ (a chart cannot read
// outside its directory, and a symlink would not survive `helm package`).
TEST(CrdTest, HelmChartShipsTheSameDashboard) {
  std::string repo = Read(Source() + "/deploy/grafana/fedge-dashboard.json");
  ASSERT_FALSE(repo.empty());
  EXPECT_EQ(repo, Read(Source() + "/helm/fedge/files/fedge-dashboard.json"))
      << "copy deploy/grafana/fedge-dashboard.json to helm/fedge/files/";
}

}  // namespace
