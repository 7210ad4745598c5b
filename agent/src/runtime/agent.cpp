#include "fedge/agent/runtime/agent.h"

#include <filesystem>
#include <tuple>

#include "fedge/agent/runtime/aggregator_client.h"
#include "fedge/agent/runtime/api_token.h"
#include "fedge/agent/runtime/feedback_mix.h"
#include "fedge/agent/runtime/inference_api.h"
#include "fedge/agent/runtime/llm_model.h"
#include "fedge/agent/runtime/metrics.h"
#include "fedge/agent/runtime/serving_model.h"
#include "fedge/agent/runtime/state_store.h"
#include "fedge/file_util.h"
#include "fedge/http_server.h"
#include "fedge/log.h"

#include <prometheus/gauge.h>

namespace fedge::agent {

namespace {

std::string JoinPath(const std::string& dir, const std::string& file) {
  if (file.empty() || file.front() == '/' || dir.empty()) return file;
  return (std::filesystem::path(dir) / file).string();
}

}  // namespace

StatusOr<AgentSettings> ResolveAgentSettings(const AgentFlags& flags, const JobSpec& spec,
                                             const std::string& hostname, const std::string& node_name_env) {
  AgentSettings s;
  s.spec = spec;
  if (flags.aggregator.empty()) return InvalidArgumentError("--aggregator HOST:PORT is required");
  if (flags.aggregator.find("$(") != std::string::npos) {
    // The operator passes the aggregator Service's address through the kubelet's service
    // environment ($(<SERVICE>_SERVICE_HOST)); left as is, that Service did not exist when
    // the container started.
    return FailedPreconditionError("--aggregator: \"" + flags.aggregator +
                                   "\" was not expanded: the aggregator Service did not exist when this "
                                   "container started (the operator makes it again and replaces the pod)");
  }
  std::string host;
  int port = 0;
  Status addr = SplitHostPort(flags.aggregator, &host, &port);
  if (!addr.ok() || port == 0)
    return InvalidArgumentError("--aggregator: \"" + flags.aggregator + "\" is not HOST:PORT");
  s.aggregator = flags.aggregator;
  // An IPv6 Service address arrives bare (fd00::a:7070): the port is after the last colon.
  if (host.find(':') != std::string::npos && host.front() != '[') {
    s.aggregator = "[" + host + "]:" + std::to_string(port);
  }

  s.agent_id = flags.agent_id.empty() ? hostname : flags.agent_id;
  if (s.agent_id.empty()) return InvalidArgumentError("--agent-id is empty and the hostname is unknown");
  s.node_name = !flags.node_name.empty() ? flags.node_name
                : !node_name_env.empty() ? node_name_env
                                         : hostname;

  if (!flags.token.empty() && !flags.token_file.empty()) {
    return InvalidArgumentError("give either --token or --token-file, not both");
  }
  s.token = flags.token;
  if (!flags.token_file.empty()) {
    // Read now to fail fast; the client reads it again before every Join.
    auto token = ReadTokenFile(flags.token_file);
    if (!token.ok()) return InvalidArgumentError("--token-file: " + token.status().message());
    s.token = std::move(*token);
    s.token_file = flags.token_file;
  }

  std::string data_dir = flags.data_dir.empty() ? spec.data.path : flags.data_dir;
  s.train_path = JoinPath(data_dir, spec.data.trainFile);
  s.eval_path = JoinPath(data_dir, spec.data.evalFile);
  s.model_dir = flags.model_dir.empty() ? spec.model.path : flags.model_dir;
  if (s.model_dir.empty())
    return InvalidArgumentError("--model-dir is not given and spec.model.path is empty");

  s.http = flags.http.empty() ? "0.0.0.0:" + std::to_string(spec.serving.port) : flags.http;
  Status http = SplitHostPort(s.http, &host, &port);
  if (!http.ok()) return InvalidArgumentError("--http: " + http.message());

  s.state_dir = flags.state_dir.empty() ? ".fedge-agent/" + s.agent_id : flags.state_dir;
  if (flags.threads < 1)
    return InvalidArgumentError("--threads must be >= 1, got " + std::to_string(flags.threads));
  s.threads = flags.threads;
  s.exit_when_done = flags.exit_when_done;

  if (flags.tls_ca.empty() &&
      (!flags.tls_server_name.empty() || !flags.tls_cert.empty() || !flags.tls_key.empty())) {
    return InvalidArgumentError("--tls-server-name, --tls-cert and --tls-key need --tls-ca");
  }
  if (flags.tls_cert.empty() != flags.tls_key.empty()) {
    return InvalidArgumentError("give --tls-cert and --tls-key together");
  }
  for (auto [flag, path, pem] : {std::tuple{"--tls-ca", &flags.tls_ca, &s.tls.root_ca_pem},
                                 std::tuple{"--tls-cert", &flags.tls_cert, &s.tls.cert_pem},
                                 std::tuple{"--tls-key", &flags.tls_key, &s.tls.key_pem}}) {
    if (path->empty()) continue;
    auto pem_text = ReadFile(*path);
    if (!pem_text.ok()) return InvalidArgumentError(std::string(flag) + ": " + pem_text.status().message());
    *pem = std::move(*pem_text);
  }
  s.tls.server_name = flags.tls_server_name;
  s.tls_files = {flags.tls_ca, flags.tls_cert, flags.tls_key, flags.tls_server_name};
  s.api_token_file = flags.api_token_file;
  if (flags.feedback_max_bytes == 0) {
    return InvalidArgumentError("--feedback-max-bytes must be > 0 (the default is 64MiB)");
  }
  s.feedback_max_bytes = flags.feedback_max_bytes;
  if (flags.max_queued_requests < 1) {
    return InvalidArgumentError("--max-queued-requests must be at least 1, got " +
                                std::to_string(flags.max_queued_requests));
  }
  s.scheduling.max_batch_size = flags.max_batch_size;
  s.scheduling.max_batch_tokens = flags.max_batch_tokens;
  s.scheduling.max_queued_requests = static_cast<size_t>(flags.max_queued_requests);
  s.scheduling.gather_window = std::chrono::microseconds(flags.batch_gather_window_us);
  s.scheduling.max_decode_batch = flags.max_decode_batch;
  FEDGE_RETURN_IF_ERROR(ValidateSchedulerOptions(s.scheduling));
  // A Kubernetes uid is a UUID; anything else in it would end up in a file.
  if (flags.job_uid.size() > 128 ||
      flags.job_uid.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") !=
          std::string::npos) {
    return InvalidArgumentError("--job-uid: \"" + flags.job_uid.substr(0, 128) +
                                "\" is not a job uid (the FederatedTrainingJob's metadata.uid: at most 128 "
                                "letters, digits, '-', '_', '.')");
  }
  s.job_uid = flags.job_uid;
  return s;
}

StatusOr<std::unique_ptr<Agent>> Agent::Start(const AgentSettings& settings) {
  std::unique_ptr<Agent> a(new Agent());
  a->settings_ = settings;
  const JobSpec& spec = settings.spec;

  std::error_code ec;
  if (!std::filesystem::exists(settings.train_path, ec)) {
    return NotFoundError("training data " + settings.train_path +
                         " does not exist (--data-dir, spec.data.path, spec.data.trainFile)");
  }
  const bool causal_lm = spec.model.family == "llama";
  auto load = [&](const std::string& path) {
    return causal_lm ? LoadPromptCompletions(path) : LoadExamples(path, spec.model.labels);
  };
  FEDGE_ASSIGN_OR_RETURN(a->train_, load(settings.train_path));
  if (std::filesystem::exists(settings.eval_path, ec)) {
    FEDGE_ASSIGN_OR_RETURN(a->eval_, load(settings.eval_path));
  } else {
    log::Warn("no evaluation data; EVALUATE tasks report 0 examples", {{"path", settings.eval_path}});
  }

  std::unique_ptr<TrainableModel> server_model;
  // Builds spare serving instances, so installing a global never waits for
  // inference (ServingModel); runs on the client thread, not on requests.
  ServingModel::Factory serving_factory;
  if (causal_lm) {
    LlmModelOptions lo;
    lo.model_dir = settings.model_dir;
    lo.lora.rank = spec.adapter.rank;
    lo.lora.alpha = spec.adapter.alpha;
    lo.lora.dropout = spec.adapter.dropout;
    lo.lora.targets = spec.adapter.targetModules;
    // Every agent starts from the same adapters, whichever INITIALIZEs.
    lo.lora.seed = spec.rounds.seed;
    lo.max_seq_len = spec.model.maxSeqLen;
    lo.num_threads = settings.threads;
    // The spec decides how the weights are held, not FEDGE_WEIGHT_DTYPE.
    lo.weight_dtype = spec.model.dtype;
    FEDGE_ASSIGN_OR_RETURN(a->trainer_, LlmModel::Load(lo));
    // Serving only decodes: the spec decides its weights (default float32), not
    // FEDGE_DECODE_WEIGHTS.
    lo.decode_weights = spec.serving.decodeWeights == "int8" ? "int8" : "f32";
    FEDGE_ASSIGN_OR_RETURN(server_model, LlmModel::Load(lo));
    serving_factory = [lo]() -> StatusOr<std::unique_ptr<TrainableModel>> {
      FEDGE_ASSIGN_OR_RETURN(std::unique_ptr<LlmModel> m, LlmModel::Load(lo));
      return std::unique_ptr<TrainableModel>(std::move(m));
    };
  } else {
    ClassifierOptions co;
    co.model_dir = settings.model_dir;
    co.labels = spec.model.labels;
    co.lora_rank = spec.adapter.rank;
    co.lora_alpha = spec.adapter.alpha;
    co.lora_dropout = spec.adapter.dropout;
    co.lora_targets = spec.adapter.targetModules;
    co.lora_frozen_a = spec.adapter.aggregation == "frozen-a";
    co.max_seq_len = spec.model.maxSeqLen;
    // Every agent starts from the same trainable state, whichever INITIALIZEs.
    co.init_seed = spec.rounds.seed;
    co.num_threads = settings.threads;
    FEDGE_ASSIGN_OR_RETURN(a->trainer_, TextClassifier::Load(co));
    FEDGE_ASSIGN_OR_RETURN(server_model, TextClassifier::Load(co));
    serving_factory = [co]() -> StatusOr<std::unique_ptr<TrainableModel>> {
      FEDGE_ASSIGN_OR_RETURN(std::unique_ptr<TextClassifier> m, TextClassifier::Load(co));
      return std::unique_ptr<TrainableModel>(std::move(m));
    };
  }

  a->metrics_ = std::make_unique<AgentMetrics>();
  a->serving_ = std::make_unique<ServingModel>(std::move(server_model), spec.Key(), serving_factory);
  StateStoreOptions store_options;
  store_options.feedback_max_bytes = settings.feedback_max_bytes;
  store_options.feedback_max_examples = static_cast<size_t>(spec.feedback.maxExamples);
  store_options.feedback_enabled = spec.feedback.enabled;
  a->store_ = std::make_unique<StateStore>(settings.state_dir, spec.Key(), store_options);
  if (!settings.job_uid.empty()) {
    // Before anything reads the directory: a job re-created under the same name
    // must not serve or train on the deleted job's global model and feedback.
    auto bound = a->store_->BindJobUid(settings.job_uid);
    if (!bound.ok()) return bound.status().WithContext("--state-dir " + settings.state_dir);
    if (!bound->discarded.empty()) {
      std::string discarded;
      for (const std::string& path : bound->discarded) discarded += (discarded.empty() ? "" : ",") + path;
      log::Warn(
          "discarded the state of another run of this job (deleted and re-created under the same name)",
          {{"state_dir", settings.state_dir},
           {"old_uid", bound->previous_uid.empty() ? std::string("(none recorded)") : bound->previous_uid},
           {"new_uid", settings.job_uid},
           {"discarded", discarded}});
    }
  }
  if (!settings.api_token_file.empty()) {
    auto tokens = ApiTokenFile::Open(settings.api_token_file);
    if (!tokens.ok()) return tokens.status().WithContext("--api-token-file");
    a->api_tokens_ = std::move(tokens).value();
  }

  ClientOptions opts;
  opts.job = spec.Key();
  opts.agent_id = settings.agent_id;
  opts.node_name = settings.node_name;
  opts.token = settings.token;
  opts.token_file = settings.token_file;
  opts.model_family = spec.model.family;
  ClientDeps deps;
  deps.trainer = a->trainer_.get();
  deps.serving = a->serving_.get();
  deps.store = a->store_.get();
  deps.metrics = a->metrics_.get();
  deps.train_data = &a->train_;
  deps.eval_data = &a->eval_;
  if (spec.feedback.enabled) {
    // Each round trains on the shard plus the node's feedback so far, a share
    // spec.feedback.weight of the examples sampled (feedback_mix.h). Feedback
    // never leaves the node: only the trained delta does.
    deps.training_set = [store = a->store_.get(), labels = spec.model.labels, weight = spec.feedback.weight,
                         causal_lm](const std::vector<Example>& local, uint64_t seed) {
      auto entries = store->Feedback();
      if (!entries.ok()) {
        log::Warn("training without feedback this round: the feedback log cannot be read",
                  {{"error", entries.status().ToString()}});
        return MixFeedback(local, {}, weight, seed);
      }
      size_t skipped = 0;
      std::vector<Example> feedback =
          FeedbackExamples(*entries, causal_lm ? std::vector<std::string>{} : labels, &skipped);
      if (skipped > 0)
        log::Warn("feedback entries of another kind or label left out of training",
                  {{"skipped", static_cast<int64_t>(skipped)}});
      return MixFeedback(local, feedback, weight, seed);
    };
  }
  ChannelTls tls = settings.tls;
  std::shared_ptr<TlsFiles> tls_files;
  if (!settings.tls_files.ca.empty()) {
    // The operator renews the client certificate in the mounted Secret; re-dial when
    // the files change (looked at no more than every kTlsReloadInterval, 10 s).
    FEDGE_ASSIGN_OR_RETURN(tls_files, TlsFiles::Open(settings.tls_files, kTlsReloadInterval));
    tls = tls_files->Current();
  }
  a->client_ =
      std::make_unique<AggregatorClient>(AggregatorClient::Dial(settings.aggregator, tls), opts, deps);
  if (tls_files) a->client_->SetRedialer(RedialOnTlsChange(settings.aggregator, tls_files));

  auto persisted = a->store_->LoadGlobal();
  if (!persisted.ok()) {
    log::Warn("ignoring the persisted global model", {{"error", persisted.status().ToString()}});
  } else if (persisted->has_value()) {
    PersistedGlobal& g = **persisted;
    Status st = a->serving_->Install(g.bundle, g.version);
    if (st.ok()) {
      a->metrics_->global_version.Set(static_cast<double>(g.version));
      log::Info("serving the persisted global model",
                {{"version", g.version}, {"path", a->store_->GlobalPath()}, {"final", g.final}});
      // Only with a bound job uid is a final global certainly this run's: a hand-started
      // agent reusing a state directory for a new job of the same name must still join.
      a->job_done_before_start_ = g.final && !settings.job_uid.empty();
      a->client_->Restore(std::move(g));
    } else {
      log::Warn("ignoring the persisted global model", {{"error", st.ToString()}});
    }
  }

  InferenceLimits limits;
  limits.max_input_chars = static_cast<size_t>(settings.spec.serving.maxInputBytes);
  a->api_ = std::make_unique<InferenceApi>(a->serving_.get(), a->store_.get(), a->metrics_.get(), limits,
                                           a->api_tokens_.get(), settings.scheduling);
  // Handlers block while their request waits in the scheduler's queue, so the
  // worker pool holds every queued request, a full batch and a few cheap routes.
  HttpServerOptions http_options;
  http_options.worker_threads = static_cast<int>(settings.scheduling.max_queued_requests) +
                                settings.scheduling.max_batch_size + settings.scheduling.max_decode_batch + 8;
  a->http_ = std::make_unique<HttpServer>(settings.http, http_options);
  a->api_->Register(*a->http_);
  FEDGE_RETURN_IF_ERROR(a->http_->Start());
  log::Info("agent started", {{"job", spec.Key()},
                              {"agent_id", settings.agent_id},
                              {"node", settings.node_name},
                              {"aggregator", settings.aggregator},
                              {"http", a->http_->address()},
                              {"train_examples", a->train_.size()},
                              {"eval_examples", a->eval_.size()},
                              {"state_dir", settings.state_dir},
                              {"api_auth", a->api_tokens_ ? "bearer" : "none"}});
  if (!a->api_tokens_) {
    std::string host;
    int port = 0;
    if (SplitHostPort(settings.http, &host, &port).ok() && host != "127.0.0.1" && host != "localhost" &&
        host != "::1") {
      log::Warn(
          "the inference API needs no token: anyone who can reach it can run inference and write "
          "feedback; set --api-token-file (or FEDGE_API_TOKEN_FILE)",
          {{"http", a->http_->address()}});
    }
  }
  return a;
}

Agent::~Agent() {
  if (http_) http_->Stop();
}

int Agent::http_port() const { return http_ ? http_->port() : 0; }

void Agent::Stop() {
  stop_.Stop();
  if (client_) client_->Stop();
}

Status Agent::Run() {
  if (job_done_before_start_) {
    log::Info("the job was done before this start: serving its final global model without an aggregator",
              {{"http", http_->address()}, {"job_uid", settings_.job_uid}});
    if (!settings_.exit_when_done) stop_.Wait();
    http_->Stop();
    return OkStatus();
  }
  auto outcome = client_->Run();
  Status result;
  if (!outcome.ok()) {
    result = outcome.status();
  } else if (*outcome == RunOutcome::kDone && !settings_.exit_when_done) {
    log::Info("job done; serving until stopped", {{"http", http_->address()}});
    stop_.Wait();
  }
  http_->Stop();
  return result;
}

}  // namespace fedge::agent
