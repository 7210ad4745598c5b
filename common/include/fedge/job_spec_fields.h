// The FederatedTrainingJob field table: one row per leaf field of `spec`, in
// manifest order, with its type, bounds, allowed values and (for the fields an
// agent needs each round) its v1.TrainingConfig field. The table drives
// ParseJobSpec (which keys exist, how each is read), ValidateJobSpec (every
// per-field bound and enum), JobSpecToYaml (what is written, in which order)
// and the spec <-> wire mapping (TrainingToWire / TrainingFromWire below). The
// CRD (crds/ and the chart's copy) is checked against it field by field by
// common/tests/job_spec_fields_test.cpp; cross-field rules stay hand-written
// in ValidateJobSpec and the CRD's CEL, and tests/cluster/spec_boundaries.json
// checks those against the real API server.
//
// Adding a field: a member in job_spec.h, a row here (job_spec_fields.cpp), the
// CRD property (the test names anything missing) and, if agents need it each
// round, a v1.TrainingConfig field (proto/fedge.proto) named in the row: the
// aggregator's GetTask then sends it and the agent's TrainingFromWire returns
// it in the JobSpec, with no code in either; only its use on the agent is new.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "fedge/job_spec.h"
#include "fedge/tensor_bundle.h"

namespace google::protobuf {
class Descriptor;
class Message;
}  // namespace google::protobuf

namespace fedge {

// kIntOrPercent: a Kubernetes IntOrString that is either an integer in [min, max] or a
// percentage "N%" with N from 1 to 100 (operator-only rows).
enum class FieldKind {
  kString,
  kInt,
  kInt64,
  kUint64,
  kDouble,
  kBool,
  kStringList,
  kStringMap,
  kObject,
  kIntOrPercent
};

// Where a row's value lives in a JobSpec.
using FieldRef = std::variant<std::string*, int*, int64_t*, uint64_t*, double*, bool*,
                              std::vector<std::string>*, std::map<std::string, std::string>*>;

struct JobSpecField {
  std::string_view path = {};  // "spec.compression.blockSize"
  FieldKind kind = FieldKind::kString;
  // The member; nullptr for the operator-only fields (spec.agents.tolerationSeconds,
  // spec.agents.resources), which are checked but not stored.
  FieldRef (*ref)(JobSpec&) = nullptr;
  // Numbers: the value. Strings: the length in code points. Lists and maps: the
  // number of items. Absent: unbounded.
  std::optional<double> min = {}, max = {};
  bool exclusive_min = false, exclusive_max = false;
  // Numbers: the allowed values as the error states them, when the bounds alone
  // would mislead (topKFraction: "0 (off) or in [0.0001, 1]"); empty: the bounds.
  std::string_view allowed = {};
  std::vector<std::string_view> one_of = {};  // strings: the allowed values (the CRD's enum)
  // Lists and maps: the length bounds of each item (maps: of each value).
  std::optional<double> item_min = {}, item_max = {};
  // Strings with min >= 1: what the empty value should have been ("required (...)").
  std::string_view required_hint = {};
  // The v1.TrainingConfig field that carries it to the agents; empty: none.
  std::string_view wire = {};
};

// Every leaf field of spec (objects that hold no table field, such as
// spec.agents.resources, are rows of kind kObject), in manifest order. The
// sections spec.privacy.differentialPrivacy and spec.privacy.secureAggregation
// are written only when enabled.
const std::vector<JobSpecField>& JobSpecFields();

// The row for `path`, or nullptr.
const JobSpecField* FindJobSpecField(std::string_view path);

// The codecs of spec.compression.codec (= the row's one_of) and the block size
// of the blockwise codecs when the spec does not say (= CompressionSpec{}).
std::vector<std::string> CompressionCodecNames();

// The one mapping from a job's compression section to the bundle encoder's
// options (codec, block size, zstd and its level, top-k, stochastic rounding).
// INVALID_ARGUMENT for a codec the encoder does not know. The seed is left 0.
StatusOr<EncodeOptions> EncodeOptionsFor(const CompressionSpec& compression);

// OK when an upload's bundle header is what a job with `compression` sends:
// the same codec, the same block size (blockwise codecs) and the sparse layout
// exactly when top-k is on. FAILED_PRECONDITION naming the difference and the
// job's setting otherwise. zstd is not compared: it changes no decoded value.
Status CheckBundleMatches(const CompressionSpec& compression, const BundleHeader& header);

// The one mapping between the spec and the wire: copies every row with a
// `wire` name (spec.model.maxSeqLen, the training fields of spec.rounds,
// spec.strategy.proximalMu, spec.compression) between a JobSpec and `wire` (a
// v1.TrainingConfig), finding the fields by name through protobuf reflection,
// so a new row needs no code here. Doubles may ride in float fields (narrowed).
// TrainingFromWire starts from JobSpec{} (every other field keeps its
// default): a 0 or "" that the row's bounds do not allow (localSteps 0, codec
// "") keeps the default, as from an aggregator that did not send the field;
// any other value is taken (weightDecay 0, maxGradNorm 0 = no clipping, seed
// 0), booleans always; a field with presence (proto3 `optional`, for a row whose
// default is not 0 but which allows 0: restrictedStep) keeps the default when it
// was not sent and is taken as sent otherwise. INTERNAL if a named field is
// missing from the message or cannot carry the row's type (a table and a proto
// of different versions).
// Thread-safe; `spec` is only read.
Status TrainingToWire(const JobSpec& spec, google::protobuf::Message* wire);
StatusOr<JobSpec> TrainingFromWire(const google::protobuf::Message& wire);

// OK when every row of `rows` that names a wire field names a singular field of
// `wire` able to carry the row's type, has a member, and no two rows name the
// same field; INTERNAL naming the first row that does not. TrainingToWire and
// TrainingFromWire apply the per-row part as they copy; tests check whole tables.
Status CheckWireFields(const std::vector<JobSpecField>& rows, const google::protobuf::Descriptor& wire);

}  // namespace fedge
