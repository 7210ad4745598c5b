# Drives the real fedge-aggregator binary (build it too) with simulated agents;
# the streaming-memory check runs the aggregator library in-process.
# absl::synchronization: main() turns off absl's Mutex deadlock detection, as the aggregator does.
set(FEDGE_BENCH_LIBS fedge_aggregator fedge_proto gRPC::grpc++ CLI11::CLI11 absl::synchronization Threads::Threads)
