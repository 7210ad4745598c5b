// The FederatedTrainingJob field table (fedge/job_spec_fields.h). Bounds and
// enums here are the CRD's (crds/fedge.io_federatedtrainingjobs.yaml, checked
// by common/tests/job_spec_fields_test.cpp); ValidateJobSpec applies them.
#include "fedge/job_spec_fields.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>

#include <algorithm>
#include <map>

namespace fedge {
namespace {

// The member a row reads and writes.
#define FEDGE_FIELD(member) [](JobSpec& s) -> FieldRef { return &s.member; }

using K = FieldKind;

std::vector<JobSpecField> MakeTable() {
  std::vector<JobSpecField> t;
  auto add = [&t](JobSpecField f) { t.push_back(std::move(f)); };

  add({.path = "spec.model.path",
       .kind = K::kString,
       .ref = FEDGE_FIELD(model.path),
       .min = 1,
       .max = 4096,
       .required_hint = "a Hugging Face model directory"});
  add({.path = "spec.model.family",
       .kind = K::kString,
       .ref = FEDGE_FIELD(model.family),
       .one_of = {"bert", "llama"}});
  add({.path = "spec.model.task",
       .kind = K::kString,
       .ref = FEDGE_FIELD(model.task),
       .one_of = {"sequence-classification", "token-classification", "embedding", "causal-lm"}});
  add({.path = "spec.model.labels",
       .kind = K::kStringList,
       .ref = FEDGE_FIELD(model.labels),
       .max = 4096,
       .item_min = 1,
       .item_max = 256});
  add({.path = "spec.model.maxSeqLen",
       .kind = K::kInt,
       .ref = FEDGE_FIELD(model.maxSeqLen),
       .min = 2,
       .max = 32768,
       .wire = "max_seq_len"});

  // 16-bit for llama only (ValidateJobSpec, CEL).
  add({.path = "spec.model.dtype",
       .kind = K::kString,
       .ref = FEDGE_FIELD(model.dtype),
       .one_of = {"auto", "float32", "bfloat16", "float16"}});

  add({.path = "spec.adapter.rank", .kind = K::kInt, .ref = FEDGE_FIELD(adapter.rank), .min = 1, .max = 256});
  add({.path = "spec.adapter.alpha",
       .kind = K::kDouble,
       .ref = FEDGE_FIELD(adapter.alpha),
       .min = 0,
       .exclusive_min = true});
  add({.path = "spec.adapter.dropout",
       .kind = K::kDouble,
       .ref = FEDGE_FIELD(adapter.dropout),
       .min = 0,
       .max = 1,
       .exclusive_max = true});
  add({.path = "spec.adapter.targetModules",
       .kind = K::kStringList,
       .ref = FEDGE_FIELD(adapter.targetModules),
       .min = 1,
       .max = 64,
       .item_min = 1,
       .item_max = 128});
  add({.path = "spec.adapter.aggregation",
       .kind = K::kString,
       .ref = FEDGE_FIELD(adapter.aggregation),
       .one_of = {"factors", "frozen-a", "product"}});

  add({.path = "spec.data.path",
       .kind = K::kString,
       .ref = FEDGE_FIELD(data.path),
       .min = 1,
       .max = 4096,
       .required_hint = "the node-local data directory"});
  add({.path = "spec.data.format", .kind = K::kString, .ref = FEDGE_FIELD(data.format), .one_of = {"jsonl"}});
  add({.path = "spec.data.trainFile",
       .kind = K::kString,
       .ref = FEDGE_FIELD(data.trainFile),
       .min = 1,
       .max = 1024,
       .required_hint = "file name of the training set inside spec.data.path"});
  // Empty would name spec.data.path itself, which no agent can read as a file.
  add({.path = "spec.data.evalFile",
       .kind = K::kString,
       .ref = FEDGE_FIELD(data.evalFile),
       .min = 1,
       .max = 1024,
       .required_hint = "file name of the evaluation set inside spec.data.path"});

  add({.path = "spec.agents.nodeSelector",
       .kind = K::kStringMap,
       .ref = FEDGE_FIELD(agents.nodeSelector),
       .max = 32,
       .item_max = 63});  // label values
  add({.path = "spec.agents.minAgents",
       .kind = K::kInt,
       .ref = FEDGE_FIELD(agents.minAgents),
       .min = 1,
       .max = 10000});
  add({.path = "spec.agents.maxAgents",
       .kind = K::kInt,
       .ref = FEDGE_FIELD(agents.maxAgents),
       .min = 0,
       .max = 10000});
  add({.path = "spec.agents.replicas",
       .kind = K::kInt,
       .ref = FEDGE_FIELD(agents.replicas),
       .min = 0,
       .max = 1000});
  // Operator-only (operator/controller/src/desired.cpp reads them from the object).
  add({.path = "spec.agents.tolerationSeconds", .kind = K::kInt64, .min = 0, .max = 30 * 24 * 3600});
  add({.path = "spec.agents.resources", .kind = K::kObject});
  add({.path = "spec.agents.maxUnavailable", .kind = K::kIntOrPercent, .min = 1, .max = 10000});

  add({.path = "spec.rounds.total",
       .kind = K::kInt,
       .ref = FEDGE_FIELD(rounds.total),
       .min = 1,
       .max = 100000});
  add({.path = "spec.rounds.quorum",
       .kind = K::kInt,
       .ref = FEDGE_FIELD(rounds.quorum),
       .min = 0,
       .max = 10000});
  add({.path = "spec.rounds.fraction",
       .kind = K::kDouble,
       .ref = FEDGE_FIELD(rounds.fraction),
       .min = 0,
       .max = 1,
       .exclusive_min = true});
  add({.path = "spec.rounds.timeoutSeconds",
       .kind = K::kInt,
       .ref = FEDGE_FIELD(rounds.timeoutSeconds),
       .min = 1,
       .max = 86400});
  add({.path = "spec.rounds.localSteps",
       .kind = K::kInt,
       .ref = FEDGE_FIELD(rounds.localSteps),
       .min = 1,
       .max = 1000000,
       .wire = "local_steps"});
  add({.path = "spec.rounds.batchSize",
       .kind = K::kInt,
       .ref = FEDGE_FIELD(rounds.batchSize),
       .min = 1,
       .max = 65536,
       .wire = "batch_size"});
  // On the wire a TRAIN task carries the round's rate under learningRateSchedule
  // (the aggregator's ScheduledLearningRate), so the schedule itself needs no field.
  add({.path = "spec.rounds.learningRate",
       .kind = K::kDouble,
       .ref = FEDGE_FIELD(rounds.learningRate),
       .min = 0,
       .max = 10,
       .exclusive_min = true,
       .wire = "learning_rate"});
  add({.path = "spec.rounds.learningRateSchedule",
       .kind = K::kString,
       .ref = FEDGE_FIELD(rounds.learningRateSchedule),
       .one_of = {"constant", "linear", "cosine"}});
  add({.path = "spec.rounds.optimizerState",
       .kind = K::kString,
       .ref = FEDGE_FIELD(rounds.optimizerState),
       .one_of = {"fresh", "keep", "keep-second-moment"},
       .wire = "optimizer_state"});
  add({.path = "spec.rounds.weightDecay",
       .kind = K::kDouble,
       .ref = FEDGE_FIELD(rounds.weightDecay),
       .min = 0,
       .max = 1,
       .wire = "weight_decay"});
  add({.path = "spec.rounds.maxGradNorm",
       .kind = K::kDouble,
       .ref = FEDGE_FIELD(rounds.maxGradNorm),
       .min = 0,
       .wire = "max_grad_norm"});
  // At most INT64_MAX (the CRD's int64), checked in ValidateJobSpec: a double bound
  // cannot say it exactly.
  add({.path = "spec.rounds.seed",
       .kind = K::kUint64,
       .ref = FEDGE_FIELD(rounds.seed),
       .min = 0,
       .wire = "seed"});
  add({.path = "spec.rounds.overSelection",
       .kind = K::kDouble,
       .ref = FEDGE_FIELD(rounds.overSelection),
       .min = 1,
       .max = 10});
  add({.path = "spec.rounds.mode",
       .kind = K::kString,
       .ref = FEDGE_FIELD(rounds.mode),
       .one_of = {"sync", "async"}});
  add({.path = "spec.rounds.asyncBufferSize",
       .kind = K::kInt,
       .ref = FEDGE_FIELD(rounds.asyncBufferSize),
       .min = 1,
       .max = 100000});
  add({.path = "spec.rounds.stalenessExponent",
       .kind = K::kDouble,
       .ref = FEDGE_FIELD(rounds.stalenessExponent),
       .min = 0,
       .max = 10});
  add({.path = "spec.rounds.maxStaleness",
       .kind = K::kInt,
       .ref = FEDGE_FIELD(rounds.maxStaleness),
       .min = 0,
       .max = 2147483647});

  add({.path = "spec.strategy.name",
       .kind = K::kString,
       .ref = FEDGE_FIELD(strategy.name),
       .one_of = {"fedavg", "fedprox", "fedavgm", "scaffold", "fedadam", "fedyogi", "fedadagrad", "median",
                  "trimmed-mean", "krum", "multi-krum"}});
  add({.path = "spec.strategy.proximalMu",
       .kind = K::kDouble,
       .ref = FEDGE_FIELD(strategy.proximalMu),
       .min = 0,
       .wire = "proximal_mu"});
  add({.path = "spec.strategy.logitAdjustment",
       .kind = K::kDouble,
       .ref = FEDGE_FIELD(strategy.logitAdjustment),
       .min = 0,
       .max = 10,
       .wire = "logit_adjustment"});
  add({.path = "spec.strategy.restrictedSoftmax",
       .kind = K::kDouble,
       .ref = FEDGE_FIELD(strategy.restrictedSoftmax),
       .min = 0,
       .max = 1,
       .exclusive_min = true,
       .wire = "restricted_softmax"});
  add({.path = "spec.strategy.restrictedStep",
       .kind = K::kDouble,
       .ref = FEDGE_FIELD(strategy.restrictedStep),
       .min = 0,
       .max = 1,
       .wire = "restricted_step"});
  add({.path = "spec.strategy.restrictedStepBelow",
       .kind = K::kDouble,
       .ref = FEDGE_FIELD(strategy.restrictedStepBelow),
       .min = 0,
       .max = 1,
       .exclusive_max = true,
       .wire = "restricted_step_below"});
  add({.path = "spec.strategy.globalLearningRate",
       .kind = K::kDouble,
       .ref = FEDGE_FIELD(strategy.globalLearningRate),
       .min = 0,
       .exclusive_min = true});
  add({.path = "spec.strategy.serverLearningRate",
       .kind = K::kDouble,
       .ref = FEDGE_FIELD(strategy.serverLearningRate),
       .min = 0,
       .exclusive_min = true});
  add({.path = "spec.strategy.serverMomentum",
       .kind = K::kDouble,
       .ref = FEDGE_FIELD(strategy.serverMomentum),
       .min = 0,
       .max = 1,
       .exclusive_max = true});
  add({.path = "spec.strategy.beta1",
       .kind = K::kDouble,
       .ref = FEDGE_FIELD(strategy.beta1),
       .min = 0,
       .max = 1,
       .exclusive_max = true});
  add({.path = "spec.strategy.beta2",
       .kind = K::kDouble,
       .ref = FEDGE_FIELD(strategy.beta2),
       .min = 0,
       .max = 1,
       .exclusive_max = true});
  add({.path = "spec.strategy.tau",
       .kind = K::kDouble,
       .ref = FEDGE_FIELD(strategy.tau),
       .min = 0,
       .exclusive_min = true});
  add({.path = "spec.strategy.trimFraction",
       .kind = K::kDouble,
       .ref = FEDGE_FIELD(strategy.trimFraction),
       .min = 0,
       .max = 0.5,
       .exclusive_max = true});
  add({.path = "spec.strategy.byzantineClients",
       .kind = K::kInt,
       .ref = FEDGE_FIELD(strategy.byzantineClients),
       .min = 0,
       .max = 2147483647});
  add({.path = "spec.strategy.multiKrumM",
       .kind = K::kInt,
       .ref = FEDGE_FIELD(strategy.multiKrumM),
       .min = 0,
       .max = 2147483647});
  add({.path = "spec.strategy.maxBufferedUpdates",
       .kind = K::kInt,
       .ref = FEDGE_FIELD(strategy.maxBufferedUpdates),
       .min = 1,
       .max = 2147483647});
  add({.path = "spec.strategy.clipNorm",
       .kind = K::kDouble,
       .ref = FEDGE_FIELD(strategy.clipNorm),
       .min = 0});
  add({.path = "spec.strategy.maxUpdateNorm",
       .kind = K::kDouble,
       .ref = FEDGE_FIELD(strategy.maxUpdateNorm),
       .min = 0});

  add({.path = "spec.compression.codec",
       .kind = K::kString,
       .ref = FEDGE_FIELD(compression.codec),
       .one_of = {"fp32", "fp16", "bf16", "int8", "int4"},
       .wire = "update_codec"});
  // The codec library's own limit (EncodeOptions::block_size): a larger value
  // would pass here and fail every upload.
  add({.path = "spec.compression.blockSize",
       .kind = K::kInt,
       .ref = FEDGE_FIELD(compression.blockSize),
       .min = 1,
       .max = 65536,
       .wire = "block_size"});
  add({.path = "spec.compression.zstd",
       .kind = K::kBool,
       .ref = FEDGE_FIELD(compression.zstd),
       .wire = "zstd"});
  add({.path = "spec.compression.zstdLevel",
       .kind = K::kInt,
       .ref = FEDGE_FIELD(compression.zstdLevel),
       .min = 1,
       .max = 19,
       .wire = "zstd_level"});
  // The aggregator's download encoding (EngineOptionsFromSpec); agents read the
  // codec from the bundle's header, so it is not on the wire.
  add({.path = "spec.compression.globalCodec",
       .kind = K::kString,
       .ref = FEDGE_FIELD(compression.globalCodec),
       .one_of = {"fp32", "fp16", "bf16"}});
  // 0 or >= kMinTopkFraction: ValidateJobSpec and the CRD's CEL rule.
  add({.path = "spec.compression.topKFraction",
       .kind = K::kDouble,
       .ref = FEDGE_FIELD(compression.topKFraction),
       .min = 0,
       .max = 1,
       .allowed = "0 (off) or in [0.0001, 1]",
       .wire = "topk_fraction"});
  add({.path = "spec.compression.errorFeedback",
       .kind = K::kBool,
       .ref = FEDGE_FIELD(compression.errorFeedback),
       .wire = "error_feedback"});
  add({.path = "spec.compression.stochasticRounding",
       .kind = K::kBool,
       .ref = FEDGE_FIELD(compression.stochasticRounding),
       .wire = "stochastic_rounding"});

  // Written only when enabled; the section's presence enables it.
  add({.path = "spec.privacy.differentialPrivacy.mode",
       .kind = K::kString,
       .ref = FEDGE_FIELD(privacy.differentialPrivacy.mode),
       .one_of = {"central", "distributed"}});
  add({.path = "spec.privacy.differentialPrivacy.clipNorm",
       .kind = K::kDouble,
       .ref = FEDGE_FIELD(privacy.differentialPrivacy.clipNorm),
       .min = 0,
       .exclusive_min = true});
  add({.path = "spec.privacy.differentialPrivacy.noiseMultiplier",
       .kind = K::kDouble,
       .ref = FEDGE_FIELD(privacy.differentialPrivacy.noiseMultiplier),
       .min = 0,
       .exclusive_min = true});
  add({.path = "spec.privacy.differentialPrivacy.targetEpsilon",
       .kind = K::kDouble,
       .ref = FEDGE_FIELD(privacy.differentialPrivacy.targetEpsilon),
       .min = 0});
  add({.path = "spec.privacy.differentialPrivacy.delta",
       .kind = K::kDouble,
       .ref = FEDGE_FIELD(privacy.differentialPrivacy.delta),
       .min = 0,
       .max = 1,
       .exclusive_min = true,
       .exclusive_max = true});
  // Written only when enabled; checked either way (as in the CRD).
  add({.path = "spec.privacy.secureAggregation.enabled",
       .kind = K::kBool,
       .ref = FEDGE_FIELD(privacy.secureAggregation.enabled)});
  add({.path = "spec.privacy.secureAggregation.threshold",
       .kind = K::kInt,
       .ref = FEDGE_FIELD(privacy.secureAggregation.threshold),
       .min = 0,
       .max = 10000});
  add({.path = "spec.privacy.secureAggregation.neighbours",
       .kind = K::kInt,
       .ref = FEDGE_FIELD(privacy.secureAggregation.neighbours),
       .min = 0,
       .max = 10000});
  add({.path = "spec.privacy.tls", .kind = K::kBool, .ref = FEDGE_FIELD(privacy.tls)});

  add({.path = "spec.serving.enabled", .kind = K::kBool, .ref = FEDGE_FIELD(serving.enabled)});
  add({.path = "spec.serving.port",
       .kind = K::kInt,
       .ref = FEDGE_FIELD(serving.port),
       .min = 1,
       .max = 65535});
  // Only llama models decode token by token (ValidateJobSpec, CEL).
  add({.path = "spec.serving.decodeWeights",
       .kind = K::kString,
       .ref = FEDGE_FIELD(serving.decodeWeights),
       .one_of = {"float32", "int8"}});
  // 1 MiB: a prompt for a long-context model (Llama 3.2 reads 131,072 positions) fits,
  // and one tokenizes in ~0.15 s (bench/tokenizer_bench.cpp); the HTTP body cap is 4 MiB.
  add({.path = "spec.serving.maxInputBytes",
       .kind = K::kInt,
       .ref = FEDGE_FIELD(serving.maxInputBytes),
       .min = 256,
       .max = 1048576});

  add({.path = "spec.feedback.enabled", .kind = K::kBool, .ref = FEDGE_FIELD(feedback.enabled)});
  add({.path = "spec.feedback.maxExamples",
       .kind = K::kInt,
       .ref = FEDGE_FIELD(feedback.maxExamples),
       .min = 1,
       .max = 100000});
  add({.path = "spec.feedback.weight",
       .kind = K::kDouble,
       .ref = FEDGE_FIELD(feedback.weight),
       .min = 0.01,
       .max = 0.9});

  add({.path = "spec.runPolicy.backoffLimit",
       .kind = K::kInt,
       .ref = FEDGE_FIELD(runPolicy.backoffLimit),
       .min = 0,
       .max = 1000});
  add({.path = "spec.runPolicy.activeDeadlineSeconds",
       .kind = K::kInt64,
       .ref = FEDGE_FIELD(runPolicy.activeDeadlineSeconds),
       .min = 0});
  add({.path = "spec.runPolicy.ttlSecondsAfterFinished",
       .kind = K::kInt64,
       .ref = FEDGE_FIELD(runPolicy.ttlSecondsAfterFinished),
       .min = -1});
  add({.path = "spec.runPolicy.suspend", .kind = K::kBool, .ref = FEDGE_FIELD(runPolicy.suspend)});
  add({.path = "spec.runPolicy.cleanPodPolicy",
       .kind = K::kString,
       .ref = FEDGE_FIELD(runPolicy.cleanPodPolicy),
       .one_of = {"All", "Running", "None"}});

  // Operator-only: the aggregator pod (operator/controller/src/desired.cpp).
  add({.path = "spec.aggregator.checkpoint.enabled", .kind = K::kBool});
  add({.path = "spec.aggregator.checkpoint.claimName", .kind = K::kString, .max = 253});
  add({.path = "spec.aggregator.checkpoint.storageClassName", .kind = K::kString, .max = 253});
  add({.path = "spec.aggregator.checkpoint.size", .kind = K::kString});  // a quantity: job_spec.cpp
  add({.path = "spec.aggregator.resources", .kind = K::kObject});
  return t;
}

#undef FEDGE_FIELD

}  // namespace

const std::vector<JobSpecField>& JobSpecFields() {
  static const std::vector<JobSpecField> table = MakeTable();
  return table;
}

const JobSpecField* FindJobSpecField(std::string_view path) {
  for (const JobSpecField& f : JobSpecFields()) {
    if (f.path == path) return &f;
  }
  return nullptr;
}

std::vector<std::string> CompressionCodecNames() {
  const JobSpecField* f = FindJobSpecField("spec.compression.codec");
  return {f->one_of.begin(), f->one_of.end()};
}

StatusOr<EncodeOptions> EncodeOptionsFor(const CompressionSpec& c) {
  EncodeOptions eo;
  auto codec = ParseCodec(c.codec);
  if (!codec.ok()) {
    std::string names;
    for (const std::string& n : CompressionCodecNames()) names += (names.empty() ? "" : ", ") + n;
    return InvalidArgumentError("update codec \"" + c.codec + "\" is not one of " + names);
  }
  eo.codec = *codec;
  eo.block_size = c.blockSize;
  eo.zstd = c.zstd;
  eo.zstd_level = c.zstdLevel;
  eo.topk_fraction = c.topKFraction;
  eo.stochastic_rounding = c.stochasticRounding;
  return eo;
}

Status CheckBundleMatches(const CompressionSpec& c, const BundleHeader& header) {
  const std::string got(CodecName(header.codec));
  if (got != c.codec) {
    return FailedPreconditionError("update codec " + got + " differs from the job's spec.compression.codec " +
                                   c.codec + "; encode updates with the codec of the TRAIN task's config");
  }
  if (IsBlockwiseCodec(header.codec) && header.block_size != static_cast<uint32_t>(c.blockSize)) {
    return FailedPreconditionError("update block size " + std::to_string(header.block_size) +
                                   " differs from the job's spec.compression.blockSize " +
                                   std::to_string(c.blockSize));
  }
  const bool want_sparse = c.topKFraction > 0;
  if (header.sparse != want_sparse) {
    return FailedPreconditionError(std::string("update is ") + (header.sparse ? "top-k sparse" : "dense") +
                                   " but the job's spec.compression.topKFraction is " +
                                   (want_sparse ? "on" : "0 (dense)"));
  }
  return OkStatus();
}

namespace {

using google::protobuf::FieldDescriptor;

// The wire field of row `f` in `wire`, checked against the row's kind: strings,
// bools, ints (int32), uint64s and doubles (double, or float: the wire narrows).
StatusOr<const FieldDescriptor*> WireField(const google::protobuf::Descriptor& wire, const JobSpecField& f) {
  const FieldDescriptor* d = wire.FindFieldByName(std::string(f.wire));
  if (d == nullptr || d->is_repeated()) {
    return InternalError(std::string(f.path) + ": " + wire.full_name() + " has no field " +
                         std::string(f.wire) +
                         "; name a field of the message in the row's wire (job_spec_fields.cpp)");
  }
  bool fits = false;
  switch (f.kind) {
    case FieldKind::kString:
      fits = d->cpp_type() == FieldDescriptor::CPPTYPE_STRING;
      break;
    case FieldKind::kBool:
      fits = d->cpp_type() == FieldDescriptor::CPPTYPE_BOOL;
      break;
    case FieldKind::kInt:
      fits = d->cpp_type() == FieldDescriptor::CPPTYPE_INT32;
      break;
    case FieldKind::kUint64:
      fits = d->cpp_type() == FieldDescriptor::CPPTYPE_UINT64;
      break;
    case FieldKind::kDouble:
      fits =
          d->cpp_type() == FieldDescriptor::CPPTYPE_DOUBLE || d->cpp_type() == FieldDescriptor::CPPTYPE_FLOAT;
      break;
    default:
      break;
  }
  if (!fits) {
    return InternalError(std::string(f.path) + ": wire field " + std::string(f.wire) + " has type " +
                         d->cpp_type_name() + ", which cannot carry the row's value");
  }
  return d;
}

// True when 0 (numbers) or "" (strings) is a value the row allows: then a zero on
// the wire is taken as sent. Otherwise it can only mean "not sent".
bool AdmitsZero(const JobSpecField& f) {
  if (f.kind == FieldKind::kString) return f.one_of.empty() && !(f.min && *f.min > 0);
  if (!f.min) return true;
  return *f.min < 0 || (*f.min == 0 && !f.exclusive_min);
}

}  // namespace

Status CheckWireFields(const std::vector<JobSpecField>& rows, const google::protobuf::Descriptor& wire) {
  std::map<std::string_view, std::string_view> seen;  // wire field -> row
  for (const JobSpecField& f : rows) {
    if (f.wire.empty()) continue;
    if (f.ref == nullptr)
      return InternalError(std::string(f.path) + ": names a wire field but has no member");
    FEDGE_RETURN_IF_ERROR(WireField(wire, f).status());
    if (auto [it, fresh] = seen.emplace(f.wire, f.path); !fresh) {
      return InternalError(std::string(f.path) + ": wire field " + std::string(f.wire) + " is already " +
                           std::string(it->second) + "'s");
    }
  }
  return OkStatus();
}

Status TrainingToWire(const JobSpec& spec, google::protobuf::Message* wire) {
  // Rows address a mutable JobSpec; this loop only reads through them (and a
  // copy would copy every label and selector per task).
  JobSpec& fields = const_cast<JobSpec&>(spec);
  const auto* reflection = wire->GetReflection();
  for (const JobSpecField& f : JobSpecFields()) {
    if (f.wire.empty()) continue;
    FEDGE_ASSIGN_OR_RETURN(const FieldDescriptor* d, WireField(*wire->GetDescriptor(), f));
    const FieldRef ref = f.ref(fields);
    if (auto* s = std::get_if<std::string*>(&ref)) reflection->SetString(wire, d, **s);
    if (auto* b = std::get_if<bool*>(&ref)) reflection->SetBool(wire, d, **b);
    if (auto* i = std::get_if<int*>(&ref)) reflection->SetInt32(wire, d, **i);
    if (auto* u = std::get_if<uint64_t*>(&ref)) reflection->SetUInt64(wire, d, **u);
    if (auto* x = std::get_if<double*>(&ref)) {
      if (d->cpp_type() == FieldDescriptor::CPPTYPE_FLOAT) {
        reflection->SetFloat(wire, d, static_cast<float>(**x));
      } else {
        reflection->SetDouble(wire, d, **x);
      }
    }
  }
  return OkStatus();
}

StatusOr<JobSpec> TrainingFromWire(const google::protobuf::Message& wire) {
  JobSpec spec;
  const auto* reflection = wire.GetReflection();
  for (const JobSpecField& f : JobSpecFields()) {
    if (f.wire.empty()) continue;
    FEDGE_ASSIGN_OR_RETURN(const FieldDescriptor* d, WireField(*wire.GetDescriptor(), f));
    // A field with presence (proto3 `optional`) that was not sent keeps the default.
    if (d->has_presence() && !reflection->HasField(wire, d)) continue;
    const bool take_zero = AdmitsZero(f);
    const FieldRef ref = f.ref(spec);
    if (auto* s = std::get_if<std::string*>(&ref)) {
      if (std::string v = reflection->GetString(wire, d); take_zero || !v.empty()) **s = std::move(v);
    }
    if (auto* b = std::get_if<bool*>(&ref)) **b = reflection->GetBool(wire, d);
    if (auto* i = std::get_if<int*>(&ref)) {
      if (const int v = reflection->GetInt32(wire, d); take_zero || v != 0) **i = v;
    }
    if (auto* u = std::get_if<uint64_t*>(&ref)) {
      if (const uint64_t v = reflection->GetUInt64(wire, d); take_zero || v != 0) **u = v;
    }
    if (auto* x = std::get_if<double*>(&ref)) {
      const double v = d->cpp_type() == FieldDescriptor::CPPTYPE_FLOAT
                           ? static_cast<double>(reflection->GetFloat(wire, d))
                           : reflection->GetDouble(wire, d);
      if (take_zero || v != 0) **x = v;
    }
  }
  return spec;
}

}  // namespace fedge
